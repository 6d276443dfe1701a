//! The sender loop: takes the oldest queued audit messages (`FOR UPDATE SKIP LOCKED`, so
//! several daemons on one database share the work), delivers them to the collector and the
//! file, and deletes each row once every configured destination has it. A failure keeps the
//! rows and backs off; a collector outage loses nothing.
//!
//! Delivery is at least once: a crash (or a lost database connection) between a delivery and
//! the commit that records it delivers those messages again, and so does a TLS batch that
//! failed half way (the prefix already written is recorded, but a write that failed may still
//! have reached the collector). Each destination is recorded on its own, so a collector outage
//! never writes the file twice.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::AuditError;
use super::syslog::SyslogMessage;
use super::transport::{self, Collector, Connection};
use crate::backoff::{Backoff, Failures};
use crate::config::AuditConfig;
use crate::db;
use crate::db::audit::{AuditRow, Destinations};

/// The first retry delay after a failed round (capped by `audit.retry_max_secs`).
const RETRY_BASE: Duration = Duration::from_millis(500);
/// How long the last round after shutdown may take.
const FINAL_ROUND: Duration = Duration::from_secs(5);

/// Deliver queued audit messages to the collector and file of `config` until `shutdown`; one
/// last round then flushes what was recorded just before (Application Stop). Returns at once
/// when audit is off. Fails only when the TLS files cannot be loaded.
pub async fn run_sender(
    pool: PgPool,
    config: AuditConfig,
    shutdown: CancellationToken,
) -> Result<(), AuditError> {
    if !config.enabled {
        return Ok(());
    }
    let collector = Collector::from_config(&config)?;
    run_sender_to(pool, config, collector, shutdown).await;
    Ok(())
}

/// [`run_sender`] with a collector built by the caller (its own TLS client configuration).
pub async fn run_sender_to(
    pool: PgPool,
    config: AuditConfig,
    collector: Option<Collector>,
    shutdown: CancellationToken,
) {
    let sender = Sender {
        to: Destinations {
            syslog: collector.is_some(),
            file: config.file.is_some(),
        },
        collector,
        config,
        connection: Connection::default(),
    };
    sender.run(&pool, shutdown).await;
}

struct Sender {
    config: AuditConfig,
    collector: Option<Collector>,
    to: Destinations,
    connection: Connection,
}

impl Sender {
    async fn run(mut self, pool: &PgPool, shutdown: CancellationToken) {
        tracing::info!(
            collector = self.collector.as_ref().map(Collector::address),
            file = self.config.file.as_ref().map(|f| f.display().to_string()),
            "audit sender started"
        );
        let backoff = Backoff::new(RETRY_BASE.min(self.config.retry_max), self.config.retry_max);
        let mut failures = Failures::default();
        while !shutdown.is_cancelled() {
            let wait = match self.round(pool).await {
                Ok(n) if n >= self.config.batch_size => {
                    failures.reset();
                    continue;
                }
                Ok(_) => {
                    failures.reset();
                    self.config.poll_interval
                }
                Err(e) => {
                    let wait = failures.failed(&backoff);
                    tracing::warn!(error = %e, retry_in = ?wait, "audit delivery failed; the messages stay queued");
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        match tokio::time::timeout(FINAL_ROUND, self.round(pool)).await {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit delivery at shutdown failed; the messages stay queued")
            }
            Err(_) => {
                tracing::warn!("audit delivery at shutdown timed out; the messages stay queued")
            }
            Ok(Ok(_)) => {}
        }
        tracing::info!("audit sender stopped");
    }

    /// One batch in one transaction: claim, deliver to each destination, record, delete.
    /// Returns the number of rows claimed.
    async fn round(&mut self, pool: &PgPool) -> Result<usize, AuditError> {
        let mut tx = pool.begin().await.map_err(AuditError::Queue)?;
        let rows = db::audit::claim(&mut tx, self.to, self.config.batch_size as i64)
            .await
            .map_err(AuditError::Queue)?;
        if rows.is_empty() {
            tx.commit().await.map_err(AuditError::Queue)?;
            return Ok(0);
        }
        let mut first_error = None;
        if let Some(path) = self.config.file.clone() {
            let pending: Vec<&AuditRow> = rows
                .iter()
                .filter(|r| r.file_written_at.is_none())
                .collect();
            let lines: String = pending.iter().map(|r| syslog(r).to_line()).collect();
            let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
            match transport::append(&path, lines).await {
                Ok(()) => db::audit::mark_written(&mut tx, &ids).await,
                Err(e) => {
                    let failed = db::audit::mark_failed(&mut tx, &ids, &e.to_string()).await;
                    first_error = Some(e);
                    failed
                }
            }
            .map_err(AuditError::Queue)?;
        }
        if let Some(collector) = &self.collector {
            let pending: Vec<&AuditRow> =
                rows.iter().filter(|r| r.syslog_sent_at.is_none()).collect();
            let messages: Vec<Vec<u8>> = pending.iter().map(|r| syslog(r).to_bytes()).collect();
            let delivery = self.connection.send(collector, &messages).await;
            let (done, rest) = pending.split_at(delivery.delivered.min(pending.len()));
            let done: Vec<i64> = done.iter().map(|r| r.id).collect();
            db::audit::mark_sent(&mut tx, &done)
                .await
                .map_err(AuditError::Queue)?;
            if let Some(e) = delivery.error {
                let rest: Vec<i64> = rest.iter().map(|r| r.id).collect();
                db::audit::mark_failed(&mut tx, &rest, &e.to_string())
                    .await
                    .map_err(AuditError::Queue)?;
                first_error.get_or_insert(e);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let deleted = db::audit::delete_delivered(&mut tx, &ids, self.to)
            .await
            .map_err(AuditError::Queue)?;
        tx.commit().await.map_err(AuditError::Queue)?;
        tracing::debug!(claimed = rows.len(), delivered = deleted, "audit round");
        match first_error {
            Some(e) => Err(e),
            None => Ok(rows.len()),
        }
    }
}

fn syslog(row: &AuditRow) -> SyslogMessage<'_> {
    SyslogMessage {
        severity: u8::try_from(row.severity).unwrap_or(4),
        time: row.created_at,
        hostname: &row.hostname,
        procid: &row.procid,
        xml: &row.message,
    }
}
