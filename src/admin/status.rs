//! `cxr-worker status`: the job queue (by state, the oldest waiting job, the running ones and
//! who holds them), instances received in the last 24 hours by state, the latest failures with
//! their reasons (the `failures` view), and the outbox per destination.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::output::{Table, human_age};
use super::{AdminError, Format};
use crate::config::Destination;
use crate::db;

/// The whole picture, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    /// Jobs by state (queued, running, done, failed), zeros included.
    pub jobs: BTreeMap<String, i64>,
    /// The job waiting longest for a worker, if any (`db::jobs::WaitingJob`).
    pub oldest_queued: Option<QueuedJob>,
    /// Jobs a worker holds now.
    pub running: Vec<RunningJob>,
    /// Instances received in the last 24 hours, by their state now.
    pub instances_last_24h: BTreeMap<String, i64>,
    /// The latest failures and skips, newest first.
    pub failures: Vec<Failure>,
    /// The outbox per destination: configured ones first, then names only the database knows.
    pub destinations: Vec<DestinationStatus>,
}

pub use crate::db::jobs::{RunningJob, WaitingJob as QueuedJob};
pub use crate::db::stats::{DestinationStatus, Failure};

/// Gather the status; `failures` bounds the failure list.
pub async fn gather(
    pool: &PgPool,
    destinations: &[Destination],
    failures: u32,
) -> Result<Status, AdminError> {
    let jobs = db::jobs::count_by_state(pool).await?.into_iter().collect();
    let oldest_queued = db::jobs::oldest_waiting(pool).await?;
    let running = db::jobs::running(pool).await?;
    let instances_last_24h = db::stats::instances_last_24h(pool)
        .await?
        .into_iter()
        .collect();
    let failures = db::stats::latest_failures(pool, failures).await?;
    let destinations = outbox_by_destination(pool, destinations).await?;
    Ok(Status {
        generated_at: Utc::now(),
        jobs,
        oldest_queued,
        running,
        instances_last_24h,
        failures,
        destinations,
    })
}

async fn outbox_by_destination(
    pool: &PgPool,
    configured: &[Destination],
) -> Result<Vec<DestinationStatus>, AdminError> {
    let names: Vec<String> = configured.iter().map(|d| d.name.clone()).collect();
    let mut rows = db::stats::outbox_by_destination(pool, &names).await?;
    // configured destinations first, in configuration order; those without rows show zeros
    let mut out = Vec::with_capacity(rows.len() + configured.len());
    for d in configured {
        match rows.iter().position(|r| r.name == d.name) {
            Some(i) => out.push(rows.swap_remove(i)),
            None => out.push(DestinationStatus {
                name: d.name.clone(),
                address: format!("{}@{}:{}", d.ae_title.as_str(), d.host, d.port),
                configured: true,
                queued: 0,
                sending: 0,
                sent: 0,
                failed: 0,
                last_error: None,
                last_error_at: None,
                next_attempt_at: None,
                last_sent_at: None,
            }),
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(rows);
    Ok(out)
}

fn time(t: &Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
}

fn counts(m: &BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write the status as a table or as one JSON document.
pub fn write(status: &Status, format: Format, out: &mut dyn Write) -> Result<(), AdminError> {
    match format {
        Format::Json | Format::Csv => {
            serde_json::to_writer_pretty(&mut *out, status)?;
            writeln!(out)?;
        }
        Format::Table => write_table(status, out)?,
    }
    Ok(())
}

fn write_table(s: &Status, out: &mut dyn Write) -> Result<(), AdminError> {
    writeln!(out, "QUEUE")?;
    writeln!(out, "  jobs: {}", counts(&s.jobs))?;
    match &s.oldest_queued {
        Some(j) => writeln!(
            out,
            "  oldest queued: job {} ({}) for study {}, waiting {}, {} attempt(s){}",
            j.id,
            j.kind,
            j.study_instance_uid,
            human_age(j.age_secs),
            j.attempts,
            j.last_error
                .as_deref()
                .map_or(String::new(), |e| format!(", last error: {e}"))
        )?,
        None => writeln!(out, "  oldest queued: none")?,
    }
    if s.running.is_empty() {
        writeln!(out, "  running: none")?;
    } else {
        let mut t = Table::new(&[
            "JOB",
            "KIND",
            "STUDY INSTANCE UID",
            "WORKER",
            "FOR",
            "LEASE UNTIL",
        ]);
        for j in &s.running {
            t.push(vec![
                j.id.to_string(),
                j.kind.clone(),
                j.study_instance_uid.clone(),
                j.lease_owner.clone().unwrap_or_default(),
                human_age(j.running_secs),
                time(&j.lease_expires_at),
            ]);
        }
        writeln!(out, "  running:")?;
        t.write_indented(out, "  ")?;
    }
    writeln!(out)?;
    writeln!(out, "INSTANCES (received in the last 24 h, by state now)")?;
    writeln!(out, "  {}", counts(&s.instances_last_24h))?;
    writeln!(out)?;
    writeln!(out, "FAILURES (latest {}, newest first)", s.failures.len())?;
    if s.failures.is_empty() {
        writeln!(out, "  none")?;
    } else {
        let mut t = Table::new(&["AT", "WHAT", "STATE", "STUDY INSTANCE UID", "ID", "REASON"]);
        for f in &s.failures {
            t.push(vec![
                time(&Some(f.at)),
                f.what.clone(),
                f.state.clone(),
                f.study_instance_uid.clone(),
                f.id.clone(),
                f.reason.clone().unwrap_or_default(),
            ]);
        }
        t.write_indented(out, "  ")?;
    }
    writeln!(out)?;
    writeln!(out, "OUTBOX (per destination)")?;
    if s.destinations.is_empty() {
        writeln!(out, "  no destinations configured, nothing sent")?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "DESTINATION",
        "ADDRESS",
        "QUEUED",
        "SENDING",
        "SENT",
        "FAILED",
        "NEXT ATTEMPT",
        "LAST SENT",
        "LAST ERROR",
    ]);
    for d in &s.destinations {
        let name = if d.configured {
            d.name.clone()
        } else {
            format!("{} (not configured)", d.name)
        };
        let error = match (&d.last_error, &d.last_error_at) {
            (Some(e), at) => format!("{} {e}", time(at)),
            _ => "-".into(),
        };
        t.push(vec![
            name,
            d.address.clone(),
            d.queued.to_string(),
            d.sending.to_string(),
            d.sent.to_string(),
            d.failed.to_string(),
            time(&d.next_attempt_at),
            time(&d.last_sent_at),
            error,
        ]);
    }
    t.write_indented(out, "  ")?;
    Ok(())
}
