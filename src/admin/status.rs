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

/// The whole picture, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    /// Jobs by state (queued, running, done, failed), zeros included.
    pub jobs: BTreeMap<String, i64>,
    /// The queued job waiting longest, if any.
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

/// A job waiting in the queue.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueuedJob {
    pub id: i64,
    pub study_instance_uid: String,
    pub kind: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// Seconds since it was queued.
    pub age_secs: f64,
    /// Due at (later than now while it waits for a retry).
    pub run_after: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// A job a worker holds.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunningJob {
    pub id: i64,
    pub study_instance_uid: String,
    pub kind: String,
    pub attempts: i32,
    /// host:pid:n of the worker.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Seconds since it was taken.
    pub running_secs: f64,
}

/// One row of the `failures` view.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Failure {
    /// instance | job.
    pub what: String,
    pub study_instance_uid: String,
    /// SOP Instance UID or job id.
    pub id: String,
    pub state: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// The outbox towards one destination.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DestinationStatus {
    pub name: String,
    /// AE title, host and port as last recorded (or as configured, without rows).
    pub address: String,
    /// In this configuration's `[[destinations]]`; false: only old rows name it.
    pub configured: bool,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    /// The most recent error, and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The next due attempt of a queued row.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

/// Gather the status; `failures` bounds the failure list.
pub async fn gather(
    pool: &PgPool,
    destinations: &[Destination],
    failures: u32,
) -> Result<Status, AdminError> {
    let mut jobs: BTreeMap<String, i64> = ["queued", "running", "done", "failed"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
            .fetch_all(pool)
            .await?;
    jobs.extend(by_state);
    let oldest_queued = sqlx::query_as(
        "SELECT id, study_instance_uid, kind, attempts, created_at,
                extract(epoch FROM now() - created_at)::float8 AS age_secs, run_after, last_error
         FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let running = sqlx::query_as(
        "SELECT id, study_instance_uid, kind, attempts, lease_owner, lease_expires_at,
                extract(epoch FROM now() - updated_at)::float8 AS running_secs
         FROM jobs WHERE state = 'running' ORDER BY updated_at, id",
    )
    .fetch_all(pool)
    .await?;
    let mut instances_last_24h: BTreeMap<String, i64> =
        ["received", "analysing", "analysed", "skipped", "failed"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    let inst: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM instances WHERE received_at >= now() - interval '24 hours'
         GROUP BY state",
    )
    .fetch_all(pool)
    .await?;
    instances_last_24h.extend(inst);
    let failures = sqlx::query_as(
        "SELECT what, study_instance_uid, id, state, reason, at FROM failures
         ORDER BY at DESC LIMIT $1",
    )
    .bind(i64::from(failures))
    .fetch_all(pool)
    .await?;
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
    let mut rows: Vec<DestinationStatus> = sqlx::query_as(
        "SELECT o.destination_name AS name,
                (array_agg(o.destination_ae_title || '@' || o.destination_host || ':' ||
                           o.destination_port ORDER BY o.id DESC))[1] AS address,
                o.destination_name = ANY($1) AS configured,
                count(*) FILTER (WHERE o.state = 'queued') AS queued,
                count(*) FILTER (WHERE o.state = 'sending') AS sending,
                count(*) FILTER (WHERE o.state = 'sent') AS sent,
                count(*) FILTER (WHERE o.state = 'failed') AS failed,
                e.last_error, e.last_error_at,
                min(o.next_attempt_at) FILTER (WHERE o.state = 'queued') AS next_attempt_at,
                max(o.sent_at) AS last_sent_at
         FROM outbox o
         LEFT JOIN LATERAL (
             SELECT a.error AS last_error, a.finished_at AS last_error_at
             FROM outbox_attempts a JOIN outbox o2 ON o2.id = a.outbox_id
             WHERE o2.destination_name = o.destination_name AND a.error IS NOT NULL
             ORDER BY a.finished_at DESC LIMIT 1) e ON true
         GROUP BY o.destination_name, e.last_error, e.last_error_at",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
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
