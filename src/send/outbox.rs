//! Send stage, durable side (… → report → **send**): the SR archive, the PostgreSQL outbox
//! (one row per SR and destination) and the sender loop that delivers due rows by C-STORE.
//!
//! The caller writes the SR with [`archive_sr`], then records the report and calls [`enqueue`]
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

use crate::config::{Config, Destination, ReportConfig};
use crate::report::BuiltReport;
use crate::send::scu::{self, Delivered, ScuOptions, SendError};

/// The PostgreSQL channel [`enqueue`] notifies so that senders wake at once.
pub const CHANNEL: &str = "cxr_outbox";

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
    /// Writing the SR into the archive failed.
    #[error("cannot archive the SR at {path}: {message}")]
    Archive {
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
        let exp = attempts.saturating_sub(1).min(30);
        let nominal = self.base.saturating_mul(1u32 << exp).min(self.max);
        nominal
            .mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
            .min(self.max)
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
        }
    }

    /// How long a claimed row stays ours: longer than any one send can take.
    pub fn lease(&self) -> Duration {
        self.scu.worst_case() + Duration::from_secs(30)
    }
}

/// Where [`archive_sr`] puts an SR: `DIR/STUDY_UID/SR_SOP_INSTANCE_UID.dcm`.
pub fn archive_path(dir: &Path, study_uid: &str, sop_instance_uid: &str) -> PathBuf {
    dir.join(study_uid).join(format!("{sop_instance_uid}.dcm"))
}

