//! The daemon: start-up order (database and migrations, spool, listener), signals, drain.
//!
//! SIGTERM or SIGINT stops accepting associations; the C-STOREs in flight finish and are answered;
//! then the process exits 0.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::scp::{self, ScpSettings, ScpStats};
use crate::spool::{LocalSpool, Storage};
use crate::{db, spool};

/// A start-up failure, naming what could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    #[error("cannot listen on {addr} (key dicom.listen): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Run the daemon until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let pool = db::pool(&config.database)?;
    migrate_when_available(&pool, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let local = LocalSpool::open(&config.spool.dir)?;
    let swept = local.sweep_staged()?;
    if swept > 0 {
        tracing::info!(swept, "removed staged files left by an earlier run");
    }
    let storage: Arc<dyn Storage> = Arc::new(local);
    let listener = TcpListener::bind(config.dicom.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.dicom.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.dicom.listen,
        source,
    })?;
    tracing::info!(%addr, ae_title = %config.dicom.ae_title, "listening");
    let ingest = Arc::new(Ingest::new(pool.clone(), storage));
    scp::run(
        listener,
        Arc::new(ScpSettings::from(&config.dicom)),
        ingest,
        Arc::new(ScpStats::default()),
        shutdown,
    )
    .await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Apply migrations, retrying while the database cannot be reached (it may start after us).
async fn migrate_when_available(
    pool: &sqlx::PgPool,
    shutdown: &CancellationToken,
) -> Result<(), db::DbError> {
    let mut delay = Duration::from_millis(500);
    loop {
        match db::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(db::DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)))
                if is_connection_error(&e) =>
            {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable at start-up");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

fn spawn_signal_handler(shutdown: CancellationToken) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        shutdown.cancel();
    });
    Ok(())
}
