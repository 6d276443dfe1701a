//! Analyses, findings and reports: what the models found per image, and the SRs made per study.

use sqlx::{PgConnection, PgPool};

/// An instance claimed by a job for analysis.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub spool_key: String,
}

/// Claim the study's instances not yet processed (and those a crashed attempt left half-done).
/// `reprocess` claims every instance of the study again.
pub async fn claim_instances(
    pool: &PgPool,
    study: &str,
    reprocess: bool,
) -> Result<Vec<PendingInstance>, sqlx::Error> {
    let states: &[&str] = if reprocess {
        &["received", "analysing", "analysed", "skipped", "failed"]
    } else {
        &["received", "analysing"]
    };
    sqlx::query_as(
        "UPDATE instances SET state = 'analysing', state_reason = NULL, state_changed_at = now()
         WHERE study_instance_uid = $1 AND state = ANY($2)
         RETURNING sop_instance_uid, sop_class_uid, series_instance_uid, spool_key",
    )
    .bind(study)
    .bind(states)
    .fetch_all(pool)
    .await
}

/// The study's instances marked failed (their job failed for good), for its "not analysed" SR.
pub async fn failed_instances(
    pool: &PgPool,
    study: &str,
) -> Result<Vec<PendingInstance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sop_instance_uid, sop_class_uid, series_instance_uid, spool_key FROM instances
         WHERE study_instance_uid = $1 AND state = 'failed' ORDER BY sop_instance_uid",
    )
    .bind(study)
    .fetch_all(pool)
    .await
}

/// One label's result on one image.
#[derive(Debug, Clone)]
pub struct LabelRow {
    pub label: String,
    pub probability: f32,
    pub threshold: f32,
    pub present: bool,
}

/// What the models found in one image, as stored.
#[derive(Debug, Clone, Default)]
pub struct AnalysisRow {
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub segmenter_name: String,
    pub segmenter_version: String,
    pub classifier_name: String,
    pub classifier_version: String,
    pub trained: bool,
    pub execution_provider: String,
    pub left_lung_mm2: Option<f64>,
    pub right_lung_mm2: Option<f64>,
    pub lung_area_fraction: Option<f64>,
    pub heart_mm2: Option<f64>,
    pub heart_area_fraction: Option<f64>,
    pub cardiothoracic_ratio: Option<f64>,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub segment_ms: f64,
    pub classify_ms: f64,
}

/// Store an image's analysis and findings (replacing an earlier one on reprocess) and mark the
/// instance analysed.
pub async fn record_analysis(
    tx: &mut PgConnection,
    job_id: i64,
    a: &AnalysisRow,
    labels: &[LabelRow],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM analyses WHERE sop_instance_uid = $1")
        .bind(&a.sop_instance_uid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO analyses (sop_instance_uid, study_instance_uid, job_id, segmenter_name,
             segmenter_version, classifier_name, classifier_version, trained, execution_provider,
             left_lung_mm2, right_lung_mm2, lung_area_fraction, heart_mm2, heart_area_fraction,
             cardiothoracic_ratio, decode_ms, preprocess_ms, segment_ms, classify_ms)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)",
    )
    .bind(&a.sop_instance_uid)
    .bind(&a.study_instance_uid)
    .bind(job_id)
    .bind(&a.segmenter_name)
    .bind(&a.segmenter_version)
    .bind(&a.classifier_name)
    .bind(&a.classifier_version)
    .bind(a.trained)
    .bind(&a.execution_provider)
    .bind(a.left_lung_mm2)
    .bind(a.right_lung_mm2)
    .bind(a.lung_area_fraction)
    .bind(a.heart_mm2)
    .bind(a.heart_area_fraction)
    .bind(a.cardiothoracic_ratio)
    .bind(a.decode_ms)
    .bind(a.preprocess_ms)
    .bind(a.segment_ms)
    .bind(a.classify_ms)
    .execute(&mut *tx)
    .await?;
    for (index, l) in labels.iter().enumerate() {
        sqlx::query(
            "INSERT INTO findings (sop_instance_uid, study_instance_uid, label, label_index,
                 probability, threshold, present) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&a.sop_instance_uid)
        .bind(&a.study_instance_uid)
        .bind(&l.label)
        .bind(index as i16)
        .bind(l.probability)
        .bind(l.threshold)
        .bind(l.present)
        .execute(&mut *tx)
        .await?;
    }
    set_state(tx, &a.sop_instance_uid, "analysed", None).await
}

