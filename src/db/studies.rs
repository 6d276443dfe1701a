//! Study-level reads for admins: the findings search (`cxr-worker findings`) and whether a study
//! was ever received. Over `studies`, `findings`, `instances`, `reports` and `outbox`.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use sqlx::types::Json;

/// What [`search`] selects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Search<'a> {
    /// Study date on or after (inclusive).
    pub from: Option<NaiveDate>,
    /// Study date on or before (inclusive).
    pub to: Option<NaiveDate>,
    /// Accession number, exactly.
    pub accession: Option<&'a str>,
    /// Patient ID, exactly.
    pub patient_id: Option<&'a str>,
    /// Only this label.
    pub label: Option<&'a str>,
    /// Only labels whose maximum probability is at least this.
    pub min_probability: Option<f32>,
    /// Only labels called present.
    pub present_only: bool,
    /// Studies without a matching finding drop out.
    pub wants_findings: bool,
    /// Only studies in this state (`unreported`, `not-analysed`, `undelivered`, `send-failed`,
    /// `delivered`, or an instance state).
    pub state: Option<&'a str>,
    /// At most this many studies; 0: no limit.
    pub limit: u32,
}

/// One row of [`search`]: a study and one of its labels (or the study alone), with where it
/// stands.
#[derive(Debug, sqlx::FromRow)]
pub struct StudyRow {
    pub study_date: Option<NaiveDate>,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub study_instance_uid: String,
    pub label: Option<String>,
    pub max_probability: Option<f32>,
    pub threshold: Option<f32>,
    pub present: Option<bool>,
    pub images: Option<i64>,
    pub instances: Option<Json<BTreeMap<String, i64>>>,
    pub report_kind: Option<String>,
    pub report_instance_number: Option<i32>,
    pub sr_sop_instance_uid: Option<String>,
    pub reported_at: Option<DateTime<Utc>>,
    pub delivery: Option<Json<BTreeMap<String, i64>>>,
}

/// The studies the filter selects (newest study date first, undated last), one row per label.
/// `{findings}` and `{state}` are replaced by [`findings_clause`] and [`state_clause`].
const SEARCH: &str = r#"
WITH sel AS (
    SELECT s.study_instance_uid, s.study_date, s.accession_number, s.patient_id,
           s.first_received_at, r.kind AS report_kind, r.instance_number AS report_instance_number,
           r.sr_sop_instance_uid, r.created_at AS reported_at,
           (SELECT jsonb_object_agg(state, n) FROM (
                SELECT state, count(*) AS n FROM instances i
                WHERE i.study_instance_uid = s.study_instance_uid GROUP BY state) x) AS instances,
           (SELECT jsonb_object_agg(state, n) FROM (
                SELECT state, count(*) AS n FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid GROUP BY state) y) AS delivery
    FROM studies s
    LEFT JOIN LATERAL (SELECT * FROM reports r WHERE r.study_instance_uid = s.study_instance_uid
                       ORDER BY r.id DESC LIMIT 1) r ON true
    WHERE ($1::date IS NULL OR s.study_date >= $1)
      AND ($2::date IS NULL OR s.study_date <= $2)
      AND ($3::text IS NULL OR s.accession_number = $3)
      AND ($4::text IS NULL OR s.patient_id = $4)
      {findings}
      {state}
      AND ($9::text IS NULL OR CASE $9::text
            WHEN 'unreported' THEN r.id IS NULL
            WHEN 'not-analysed' THEN r.kind = 'not_analysed'
            WHEN 'undelivered' THEN EXISTS (SELECT 1 FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid AND o.state <> 'sent')
            WHEN 'send-failed' THEN EXISTS (SELECT 1 FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid AND o.state = 'failed')
            WHEN 'delivered' THEN EXISTS (SELECT 1 FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid)
                AND NOT EXISTS (SELECT 1 FROM outbox o
                WHERE o.sop_instance_uid = r.sr_sop_instance_uid AND o.state <> 'sent')
            ELSE EXISTS (SELECT 1 FROM instances i
                WHERE i.study_instance_uid = s.study_instance_uid AND i.state = $9 OFFSET 0)
          END)
    ORDER BY s.study_date DESC NULLS LAST, s.first_received_at DESC, s.study_instance_uid
    LIMIT $10
)
SELECT sel.study_date, sel.accession_number, sel.patient_id, sel.study_instance_uid,
       sf.label, sf.max_probability, sf.threshold, sf.present, sf.images, sel.instances,
       sel.report_kind, sel.report_instance_number, sel.sr_sop_instance_uid, sel.reported_at,
       sel.delivery
