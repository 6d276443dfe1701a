//! `cxr-worker resend` and `cxr-worker reprocess`: the two commands that change what the daemon
//! does, only through the tables it polls.
//!
//! - resend: the study's latest SR is sent again, now, to every configured destination that takes
//!   SRs (`outputs`); the SEG and SC are not sent again by this command. A row
//!   that was `sent` or `failed` goes back to `queued` (attempts reset, due now, `requeued_count`
//!   counted; the `outbox_attempts` history stays); a destination without a row for this SR (one
//!   added to the configuration since) gets a new row; a row already `queued` or `sending` is left
//!   alone. Older SRs of the study are not sent again: the latest supersedes them. This extends
//!   `db::outbox::requeue_failed`, which requeues `failed` rows only.
//! - reprocess: a `reprocess` job; a worker analyses every instance of the study again with the
//!   models it runs now and sends a revised SR that names its predecessor.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sqlx::PgPool;

use super::{AdminError, study_exists};
use crate::config::Destination;
use crate::db;
use crate::report::OutputKind;
use crate::report::sr::SR_SOP_CLASS_UID;

/// What resend did for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResendAction {
    /// A new outbox row (no row for this SR and destination existed).
    Queued,
    /// A `sent` or `failed` row put back in the queue.
    Requeued,
    /// Already `queued` or `sending`: left alone, it goes out anyway.
    AlreadyPending,
}

/// One destination's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ResendRow {
    pub destination: String,
    /// The row's state before (None: there was none).
    pub previous_state: Option<String>,
    pub action: ResendAction,
}

/// What resend queued.
#[derive(Debug, Clone, Serialize)]
pub struct Resend {
    pub study_instance_uid: String,
    pub sr_sop_instance_uid: String,
    pub instance_number: i32,
    pub archive_path: String,
    /// Whether the archived SR is present on this machine (the sender reads it on its own).
    pub archive_present: bool,
    pub rows: Vec<ResendRow>,
}

/// Queue the study's latest SR again for every destination in `destinations` that takes SRs.
pub async fn resend(
    pool: &PgPool,
    study: &str,
    destinations: &[Destination],
) -> Result<Resend, AdminError> {
    if !study_exists(pool, study).await? {
        return Err(AdminError::UnknownStudy(study.to_string()));
    }
    // only where SRs go (`outputs` lists "sr")
    let destinations: Vec<&Destination> = destinations
        .iter()
        .filter(|d| d.outputs.takes(OutputKind::Sr.as_str()))
        .collect();
    if destinations.is_empty() {
        return Err(AdminError::NoDestinations);
    }
    let mut tx = pool.begin().await?;
    let Some(latest) = db::analysis::latest_report(&mut *tx, study).await? else {
        return Err(AdminError::NoReport(study.to_string()));
    };
    let (sr, instance_number, archive_path) = (
        latest.sr_sop_instance_uid,
        latest.instance_number,
        latest.archive_path,
    );
    let new = db::outbox::NewOutput {
        kind: OutputKind::Sr.as_str(),
        study_instance_uid: study,
        sop_class_uid: SR_SOP_CLASS_UID,
        sop_instance_uid: &sr,
        archive_path: &archive_path,
    };
    let mut rows = Vec::with_capacity(destinations.len());
    for d in destinations {
        let previous = db::outbox::lock_state(&mut tx, &sr, &d.name).await?;
        let action = match previous.as_deref() {
            None => {
                db::outbox::insert(&mut tx, &new, d).await?;
                ResendAction::Queued
            }
            Some("sent" | "failed") => {
                db::outbox::requeue(&mut tx, &sr, d).await?;
                ResendAction::Requeued
            }
            Some(_) => ResendAction::AlreadyPending,
        };
        rows.push(ResendRow {
            destination: d.name.clone(),
            previous_state: previous,
            action,
        });
    }
    if rows
        .iter()
        .any(|r| r.action != ResendAction::AlreadyPending)
    {
        db::outbox::notify(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Resend {
        study_instance_uid: study.to_string(),
        archive_present: Path::new(&archive_path).is_file(),
        sr_sop_instance_uid: sr,
        instance_number,
        archive_path,
        rows,
    })
}

impl Resend {
    /// Print what was queued, one line per destination.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "study {}: SR {} (#{}) queued to send again:",
            self.study_instance_uid, self.sr_sop_instance_uid, self.instance_number
        )?;
        for r in &self.rows {
            let what = match (r.action, r.previous_state.as_deref()) {
                (ResendAction::Queued, _) => "queued (new destination for this SR)".to_string(),
                (ResendAction::Requeued, Some(prev)) => format!("requeued (was {prev})"),
                (ResendAction::Requeued, None) => "requeued".to_string(),
                (ResendAction::AlreadyPending, prev) => {
                    format!("already {}: left as it is", prev.unwrap_or("pending"))
                }
            };
            writeln!(out, "  {}: {what}", r.destination)?;
        }
        if !self.archive_present {
            writeln!(
                out,
                "warning: the archived SR {} is not on this machine; the daemon's sender reads it from there",
                self.archive_path
            )?;
        }
        Ok(())
    }
}

/// What reprocess queued.
#[derive(Debug, Clone, Serialize)]
pub struct Reprocess {
    pub study_instance_uid: String,
    pub job_id: i64,
    /// Instances the job will analyse again.
    pub instances: i64,
    /// The SR the revised one will name as its predecessor, if any.
    pub current_report: Option<(i32, String)>,
}

/// Queue a `reprocess` job for the study.
pub async fn reprocess(pool: &PgPool, study: &str) -> Result<Reprocess, AdminError> {
    if !study_exists(pool, study).await? {
        return Err(AdminError::UnknownStudy(study.to_string()));
    }
    let job_id = open_reprocess_job(pool, study).await?;
    let instances = db::instances::count_for_study(pool, study).await?;
    let current_report = db::analysis::latest_report(pool, study)
        .await?
        .map(|r| (r.instance_number, r.sr_sop_instance_uid));
    Ok(Reprocess {
        study_instance_uid: study.to_string(),
        job_id,
        instances,
        current_report,
    })
}

impl Reprocess {
    /// Print the queued job.
    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "study {}: reprocess job {} queued ({} instance(s) to analyse again)",
            self.study_instance_uid, self.job_id, self.instances
        )?;
        match &self.current_report {
            Some((n, uid)) => writeln!(
                out,
                "the revised SR (#{}) will name SR {uid} (#{n}) as its predecessor",
                n + 1
            ),
            None => writeln!(out, "the study has no SR yet: this will be its first"),
        }
    }
}

/// Insert the reprocess job; when a job is open, say which. A job that closes between the two
/// statements makes room: try again.
async fn open_reprocess_job(pool: &PgPool, study: &str) -> Result<i64, AdminError> {
    for _ in 0..3 {
        match db::jobs::open_reprocess(pool, study).await? {
            db::jobs::Reprocess::Queued(id) => return Ok(id),
            db::jobs::Reprocess::Open { id, kind, state } => {
                return Err(AdminError::JobOpen {
                    study: study.to_string(),
                    id,
                    kind,
                    state,
                });
            }
            db::jobs::Reprocess::Raced => {}
        }
    }
    Err(AdminError::Invalid {
        option: "STUDY_UID",
        message: format!("jobs for study {study} keep opening and closing: try again"),
    })
}
