//! `cxr-worker findings`: one row per study and label (the maximum probability over the study's
//! analysed images, present when any image's probability reached the threshold), with what an
//! admin searches by and where the study stands (instance states, latest SR, its delivery).
//!
//! A study without findings (pending, skipped, failed) prints once, with an empty label, unless
//! a label, probability or presence filter asks for findings.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::output::{Table, csv_record};
use super::{AdminError, Format};
use crate::db;
use crate::db::studies::StudyRow;

/// Which studies `--state` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StudyState {
    /// An instance is waiting for its study to be analysed.
    Received,
    /// An instance is being analysed now.
    Analysing,
    /// An instance was analysed (the study has findings).
    Analysed,
    /// An instance was not analysed (not a chest frontal view, …): reason in `status`.
    Skipped,
    /// An instance failed analysis for good: reason in `status`.
    Failed,
    /// No SR was produced yet.
    Unreported,
    /// The latest SR says "not analysed" (no image was eligible).
    NotAnalysed,
    /// The latest SR is not yet delivered to every destination (queued, sending or failed).
    Undelivered,
    /// The latest SR failed for good at a destination (`resend` queues it again).
    SendFailed,
    /// The latest SR reached every destination.
    Delivered,
}

impl StudyState {
    /// The name used on the command line and in the query.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Analysing => "analysing",
            Self::Analysed => "analysed",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Unreported => "unreported",
            Self::NotAnalysed => "not-analysed",
            Self::Undelivered => "undelivered",
            Self::SendFailed => "send-failed",
            Self::Delivered => "delivered",
        }
    }
}

/// What `findings` selects. Every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Study date on or after (inclusive).
    pub from: Option<NaiveDate>,
    /// Study date on or before (inclusive).
    pub to: Option<NaiveDate>,
    /// Accession number, exactly.
    pub accession: Option<String>,
    /// Patient ID, exactly.
    pub patient_id: Option<String>,
    /// Only this label (canonical spelling, see [`super::canonical_label`]).
    pub label: Option<&'static str>,
    /// Only labels whose maximum probability is at least this.
    pub min_probability: Option<f32>,
    /// Only labels called present.
    pub present_only: bool,
    /// Only studies in this state.
    pub state: Option<StudyState>,
    /// At most this many studies (all their rows print); 0: no limit.
    pub limit: u32,
}

impl Filter {
    /// Whether the filter asks for findings (then studies without a matching finding drop out).
    fn wants_findings(&self) -> bool {
        self.label.is_some() || self.min_probability.is_some() || self.present_only
    }
}

/// A study date from the command line: `YYYY-MM-DD` or DICOM `YYYYMMDD`.
pub fn parse_date(option: &'static str, s: &str) -> Result<NaiveDate, AdminError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%Y%m%d"))
        .map_err(|_| AdminError::Invalid {
            option,
            message: format!("{s:?} is not a date (YYYY-MM-DD or YYYYMMDD)"),
        })
}

/// A probability from the command line, in [0, 1].
pub fn parse_probability(s: &str) -> Result<f32, AdminError> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(AdminError::Invalid {
            option: "--min-probability",
            message: format!("{s:?} is not a number between 0 and 1"),
        }),
    }
}

/// The latest SR of a study.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    /// findings | not_analysed.
    pub kind: String,
    /// 1 for the first SR, 2 for its first revision, …
    pub instance_number: i32,
    pub sr_sop_instance_uid: String,
    pub created_at: DateTime<Utc>,
}

/// One output row: a study and one label (or the study alone when it has no findings).
#[derive(Debug, Clone, Serialize)]
pub struct FindingRow {
    pub study_date: Option<NaiveDate>,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub study_instance_uid: String,
    /// `None`: the study has no findings (see `instances` and `report`).
    pub label: Option<String>,
    /// Maximum over the study's analysed images.
    pub max_probability: Option<f32>,
    /// The label's operating threshold (the highest, should models have differed).
    pub threshold: Option<f32>,
    /// Any image's probability reached the threshold.
    pub present: Option<bool>,
    /// Analysed images the label was computed on.
    pub images: Option<i64>,
    /// The study's instances by state (received, analysing, analysed, skipped, failed).
    pub instances: BTreeMap<String, i64>,
    /// The latest SR, if any.
    pub report: Option<ReportSummary>,
    /// The latest SR's outbox rows by state (queued, sending, sent, failed).
    pub delivery: BTreeMap<String, i64>,
}

