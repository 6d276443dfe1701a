//! The counts and ages operators watch, read in one place for the metrics endpoint and
//! `cxr-worker status`: jobs, instances, the outbox, the spool's footprint, failures.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::every_state;
use super::jobs;

/// What the database says on one metrics scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Jobs by state (`queued`, `running`, `done`, `failed`), every state present.
    pub jobs: Vec<(String, i64)>,
    /// Queued jobs (due or waiting for a retry).
    pub queue_depth: i64,
    /// How long the job waiting longest for a worker has waited, in seconds (0 when none): see
    /// [`jobs::WaitingJob`].
    pub queue_oldest_age_secs: f64,
    /// Instances received and not yet analysed (waiting for the quiet period or a worker).
    pub instances_unprocessed: i64,
    /// Outbox rows by state (`queued`, `sending`, `sent`, `failed`), every state present.
    pub outbox: Vec<(String, i64)>,
    /// Age of the oldest delivery not yet done (queued or sending), in seconds.
    pub outbox_oldest_age_secs: f64,
    /// Instances whose file is in the spool (not removed by retention), and their bytes.
    pub spool_instances: i64,
    pub spool_bytes: i64,
    /// Audit messages waiting for their collector or file, and the age of the oldest, in seconds.
    pub audit_queued: i64,
    pub audit_oldest_age_secs: f64,
}

const OUTBOX_STATES: [&str; 4] = ["queued", "sending", "sent", "failed"];

/// Read a [`Snapshot`].
pub async fn snapshot(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let jobs = jobs::count_by_state(pool).await?;
    let queue_depth = jobs
        .iter()
        .find(|(s, _)| s == "queued")
        .map_or(0, |(_, n)| *n);
    let queue_oldest_age_secs = jobs::oldest_waiting(pool)
        .await?
        .map_or(0.0, |j| j.age_secs.max(0.0));
    let instances_unprocessed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instances WHERE state IN ('received', 'analysing')",
    )
    .fetch_one(pool)
    .await?;
    // counts from the triggers' tallies (migration 0009), not by counting the tables
    let outbox: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, sum(n)::int8 FROM tallies WHERE counter = 'outbox' GROUP BY state",
    )
    .fetch_all(pool)
    .await?;
    // OR, not IN: each arm matches the predicate of a partial index (outbox_due_idx,
    // outbox_lease_idx), so only the undelivered rows are read
    let outbox_oldest_age_secs: f64 = sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM outbox WHERE state = 'queued' OR state = 'sending'",
    )
    .fetch_one(pool)
    .await?;
    let (spool_instances, spool_bytes): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(n), 0)::int8, COALESCE(sum(bytes), 0)::int8
         FROM tallies WHERE counter = 'spool'",
    )
    .fetch_one(pool)
    .await?;
    let (audit_queued, audit_oldest_age_secs): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM audit_queue",
    )
    .fetch_one(pool)
    .await?;
    Ok(Snapshot {
        jobs,
        queue_depth,
        queue_oldest_age_secs,
        instances_unprocessed,
        outbox: every_state(outbox, &OUTBOX_STATES),
        outbox_oldest_age_secs,
        spool_instances,
        spool_bytes,
        audit_queued,
        audit_oldest_age_secs,
    })
}

/// Fold the counters' deltas (`tallies`: one row per change, written by the triggers of
/// migration 0009) into one row per counter, state and destination, so that reading a count sums
/// a handful of rows. Safe beside writers and other folds: rows inserted meanwhile are not seen
/// by the DELETE and stay, and a row another fold deleted first is skipped. Returns the rows
/// folded.
pub async fn fold_tallies(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "WITH gone AS (DELETE FROM tallies RETURNING counter, state, destination, n, bytes)
         INSERT INTO tallies (counter, state, destination, n, bytes)
         SELECT counter, state, destination, sum(n), sum(bytes) FROM gone
         GROUP BY counter, state, destination",
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Instances received in the last 24 hours by their state now, every state present.
pub async fn instances_last_24h(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM instances WHERE received_at >= now() - interval '24 hours'
         GROUP BY state",
    )
    .fetch_all(pool)
    .await?;
    Ok(every_state(
        rows,
        &["received", "analysing", "analysed", "skipped", "failed"],
    ))
}

