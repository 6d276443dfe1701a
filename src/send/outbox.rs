//! Send stage, durable side (… → report → **send**): the archive of outgoing objects, the
//! PostgreSQL outbox (one row per object and destination; its SQL is in `db::outbox`) and the
//! sender loop that delivers due rows by C-STORE. Every outgoing object is a
//! [`report::Output`](crate::report::Output) of some kind (the SR today): nothing here depends on
//! which.
//!
//! The caller writes the object with [`archive`], then records the report and calls [`enqueue`]
//! in one transaction. [`run`] claims due rows with `FOR UPDATE SKIP LOCKED` and a lease (so
//! several senders, in one process or many, never send a row concurrently, and a crashed
//! sender's rows come back when its lease expires), sends each with [`send::store_file`], and
//! records the attempt: `sent`, `queued` again after an exponential backoff, or `failed`. A
//! `failed` row stays visible until an admin calls [`requeue`]. Delivery is at least once: a
//! crash between the peer's response and the commit sends the same SR (same SOP Instance UID)
//! again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{self, AuditEvent, Auditor};
use crate::backoff::{Backoff, Failures};
use crate::config::{Config, Destination, ReportConfig};
use crate::db;
use crate::dicom::uid::Uid;
use crate::ingest::spool::{self, SpoolKey};
use crate::report::Output;
use crate::send::scu::{self, Delivered, ScuOptions, SendError};

pub use crate::db::outbox::{CHANNEL, OutboxRow};

/// An outbox or archive operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A UID that cannot be a path component.
    #[error("{what} {uid:?} is not a valid DICOM UID")]
    InvalidUid {
        /// Which UID.
        what: &'static str,
        /// The value.
        uid: String,
    },
    /// Writing an object into the archive failed.
    #[error("cannot archive the {kind} at {path}: {message}")]
    Archive {
        /// The object's kind (`sr`).
        kind: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A query failed.
    #[error("outbox query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Retry policy: exponential backoff with jitter, and an optional cap on attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// After this many attempts a retryable failure marks the row failed; 0: never.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The delay after attempt number `attempts` (1-based) failed: `base · 2^(attempts-1)`,
    /// capped at `max`, times `0.75 + 0.5 · jitter` (`jitter` in [0, 1]), capped at `max` again.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        Backoff::new(self.base, self.max).jittered(attempts, jitter)
    }

    /// Whether a retryable failure at attempt `attempts` is the last one allowed.
    pub fn gives_up_after(&self, attempts: u32) -> bool {
        self.max_attempts > 0 && attempts >= self.max_attempts
    }
}

/// What the sender loop needs.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The configured destinations, by name; a row whose destination is gone fails.
    pub destinations: Vec<Destination>,
    /// Network settings of the C-STORE SCU.
    pub scu: ScuOptions,
    /// Backoff and give-up policy.
    pub retry: RetryPolicy,
    /// Longest idle wait between two looks for due rows.
    pub poll_interval: Duration,
    /// Rows claimed and sent at once by one loop.
    pub max_concurrent_sends: usize,
    /// The audit trail, when enabled: every delivered object is recorded.
    pub auditor: Option<Auditor>,
}

impl OutboxSettings {
    /// From the `[[destinations]]` and `[report]` sections.
    pub fn from_config(config: &Config) -> Self {
        Self::new(config.destinations.clone(), &config.report)
    }

    /// From destinations and a `[report]` section.
    pub fn new(destinations: Vec<Destination>, report: &ReportConfig) -> Self {
        Self {
            destinations,
            scu: ScuOptions {
                connect_timeout: report.connect_timeout,
                dimse_timeout: report.dimse_timeout,
                ..ScuOptions::default()
            },
            retry: RetryPolicy {
                base: report.retry_base,
                max: report.retry_max,
                max_attempts: report.max_attempts,
            },
            poll_interval: report.poll_interval,
            max_concurrent_sends: report.max_concurrent_sends,
            auditor: None,
        }
    }

    /// How long a claimed row stays ours: longer than any one send can take.
    pub fn lease(&self) -> Duration {
        self.scu.worst_case() + Duration::from_secs(30)
    }
}

