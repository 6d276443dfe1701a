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
//! Archived SRs are kept: they are small and `resend` needs them. Archived SEGs and SCs (a few
//! MB per image) are removed once every outbox row of theirs is `sent`, the last one at least the
//! retention time ago; their `image_outputs` row gets `purged_at` (migration 0008). The file is removed before the
//! row is marked, so a crash in between leaves a row that the next pass marks (a missing file
//! counts as removed).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db;
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
    #[error("retention task failed: {0}")]
    Task(String),
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub instances: u64,
    pub bytes: u64,
    /// Archived image outputs (SEG, SC) removed, and their bytes.
    pub outputs: u64,
    pub output_bytes: u64,
    /// Files that could not be removed (logged; tried again next pass).
    pub failed: u64,
}

/// Run passes until `shutdown`: one at start, then every `interval`, and at once when the
/// settings change (SIGHUP). Each pass also folds the counters' deltas, retention or not.
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
        // housekeeping that rides on this task's interval, retention or not: the counters'
        // deltas (db::stats::fold_tallies)
        if let Err(e) = db::stats::fold_tallies(&pool).await {
            tracing::warn!(error = %e, "cannot fold the counters; will retry");
        }
        if let Some(keep) = settings.keep {
            match purge(&pool, &storage, keep).await {
                Ok(p) => {
                    if let Some(m) = &metrics {
                        m.count_purged(p.instances, p.bytes);
                    }
                    if p.instances > 0 || p.outputs > 0 || p.failed > 0 {
                        tracing::info!(
                            instances = p.instances,
                            bytes = p.bytes,
                            outputs = p.outputs,
                            output_bytes = p.output_bytes,
                            failed = p.failed,
                            "retention: removed delivered instances from the spool and delivered image outputs from the archive"
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
            break;
        }
    }
    loop {
        let batch = purge_outputs_batch(pool, keep).await?;
        total.outputs += batch.outputs;
        total.output_bytes += batch.output_bytes;
        total.failed += batch.failed;
        if batch.outputs == 0 || batch.outputs + batch.failed < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Remove up to one batch of delivered image outputs from the archive and mark their rows. A
/// file already gone counts as removed.
async fn purge_outputs_batch(pool: &PgPool, keep: Duration) -> Result<Purged, RetentionError> {
    let mut tx = pool.begin().await?;
    let candidates = db::outputs::purge_candidates(&mut tx, keep, BATCH).await?;
    if candidates.is_empty() {
        return Ok(Purged::default());
    }
    let paths: Vec<std::path::PathBuf> = candidates.iter().map(|(_, p)| p.into()).collect();
    let results = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| {
                let size = std::fs::metadata(p).map_or(0, |m| m.len());
                match std::fs::remove_file(p) {
                    Ok(()) => Ok(size),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(e),
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| RetentionError::Task(e.to_string()))?;
    let mut removed = Vec::with_capacity(candidates.len());
    let mut out = Purged::default();
    for ((sop, path), result) in candidates.into_iter().zip(results) {
        match result {
            Ok(size) => {
                removed.push(sop);
                out.outputs += 1;
                out.output_bytes += size;
            }
            Err(e) => {
                out.failed += 1;
                tracing::warn!(sop_instance_uid = %sop, path = %path, error = %e, "retention: cannot remove the archived output");
            }
        }
    }
    db::outputs::mark_purged(&mut tx, &removed).await?;
    tx.commit().await?;
    Ok(out)
}

async fn purge_batch(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    keep: Duration,
) -> Result<Purged, RetentionError> {
    let mut tx = pool.begin().await?;
    let candidates = db::instances::purge_candidates(&mut tx, keep, BATCH).await?;
    if candidates.is_empty() {
        return Ok(Purged::default());
    }
    let mut keys = Vec::with_capacity(candidates.len());
    for (_, key, _) in &candidates {
        keys.push(SpoolKey::parse(key).map_err(|e| RetentionError::Key {
            key: key.clone(),
            message: e.to_string(),
        })?);
    }
    let storage = storage.clone();
    let results = tokio::task::spawn_blocking(move || {
        keys.iter().map(|k| storage.remove(k)).collect::<Vec<_>>()
    })
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
    db::instances::mark_purged(&mut tx, &removed).await?;
    tx.commit().await?;
    Ok(out)
}
