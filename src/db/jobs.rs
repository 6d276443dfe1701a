//! The job queue: one job per study ready for analysis, shared by every worker on every machine.
//! Scheduling is idempotent (at most one open job per study); dequeue takes a lease with
//! `FOR UPDATE SKIP LOCKED`; a job whose lease expired (its worker died) is taken again. Every
//! take counts as an attempt, so a job that kills its worker each time is failed once it has
//! used its attempts ([`fail_exhausted`]) instead of looping for ever.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A job taken by this worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub study_instance_uid: String,
    pub kind: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// Create a job for every study whose newest unprocessed instance arrived at least `quiet` ago.
/// Returns how many jobs were created.
pub async fn schedule_ready(pool: &PgPool, quiet: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO jobs (study_instance_uid)
         SELECT study_instance_uid FROM instances WHERE state = 'received'
         GROUP BY study_instance_uid
         HAVING max(received_at) <= now() - make_interval(secs => $1)
         ON CONFLICT (study_instance_uid) WHERE state IN ('queued', 'running') DO NOTHING",
    )
    .bind(quiet.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Queue a job for a study now (admin `reprocess`); returns false when one is already open.
pub async fn enqueue_now(pool: &PgPool, study: &str, kind: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO jobs (study_instance_uid, kind) VALUES ($1, $2)
         ON CONFLICT (study_instance_uid) WHERE state IN ('queued', 'running') DO NOTHING",
    )
    .bind(study)
    .bind(kind)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Take the next due job (or one whose lease expired) for `owner`, leased for `lease`; the take
/// counts as an attempt. Jobs that used `max_attempts` are never taken (see [`fail_exhausted`]).
pub async fn dequeue(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    max_attempts: u32,
) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE jobs SET state = 'running', lease_owner = $1,
             lease_expires_at = now() + make_interval(secs => $2),
             attempts = attempts + 1, updated_at = now()
         WHERE id = (
             SELECT id FROM jobs
             WHERE ((state = 'queued' AND run_after <= now())
                    OR (state = 'running' AND lease_expires_at < now()))
               AND attempts < $3
             ORDER BY run_after
             LIMIT 1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, study_instance_uid, kind, attempts",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(i64::from(max_attempts))
    .fetch_optional(pool)
    .await
}

/// A job failed for good by [`fail_exhausted`] or [`fail`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedJob {
    pub id: i64,
    pub study_instance_uid: String,
    pub attempts: i32,
    pub reason: String,
}

/// Fail every job that used its `max_attempts` without finishing: its lease expired (the worker
/// holding it died, was killed or stalled) or it waits for another attempt it may not have.
/// Its instances being analysed are marked failed with the reason. Returns the jobs failed.
pub async fn fail_exhausted(
    pool: &PgPool,
    max_attempts: u32,
) -> Result<Vec<FailedJob>, sqlx::Error> {
    sqlx::query_as(
        "WITH exhausted AS (
             UPDATE jobs SET state = 'failed',
                 last_error = format('taken %s times without finishing (its worker stopped each \
                     time: a crash, a kill or a lost lease)', attempts)
                     || coalesce('; last error: ' || last_error, ''),
                 finished_at = now(), updated_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE attempts >= $1
               AND ((state = 'running' AND lease_expires_at < now()) OR state = 'queued')
             RETURNING id, study_instance_uid, attempts, last_error
         ), marked AS (
             UPDATE instances i SET state = 'failed', state_reason = e.last_error,
                 state_changed_at = now()
             FROM exhausted e
             WHERE i.study_instance_uid = e.study_instance_uid AND i.state = 'analysing'
         )
         SELECT id, study_instance_uid, attempts, last_error AS reason FROM exhausted",
    )
    .bind(i64::from(max_attempts))
    .fetch_all(pool)
    .await
}