/// Where [`archive`] puts an object: `DIR/STUDY_UID/SOP_INSTANCE_UID.dcm`.
pub fn archive_path(dir: &Path, study_uid: &str, sop_instance_uid: &str) -> PathBuf {
    dir.join(study_uid).join(format!("{sop_instance_uid}.dcm"))
}

/// Write an outgoing object as a Part 10 file into the archive with the spool's durable write
/// (temporary file, fsync, rename, directory fsync), and return its path. Writing the same object
/// again replaces it atomically. Blocking: call it from `spawn_blocking` on an async runtime.
pub fn archive(dir: &Path, output: &dyn Output) -> Result<PathBuf, OutboxError> {
    let study = received_uid("Study Instance UID", output.study_instance_uid())?;
    let sop = received_uid("SOP Instance UID", output.sop_instance_uid())?;
    let key = SpoolKey::for_uids(&study, &sop);
    let path = dir.join(key.as_str());
    let err = |e: &dyn std::fmt::Display| OutboxError::Archive {
        kind: output.kind().as_str(),
        path: path.clone(),
        message: e.to_string(),
    };
    let mut bytes = Vec::with_capacity(64 * 1024);
    output.file().write_all(&mut bytes).map_err(|e| err(&e))?;
    spool::write_durably(dir, &key, &bytes).map_err(|e| err(&e))
}

/// A UID that names an archive path, parsed once (as received: the study's UID is the
/// sender's); unpadded, as the report carries it.
fn received_uid(what: &'static str, uid: &str) -> Result<Uid, OutboxError> {
    let invalid = || OutboxError::InvalidUid {
        what,
        uid: uid.to_string(),
    };
    match Uid::received(uid) {
        Ok(parsed) if parsed.as_str() == uid => Ok(parsed),
        _ => Err(invalid()),
    }
}

/// Queue one archived object for every destination that takes its kind (`outputs`), inside the
/// caller's transaction (pass `&mut *tx`). Idempotent per (object, destination). Senders are
/// notified when it commits. Returns the number of rows inserted.
pub async fn enqueue(
    conn: &mut PgConnection,
    output: &dyn Output,
    archive_path: &Path,
    destinations: &[Destination],
) -> Result<u64, OutboxError> {
    let path = archive_path.to_string_lossy();
    let new = db::outbox::NewOutput {
        kind: output.kind().as_str(),
        study_instance_uid: output.study_instance_uid(),
        sop_class_uid: output.sop_class_uid(),
        sop_instance_uid: output.sop_instance_uid(),
        archive_path: &path,
    };
    let mut inserted = 0;
    for d in destinations.iter().filter(|d| d.outputs.takes(new.kind)) {
        inserted += db::outbox::insert(conn, &new, d).await?;
    }
    if inserted > 0 {
        db::outbox::notify(conn).await?;
    }
    Ok(inserted)
}

/// Put a study's `failed` rows back in the queue, due now, with their attempt count reset
/// (the `outbox_attempts` history stays). Returns the number of rows requeued.
pub async fn requeue(pool: &PgPool, study_uid: &str) -> Result<u64, OutboxError> {
    Ok(db::outbox::requeue_failed(pool, study_uid).await?)
}

/// A study's outbox rows, oldest first.
pub async fn rows_for_study(pool: &PgPool, study_uid: &str) -> Result<Vec<OutboxRow>, OutboxError> {
    Ok(db::outbox::rows_for_study(pool, study_uid).await?)
}

/// Deliver due rows until `shutdown`. Sends in progress finish (each is bounded by the SCU
/// timeouts) before it returns. Database outages are logged and waited out.
pub async fn run(pool: PgPool, settings: Arc<OutboxSettings>, shutdown: CancellationToken) {
    let (_fixed, settings) = watch::channel(settings);
    run_live(pool, settings, None, shutdown).await;
}

/// Where the sender reports each attempt, `outcome` being `sent`, `retry` or `failed` (the
/// metrics endpoint implements it).
pub trait SendObserver: Send + Sync {
    fn attempt(&self, destination: &str, outcome: &str);
}