/// Set an instance's processing state, with its reason.
pub async fn set_state(
    tx: &mut PgConnection,
    sop_instance_uid: &str,
    state: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET state = $2, state_reason = $3, state_changed_at = now()
         WHERE sop_instance_uid = $1",
    )
    .bind(sop_instance_uid)
    .bind(state)
    .bind(reason)
    .execute(tx)
    .await?;
    Ok(())
}

/// An analysed image of a study with its findings, for the report.
#[derive(Debug, Clone)]
pub struct AnalysedInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub cardiothoracic_ratio: Option<f64>,
    pub segmenter_name: String,
    pub segmenter_version: String,
    pub classifier_name: String,
    pub classifier_version: String,
    pub trained: bool,
    pub labels: Vec<LabelRow>,
}

/// Every analysed image of the study, with its findings in the model's label order.
pub async fn analysed_instances(
    pool: &PgPool,
    study: &str,
) -> Result<Vec<AnalysedInstance>, sqlx::Error> {
    type Row = (
        String,
        String,
        String,
        Option<f64>,
        String,
        String,
        String,
        String,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, a.cardiothoracic_ratio,
                a.segmenter_name, a.segmenter_version, a.classifier_name, a.classifier_version,
                a.trained
         FROM analyses a JOIN instances i USING (sop_instance_uid)
         WHERE a.study_instance_uid = $1 AND i.state = 'analysed'
         ORDER BY i.received_at",
    )
    .bind(study)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (sop, class, series, ctr, sn, sv, cn, cv, trained) in rows {
        let labels: Vec<(String, f32, f32, bool)> = sqlx::query_as(
            "SELECT label, probability, threshold, present FROM findings
             WHERE sop_instance_uid = $1 ORDER BY label_index",
        )
        .bind(&sop)
        .fetch_all(pool)
        .await?;
        out.push(AnalysedInstance {
            sop_instance_uid: sop,
            sop_class_uid: class,
            series_instance_uid: series,
            cardiothoracic_ratio: ctr,
            segmenter_name: sn,
            segmenter_version: sv,
            classifier_name: cn,
            classifier_version: cv,
            trained,
            labels: labels
                .into_iter()
                .map(|(label, probability, threshold, present)| LabelRow {
                    label,
                    probability,
                    threshold,
                    present,
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The study's latest report.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReportRow {
    pub id: i64,
    pub sr_sop_instance_uid: String,
    pub sr_series_instance_uid: String,
    pub instance_number: i32,
    pub kind: String,
    /// The SR in the archive.
    pub archive_path: String,
}

/// A study's latest report (its newest revision), if any; on a pool or inside a transaction.
pub async fn latest_report<'e>(
    db: impl sqlx::PgExecutor<'e>,
    study: &str,
) -> Result<Option<ReportRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sr_sop_instance_uid, sr_series_instance_uid, instance_number, kind,
                archive_path
         FROM reports WHERE study_instance_uid = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(study)
    .fetch_optional(db)
    .await
}

/// A report to record.
#[derive(Debug, Clone)]
pub struct NewReport<'a> {
    pub study_instance_uid: &'a str,
    pub job_id: i64,
    pub kind: &'a str,
    pub sr_sop_instance_uid: &'a str,
    pub sr_series_instance_uid: &'a str,
    pub instance_number: i32,
    pub predecessor: Option<&'a str>,
    pub analysed_images: i32,
    pub archive_path: &'a str,
    pub reason: Option<&'a str>,
}

pub async fn insert_report(tx: &mut PgConnection, r: &NewReport<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO reports (study_instance_uid, job_id, kind, sr_sop_instance_uid,
             sr_series_instance_uid, instance_number, predecessor_sop_instance_uid,
             analysed_images, archive_path, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(r.study_instance_uid)
    .bind(r.job_id)
    .bind(r.kind)
    .bind(r.sr_sop_instance_uid)
    .bind(r.sr_series_instance_uid)
    .bind(r.instance_number)
    .bind(r.predecessor)
    .bind(r.analysed_images)
    .bind(r.archive_path)
    .bind(r.reason)
    .fetch_one(tx)
    .await
}