/// One row of the `failures` view.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Failure {
    /// instance | job.
    pub what: String,
    pub study_instance_uid: String,
    /// SOP Instance UID or job id.
    pub id: String,
    pub state: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// The latest `limit` failures and skips, newest first: the rows of the `failures` view, read
/// arm by arm (the newest `limit` of each through its partial index, migration 0009, then the
/// newest `limit` of those) instead of sorting the year's failures and skips.
pub async fn latest_failures(pool: &PgPool, limit: u32) -> Result<Vec<Failure>, sqlx::Error> {
    sqlx::query_as(
        "SELECT what, study_instance_uid, id, state, reason, at FROM (
             (SELECT 'instance' AS what, i.study_instance_uid, i.sop_instance_uid AS id, i.state,
                     i.state_reason AS reason, i.state_changed_at AS at
              FROM instances i WHERE i.state IN ('failed', 'skipped')
              ORDER BY i.state_changed_at DESC LIMIT $1)
             UNION ALL
             (SELECT 'job', j.study_instance_uid, j.id::text, j.state, j.last_error, j.updated_at
              FROM jobs j WHERE j.state = 'failed' OR (j.state = 'queued' AND j.attempts > 0)
              ORDER BY j.updated_at DESC LIMIT $1)) f
         ORDER BY at DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
}

/// The outbox towards one destination.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct DestinationStatus {
    pub name: String,
    /// AE title, host and port as last recorded (or as configured, without rows).
    pub address: String,
    /// In this configuration's `[[destinations]]`; false: only old rows name it.
    pub configured: bool,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    /// The most recent error, and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The next due attempt of a queued row.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

/// The outbox per destination named in its rows; `configured` names those of the current
/// configuration. The counts come from the tallies and the rest from one row each through the
/// indexes of migration 0009, instead of grouping every outbox row of the year.
pub async fn outbox_by_destination(
    pool: &PgPool,
    configured: &[String],
) -> Result<Vec<DestinationStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.name, a.address, d.name = ANY($1) AS configured,
                d.queued, d.sending, d.sent, d.failed,
                e.last_error, e.last_error_at,
                (SELECT min(o.next_attempt_at) FROM outbox o
                 WHERE o.state = 'queued' AND o.destination_name = d.name) AS next_attempt_at,
                (SELECT max(o.sent_at) FROM outbox o WHERE o.destination_name = d.name)
                    AS last_sent_at
         FROM (SELECT destination AS name,
                      COALESCE(sum(n) FILTER (WHERE state = 'queued'), 0)::int8 AS queued,
                      COALESCE(sum(n) FILTER (WHERE state = 'sending'), 0)::int8 AS sending,
                      COALESCE(sum(n) FILTER (WHERE state = 'sent'), 0)::int8 AS sent,
                      COALESCE(sum(n) FILTER (WHERE state = 'failed'), 0)::int8 AS failed
               FROM tallies WHERE counter = 'outbox'
               GROUP BY destination HAVING sum(n) > 0) d
         CROSS JOIN LATERAL (
             SELECT o.destination_ae_title || '@' || o.destination_host || ':' ||
                    o.destination_port AS address
             FROM outbox o WHERE o.destination_name = d.name ORDER BY o.id DESC LIMIT 1) a
         LEFT JOIN LATERAL (
             SELECT a.error AS last_error, a.finished_at AS last_error_at
             FROM outbox_attempts a JOIN outbox o2 ON o2.id = a.outbox_id
             WHERE o2.destination_name = d.name AND a.error IS NOT NULL
             ORDER BY a.finished_at DESC LIMIT 1) e ON true",
    )
    .bind(configured)
    .fetch_all(pool)
    .await
}
