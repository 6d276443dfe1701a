//! Typed configuration: a TOML file, overridden key by key by `CXR_WORKER__SECTION__KEY`
//! environment variables, validated into domain types before anything starts.
//!
//! Every validation failure names the key (`dicom.ae_title`), so an operator knows what to fix.
//!
//! This file owns the whole: [`Config`], [`ConfigError`], loading and parsing, the top-level
//! shape of the file (`RawConfig`) and the helpers the sections share. Each section's file shape,
//! validation and typed form live together in a file of their own (`dicom.rs`, `database.rs`,
//! `spool.rs`, `http.rs`, `decode.rs`, `models.rs`, `log.rs`, `report.rs` with the destinations,
//! `study.rs`); `env.rs` applies the environment overrides and `secrets.rs` keeps secrets out of
//! errors.

mod audit;
mod database;
mod decode;
mod dicom;
mod env;
mod http;
mod log;
mod models;
mod process;
mod report;
mod secrets;
mod spool;
mod study;
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use audit::{AuditConfig, AuditTlsFiles, SyslogTarget, SyslogTransport};
pub use database::DatabaseConfig;
pub use decode::DecodeConfig;
pub use dicom::DicomConfig;
pub use env::ENV_PREFIX;
pub use http::HttpConfig;
pub use log::{LogConfig, LogFormat};
pub use models::{ExecutionProvider, ModelsConfig};
pub use process::{ProcessConfig, Role, Roles};
pub use report::{Destination, DestinationOutputs, ReportConfig};
pub use spool::SpoolConfig;
pub use study::StudyConfig;
pub use tls::{DestinationTls, ScpTlsConfig};

use audit::RawAudit;
use database::RawDatabase;
use decode::RawDecode;
use dicom::RawDicom;
use env::apply_env_overrides;
use http::RawHttp;
use log::RawLog;
use models::RawModels;
use process::RawProcess;
use report::{RawDestination, RawReport, validate_destinations};
use secrets::{redact, secrets_in_table, secrets_in_text};
use spool::RawSpool;
use study::RawStudy;

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's text is never quoted (it may hold the database password): only the place.
    #[error(
        "configuration file {path} is not valid TOML at line {line}, column {column}: {message}"
    )]
    ParseFile {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration: {message}")]
    Shape { message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dicom: DicomConfig,
    pub database: DatabaseConfig,
    pub spool: SpoolConfig,
    pub models: ModelsConfig,
    pub log: LogConfig,
    /// Where SRs go (`[[destinations]]`); empty: SRs are archived but sent nowhere.
    pub destinations: Vec<Destination>,
    pub study: StudyConfig,
    /// The SR archive and the sending policy (`[report]`).
    pub report: ReportConfig,
    /// The HTTP endpoints: health, readiness, metrics (`[http]`).
    pub http: HttpConfig,
    /// How images are decoded for analysis (`[decode]`).
    pub decode: DecodeConfig,
    /// The DICOM audit trail (`[audit]`); off unless the file says so.
    pub audit: AuditConfig,
    /// What this process does: receive, analyse, send (`[process]`).
    pub process: ProcessConfig,
    /// The file this configuration was read from (`None` when built from text); SIGHUP
    /// reloads it.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Read `path`, apply the environment overrides from `std::env::vars()`, validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, path, std::env::vars())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// [`load`](Self::load) a file the daemon is to run from (SIGHUP reload, `check-config`; at
    /// start-up `Daemon::build` checks the same): when it receives, it must also say who may store
    /// ([`DicomConfig::check_admission`]).
    pub fn load_to_serve(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        if config.process.roles.receive {
            config.dicom.check_admission()?;
        }
        Ok(config)
    }

    /// Parse TOML text (named `origin` in errors), apply `env` overrides, validate.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_and_column(text, span.start));
            ConfigError::ParseFile {
                path: origin.to_path_buf(),
                line,
                column,
                message: redact(e.message(), &secrets_in_text(text)),
            }
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let credentials = env
            .iter()
            .find(|(k, _)| k == "CREDENTIALS_DIRECTORY")
            .map(|(_, v)| v.clone());
        apply_env_overrides(&mut table, env)?;
        let secrets = secrets_in_table(&table);
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Shape {
                    message: redact(e.message(), &secrets),
                })?;
        raw.validate(
            origin.parent().unwrap_or(Path::new(".")),
            credentials.as_deref(),
        )
        .map_err(|e| match e {
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                message: redact(&message, &secrets),
                key,
            },
            other => other,
        })
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---- the file, as written -----------------------------------------------------------------------

/// The whole file; each section's shape lives with its validation in the section's module.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    study: RawStudy,
    #[serde(default)]
    dicom: RawDicom,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    destinations: Vec<RawDestination>,
    #[serde(default)]
    report: RawReport,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    decode: RawDecode,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    process: RawProcess,
}

