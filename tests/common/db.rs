//! A fresh PostgreSQL database per test on the server of `DATABASE_URL`, dropped afterwards.

use sqlx::{Connection, PgConnection, PgPool};

/// The server's admin URL: `DATABASE_URL` (set by `make test`).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL role with CREATEDB (make test sets it)")
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{db}")
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    pub async fn create_on(admin: &str) -> Self {
        let name = format!("cxr_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin).await.expect("connect admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            url: with_db(admin, &name),
            admin: admin.to_string(),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.expect("connect test db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // best effort, on a thread of its own (Drop may run inside a runtime)
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Wait until `sql` (a count) reaches `want`; panics after `within` with the count it had.
pub async fn wait_for(pool: &PgPool, sql: &'static str, want: i64, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if n >= want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: {n} < {want} after {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
