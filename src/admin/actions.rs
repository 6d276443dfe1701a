//! `cxr-worker resend` and `cxr-worker reprocess`: the two commands that change what the daemon
//! does, only through the tables it polls.
//!
//! - resend: the study's latest SR is sent again, now, to every configured destination. A row
//!   that was `sent` or `failed` goes back to `queued` (attempts reset, due now, `requeued_count`
//!   counted; the `outbox_attempts` history stays); a destination without a row for this SR (one
//!   added to the configuration since) gets a new row; a row already `queued` or `sending` is left
//!   alone. Older SRs of the study are not sent again: the latest supersedes them. This extends
//!   `outbox::requeue`, which requeues `failed` rows only.
//! - reprocess: a `reprocess` job; a worker analyses every instance of the study again with the
//!   models it runs now and sends a revised SR that names its predecessor.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sqlx::PgPool;

use super::{AdminError, study_exists};
use crate::config::Destination;
use crate::send::outbox::CHANNEL;

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

/// Queue the study's latest SR again for every destination in `destinations`.
pub async fn resend(
    pool: &PgPool,
    study: &str,
    destinations: &[Destination],
) -> Result<Resend, AdminError> {
    if !study_exists(pool, study).await? {
        return Err(AdminError::UnknownStudy(study.to_string()));
    }
    if destinations.is_empty() {
        return Err(AdminError::NoDestinations);
    }
    let mut tx = pool.begin().await?;
    let latest: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT sr_sop_instance_uid, instance_number, archive_path FROM reports
         WHERE study_instance_uid = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(study)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((sr, instance_number, archive_path)) = latest else {
        return Err(AdminError::NoReport(study.to_string()));
    };
    let mut rows = Vec::with_capacity(destinations.len());
    for d in destinations {
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT state FROM outbox WHERE sr_sop_instance_uid = $1 AND destination_name = $2
             FOR UPDATE",
        )
        .bind(&sr)
        .bind(&d.name)
        .fetch_optional(&mut *tx)
        .await?;
        let action = match previous.as_deref() {
            None => {
                sqlx::query(
                    "INSERT INTO outbox (study_instance_uid, sr_sop_instance_uid, destination_name,
                         destination_ae_title, destination_host, destination_port, archive_path)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(study)
                .bind(&sr)
                .bind(&d.name)
                .bind(d.ae_title.as_str())
                .bind(&d.host)
                .bind(i32::from(d.port))
                .bind(&archive_path)
                .execute(&mut *tx)
                .await?;
                ResendAction::Queued
            }
            Some("sent" | "failed") => {
                sqlx::query(
                    "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = now(),
                         requeued_count = requeued_count + 1, destination_ae_title = $3,
                         destination_host = $4, destination_port = $5, updated_at = now()
                     WHERE sr_sop_instance_uid = $1 AND destination_name = $2",
                )
                .bind(&sr)
                .bind(&d.name)
                .bind(d.ae_title.as_str())
                .bind(&d.host)
                .bind(i32::from(d.port))
                .execute(&mut *tx)
                .await?;
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
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
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
    let instances: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE study_instance_uid = $1")
            .bind(study)
            .fetch_one(pool)
            .await?;
    let current_report = sqlx::query_as(
        "SELECT instance_number, sr_sop_instance_uid FROM reports
         WHERE study_instance_uid = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(study)
    .fetch_optional(pool)
    .await?;
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
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO jobs (study_instance_uid, kind) VALUES ($1, 'reprocess')
             ON CONFLICT (study_instance_uid) WHERE state IN ('queued', 'running') DO NOTHING
             RETURNING id",
        )
        .bind(study)
        .fetch_optional(pool)
        .await?;
        if let Some(id) = created {
            return Ok(id);
        }
        let open: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT id, kind, state FROM jobs
             WHERE study_instance_uid = $1 AND state IN ('queued', 'running')",
        )
        .bind(study)
        .fetch_optional(pool)
        .await?;
        if let Some((id, kind, state)) = open {
            return Err(AdminError::JobOpen {
                study: study.to_string(),
                id,
                kind,
                state,
            });
        }
    }
    Err(AdminError::Invalid {
        option: "STUDY_UID",
        message: format!("jobs for study {study} keep opening and closing: try again"),
    })
}