impl From<StudyRow> for FindingRow {
    fn from(r: StudyRow) -> Self {
        let report = match (
            r.report_kind,
            r.report_instance_number,
            r.sr_sop_instance_uid,
            r.reported_at,
        ) {
            (Some(kind), Some(instance_number), Some(sr_sop_instance_uid), Some(created_at)) => {
                Some(ReportSummary {
                    kind,
                    instance_number,
                    sr_sop_instance_uid,
                    created_at,
                })
            }
            _ => None,
        };
        Self {
            study_date: r.study_date,
            accession_number: r.accession_number,
            patient_id: r.patient_id,
            study_instance_uid: r.study_instance_uid,
            label: r.label,
            max_probability: r.max_probability,
            threshold: r.threshold,
            present: r.present,
            images: r.images,
            instances: r.instances.map(|j| j.0).unwrap_or_default(),
            report,
            delivery: r.delivery.map(|j| j.0).unwrap_or_default(),
        }
    }
}

/// Run the query.
pub async fn query(pool: &PgPool, f: &Filter) -> Result<Vec<FindingRow>, AdminError> {
    let search = db::studies::Search {
        from: f.from,
        to: f.to,
        accession: f.accession.as_deref(),
        patient_id: f.patient_id.as_deref(),
        label: f.label,
        min_probability: f.min_probability,
        present_only: f.present_only,
        wants_findings: f.wants_findings(),
        state: f.state.map(StudyState::as_str),
        limit: f.limit,
    };
    let rows = db::studies::search(pool, &search).await?;
    Ok(rows.into_iter().map(FindingRow::from).collect())
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 15] = [
    "study_date",
    "accession_number",
    "patient_id",
    "study_instance_uid",
    "label",
    "max_probability",
    "threshold",
    "present",
    "images",
    "instances",
    "report_kind",
    "report_instance_number",
    "sr_sop_instance_uid",
    "reported_at",
    "delivery",
];

/// `state=n;state=n`, for the CSV and table cells.
fn counts(m: &BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// Write the rows in `format`: a table, one JSON object per line, or CSV with a header.
pub fn write(rows: &[FindingRow], format: Format, out: &mut dyn Write) -> Result<(), AdminError> {
    match format {
        Format::Json => {
            for r in rows {
                serde_json::to_writer(&mut *out, r)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            csv_record(out, &CSV_HEADER)?;
            for r in rows {
                let rep = r.report.as_ref();
                csv_record(
                    out,
                    &[
                        opt(&r.study_date),
                        opt(&r.accession_number),
                        opt(&r.patient_id),
                        r.study_instance_uid.clone(),
                        opt(&r.label),
                        opt(&r.max_probability),
                        opt(&r.threshold),
                        opt(&r.present),
                        opt(&r.images),
                        counts(&r.instances),
                        opt(&rep.map(|x| x.kind.clone())),
                        opt(&rep.map(|x| x.instance_number)),
                        opt(&rep.map(|x| x.sr_sop_instance_uid.clone())),
                        opt(&rep.map(|x| x.created_at.to_rfc3339())),
                        counts(&r.delivery),
                    ],
                )?;
            }
        }
        Format::Table => write_table(rows, out)?,
    }
    Ok(())
}

fn write_table(rows: &[FindingRow], out: &mut dyn Write) -> Result<(), AdminError> {
    if rows.is_empty() {
        writeln!(out, "no study matches")?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "STUDY DATE",
        "ACCESSION",
        "PATIENT ID",
        "STUDY INSTANCE UID",
        "LABEL",
        "MAX P",
        "THRESH",
        "PRESENT",
        "IMAGES",
        "INSTANCES",
        "REPORT",
        "DELIVERY",
    ]);
    for r in rows {
        let report = r.report.as_ref().map_or("-".to_string(), |x| {
            format!("{} #{}", x.kind, x.instance_number)
        });
        t.push(vec![
            opt(&r.study_date),
            opt(&r.accession_number),
            opt(&r.patient_id),
            r.study_instance_uid.clone(),
            r.label.clone().unwrap_or_else(|| "-".into()),
            r.max_probability
                .map_or(String::new(), |p| format!("{p:.4}")),
            r.threshold.map_or(String::new(), |p| format!("{p:.3}")),
            match r.present {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => String::new(),
            },
            opt(&r.images),
            counts(&r.instances),
            report,
            if r.delivery.is_empty() {
                "-".into()
            } else {
                counts(&r.delivery)
            },
        ]);
    }
    t.write(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dates_in_iso_or_dicom_form() {
        let d = NaiveDate::from_ymd_opt(2004, 8, 26).unwrap();
        assert_eq!(parse_date("--from", "2004-08-26").unwrap(), d);
        assert_eq!(parse_date("--from", "20040826").unwrap(), d);
        let e = parse_date("--to", "26.08.2004").unwrap_err().to_string();
        assert!(e.contains("--to"), "{e}");
    }

    #[test]
    fn probabilities_between_zero_and_one() {
        assert_eq!(parse_probability("0.5").unwrap(), 0.5);
        assert_eq!(parse_probability("1").unwrap(), 1.0);
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("NaN").is_err());
    }
}
