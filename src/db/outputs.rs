//! Image outputs (`image_outputs`): the SEG and the Secondary Capture issued for each analysed
//! image, so that a revised SR references the newest of every image and a new one continues its
//! series.

use sqlx::{PgConnection, PgPool};

/// One issued image output.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ImageOutputRow {
    /// `seg` or `sc`.
    pub kind: String,
    /// The analysed image it was made from.
    pub source_sop_instance_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: i32,
}

/// The newest output of each kind for each image of the study.
pub async fn latest(pool: &PgPool, study: &str) -> Result<Vec<ImageOutputRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (kind, source_sop_instance_uid)
                kind, source_sop_instance_uid, sop_instance_uid, series_instance_uid,
                sop_class_uid, instance_number
         FROM image_outputs WHERE study_instance_uid = $1
         ORDER BY kind, source_sop_instance_uid, id DESC",
    )
    .bind(study)
    .fetch_all(pool)
    .await
}

/// The series the study's outputs of `kind` are in, and its highest instance number.
pub async fn series(
    pool: &PgPool,
    study: &str,
    kind: &str,
) -> Result<Option<(String, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT series_instance_uid, max(instance_number) FROM image_outputs
         WHERE study_instance_uid = $1 AND kind = $2
         GROUP BY series_instance_uid ORDER BY max(id) DESC LIMIT 1",
    )
    .bind(study)
    .bind(kind)
    .fetch_optional(pool)
    .await
}

/// An image output to record.
#[derive(Debug, Clone)]
pub struct NewImageOutput<'a> {
    pub kind: &'a str,
    pub study_instance_uid: &'a str,
    pub source_sop_instance_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub series_instance_uid: &'a str,
    pub sop_class_uid: &'a str,
    pub instance_number: i32,
    pub job_id: i64,
    pub archive_path: &'a str,
}

/// Record an image output in the caller's transaction.
pub async fn insert(tx: &mut PgConnection, o: &NewImageOutput<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO image_outputs (kind, study_instance_uid, source_sop_instance_uid,
             sop_instance_uid, series_instance_uid, sop_class_uid, instance_number, job_id,
             archive_path)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(o.kind)
    .bind(o.study_instance_uid)
    .bind(o.source_sop_instance_uid)
    .bind(o.sop_instance_uid)
    .bind(o.series_instance_uid)
    .bind(o.sop_class_uid)
    .bind(o.instance_number)
    .bind(o.job_id)
    .bind(o.archive_path)
    .execute(tx)
    .await?;
    Ok(())
}

/// Up to `limit` archived image outputs that retention may remove: every outbox row of the
/// object is `sent`, the last one at least `keep` ago; locked for the caller's transaction.
/// Returns (SOP Instance UID, archive path).
///
/// The scan reads only the outputs still in the archive (`image_outputs_archived_idx`, migration
/// 0009), not every output of the year; `created_at <= now() - keep` follows from the rest (an
/// output's outbox rows are queued in the transaction that records it, and sent after) and
/// skips the recent ones without looking at their outbox rows.
pub async fn purge_candidates(
    tx: &mut PgConnection,
    keep: std::time::Duration,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT io.sop_instance_uid, io.archive_path
         FROM image_outputs io
         WHERE io.purged_at IS NULL
           AND io.created_at <= now() - make_interval(secs => $1)
           AND EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid)
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid
                           AND o.state <> 'sent')
           AND (SELECT max(o.sent_at) FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid)
               <= now() - make_interval(secs => $1)
         ORDER BY io.id
         LIMIT $2
         FOR UPDATE OF io SKIP LOCKED",
    )
    .bind(keep.as_secs_f64())
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Record that these outputs' archived files are gone.
pub async fn mark_purged(
    tx: &mut PgConnection,
    sop_instance_uids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE image_outputs SET purged_at = now() WHERE sop_instance_uid = ANY($1)")
        .bind(sop_instance_uids)
        .execute(tx)
        .await?;
    Ok(())
}
