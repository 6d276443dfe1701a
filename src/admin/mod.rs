//! Admin commands, library side: the queries behind `cxr-worker findings`, `status`, `resend`,
//! `reprocess` and `check-config`, and their table, JSON and CSV output.
//!
//! These commands print patient data (patient ID, accession number) to the admin's terminal on
//! purpose; nothing here logs through `tracing`. They read the database the daemon writes and
//! change it only through the queue and outbox tables the daemon polls (a reprocess job, an
//! outbox row due now), so they work while the daemon runs, from any machine that reaches the
//! database.

pub mod actions;
pub mod audit;
pub mod check;
pub mod findings;
pub mod output;
pub mod status;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::analyse::contract::LABELS;
use crate::config::DatabaseConfig;

/// How long an admin command waits for the database before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An admin command that could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The database URL does not parse.
    #[error("database.url is not a valid PostgreSQL URL: {0}")]
    Url(sqlx::Error),
    /// The database did not answer.
    #[error("cannot reach the database {target}: {message}")]
    Connect {
        /// host:port/database (never the password).
        target: String,
        /// Why.
        message: String,
    },
    /// The database exists but the daemon never migrated it.
    #[error(
        "the database {target} has no cxr-worker schema (no table {table}): start the daemon once, it applies the migrations"
    )]
    Schema {
        /// host:port/database.
        target: String,
        /// The first missing table.
        table: &'static str,
    },
    /// No instance of this study was ever received.
    #[error("unknown study {0}: no instance of it was received")]
    UnknownStudy(String),
    /// A label that is not one of the 14.
    #[error("unknown label {given:?}; the labels are: {}", LABELS.join(", "))]
    UnknownLabel {
        /// What was given.
        given: String,
    },
    /// An option value out of range or malformed.
    #[error("invalid {option}: {message}")]
    Invalid {
        /// The option, e.g. `--from`.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `resend` on a study without an SR.
    #[error("study {0} has no report yet: nothing to resend (see `cxr-worker status`)")]
    NoReport(String),
    /// `resend` without a `[[destinations]]` entry that takes SRs.
    #[error("no [[destinations]] entry takes SRs (outputs lists \"sr\"): nothing to resend to")]
    NoDestinations,
    /// `reprocess` while a job for the study is queued or running.
    #[error(
        "a {kind} job (id {id}) is already {state} for study {study}: its report will follow; run reprocess again once it is done"
    )]
    JobOpen {
        /// The study.
        study: String,
        /// The open job.
        id: i64,
        /// analyse | reprocess.
        kind: String,
        /// queued | running.
        state: String,
    },
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(sqlx::Error),
    /// Writing to stdout failed (a closed pipe included: see [`AdminError::is_broken_pipe`]).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// Serialising JSON failed.
    #[error("cannot serialise JSON: {0}")]
    Json(serde_json::Error),
}

// The variants carry their cause in the message, not as a `source`, so that `{:#}` at the
// binary's edge prints it once.
impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Query(e)
    }
}

impl From<std::io::Error> for AdminError {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}

impl From<serde_json::Error> for AdminError {
    fn from(e: serde_json::Error) -> Self {
        if e.is_io() {
            Self::Output(e.into())
        } else {
            Self::Json(e)
        }
    }
}

impl AdminError {
    /// The reader of the output went away (`cxr-worker findings | head`): not an error to report.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Output format of `findings` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for the terminal.
    #[default]
    Table,
    /// JSON (`findings`: one object per line; `status`: one document).
    Json,
    /// Comma-separated values with a header line (`findings` only).
    Csv,
}

/// `host:port/database` of a database URL, for messages (never the user or password).
pub fn describe_target(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// Connect to the daemon's database within `timeout` and check that it was migrated.
pub async fn connect(cfg: &DatabaseConfig, timeout: Duration) -> Result<PgPool, AdminError> {
    let options: PgConnectOptions = cfg.url.parse().map_err(AdminError::Url)?;
    let target = describe_target(&options);
    let connect = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(timeout)
        .connect_with(options.application_name("cxr-worker admin"));
    let pool = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(pool)) => pool,
        Ok(Err(e)) => {
            return Err(AdminError::Connect {
                target,
                message: e.to_string(),
            });
        }
        Err(_) => {
            return Err(AdminError::Connect {
                target,
                message: format!("no answer within {} s", timeout.as_secs()),
            });
        }
    };
    for table in [
        "studies",
        "instances",
        "jobs",
        "findings",
        "reports",
        "outbox",
    ] {
        if !crate::db::table_exists(&pool, table).await? {
            return Err(AdminError::Schema { target, table });
        }
    }
    Ok(pool)
}

/// Whether a study was ever received.
pub async fn study_exists(pool: &PgPool, study: &str) -> Result<bool, AdminError> {
    Ok(crate::db::studies::exists(pool, study).await?)
}

/// The canonical spelling of one of the 14 labels, matched case-insensitively
/// (`pleural_thickening` → `Pleural_Thickening`).
pub fn canonical_label(given: &str) -> Result<&'static str, AdminError> {
    LABELS
        .iter()
        .find(|l| l.eq_ignore_ascii_case(given.trim()))
        .copied()
        .ok_or_else(|| AdminError::UnknownLabel {
            given: given.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_match_case_insensitively_and_unknown_ones_list_all() {
        assert_eq!(canonical_label("cardiomegaly").unwrap(), "Cardiomegaly");
        assert_eq!(
            canonical_label("PLEURAL_THICKENING").unwrap(),
            "Pleural_Thickening"
        );
        let e = canonical_label("Covid").unwrap_err().to_string();
        assert!(e.contains("\"Covid\""), "{e}");
        for l in LABELS {
            assert!(e.contains(l), "{e}");
        }
    }

    #[test]
    fn target_hides_the_password() {
        let o: PgConnectOptions = "postgres://u:secret@db.example:5433/cxr".parse().unwrap();
        let t = describe_target(&o);
        assert_eq!(t, "db.example:5433/cxr");
    }
}