/// [`run`] with settings that may change while it runs (SIGHUP: destinations): each batch of
/// claimed rows is sent with the value current when it was claimed. Every attempt is counted in
/// `metrics` when given.
pub async fn run_live(
    pool: PgPool,
    live: watch::Receiver<Arc<OutboxSettings>>,
    metrics: Option<Arc<dyn SendObserver>>,
    shutdown: CancellationToken,
) {
    let owner = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
    tracing::info!(
        lease_owner = %owner,
        destinations = live.borrow().destinations.len(),
        "outbox sender started"
    );
    let mut listener: Option<PgListener> = None;
    let mut db_failures = Failures::default();
    while !shutdown.is_cancelled() {
        let settings = live.borrow().clone();
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        let wait = match claim(&pool, &owner, &settings).await {
            Ok(rows) if !rows.is_empty() => {
                db_failures.reset();
                join_all(rows.into_iter().map(|r| {
                    // one span per delivery: its events carry the row, object and destination
                    let span = tracing::info_span!(
                        "delivery",
                        outbox_id = r.id,
                        destination = %r.destination_name,
                        kind = %r.kind,
                        sop_instance_uid = %r.sop_instance_uid,
                    );
                    deliver(&pool, &owner, &settings, metrics.as_deref(), r).instrument(span)
                }))
                .await;
                continue;
            }
            Ok(_) => {
                db_failures.reset();
                settings.poll_interval
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot claim rows");
                // twice the poll interval, doubling up to 30 s
                let db_down = Backoff::new(settings.poll_interval * 2, Duration::from_secs(30));
                db_failures.failed(&db_down)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            notified = recv(&mut listener) => {
                if !notified {
                    listener = None;
                }
            }
        }
    }
    tracing::info!(lease_owner = %owner, "outbox sender stopped");
}

/// A listener on [`CHANNEL`], or `None` while the database cannot be reached (polling goes on).
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let connect = async {
        let mut l = PgListener::connect_with(pool).await.ok()?;
        l.listen(CHANNEL).await.ok()?;
        Some(l)
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()
        .flatten()
}

/// Wait for a notification; false when the listener broke (then wait forever: the sleep
/// arm of the select wakes the loop).
async fn recv(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn claim(
    pool: &PgPool,
    owner: &str,
    settings: &OutboxSettings,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let lease_secs = settings.lease().as_secs_f64();
    db::outbox::claim(pool, owner, settings.max_concurrent_sends, lease_secs).await
}

impl Outcome {
    /// As recorded in `outbox_attempts.outcome` and counted in `cxr_sr_sends_total`.
    fn name(&self) -> &'static str {
        match self {
            Self::Sent(_) => "sent",
            Self::Retry { .. } => "retry",
            Self::Failed { .. } => "failed",
        }
    }
}

/// How one attempt ended, as recorded.
enum Outcome {
    Sent(Delivered),
    Retry {
        error: String,
        status: Option<u16>,
        after: Duration,
    },
    Failed {
        error: String,
        status: Option<u16>,
    },
}

async fn deliver(
    pool: &PgPool,
    owner: &str,
    settings: &OutboxSettings,
    metrics: Option<&dyn SendObserver>,
    row: OutboxRow,
) {
    let started = Utc::now();
    let dest = settings
        .destinations
        .iter()
        .find(|d| d.name == row.destination_name);
    let outcome = match dest {
        None => Outcome::Failed {
            error: format!(
                "destination {:?} is no longer configured",
                row.destination_name
            ),
            status: None,
        },
        Some(dest) => {
            let result = tokio::time::timeout(
                settings.scu.worst_case(),
                scu::store_file(dest, Path::new(&row.archive_path), &settings.scu),
            )
            .await
            .unwrap_or(Err(SendError::Timeout("sending")));
            classify(result, row.attempts.max(1) as u32, &settings.retry)
        }
    };
    log_outcome(&row, &outcome);
    if let (Outcome::Sent(_), Some(auditor), Some(dest)) = (&outcome, &settings.auditor, dest) {
        audit_sent(auditor, &row, dest).await;
    }
    if let Some(m) = metrics {
        m.attempt(&row.destination_name, outcome.name());
    }
    if let Err(e) = record(pool, owner, &row, dest, started, &outcome).await {
        // the lease expires and another attempt follows
        tracing::warn!(error = %e, "outbox: cannot record the attempt");
    }
}

/// Record "DICOM instances transferred" (sent) for a delivered object.
async fn audit_sent(auditor: &Auditor, row: &OutboxRow, dest: &Destination) {
    let Some((patient, study)) =
        audit::one_object_of_study(auditor.pool(), &row.study_instance_uid, &row.sop_class_uid)
            .await
    else {
        return;
    };
    let destination = audit::node_at(dest.ae_title.as_str(), &dest.host);
    let app = auditor.application(Some(dest.calling_ae_title.as_str()));
    auditor
        .record(&AuditEvent::sr_sent(app, destination, patient, study))
        .await;
}

fn classify(result: Result<Delivered, SendError>, attempts: u32, retry: &RetryPolicy) -> Outcome {
    match result {
        Ok(d) => Outcome::Sent(d),
        Err(e) if e.is_retryable() && !retry.gives_up_after(attempts) => Outcome::Retry {
            status: e.status(),
            error: e.to_string(),
            after: retry.delay(attempts, jitter()),
        },
        Err(e) => Outcome::Failed {
            status: e.status(),
            error: if e.is_retryable() {
                format!("{e} (gave up after {attempts} attempts)")
            } else {
                format!("{e} (not retryable)")
            },
        },
    }
}

/// A uniform number in [0, 1) from the OS-seeded UUID generator (no extra dependency).
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

fn log_outcome(row: &OutboxRow, outcome: &Outcome) {
    let attempt = row.attempts;
    match outcome {
        Outcome::Sent(d) => {
            tracing::info!(attempt, status = format!("{:#06X}", d.status), "delivered")
        }
        Outcome::Retry { error, after, .. } => tracing::warn!(
            attempt, error = %error, retry_in_ms = after.as_millis() as u64,
            "not delivered; will retry"
        ),
        Outcome::Failed { error, .. } => {
            tracing::error!(attempt, error = %error, "not delivered; marked failed")
        }
    }
}

async fn record(
    pool: &PgPool,
    owner: &str,
    row: &OutboxRow,
    dest: Option<&Destination>,
    started: DateTime<Utc>,
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    let (status, error, transfer_syntax_uid, retry_after_secs) = match outcome {
        Outcome::Sent(d) => (
            Some(d.status),
            d.comment.clone(),
            Some(d.transfer_syntax_uid.clone()),
            None,
        ),
        Outcome::Retry {
            error,
            status,
            after,
        } => (
            *status,
            Some(error.clone()),
            None,
            Some(after.as_secs_f64()),
        ),
        Outcome::Failed { error, status } => (*status, Some(error.clone()), None, None),
    };
    let record = db::outbox::AttemptRecord {
        outcome: outcome.name(),
        status,
        error,
        transfer_syntax_uid,
        retry_after_secs,
        destination: dest,
        started_at: started,
    };
    if !db::outbox::record_attempt(pool, owner, row, &record).await? {
        // our lease expired and another sender took the row: its record wins
        tracing::warn!("outbox: lease lost before the attempt was recorded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let p = RetryPolicy {
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
            max_attempts: 0,
        };
        assert_eq!(p.delay(1, 0.5), Duration::from_secs(5));
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(10));
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(20));
        assert_eq!(p.delay(5, 0.5), Duration::from_secs(60));
        assert_eq!(p.delay(500, 0.5), Duration::from_secs(60));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(3750));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(6250));
        assert_eq!(p.delay(9, 1.0), Duration::from_secs(60));
        assert!(!p.gives_up_after(1_000_000));
        let capped = RetryPolicy {
            max_attempts: 3,
            ..p
        };
        assert!(!capped.gives_up_after(2));
        assert!(capped.gives_up_after(3));
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let v: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|x| *x < 0.5) && v.iter().any(|x| *x >= 0.5));
    }

    #[test]
    fn archive_path_layout() {
        assert_eq!(
            archive_path(Path::new("/a"), "1.2", "1.2.3"),
            PathBuf::from("/a/1.2/1.2.3.dcm")
        );
    }
}
