//! Retention (… → report → send → **retention**): removes spooled instance files once their
//! study's report was delivered and `[spool] retention_days` have passed since.
//!
//! An instance's file is removed only when all of these hold:
//! - it was analysed or skipped (`instances.state`) before its study's latest report was made;
//! - that report has at least one outbox row and every one of them is `sent`, the last one at
//!   least the retention time ago (no destination configured: nothing is ever removed);
//! - no job of its study is queued or running (e.g. a `reprocess`).
//!
//! The row stays and gets `purged_at` (migration 0004), so admins see that the file is gone.
//! Archived SRs are kept: they are small and `resend` needs them. The file is removed before the
//! row is marked, so a crash in between leaves a row that the next pass marks (a missing file
//! counts as removed).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ingest::spool::{SpoolKey, Storage};
use crate::ops::metrics::Metrics;

/// Instances handled per transaction.
const BATCH: i64 = 200;

/// When to remove and how often to look (from `[spool]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Keep files this long after delivery; `None`: forever.
    pub keep: Option<Duration>,
    /// How often to look for files to remove.
    pub interval: Duration,
}

/// A retention pass that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("spool key {key:?} of a purge candidate is invalid: {message}")]
    Key { key: String, message: String },
    #[error("the spool storage has no local files to remove")]
    NoLocalPath,
    #[error("retention task failed: {0}")]
    Task(String),
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub instances: u64,
    pub bytes: u64,
    /// Files that could not be removed (logged; tried again next pass).
    pub failed: u64,
}

/// Run passes until `shutdown`: one at start, then every `interval`, and at once when the
/// settings change (SIGHUP).
pub async fn run(
    pool: PgPool,
    storage: Arc<dyn Storage>,
    mut live: watch::Receiver<RetentionSettings>,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    let mut settings_open = true;
    loop {
        let settings = *live.borrow_and_update();
        if let Some(keep) = settings.keep {
            match purge(&pool, &storage, keep).await {
                Ok(p) => {
                    if let Some(m) = &metrics {
                        m.count_purged(p.instances, p.bytes);
                    }
                    if p.instances > 0 || p.failed > 0 {
                        tracing::info!(
                            instances = p.instances,
                            bytes = p.bytes,
                            failed = p.failed,
                            "retention: removed delivered instances from the spool"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
            changed = live.changed(), if settings_open => settings_open = changed.is_ok(),
        }
    }
}

/// One pass: remove the files of every instance eligible since `keep` and mark their rows.
pub async fn purge(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    keep: Duration,
) -> Result<Purged, RetentionError> {
    let mut total = Purged::default();
    loop {
        let batch = purge_batch(pool, storage, keep).await?;
        total.instances += batch.instances;
        total.bytes += batch.bytes;
        total.failed += batch.failed;
        if batch.instances == 0 || batch.instances + batch.failed < BATCH as u64 {
            return Ok(total);
        }
    }
}

async fn purge_batch(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    keep: Duration,
) -> Result<Purged, RetentionError> {
    let mut tx = pool.begin().await?;
    // SKIP LOCKED: several daemons on one database share the work; a row being analysed (locked
    // by a worker's update) waits for the next pass
    let candidates: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT i.sop_instance_uid, i.spool_key, i.size_bytes
         FROM instances i
         JOIN LATERAL (SELECT r.sr_sop_instance_uid, r.created_at FROM reports r
                       WHERE r.study_instance_uid = i.study_instance_uid
                       ORDER BY r.id DESC LIMIT 1) r ON true
         WHERE i.purged_at IS NULL
           AND i.state IN ('analysed', 'skipped')
           AND i.state_changed_at <= r.created_at
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_instance_uid = i.study_instance_uid
                           AND j.state IN ('queued', 'running'))
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sr_sop_instance_uid = r.sr_sop_instance_uid
                           AND o.state <> 'sent')
           AND (SELECT max(o.sent_at) FROM outbox o
                WHERE o.sr_sop_instance_uid = r.sr_sop_instance_uid)
               <= now() - make_interval(secs => $1)
         ORDER BY i.received_at
         LIMIT $2
         FOR UPDATE OF i SKIP LOCKED",
    )
    .bind(keep.as_secs_f64())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if candidates.is_empty() {
        return Ok(Purged::default());
    }
    let mut paths = Vec::with_capacity(candidates.len());
    for (_, key, _) in &candidates {
        let parsed = SpoolKey::parse(key).map_err(|e| RetentionError::Key {
            key: key.clone(),
            message: e.to_string(),
        })?;
        paths.push(
            storage
                .local_path(&parsed)
                .ok_or(RetentionError::NoLocalPath)?,
        );
    }
    let results = tokio::task::spawn_blocking(move || remove_all(paths))
        .await
        .map_err(|e| RetentionError::Task(e.to_string()))?;
    let mut removed: Vec<String> = Vec::with_capacity(candidates.len());
    let mut out = Purged::default();
    for ((sop, key, size), result) in candidates.into_iter().zip(results) {
        match result {
            Ok(()) => {
                removed.push(sop);
                out.instances += 1;
                out.bytes += size.max(0) as u64;
            }
            Err(e) => {
                out.failed += 1;
                tracing::warn!(sop_instance_uid = %sop, spool_key = %key, error = %e, "retention: cannot remove the file");
            }
        }
    }
    sqlx::query("UPDATE instances SET purged_at = now() WHERE sop_instance_uid = ANY($1)")
        .bind(&removed)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(out)
}

/// Remove each file; one already gone counts as removed.
fn remove_all(paths: Vec<PathBuf>) -> Vec<io::Result<()>> {
    paths
        .into_iter()
        .map(|p| match std::fs::remove_file(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .collect()
}
