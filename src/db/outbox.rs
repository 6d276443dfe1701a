//! The `outbox` and `outbox_attempts` tables: one row per outgoing object (SR today) and
//! destination, and every delivery attempt. The sender loop in `send::outbox` claims rows here
//! with `FOR UPDATE SKIP LOCKED` and a lease; the worker inserts them in the transaction that
//! records the report; admins requeue them.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::config::Destination;

/// The PostgreSQL channel notified when rows become due, so that senders wake at once.
pub const CHANNEL: &str = "cxr_outbox";

/// An archived outgoing object to queue for delivery.
#[derive(Debug, Clone, Copy)]
pub struct NewOutput<'a> {
    /// What the object is (`outbox.kind`): `sr`.
    pub kind: &'a str,
    pub study_instance_uid: &'a str,
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    /// The archived Part 10 file the sender reads.
    pub archive_path: &'a str,
}

/// One outbox row, as admins and tests see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub study_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
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

const COLUMNS: &str = "id, kind, study_instance_uid, sop_class_uid, sop_instance_uid, \
    destination_name, destination_ae_title, destination_host, destination_port, archive_path, \
    state, attempts, next_attempt_at, lease_owner, lease_expires_at, last_attempt_at, \
    last_status, last_error, transfer_syntax_uid, sent_at, requeued_count";

/// Queue `output` for `destination` (idempotent per object and destination: a second insert is
/// a no-op). Returns the number of rows inserted (0 or 1). Call [`notify`] in the same
/// transaction when something was inserted.
pub async fn insert(
    conn: &mut PgConnection,
    output: &NewOutput<'_>,
    destination: &Destination,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO outbox (kind, study_instance_uid, sop_class_uid, sop_instance_uid, \
         destination_name, destination_ae_title, destination_host, destination_port, archive_path) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (sop_instance_uid, destination_name) DO NOTHING",
    )
    .bind(output.kind)
    .bind(output.study_instance_uid)
    .bind(output.sop_class_uid)
    .bind(output.sop_instance_uid)
    .bind(&destination.name)
    .bind(destination.ae_title.as_str())
    .bind(&destination.host)
    .bind(i32::from(destination.port))
    .bind(output.archive_path)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Wake the senders (delivered when the surrounding transaction commits).
pub async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Put a study's `failed` rows back in the queue, due now, with their attempt count reset (the
/// `outbox_attempts` history stays), and wake the senders. Returns the number of rows requeued.
pub async fn requeue_failed(pool: &PgPool, study_uid: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = now(), \
         requeued_count = requeued_count + 1, updated_at = now() \
         WHERE study_instance_uid = $1 AND state = 'failed'",
    )
    .bind(study_uid)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n > 0 {
        notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The state of an object's row for a destination, locked for the caller's transaction.
pub async fn lock_state(
    conn: &mut PgConnection,
    sop_instance_uid: &str,
    destination_name: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT state FROM outbox WHERE sop_instance_uid = $1 AND destination_name = $2 \
         FOR UPDATE",
    )
    .bind(sop_instance_uid)
    .bind(destination_name)
    .fetch_optional(&mut *conn)
    .await
}

/// Put one row back in the queue, due now, with the destination's current address (an admin's
/// resend): attempts reset, `requeued_count` counted.
pub async fn requeue(
    conn: &mut PgConnection,
    sop_instance_uid: &str,
    destination: &Destination,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = now(), \
         requeued_count = requeued_count + 1, destination_ae_title = $3, \
         destination_host = $4, destination_port = $5, updated_at = now() \
         WHERE sop_instance_uid = $1 AND destination_name = $2",
    )
    .bind(sop_instance_uid)
    .bind(&destination.name)
    .bind(destination.ae_title.as_str())
    .bind(&destination.host)
    .bind(i32::from(destination.port))
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// A study's outbox rows, oldest first.
pub async fn rows_for_study(pool: &PgPool, study_uid: &str) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as::<_, OutboxRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM outbox WHERE study_instance_uid = $1 ORDER BY id"
    )))
    .bind(study_uid)
    .fetch_all(pool)
    .await
}

/// Claim up to `limit` due rows for `owner` (queued and due, or `sending` with an expired lease),
/// leased for `lease_secs` and counted as an attempt. Rows locked by another sender are skipped.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease_secs: f64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let returning = COLUMNS
        .split(", ")
        .map(|c| format!("o.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
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
         RETURNING {returning}"
    )))
    .bind(limit as i64)
    .bind(owner)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// How one delivery attempt ended, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord<'a> {
    /// `sent`, `retry` or `failed` (`outbox_attempts.outcome`).
    pub outcome: &'static str,
    /// The DIMSE status of the peer's response, if it answered.
    pub status: Option<u16>,
    /// Why it did not deliver, or the peer's comment.
    pub error: Option<String>,
    /// The transfer syntax the object went out in, when sent.
    pub transfer_syntax_uid: Option<String>,
    /// For a retry: after how many seconds.
    pub retry_after_secs: Option<f64>,
    /// The destination as configured now (its address is written back to the row).
    pub destination: Option<&'a Destination>,
    pub started_at: DateTime<Utc>,
}

/// Record an attempt on a row claimed by `owner`: the row's new state and the attempt log, in
/// one transaction. Returns false when the lease was lost before (another sender took the row:
/// its record wins; the attempt is logged all the same).
pub async fn record_attempt(
    pool: &PgPool,
    owner: &str,
    row: &OutboxRow,
    a: &AttemptRecord<'_>,
) -> Result<bool, sqlx::Error> {
    let state = match a.outcome {
        "sent" => "sent",
        "retry" => "queued",
        _ => "failed",
    };
    let dest = a.destination;
    let status = a.status.map(i32::from);
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
    .bind(status)
    .bind(&a.error)
    .bind(&a.transfer_syntax_uid)
    .bind(a.retry_after_secs)
    .bind(dest.map(|d| d.ae_title.as_str()))
    .bind(dest.map(|d| d.host.as_str()))
    .bind(dest.map(|d| i32::from(d.port)))
    .execute(&mut *tx)
    .await?
    .rows_affected();
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
    .bind(a.started_at)
    .bind(a.outcome)
    .bind(status)
    .bind(&a.error)
    .bind(&a.transfer_syntax_uid)
    .bind(a.retry_after_secs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(updated > 0)
}
