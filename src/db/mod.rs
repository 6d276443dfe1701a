//! PostgreSQL: the pool, the embedded migrations, and one module per table group.
//! The database is the index of the spool and the job queue shared by every receiver and worker.

pub mod analysis;
pub mod instances;
pub mod jobs;

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
