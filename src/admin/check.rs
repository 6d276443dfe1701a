//! `cxr-worker check-config`: each check the daemon's start-up depends on, reported OK or FAILED
//! with the configuration key it concerns: the file itself, the ONNX Runtime library and the two
//! models (present, loadable, conforming to the contract), the TLS certificates (not expired;
//! a warning within 30 days), and the database (reachable within a short timeout, migrations
//! applied).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sqlx::Connection as _;

use super::output::printable;
use crate::analyse::infer::{Engine, EngineOptions};
use crate::config::Config;
use crate::db::MIGRATOR;

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The configuration key concerned, e.g. `models.segmenter`.
    pub key: String,
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

impl Check {
    /// A check that passed.
    pub fn ok(key: &str, detail: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A check that failed.
    pub fn failed(key: &str, detail: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// One line per TLS certificate in use (`[dicom.tls]`, destinations): its subject and the days
/// left; FAILED once expired, a warning in the detail within 30 days.
pub fn check_certificates(cfg: &Config) -> Vec<Check> {
    use crate::ops::certificates::{Certificates, WARN_BEFORE, unix_now};
    let now = unix_now();
    Certificates::of(cfg)
        .list()
        .into_iter()
        .map(|t| {
            let left = t.info.seconds_left(now);
            let days = left / 86_400;
            if left <= 0 {
                Check::failed(
                    &t.key,
                    format!("{}: expired {} day(s) ago", t.info.subject, -days),
                )
            } else if left <= WARN_BEFORE.as_secs() as i64 {
                Check::ok(
                    &t.key,
                    format!(
                        "{}: WARNING: expires in {days} day(s): renew it",
                        t.info.subject
                    ),
                )
            } else {
                Check::ok(
                    &t.key,
                    format!("{}: valid for {days} more day(s)", t.info.subject),
                )
            }
        })
        .collect()
}

/// The configuration summary, always OK once the file parsed and validated.
pub fn config_summary(path: &Path, cfg: &Config) -> Check {
    let destinations = if cfg.destinations.is_empty() {
        "no destinations".to_string()
    } else {
        cfg.destinations
            .iter()
            .map(|d| format!("{}={}@{}:{}", d.name, d.ae_title.as_str(), d.host, d.port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Check::ok(
        "config",
        format!(
            "{}: roles {}, AE title {} on {}, spool {}, {} analysis worker(s), destinations: {destinations}",
            path.display(),
            cfg.process.roles.names(),
            cfg.dicom.ae_title,
            [
                cfg.dicom.listen.map(|a| a.to_string()),
                cfg.dicom
                    .tls
                    .as_ref()
                    .map(|t| format!("{} (TLS)", t.listen)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and "),
            cfg.spool.dir.display(),
            if cfg.process.roles.analyse {
                cfg.study.workers
            } else {
                0
            },
        ),
    )
}

/// The model files exist and load as a conforming pair (blocking: loads ONNX Runtime).
pub fn check_models(cfg: &Config) -> Vec<Check> {
    let m = &cfg.models;
    let mut checks = Vec::new();
    let mut files_ok = true;
    let mut present = Vec::new();
    if let Some(lib) = &m.onnxruntime_library {
        if lib.is_file() {
            checks.push(Check::ok(
                "models.onnxruntime_library",
                lib.display().to_string(),
            ));
        } else {
            files_ok = false;
            checks.push(Check::failed(
                "models.onnxruntime_library",
                format!("{}: no such file", lib.display()),
            ));
        }
    }
    for (key, path) in [
        ("models.segmenter", &m.segmenter),
        ("models.classifier", &m.classifier),
    ] {
        if path.is_file() {
            present.push((key, path));
        } else {
            files_ok = false;
            checks.push(Check::failed(
                key,
                format!("{}: no such file", path.display()),
            ));
        }
    }
    if !files_ok {
        for (key, path) in present {
            checks.push(Check::ok(
                key,
                format!(
                    "{}: present (contract not checked while a model file is missing)",
                    path.display()
                ),
            ));
        }
        return checks;
    }
    match Engine::load(&EngineOptions::from(m)) {
        Ok(engine) => {
            for (key, model) in [
                ("models.segmenter", &engine.segmenter),
                ("models.classifier", &engine.classifier),
            ] {
                let i = &model.info;
                checks.push(Check::ok(
                    key,
                    format!(
                        "{}: contract OK, {} {} ({}), input {}, on {}",
                        i.path,
                        i.model_name,
                        i.model_version,
                        if i.trained {
                            "trained"
                        } else {
                            "UNTRAINED: findings not clinically meaningful"
                        },
                        i.input_size,
                        model.provider.name()
                    ),
                ));
            }
        }
        Err(e) => checks.push(Check::failed("models", e.to_string())),
    }
    checks
}

/// The database answers within `timeout`; reports how many migrations are applied (pending ones
/// are fine: the daemon applies them at start-up).
pub async fn check_database(cfg: &Config, timeout: Duration) -> Check {
    let options: sqlx::postgres::PgConnectOptions = match cfg.database.url.parse() {
        Ok(o) => o,
        Err(e) => return Check::failed("database.url", format!("not a valid URL: {e}")),
    };
    let target = super::describe_target(&options);
    let connect = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        crate::db::server_info(&mut conn).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((version, applied))) => {
            let known = MIGRATOR.iter().count() as i64;
            let migrations = if applied >= known {
                format!("{applied} migrations applied")
            } else {
                format!(
                    "{applied} of {known} migrations applied (the daemon applies the rest at start-up)"
                )
            };
            Check::ok(
                "database.url",
                format!("{target}: reachable, PostgreSQL {version}, {migrations}"),
            )
        }
        Ok(Err(e)) => Check::failed("database.url", format!("{target}: {e}")),
        Err(_) => Check::failed(
            "database.url",
            format!("{target}: no answer within {} s", timeout.as_secs()),
        ),
    }
}

/// Print one line per check: `OK      key: detail` or `FAILED  key: detail`, then a verdict.
pub fn write(checks: &[Check], out: &mut dyn Write) -> std::io::Result<()> {
    for c in checks {
        let mark = if c.ok { "OK" } else { "FAILED" };
        writeln!(out, "{mark:<7} {}: {}", c.key, printable(&c.detail))?;
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        writeln!(out, "all {} checks passed", checks.len())
    } else {
        writeln!(out, "{failed} of {} checks FAILED", checks.len())
    }
}