FROM sel
LEFT JOIN LATERAL (
    SELECT f.label, min(f.label_index) AS label_index, max(f.probability) AS max_probability,
           max(f.threshold) AS threshold, bool_or(f.present) AS present, count(*) AS images
    FROM findings f WHERE f.study_instance_uid = sel.study_instance_uid
    GROUP BY f.label
    HAVING ($5::text IS NULL OR f.label = $5)
       AND ($6::real IS NULL OR max(f.probability) >= $6)
       AND (NOT $7 OR bool_or(f.present))) sf ON true
WHERE sf.label IS NOT NULL OR NOT $8
ORDER BY sel.study_date DESC NULLS LAST, sel.first_received_at DESC, sel.study_instance_uid,
         sf.label_index NULLS FIRST
"#;

/// With a findings filter: the study has a matching finding, tested study by study in the
/// search's newest-first order until `limit` match. `OFFSET 0` keeps it so: without it the
/// planner may instead collect every matching finding of the year first (a hash of the label's
/// studies, or a scan of all 13 M findings for a probability filter: seconds). The cost is that
/// of the studies read: a rare finding over a long period reads many (narrow it with --from).
const FINDINGS_CLAUSE: &str = "AND EXISTS (
            SELECT 1 FROM findings f WHERE f.study_instance_uid = s.study_instance_uid
              AND ($5::text IS NULL OR f.label = $5)
              AND ($6::real IS NULL OR f.probability >= $6)
              AND (NOT $7 OR f.present)
            OFFSET 0)";

fn findings_clause(s: &Search<'_>) -> &'static str {
    if s.wants_findings {
        FINDINGS_CLAUSE
    } else {
        ""
    }
}

/// For a state that few studies are in, a condition that every study in it meets (the `CASE` on
/// `$9` in [`SEARCH`] still decides), which the planner can start from instead of testing the
/// newest studies one by one until `limit` match: the studies never reported
/// (`studies_unreported`, kept by triggers: migration 0009), or those with outbox rows in the
/// state (an SR's outbox rows carry its study's UID).
fn state_clause(s: &Search<'_>) -> &'static str {
    match s.state {
        None | Some("delivered" | "not-analysed") => "",
        Some("unreported") => {
            "AND s.study_instance_uid = ANY (ARRAY(
                 SELECT u.study_instance_uid FROM studies_unreported u))"
        }
        Some("undelivered") => {
            "AND s.study_instance_uid = ANY (ARRAY(SELECT o.study_instance_uid FROM outbox o
                 WHERE o.state = 'queued' OR o.state = 'sending' OR o.state = 'failed'))"
        }
        Some("send-failed") => {
            "AND s.study_instance_uid = ANY (ARRAY(SELECT o.study_instance_uid FROM outbox o
                 WHERE o.state = 'failed'))"
        }
        // the instance states a study is rarely in (its instances failed, or are still being
        // received or analysed): start from those instances (the partial index of the states
        // other than `analysed`, migration 0001), each literal so that the planner may use it
        Some("failed") => {
            "AND s.study_instance_uid = ANY (ARRAY(SELECT i.study_instance_uid FROM instances i
                 WHERE i.state = 'failed'))"
        }
        Some("received") => {
            "AND s.study_instance_uid = ANY (ARRAY(SELECT i.study_instance_uid FROM instances i
                 WHERE i.state = 'received'))"
        }
        Some("analysing") => {
            "AND s.study_instance_uid = ANY (ARRAY(SELECT i.study_instance_uid FROM instances i
                 WHERE i.state = 'analysing'))"
        }
        // `skipped` (every non-chest or lateral-only study, a sixth of a year's studies in the
        // benchmark): the CASE's test, study by study, newest first. Its `OFFSET 0` keeps it so:
        // without it the planner hashes every skipped instance of the year first (0.4 s).
        Some(_) => "",
    }
}

/// The studies `s` selects, one row per label.
pub async fn search(pool: &PgPool, s: &Search<'_>) -> Result<Vec<StudyRow>, sqlx::Error> {
    let limit = if s.limit == 0 {
        i64::MAX
    } else {
        i64::from(s.limit)
    };
    let sql = SEARCH
        .replace("{findings}", findings_clause(s))
        .replace("{state}", state_clause(s));
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(s.from)
        .bind(s.to)
        .bind(s.accession)
        .bind(s.patient_id)
        .bind(s.label)
        .bind(s.min_probability)
        .bind(s.present_only)
        .bind(s.wants_findings)
        .bind(s.state)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Whether a study was ever received.
pub async fn exists(pool: &PgPool, study: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM studies WHERE study_instance_uid = $1)")
        .bind(study)
        .fetch_one(pool)
        .await
}