/// Write the SR as a Part 10 file into the archive, durably (temporary file, fsync, rename,
/// directory fsync), and return its path. Writing the same SR again replaces it atomically.
/// Blocking: call it from `spawn_blocking` on an async runtime.
pub fn archive_sr(dir: &Path, report: &BuiltReport) -> Result<PathBuf, OutboxError> {
    let study_uid = report
        .file
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default();
    check_uid("Study Instance UID", &study_uid)?;
    check_uid("SOP Instance UID", &report.sop_instance_uid)?;
    let path = archive_path(dir, &study_uid, &report.sop_instance_uid);
    let err = |path: &Path, e: &dyn std::fmt::Display| OutboxError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let study_dir = dir.join(&study_uid);
    let new_dir = !study_dir.exists();
    std::fs::create_dir_all(&study_dir).map_err(|e| err(&study_dir, &e))?;
    if new_dir {
        sync_dir(dir).map_err(|e| err(dir, &e))?;
    }
    let tmp = study_dir.join(format!(
        ".{}.{}.tmp",
        report.sop_instance_uid,
        uuid::Uuid::new_v4().simple()
    ));
    let write = || -> Result<(), OutboxError> {
        let mut bytes = Vec::with_capacity(64 * 1024);
        report
            .file
            .write_all(&mut bytes)
            .map_err(|e| err(&path, &e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, &e))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(|e| err(&tmp, &e))?;
        f.sync_all().map_err(|e| err(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, &e))?;
        sync_dir(&study_dir).map_err(|e| err(&study_dir, &e))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

fn check_uid(what: &'static str, uid: &str) -> Result<(), OutboxError> {
    if crate::dicom::uid::is_received_uid(uid) {
        Ok(())
    } else {
        Err(OutboxError::InvalidUid {
            what,
            uid: uid.to_string(),
        })
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Queue one archived SR for every destination, inside the caller's transaction (pass
/// `&mut *tx`). Idempotent per (SR, destination). Senders are notified when it commits.
/// Returns the number of rows inserted.
pub async fn enqueue(
    conn: &mut PgConnection,
    study_uid: &str,
    sr_sop_instance_uid: &str,
    archive_path: &Path,
    destinations: &[Destination],
) -> Result<u64, OutboxError> {
    let mut inserted = 0;
    for d in destinations {
        inserted += sqlx::query(
            "INSERT INTO outbox (study_instance_uid, sr_sop_instance_uid, destination_name, \
             destination_ae_title, destination_host, destination_port, archive_path) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (sr_sop_instance_uid, destination_name) DO NOTHING",
        )
        .bind(study_uid)
        .bind(sr_sop_instance_uid)
        .bind(&d.name)
        .bind(d.ae_title.as_str())
        .bind(&d.host)
        .bind(i32::from(d.port))
        .bind(archive_path.to_string_lossy().as_ref())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    if inserted > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(inserted)
}

/// Put a study's `failed` rows back in the queue, due now, with their attempt count reset
/// (the `outbox_attempts` history stays). Returns the number of rows requeued.
pub async fn requeue(pool: &PgPool, study_uid: &str) -> Result<u64, OutboxError> {
    let n = sqlx::query(
        "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = now(), \
         requeued_count = requeued_count + 1, updated_at = now() \
         WHERE study_instance_uid = $1 AND state = 'failed'",
    )
    .bind(study_uid)
    .execute(pool)
    .await?
    .rows_affected();
    if n > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(pool)
            .await?;
    }
    Ok(n)
}

/// One outbox row, as admins and tests see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub study_instance_uid: String,
    pub sr_sop_instance_uid: String,
    pub destination_name: String,
    pub destination_ae_title: String,
    pub destination_host: String,
    pub destination_port: i32,
    pub archive_path: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub transfer_syntax_uid: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub requeued_count: i32,
}

const COLUMNS: &str = "id, study_instance_uid, sr_sop_instance_uid, destination_name, \
    destination_ae_title, destination_host, destination_port, archive_path, state, attempts, \
    next_attempt_at, lease_owner, lease_expires_at, last_attempt_at, last_status, last_error, \
    transfer_syntax_uid, sent_at, requeued_count";

/// A study's outbox rows, oldest first.
pub async fn rows_for_study(pool: &PgPool, study_uid: &str) -> Result<Vec<OutboxRow>, OutboxError> {
    Ok(sqlx::query_as::<_, OutboxRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM outbox WHERE study_instance_uid = $1 ORDER BY id"
    )))
    .bind(study_uid)
    .fetch_all(pool)
    .await?)
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
    let mut db_backoff = live.borrow().poll_interval;
    while !shutdown.is_cancelled() {
        let settings = live.borrow().clone();
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        match claim(&pool, &owner, &settings).await {
            Ok(rows) if !rows.is_empty() => {
                db_backoff = settings.poll_interval;
                join_all(
                    rows.into_iter()
                        .map(|r| deliver(&pool, &owner, &settings, metrics.as_deref(), r)),
                )
                .await;
                continue;
            }
            Ok(_) => db_backoff = settings.poll_interval,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot claim rows");
                db_backoff = (db_backoff * 2).min(Duration::from_secs(30));
            }
        }
        let wait = db_backoff;
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
    sqlx::query_as::<_, OutboxRow>(sqlx::AssertSqlSafe(format!(
        "WITH due AS ( \
            SELECT id FROM outbox \
            WHERE (state = 'queued' AND next_attempt_at <= now()) \
               OR (state = 'sending' AND lease_expires_at <= now()) \
            ORDER BY next_attempt_at, id \
            LIMIT $1 \
            FOR UPDATE SKIP LOCKED) \
         UPDATE outbox o SET state = 'sending', lease_owner = $2, \
            lease_expires_at = now() + make_interval(secs => $3), \
            attempts = o.attempts + 1, last_attempt_at = now(), updated_at = now() \
         FROM due WHERE o.id = due.id \
         RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("o.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    )))
    .bind(settings.max_concurrent_sends as i64)
    .bind(owner)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
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
    if let Some(m) = metrics {
        m.attempt(&row.destination_name, outcome.name());
    }
    if let Err(e) = record(pool, owner, &row, dest, started, &outcome).await {
        // the lease expires and another attempt follows
        tracing::warn!(outbox_id = row.id, error = %e, "outbox: cannot record the attempt");
    }
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
    let (id, dest, sr, attempt) = (
        row.id,
        row.destination_name.as_str(),
        row.sr_sop_instance_uid.as_str(),
        row.attempts,
    );
    match outcome {
        Outcome::Sent(d) => tracing::info!(
            outbox_id = id,
            destination = dest,
            sr_sop_instance_uid = sr,
            attempt,
            status = format!("{:#06X}", d.status),
            "SR delivered"
        ),
        Outcome::Retry { error, after, .. } => tracing::warn!(
            outbox_id = id, destination = dest, sr_sop_instance_uid = sr, attempt, error = %error,
            retry_in_ms = after.as_millis() as u64, "SR not delivered; will retry"
        ),
        Outcome::Failed { error, .. } => tracing::error!(
            outbox_id = id, destination = dest, sr_sop_instance_uid = sr, attempt, error = %error,
            "SR not delivered; marked failed"
        ),
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
    let (state, status, error, ts, retry_secs) = match outcome {
        Outcome::Sent(d) => (
            "sent",
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
            "queued",
            *status,
            Some(error.clone()),
            None,
            Some(after.as_secs_f64()),
        ),
        Outcome::Failed { error, status } => ("failed", *status, Some(error.clone()), None, None),
    };
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE outbox SET state = $3, lease_owner = NULL, lease_expires_at = NULL, \
         last_status = $4, last_error = $5, \
         transfer_syntax_uid = COALESCE($6, transfer_syntax_uid), \
         sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END, \
         next_attempt_at = CASE WHEN $7::float8 IS NULL THEN next_attempt_at \
                                ELSE now() + make_interval(secs => $7::float8) END, \
         destination_ae_title = COALESCE($8, destination_ae_title), \
         destination_host = COALESCE($9, destination_host), \
         destination_port = COALESCE($10, destination_port), \
         updated_at = now() \
         WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
    )
    .bind(row.id)
    .bind(owner)
    .bind(state)
    .bind(status.map(i32::from))
    .bind(&error)
    .bind(&ts)
    .bind(retry_secs)
    .bind(dest.map(|d| d.ae_title.as_str()))
    .bind(dest.map(|d| d.host.as_str()))
    .bind(dest.map(|d| i32::from(d.port)))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        // our lease expired and another sender took the row: its record wins
        tracing::warn!(
            outbox_id = row.id,
            "outbox: lease lost before the attempt was recorded"
        );
    }
    sqlx::query(
        "INSERT INTO outbox_attempts (outbox_id, attempt, lease_owner, started_at, outcome, \
         status, error, transfer_syntax_uid, retry_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 CASE WHEN $9::float8 IS NULL THEN NULL \
                      ELSE now() + make_interval(secs => $9::float8) END)",
    )
    .bind(row.id)
    .bind(row.attempts)
    .bind(owner)
    .bind(started)
    .bind(outcome.name())
    .bind(status.map(i32::from))
    .bind(&error)
    .bind(&ts)
    .bind(retry_secs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
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
