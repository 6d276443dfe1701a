//! Studies, series and instances: recording what was received, exactly once per SOP Instance UID.

use sqlx::{Postgres, Transaction};

use crate::dicom::header::InstanceHeader;

/// Where and how an instance arrived.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub transfer_syntax_uid: &'a str,
    pub calling_ae_title: &'a str,
    pub called_ae_title: &'a str,
    pub peer_address: String,
    pub spool_key: &'a str,
    pub size_bytes: i64,
}

/// Whether the instance was new or a repeat of one already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// Already stored: the first copy is kept.
    Duplicate,
    /// Already recorded, but its file was removed by retention: stored again and analysed again
    /// (see [`restore`]).
    Restored,
}

/// Insert the study and series if new, then the instance; a SOP Instance UID already present is
/// counted as a duplicate and its first copy kept. Runs inside the caller's transaction, which
/// the caller commits only after the spool has published the file.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    h: &InstanceHeader,
    a: &Arrival<'_>,
) -> Result<Recorded, sqlx::Error> {
    sqlx::query(
        "INSERT INTO studies (study_instance_uid, patient_id, patient_name, issuer_of_patient_id,
             patient_birth_date, patient_sex, accession_number, study_id, study_date, study_time,
             study_description, referring_physician_name, specific_character_set)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (study_instance_uid) DO NOTHING",
    )
    .bind(h.study_instance_uid.as_str())
    .bind(&h.patient_id)
    .bind(&h.patient_name)
    .bind(&h.issuer_of_patient_id)
    .bind(&h.patient_birth_date)
    .bind(&h.patient_sex)
    .bind(&h.accession_number)
    .bind(&h.study_id)
    .bind(h.study_date)
    .bind(&h.study_time)
    .bind(&h.study_description)
    .bind(&h.referring_physician_name)
    .bind(&h.specific_character_set)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO series (series_instance_uid, study_instance_uid, modality, body_part_examined,
             series_number, series_description)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (series_instance_uid) DO NOTHING",
    )
    .bind(h.series_instance_uid.as_str())
    .bind(h.study_instance_uid.as_str())
    .bind(&h.modality)
    .bind(&h.body_part_examined)
    .bind(h.series_number)
    .bind(&h.series_description)
    .execute(&mut **tx)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid,
             sop_class_uid, transfer_syntax_uid, instance_number, modality, body_part_examined,
             view_position, calling_ae_title, called_ae_title, peer_address, spool_key, size_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (sop_instance_uid) DO NOTHING",
    )
    .bind(h.sop_instance_uid.as_str())
    .bind(h.series_instance_uid.as_str())
    .bind(h.study_instance_uid.as_str())
    .bind(&h.sop_class_uid)
    .bind(a.transfer_syntax_uid)
    .bind(h.instance_number)
    .bind(&h.modality)
    .bind(&h.body_part_examined)
    .bind(&h.view_position)
    .bind(a.calling_ae_title)
    .bind(a.called_ae_title)
    .bind(&a.peer_address)
    .bind(a.spool_key)
    .bind(a.size_bytes)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Recorded::New);
    }
    sqlx::query(
        "UPDATE instances SET duplicate_count = duplicate_count + 1, last_duplicate_at = now()
         WHERE sop_instance_uid = $1",
    )
    .bind(h.sop_instance_uid.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(Recorded::Duplicate)
}

/// A re-sent instance whose file is gone (retention removed it): record the new copy as a fresh
/// arrival, so that the file is kept again and the study analysed again (a revised report).
/// Runs inside the caller's transaction, after [`record`] found the row.
pub async fn restore(
    tx: &mut Transaction<'_, Postgres>,
    h: &InstanceHeader,
    a: &Arrival<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET transfer_syntax_uid = $2, calling_ae_title = $3,
             called_ae_title = $4, peer_address = $5, spool_key = $6, size_bytes = $7,
             received_at = now(), purged_at = NULL, state = 'received', state_reason = NULL,
             state_changed_at = now()
         WHERE sop_instance_uid = $1",
    )
    .bind(h.sop_instance_uid.as_str())
    .bind(a.transfer_syntax_uid)
    .bind(a.calling_ae_title)
    .bind(a.called_ae_title)
    .bind(&a.peer_address)
    .bind(a.spool_key)
    .bind(a.size_bytes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How many instances of a study were received.
pub async fn count_for_study(pool: &sqlx::PgPool, study: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM instances WHERE study_instance_uid = $1")
        .bind(study)
        .fetch_one(pool)
        .await
}

/// Up to `limit` spooled instances whose files retention may remove, locked for the caller's
/// transaction: `(sop_instance_uid, spool_key, size_bytes)`, oldest first. An instance
/// qualifies once its study's latest report covers it (analysed or skipped before the report),
/// no job of the study is open, that report reached every destination, and its last delivery is
/// older than `keep`. `SKIP LOCKED`: several daemons on one database share the work, and a row
/// being analysed (locked by a worker's update) waits for the next pass.
///
/// `received_at <= now() - keep` follows from the rest (an instance is received before it is
/// analysed, before its report, before that report's delivery) and lets the scan start from
/// `instances_spooled_idx` (migration 0009): only files still in the spool and old enough, not
/// the year of purged rows before them or the last `keep` of undelivered ones.
pub async fn purge_candidates(
    tx: &mut Transaction<'_, Postgres>,
    keep: std::time::Duration,
    limit: i64,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.sop_instance_uid, i.spool_key, i.size_bytes
         FROM instances i
         JOIN LATERAL (SELECT r.sr_sop_instance_uid, r.created_at FROM reports r
                       WHERE r.study_instance_uid = i.study_instance_uid
                       ORDER BY r.id DESC LIMIT 1) r ON true
         WHERE i.purged_at IS NULL
           AND i.received_at <= now() - make_interval(secs => $1)
           AND i.state IN ('analysed', 'skipped')
           AND i.state_changed_at <= r.created_at
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_instance_uid = i.study_instance_uid
                           AND j.state IN ('queued', 'running'))
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = r.sr_sop_instance_uid
                           AND o.state <> 'sent')
           AND (SELECT max(o.sent_at) FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid)
               <= now() - make_interval(secs => $1)
         ORDER BY i.received_at
         LIMIT $2
         FOR UPDATE OF i SKIP LOCKED",
    )
    .bind(keep.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Record that these instances' files are gone.
pub async fn mark_purged(
    tx: &mut Transaction<'_, Postgres>,
    sop_instance_uids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE instances SET purged_at = now() WHERE sop_instance_uid = ANY($1)")
        .bind(sop_instance_uids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
