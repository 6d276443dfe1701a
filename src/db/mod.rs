//! PostgreSQL: the pool, the embedded migrations, and one module per table group.
//! The database is the index of the spool and the job queue shared by every receiver and worker.

pub mod analysis;
pub mod audit;
pub mod instances;
pub mod jobs;
pub mod outbox;
pub mod outputs;
pub mod stats;
pub mod studies;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A lazily connecting pool: the daemon starts and answers out-of-resources while the database
/// is down, instead of refusing to start once it was up.
pub fn pool(cfg: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = cfg.url.parse().map_err(DbError::Url)?;
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options.application_name("cxr-worker")))
}

/// Apply pending migrations (safe to run from several processes: sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Whether a table (or view) exists.
pub async fn table_exists(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
}

/// The server's version and how many of our migrations it has applied (0 before the first).
pub async fn server_info(conn: &mut sqlx::PgConnection) -> Result<(String, i64), sqlx::Error> {
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut *conn)
        .await?;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    let applied = if migrated {
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut *conn)
            .await?
    } else {
        0
    };
    Ok((version, applied))
}

/// `(state, count)` rows completed with every state in `states` (zeros included), in that order.
fn every_state(rows: Vec<(String, i64)>, states: &[&str]) -> Vec<(String, i64)> {
    states
        .iter()
        .map(|s| {
            let n = rows.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
            (s.to_string(), n)
        })
        .collect()
}