impl RawConfig {
    /// Relative paths are taken from the directory of the configuration file.
    /// `credentials`: `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), if set.
    fn validate(self, base: &Path, credentials: Option<&str>) -> Result<Config, ConfigError> {
        let dicom = self.dicom.validate(base)?;
        let spool = self.spool.validate(base)?;
        let destinations = validate_destinations(self.destinations, &dicom.ae_title, base)?;
        let report = self.report.validate(base, &spool.dir)?;
        let study = self.study.validate()?;
        let process = self.process.validate(study.workers)?;
        Ok(Config {
            dicom,
            database: self.database.validate(base, credentials)?,
            spool,
            models: self.models.validate(base)?,
            log: self.log.validate()?,
            destinations,
            report,
            study,
            http: self.http.validate()?,
            decode: self.decode.validate()?,
            audit: self.audit.validate(base)?,
            process,
            source: None,
        })
    }
}

// ---- helpers shared by the sections -------------------------------------------------------------

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

fn positive(key: &str, v: i64, max: i64) -> Result<i64, ConfigError> {
    if v < 1 || v > max {
        return Err(invalid(key, format!("{v} is out of range 1..={max}")));
    }
    Ok(v)
}

fn seconds(key: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(invalid(
            key,
            format!("{v} is not a number of seconds in (0, 86400]"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::ae::AllowedPeer;

    const MINIMAL: &str = r#"
        [database]
        url = "postgres://u@127.0.0.1/db"
        [spool]
        dir = "/tmp/spool"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Path::new("/etc/cxr-worker/cxr-worker.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn errors_never_quote_the_database_password() {
        let broken = [
            // a syntax error on the line that holds the password
            "[database]\nurl = \"postgres://cxr:s3cr3t-pw@db/cxr\" oops\n",
            "[database]\nurl = \"postgres://cxr:s3cr3t-pw@db/cxr\n",
            "[database]\nurl = postgres://cxr:s3cr3t-pw@db/cxr\n",
            // a type error
            "[database]\nurl = \"postgres://cxr:s3cr3t-pw@db/cxr\"\nmax_connections = \"postgres://cxr:s3cr3t-pw@db\"\n[spool]\ndir = \"/s\"\n",
            // a validation error
            "[database]\nurl = \"mysql://cxr:s3cr3t-pw@db/cxr\"\n[spool]\ndir = \"/s\"\n",
        ];
        for text in broken {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let err = load(broken[0], &[]).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_database_url_can_come_from_a_file_or_a_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("db-url"),
            "postgres://cxr:s3cr3t-pw@db/cxr\n",
        )
        .unwrap();
        let file =
            |path: &str| format!("[database]\nurl_file = \"{path}\"\n[spool]\ndir = \"/s\"\n");
        let c = load(&file(&dir.path().join("db-url").display().to_string()), &[]).unwrap();
        assert_eq!(c.database.url, "postgres://cxr:s3cr3t-pw@db/cxr");
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug hides the password"
        );
        let creds = dir.path().display().to_string();
        let c = load(
            &file("$CREDENTIALS_DIRECTORY/db-url"),
            &[("CREDENTIALS_DIRECTORY", creds.as_str())],
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://cxr:s3cr3t-pw@db/cxr");
        for (text, env, says) in [
            (file("$CREDENTIALS_DIRECTORY/db-url"), vec![], "not set"),
            (file("/nonexistent/db-url"), vec![], "/nonexistent/db-url"),
            (
                format!(
                    "{}url = \"postgres://x@y/z\"\n",
                    file("/x").replace("[spool]\ndir = \"/s\"\n", "")
                ) + "[spool]\ndir = \"/s\"\n",
                vec![],
                "keep one of the two",
            ),
        ] {
            let err = load(&text, &env).unwrap_err().to_string();
            assert!(
                err.contains("database.url_file") && err.contains(says),
                "{err}"
            );
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn an_open_allow_list_must_be_explicit() {
        // parsed as written (admin commands, tools), but not served without the explicit key
        let open = load(MINIMAL, &[]).unwrap();
        let err = open.dicom.check_admission().unwrap_err().to_string();
        assert!(err.contains("dicom.allowed_calling_ae_titles"), "{err}");
        assert!(err.contains("allow_any_calling_ae = true"), "{err}");
        let any = load(
            &format!("{MINIMAL}\n[dicom]\nallow_any_calling_ae = true\n"),
            &[],
        )
        .unwrap();
        assert!(any.dicom.allow_any_calling_ae);
        assert!(any.dicom.check_admission().is_ok());
        let listed = load(
            &format!("{MINIMAL}\n[dicom]\nallowed_calling_ae_titles = [\"PACS\"]\n"),
            &[],
        )
        .unwrap();
        assert!(listed.dicom.check_admission().is_ok());
        let both = load(
            &format!(
                "{MINIMAL}\n[dicom]\nallowed_calling_ae_titles = [\"PACS\"]\nallow_any_calling_ae = true\n"
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("dicom.allow_any_calling_ae"), "{both}");
        // the environment can say it too
        let env = load(
            MINIMAL,
            &[("CXR_WORKER__DICOM__ALLOW_ANY_CALLING_AE", "true")],
        )
        .unwrap();
        assert!(env.dicom.check_admission().is_ok());
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.dicom.ae_title.as_str(), "CXR_WORKER");
        assert_eq!(c.dicom.listen.unwrap().port(), 11112);
        assert_eq!(c.dicom.accepted_sop_classes.len(), 3);
        assert_eq!(
            c.models.classifier,
            PathBuf::from("/etc/cxr-worker/../onnx/anatomy-xnet.onnx")
        );
    }

    #[test]
    fn env_overrides_every_kind_of_value() {
        let c = load(
            MINIMAL,
            &[
                ("CXR_WORKER__DICOM__AE_TITLE", "OTHER"),
                ("CXR_WORKER__DICOM__MAX_ASSOCIATIONS", "4"),
                (
                    "CXR_WORKER__DICOM__ALLOWED_CALLING_AE_TITLES",
                    r#"["A", "B@127.0.0.1"]"#,
                ),
                ("CXR_WORKER__DATABASE__URL", "postgres://x@localhost:5/y"),
                ("CXR_WORKER__SPOOL__DIR", "relative/spool"),
                ("CXR_WORKER__PROCESS__ROLES", r#"["analyse"]"#),
            ],
        )
        .unwrap();
        assert_eq!(c.process.roles.names(), "analyse");
        assert_eq!(c.dicom.ae_title.as_str(), "OTHER");
        assert_eq!(c.dicom.max_associations, 4);
        assert_eq!(c.dicom.allowed_calling_ae_titles.len(), 2);
        assert_eq!(
            c.dicom.allowed_calling_ae_titles[1].host,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(c.database.url, "postgres://x@localhost:5/y");
        assert_eq!(c.spool.dir, PathBuf::from("/etc/cxr-worker/relative/spool"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "CXR_WORKER__DICOM__AE_TITLE",
                "THIS_TITLE_IS_TOO_LONG",
                "dicom.ae_title",
            ),
            ("CXR_WORKER__DICOM__LISTEN", "localhost", "dicom.listen"),
            (
                "CXR_WORKER__DICOM__MAX_ASSOCIATIONS",
                "0",
                "dicom.max_associations",
            ),
            ("CXR_WORKER__DATABASE__URL", "mysql://x", "database.url"),
            (
                "CXR_WORKER__MODELS__EXECUTION_PROVIDERS",
                r#"["rocm"]"#,
                "models.execution_providers",
            ),
            ("CXR_WORKER__LOG__FORMAT", "xml", "log.format"),
            (
                "CXR_WORKER__DICOM__ACCEPTED_SOP_CLASSES",
                r#"["1.2.3"]"#,
                "dicom.accepted_sop_classes",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(MINIMAL, &[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load(&format!("{MINIMAL}\n[dicom]\naetitle = \"X\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("aetitle"), "{err}");
    }

    #[test]
    fn destinations_and_report_section() {
        let c = load(
            &format!(
                r#"{MINIMAL}
                [report]
                archive_dir = "archive"
                max_attempts = 5
                [[destinations]]
                ae_title = "ORTHANC"
                host = "127.0.0.1"
                port = 4242
                [[destinations]]
                name = "backup"
                ae_title = "PACS2"
                host = "pacs2.example.org"
                port = 104
                calling_ae_title = "CXR_OUT"
                outputs = ["sr", "sc"]
                not_analysed = false
                "#
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.destinations.len(), 2);
        // the default: SR, SEG and SC, and the "not analysed" SR
        assert_eq!(c.destinations[0].outputs, DestinationOutputs::default());
        let o = c.destinations[1].outputs;
        assert!(o.sr && !o.seg && o.sc && !o.not_analysed, "{o:?}");
        assert!(o.takes("sc") && !o.takes("seg") && !o.takes("other"));
        assert_eq!(c.destinations[0].name, "ORTHANC");
        assert_eq!(c.destinations[0].calling_ae_title.as_str(), "CXR_WORKER");
        assert_eq!(c.destinations[1].name, "backup");
        assert_eq!(c.destinations[1].calling_ae_title.as_str(), "CXR_OUT");
        assert_eq!(
            c.report.archive_dir,
            PathBuf::from("/etc/cxr-worker/archive")
        );
        assert_eq!(c.report.max_attempts, 5);
        let d = load(MINIMAL, &[]).unwrap();
        assert!(d.destinations.is_empty());
        assert_eq!(d.report.archive_dir, PathBuf::from("/tmp/spool/reports"));
        assert_eq!(d.report.max_attempts, 0);
    }

    #[test]
    fn destination_errors_name_the_key() {
        let dest = |body: &str| {
            format!(
                "{MINIMAL}\n[[destinations]]\nae_title = \"A\"\nhost = \"h\"\nport = 104\n[[destinations]]\n{body}\n"
            )
        };
        let cases: &[(&str, &str)] = &[
            (
                "ae_title = \"B\"\nhost = \"h\"\nport = 70000",
                "destinations[1].port",
            ),
            ("ae_title = \"B\"\nhost = \"h\"", "destinations[1].port"),
            ("ae_title = \"B\"\nport = 104", "destinations[1].host"),
            ("host = \"h\"\nport = 104", "destinations[1].ae_title"),
            (
                "ae_title = \"A\"\nhost = \"h\"\nport = 104",
                "destinations[1].name",
            ),
            (
                "ae_title = \"B\"\nhost = \"h\"\nport = 104\ncalling_ae_title = \"\"",
                "destinations[1].calling_ae_title",
            ),
            (
                "ae_title = \"B\"\nhost = \"h\"\nport = 104\noutputs = [\"sr\", \"gsps\"]",
                "destinations[1].outputs",
            ),
            (
                "ae_title = \"B\"\nhost = \"h\"\nport = 104\noutputs = []",
                "destinations[1].outputs",
            ),
            (
                "ae_title = \"B\"\nhost = \"h\"\nport = 104\noutputs = [\"seg\"]\nnot_analysed = true",
                "destinations[1].not_analysed",
            ),
        ];
        for (body, key) in cases {
            let err = load(&dest(body), &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{body}: {err}");
        }
        let err = load(
            &dest("ae_title = \"B\"\nhost = \"h\"\nport = 1\naet = \"X\""),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("aet"), "{err}");
        let err = load(MINIMAL, &[("CXR_WORKER__REPORT__RETRY_MAX_SECS", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("report.retry_max_secs"), "{err}");
        let err = load(MINIMAL, &[("CXR_WORKER__REPORT__MAX_ATTEMPTS", "-1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("report.max_attempts"), "{err}");
    }

    #[test]
    fn http_and_spool_keys() {
        let d = load(MINIMAL, &[]).unwrap();
        assert!(d.http.enabled);
        assert_eq!(d.http.listen, "127.0.0.1:8480".parse().unwrap());
        assert_eq!(d.spool.max_used_percent, 90.0);
        assert_eq!(d.spool.retention, None);
        let c = load(
            MINIMAL,
            &[
                ("CXR_WORKER__HTTP__LISTEN", "127.0.0.1:0"),
                ("CXR_WORKER__HTTP__ENABLED", "false"),
                ("CXR_WORKER__SPOOL__MAX_USED_PERCENT", "75.5"),
                ("CXR_WORKER__SPOOL__RETENTION_DAYS", "0.5"),
            ],
        )
        .unwrap();
        assert!(!c.http.enabled);
        assert_eq!(c.http.listen.port(), 0);
        assert_eq!(c.spool.max_used_percent, 75.5);
        assert_eq!(c.spool.retention, Some(Duration::from_secs(43_200)));
        let cases: &[(&str, &str, &str)] = &[
            ("CXR_WORKER__HTTP__LISTEN", "localhost:80", "http.listen"),
            (
                "CXR_WORKER__HTTP__QUEUE_STALL_SECS",
                "0",
                "http.queue_stall_secs",
            ),
            (
                "CXR_WORKER__SPOOL__MAX_USED_PERCENT",
                "0",
                "spool.max_used_percent",
            ),
            (
                "CXR_WORKER__SPOOL__MAX_USED_PERCENT",
                "101",
                "spool.max_used_percent",
            ),
            (
                "CXR_WORKER__SPOOL__RETENTION_DAYS",
                "-1",
                "spool.retention_days",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(MINIMAL, &[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn allowed_peer_checks_host() {
        let p = AllowedPeer::parse("MODALITY@127.0.0.1").unwrap();
        assert!(p.admits("MODALITY  ", "127.0.0.1".parse().unwrap()));
        assert!(p.admits("MODALITY", "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.admits("MODALITY", "127.0.0.2".parse().unwrap()));
        assert!(!p.admits("OTHER", "127.0.0.1".parse().unwrap()));
    }
}
