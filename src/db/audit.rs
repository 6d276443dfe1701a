//! The `audit_queue` table: rendered audit messages waiting for the syslog collector and the
//! local audit file. `audit::record` inserts; the sender in `audit::sender` claims rows with
//! `FOR UPDATE SKIP LOCKED` inside its transaction, marks what each destination took and
//! deletes the rows every configured destination has.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// A rendered audit message to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewAuditMessage<'a> {
    /// When the event happened (the message's `EventDateTime`).
    pub created_at: DateTime<Utc>,
    /// Which event, for counts (`instances_received`).
    pub event_kind: &'a str,
    /// RFC 5424 severity (0..=7).
    pub severity: i16,
    /// The syslog HOSTNAME of the recording process.
    pub hostname: &'a str,
    /// The syslog PROCID of the recording process.
    pub procid: &'a str,
    /// The XML `AuditMessage`.
    pub message: &'a str,
}

/// A queued message, as the sender and tests see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    /// Queue order.
    pub id: i64,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// Which event.
    pub event_kind: String,
    /// RFC 5424 severity.
    pub severity: i16,
    /// The syslog HOSTNAME of the recording process.
    pub hostname: String,
    /// The syslog PROCID of the recording process.
    pub procid: String,
    /// The XML `AuditMessage`.
    pub message: String,
    /// When the collector took it, if it did.
    pub syslog_sent_at: Option<DateTime<Utc>>,
    /// When the local file got it, if it did.
    pub file_written_at: Option<DateTime<Utc>>,
    /// Failed rounds that included the row.
    pub attempts: i32,
    /// Why the last failed round failed.
    pub last_error: Option<String>,
}

/// Which destinations the calling sender delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destinations {
    /// A syslog collector is configured.
    pub syslog: bool,
    /// A local file is configured.
    pub file: bool,
}

const COLUMNS: &str = "id, created_at, event_kind, severity, hostname, procid, message, \
    syslog_sent_at, file_written_at, attempts, last_error";

/// Queue one message. Returns its id.
pub async fn insert(db: impl PgExecutor<'_>, m: &NewAuditMessage<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit_queue (created_at, event_kind, severity, hostname, procid, message) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(m.created_at)
    .bind(m.event_kind)
    .bind(m.severity)
    .bind(m.hostname)
    .bind(m.procid)
    .bind(m.message)
    .fetch_one(db)
    .await
}

/// Lock and return the oldest `limit` rows that one of `to` still lacks, skipping rows another
/// sender holds. Call inside a transaction; the locks last until it ends.
pub async fn claim(
    conn: &mut PgConnection,
    to: Destinations,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_queue \
         WHERE ($1 AND syslog_sent_at IS NULL) OR ($2 AND file_written_at IS NULL) \
         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
    )))
    .bind(to.syslog)
    .bind(to.file)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Record that the collector took rows `ids`.
pub async fn mark_sent(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit_queue SET syslog_sent_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// Record that the local file has rows `ids` (written and fsynced).
pub async fn mark_written(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit_queue SET file_written_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// Count a failed round against rows `ids`, with its reason.
pub async fn mark_failed(
    conn: &mut PgConnection,
    ids: &[i64],
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_queue SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(error)
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

/// Delete those of rows `ids` that every destination in `to` has. Returns how many.
pub async fn delete_delivered(
    conn: &mut PgConnection,
    ids: &[i64],
    to: Destinations,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM audit_queue WHERE id = ANY($1) \
         AND (NOT $2 OR syslog_sent_at IS NOT NULL) AND (NOT $3 OR file_written_at IS NOT NULL)",
    )
    .bind(ids)
    .bind(to.syslog)
    .bind(to.file)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected())
}

/// Every queued row, oldest first (admins, tests).
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_queue ORDER BY id"
    )))
    .fetch_all(db)
    .await
}

/// How many messages wait for delivery (metrics, readiness).
pub async fn queued(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM audit_queue")
        .fetch_one(db)
        .await
}

/// One study of a transfer, with the patient it belongs to: what an "instances transferred"
/// audit message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferredStudy {
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    /// (SOP Class UID, instances) among `sop_instance_uids`.
    pub sop_classes: Vec<(String, i64)>,
}

/// The studies (and their patients) of the received instances `sop_instance_uids`.
pub async fn studies_of_instances<'e>(
    db: impl PgExecutor<'e>,
    sop_instance_uids: &[String],
) -> Result<Vec<TransferredStudy>, sqlx::Error> {
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.study_instance_uid, s.patient_id, s.patient_name, s.accession_number,
                    i.sop_class_uid, count(*)
             FROM instances i JOIN studies s USING (study_instance_uid)
             WHERE i.sop_instance_uid = ANY($1)
             GROUP BY 1, 2, 3, 4, 5
             ORDER BY 1, 5",
    )
    .bind(sop_instance_uids)
    .fetch_all(db)
    .await?;
    let mut out: Vec<TransferredStudy> = Vec::new();
    for (study, patient_id, patient_name, accession, sop_class, n) in rows {
        match out.last_mut() {
            Some(last) if last.study_instance_uid == study => last.sop_classes.push((sop_class, n)),
            _ => out.push(TransferredStudy {
                study_instance_uid: study,
                patient_id,
                patient_name,
                accession_number: accession,
                sop_classes: vec![(sop_class, n)],
            }),
        }
    }
    Ok(out)
}

/// The patient and accession of a study (for an SR sent or re-sent about it).
pub async fn study_patient<'e>(
    db: impl PgExecutor<'e>,
    study_instance_uid: &str,
) -> Result<Option<(Option<String>, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT patient_id, patient_name, accession_number FROM studies
         WHERE study_instance_uid = $1",
    )
    .bind(study_instance_uid)
    .fetch_optional(db)
    .await
}