/// Extend the lease of a running job; false when this worker no longer holds it.
pub async fn extend_lease(
    pool: &PgPool,
    id: i64,
    owner: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Mark a job done.
pub async fn complete(
    tx: &mut sqlx::PgConnection,
    id: i64,
    owner: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'done', finished_at = now(), updated_at = now(),
             lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Give a job back to the queue after a transient failure, due again after `delay`.
pub async fn retry_later(
    pool: &PgPool,
    id: i64,
    owner: &str,
    delay: Duration,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'queued', run_after = now() + make_interval(secs => $3),
             last_error = $4, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Mark a job failed for good, and the instances it was analysing with it, if `owner` still
/// holds it; false (nothing changed) when another worker took it over.
pub async fn fail(pool: &PgPool, job: &Job, owner: &str, error: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let held = sqlx::query(
        "UPDATE jobs SET state = 'failed', last_error = $3, finished_at = now(), updated_at = now(),
             lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(owner)
    .bind(error)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !held {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE instances SET state = 'failed', state_reason = $2, state_changed_at = now()
         WHERE study_instance_uid = $1 AND state = 'analysing'",
    )
    .bind(&job.study_instance_uid)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// For the report of a job failed for good: true when the job is failed (it stays so), else
/// [`complete`].
pub async fn complete_unless_failed(
    tx: &mut sqlx::PgConnection,
    id: i64,
    owner: &str,
) -> Result<bool, sqlx::Error> {
    let failed: Option<bool> =
        sqlx::query_scalar("SELECT state = 'failed' FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if failed == Some(true) {
        return Ok(true);
    }
    complete(tx, id, owner).await
}

// ---- what operators see of the queue ----------------------------------------------------------

/// The job that has waited longest for a worker. This is the one meaning of "oldest job" that
/// the metric (`cxr_queue_oldest_age_seconds`), `/readyz` and `cxr-worker status` share: a queued
/// job waits from the moment it became due (`run_after`: a job backing off before its retry is
/// not waiting), a running job whose lease expired (its worker died) from that expiry.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct WaitingJob {
    pub id: i64,
    pub study_instance_uid: String,
    pub kind: String,
    /// `queued`, or `running` with an expired lease.
    pub state: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// When it became due (or its lease expired).
    pub waiting_since: DateTime<Utc>,
    /// Seconds since `waiting_since`.
    pub age_secs: f64,
    pub run_after: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// The job waiting longest for a worker, if any (see [`WaitingJob`]).
pub async fn oldest_waiting(pool: &PgPool) -> Result<Option<WaitingJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, study_instance_uid, kind, state, attempts, created_at, run_after, last_error,
                since AS waiting_since, EXTRACT(EPOCH FROM now() - since)::float8 AS age_secs
         FROM (SELECT *, CASE WHEN state = 'queued' THEN run_after ELSE lease_expires_at END
                         AS since
               FROM jobs
               WHERE (state = 'queued' AND run_after <= now())
                  OR (state = 'running' AND lease_expires_at < now())) w
         ORDER BY since, id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// Seconds since any job last changed state other than being queued (a worker took, finished,
/// retried or failed one); `None` when none ever did.
pub async fn seconds_since_progress(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM now() - max(updated_at)))::float8 FROM jobs
         WHERE state <> 'queued'",
    )
    .fetch_one(pool)
    .await
}

/// Jobs by state, every state of `jobs.state` present (zeros included), in the order
/// queued, running, done, failed. Read from the counters the triggers of migration 0009 keep
/// (`tallies`), not by counting the table.
pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, sum(n)::int8 FROM tallies WHERE counter = 'jobs' GROUP BY state",
    )
    .fetch_all(pool)
    .await?;
    Ok(super::every_state(
        rows,
        &["queued", "running", "done", "failed"],
    ))
}

/// A job a worker holds.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct RunningJob {
    pub id: i64,
    pub study_instance_uid: String,
    pub kind: String,
    pub attempts: i32,
    /// host:pid:n of the worker.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Seconds since it was taken.
    pub running_secs: f64,
}

/// The jobs workers hold now, longest-running first.
pub async fn running(pool: &PgPool) -> Result<Vec<RunningJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, study_instance_uid, kind, attempts, lease_owner, lease_expires_at,
                extract(epoch FROM now() - updated_at)::float8 AS running_secs
         FROM jobs WHERE state = 'running' ORDER BY updated_at, id",
    )
    .fetch_all(pool)
    .await
}

/// What [`open_reprocess`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reprocess {
    /// A `reprocess` job was queued: its id.
    Queued(i64),
    /// The study has an open job: its id, kind and state.
    Open {
        id: i64,
        kind: String,
        state: String,
    },
    /// The open job closed between the two statements: try again.
    Raced,
}

/// Queue a `reprocess` job for a study unless one of its jobs is open.
pub async fn open_reprocess(pool: &PgPool, study: &str) -> Result<Reprocess, sqlx::Error> {
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (study_instance_uid, kind) VALUES ($1, 'reprocess')
         ON CONFLICT (study_instance_uid) WHERE state IN ('queued', 'running') DO NOTHING
         RETURNING id",
    )
    .bind(study)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = created {
        return Ok(Reprocess::Queued(id));
    }
    let open: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT id, kind, state FROM jobs
         WHERE study_instance_uid = $1 AND state IN ('queued', 'running')",
    )
    .bind(study)
    .fetch_optional(pool)
    .await?;
    Ok(match open {
        Some((id, kind, state)) => Reprocess::Open { id, kind, state },
        None => Reprocess::Raced,
    })
}
