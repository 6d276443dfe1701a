//! Analyses, findings and reports: what the models found per image, and the SRs made per study.

use sqlx::{PgConnection, PgPool};

use crate::findings::{
    AnalysedImage, ImageRef, LabelResult, Measurements, ModelVersions, StageTimings,
};

/// An instance claimed by a job for analysis.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub spool_key: String,
}

impl PendingInstance {
    /// A reference to the image, for the findings and the report.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef {
            sop_class_uid: self.sop_class_uid.clone(),
            sop_instance_uid: self.sop_instance_uid.clone(),
            series_instance_uid: self.series_instance_uid.clone(),
        }
    }
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

/// Store an image's analysis and findings (replacing an earlier one on reprocess) and mark the
/// instance analysed.
pub async fn record_analysis(
    tx: &mut PgConnection,
    job_id: i64,
    study: &str,
    a: &AnalysedImage,
) -> Result<(), sqlx::Error> {
    let sop = a.image.sop_instance_uid.as_str();
    let (m, v, t) = (&a.measurements, &a.models, &a.timings);
    sqlx::query("DELETE FROM analyses WHERE sop_instance_uid = $1")
        .bind(sop)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO analyses (sop_instance_uid, study_instance_uid, job_id, segmenter_name,
             segmenter_version, classifier_name, classifier_version, trained, execution_provider,
             left_lung_mm2, right_lung_mm2, lung_area_fraction, heart_mm2, heart_area_fraction,
             cardiothoracic_ratio, decode_ms, preprocess_ms, segment_ms, classify_ms)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)",
    )
    .bind(sop)
    .bind(study)
    .bind(job_id)
    .bind(&v.segmenter_name)
    .bind(&v.segmenter_version)
    .bind(&v.classifier_name)
    .bind(&v.classifier_version)
    .bind(v.trained)
    .bind(&v.execution_provider)
    .bind(m.left_lung_mm2)
    .bind(m.right_lung_mm2)
    .bind(m.lung_area_fraction)
    .bind(m.heart_mm2)
    .bind(m.heart_area_fraction)
    .bind(a.cardiothoracic_ratio.map(f64::from))
    .bind(t.decode_ms)
    .bind(t.preprocess_ms)
    .bind(t.segment_ms)
    .bind(t.classify_ms)
    .execute(&mut *tx)
    .await?;
    for (index, l) in a.labels.iter().enumerate() {
        sqlx::query(
            "INSERT INTO findings (sop_instance_uid, study_instance_uid, label, label_index,
                 probability, threshold, present) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sop)
        .bind(study)
        .bind(&l.label)
        .bind(index as i16)
        .bind(l.probability)
        .bind(l.threshold)
        .bind(l.is_present())
        .execute(&mut *tx)
        .await?;
    }
    set_state(tx, sop, "analysed", None).await
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

#[derive(sqlx::FromRow)]
struct AnalysisRow {
    sop_instance_uid: String,
    sop_class_uid: String,
    series_instance_uid: String,
    cardiothoracic_ratio: Option<f64>,
    left_lung_mm2: Option<f64>,
    right_lung_mm2: Option<f64>,
    lung_area_fraction: Option<f64>,
    heart_mm2: Option<f64>,
    heart_area_fraction: Option<f64>,
    segmenter_name: String,
    segmenter_version: String,
    classifier_name: String,
    classifier_version: String,
    trained: bool,
    execution_provider: String,
    decode_ms: f64,
    preprocess_ms: f64,
    segment_ms: f64,
    classify_ms: f64,
}

/// Every analysed image of the study, oldest first, with its findings in the model's label order.
pub async fn analysed_images(
    pool: &PgPool,
    study: &str,
) -> Result<Vec<AnalysedImage>, sqlx::Error> {
    let rows: Vec<AnalysisRow> = sqlx::query_as(
        "SELECT a.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, a.cardiothoracic_ratio,
                a.left_lung_mm2, a.right_lung_mm2, a.lung_area_fraction, a.heart_mm2,
                a.heart_area_fraction, a.segmenter_name, a.segmenter_version, a.classifier_name,
                a.classifier_version, a.trained, a.execution_provider,
                COALESCE(a.decode_ms, 0) AS decode_ms, COALESCE(a.preprocess_ms, 0) AS preprocess_ms,
                COALESCE(a.segment_ms, 0) AS segment_ms, COALESCE(a.classify_ms, 0) AS classify_ms
         FROM analyses a JOIN instances i USING (sop_instance_uid)
         WHERE a.study_instance_uid = $1 AND i.state = 'analysed'
         ORDER BY i.received_at",
    )
    .bind(study)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let labels: Vec<(String, f32, f32)> = sqlx::query_as(
            "SELECT label, probability, threshold FROM findings
             WHERE sop_instance_uid = $1 ORDER BY label_index",
        )
        .bind(&r.sop_instance_uid)
        .fetch_all(pool)
        .await?;
        out.push(AnalysedImage {
            image: ImageRef {
                sop_class_uid: r.sop_class_uid,
                sop_instance_uid: r.sop_instance_uid,
                series_instance_uid: r.series_instance_uid,
            },
            labels: labels
                .into_iter()
                .map(|(label, probability, threshold)| LabelResult {
                    label,
                    probability,
                    threshold,
                })
                .collect(),
            cardiothoracic_ratio: r.cardiothoracic_ratio.map(|c| c as f32),
            measurements: Measurements {
                left_lung_mm2: r.left_lung_mm2,
                right_lung_mm2: r.right_lung_mm2,
                lung_area_fraction: r.lung_area_fraction,
                heart_mm2: r.heart_mm2,
                heart_area_fraction: r.heart_area_fraction,
            },
            models: ModelVersions {
                segmenter_name: r.segmenter_name,
                segmenter_version: r.segmenter_version,
                classifier_name: r.classifier_name,
                classifier_version: r.classifier_version,
                trained: r.trained,
                execution_provider: r.execution_provider,
            },
            timings: StageTimings {
                decode_ms: r.decode_ms,
                preprocess_ms: r.preprocess_ms,
                segment_ms: r.segment_ms,
                classify_ms: r.classify_ms,
            },
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
