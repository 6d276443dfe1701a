//! Typed configuration: a TOML file, overridden key by key by `CXR_WORKER__SECTION__KEY`
//! environment variables, validated into domain types before anything starts.
//!
//! Every validation failure names the key (`dicom.ae_title`), so an operator knows what to fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dicom::ae::{AeTitle, AllowedPeer};
use crate::dicom::sop_classes;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CXR_WORKER__";

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

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
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
    /// The file this configuration was read from (`None` when built from text); SIGHUP
    /// reloads it.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DicomConfig {
    pub ae_title: AeTitle,
    pub listen: SocketAddr,
    /// Empty: any calling AE title is accepted.
    pub allowed_calling_ae_titles: Vec<AllowedPeer>,
    /// Associations served at once; more are rejected as transient.
    pub max_associations: usize,
    /// Associations served at once from one peer address.
    pub max_associations_per_host: usize,
    /// Connections waiting for their A-ASSOCIATE-RQ, in all; more are closed at once.
    pub max_pending_associations: usize,
    /// Connections waiting for their A-ASSOCIATE-RQ from one peer address.
    pub max_pending_per_host: usize,
    /// How long a new connection has to send its A-ASSOCIATE-RQ.
    pub association_request_timeout: Duration,
    /// Bytes that received data may hold in memory at once, all associations together.
    pub receive_memory_budget_bytes: usize,
    pub max_pdu_length: u32,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Largest data set accepted in one C-STORE, in bytes.
    pub max_dataset_bytes: usize,
    /// SOP classes accepted for C-STORE.
    pub accepted_sop_classes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Above this use of the spool's file system (percent, as `df` shows it) new associations
    /// are refused (transient A-ASSOCIATE-RJ); associations already open go on.
    pub max_used_percent: f64,
    /// How long a spooled instance is kept after its study's report was delivered to every
    /// destination; `None` (`retention_days = 0`): forever.
    pub retention: Option<Duration>,
    /// How often the retention task looks for instances to remove.
    pub retention_interval: Duration,
}

/// The HTTP endpoints (`[http]`): `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Off: no HTTP listener at all.
    pub enabled: bool,
    /// Loopback by default: the endpoints carry no patient data, but need no wider audience.
    pub listen: SocketAddr,
    /// `/healthz` fails when a loop (receive, a worker) has not beaten for this long.
    pub stale_after: Duration,
    /// `/readyz` fails when a due job has waited this long while no job made progress.
    pub queue_stall: Duration,
    /// Time limit of each database query and spool probe behind `/readyz` and `/metrics`.
    pub check_timeout: Duration,
}

/// Decoding of received images for analysis (`[decode]`): each image is decoded in a helper
/// process with these limits, so that a codec's crash or runaway allocation costs that image only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Largest image decoded, in pixels (rows × columns); larger ones are not analysed.
    pub max_pixels: u64,
    /// Address-space limit of the decode helper process, in bytes.
    pub memory_limit_bytes: u64,
    /// Wall-clock limit for one image; the helper is killed beyond it.
    pub timeout: Duration,
}

/// An ONNX Runtime execution provider, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tensorrt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// Path of `libonnxruntime.so*`; `ORT_DYLIB_PATH` is used when unset.
    pub onnxruntime_library: Option<PathBuf>,
    pub segmenter: PathBuf,
    pub classifier: PathBuf,
    pub execution_providers: Vec<ExecutionProvider>,
    /// Images per inference run.
    pub batch_size: usize,
    /// Intra-op threads for the CPU provider; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `cxr_worker=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

/// A DICOM peer that receives every SR (`[[destinations]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Unique name, recorded with each outbox row (defaults to the AE title).
    pub name: String,
    /// The peer's (called) AE title.
    pub ae_title: AeTitle,
    /// Host name or IP address.
    pub host: String,
    pub port: u16,
    /// Our (calling) AE title towards this peer; defaults to `dicom.ae_title`.
    pub calling_ae_title: AeTitle,
}

/// Study completion and the analysis workers (`[study]`).
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// A study is ready for analysis when nothing has arrived for this long.
    pub quiet_period: Duration,
    /// Analysis workers in this process (each loads the models once); 0: receive only.
    pub workers: usize,
    /// Attempts before a job is marked failed with its reason.
    pub max_attempts: u32,
    /// How long a worker holds a job before another may take it over (a crashed worker's job).
    pub lease: Duration,
    /// First retry delay of a failed job; doubled per attempt, at most 10 minutes.
    pub retry_base: Duration,
    /// How often an idle worker looks for ready studies.
    pub poll_interval: Duration,
}

/// The SR archive and how the outbox sends (`[report]`).
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// Every SR is written here before it is queued: `DIR/STUDY_UID/SR_SOP_INSTANCE_UID.dcm`.
    pub archive_dir: PathBuf,
    /// TCP connect timeout towards a destination.
    pub connect_timeout: Duration,
    /// Read and write timeout of each step of an association (negotiation, data, response).
    pub dimse_timeout: Duration,
    /// First retry delay; doubled per attempt up to `retry_max`, with ±25 % jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts after which a retryable failure marks the row `failed`; 0: never give up.
    pub max_attempts: u32,
    /// How often the sender looks for due rows when no notification arrives.
    pub poll_interval: Duration,
    /// Rows sent concurrently by one sender.
    pub max_concurrent_sends: usize,
}

// ---- raw, as written in the file -------------------------------------------------------------

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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDecode {
    max_pixels: Option<i64>,
    memory_limit_mb: Option<i64>,
    timeout_secs: Option<f64>,
}

impl RawDecode {
    fn validate(self) -> Result<DecodeConfig, ConfigError> {
        let max_pixels = positive(
            "decode.max_pixels",
            self.max_pixels.unwrap_or(50_000_000),
            1_000_000_000,
        )? as u64;
        let memory_mb = self.memory_limit_mb.unwrap_or(2048);
        if !(256..=1_048_576).contains(&memory_mb) {
            return Err(invalid(
                "decode.memory_limit_mb",
                format!("{memory_mb} is out of range 256..=1048576"),
            ));
        }
        Ok(DecodeConfig {
            max_pixels,
            memory_limit_bytes: memory_mb as u64 * 1_048_576,
            timeout: seconds("decode.timeout_secs", self.timeout_secs.unwrap_or(120.0))?,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
    stale_after_secs: Option<f64>,
    queue_stall_secs: Option<f64>,
    check_timeout_secs: Option<f64>,
}

impl RawHttp {
    fn validate(self) -> Result<HttpConfig, ConfigError> {
        let raw = self.listen.unwrap_or_else(|| "127.0.0.1:8480".into());
        let listen: SocketAddr = raw.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!("{raw:?} is not \"host:port\" with an IP address"),
            )
        })?;
        Ok(HttpConfig {
            enabled: self.enabled.unwrap_or(true),
            listen,
            stale_after: seconds(
                "http.stale_after_secs",
                self.stale_after_secs.unwrap_or(60.0),
            )?,
            queue_stall: seconds(
                "http.queue_stall_secs",
                self.queue_stall_secs.unwrap_or(900.0),
            )?,
            check_timeout: seconds(
                "http.check_timeout_secs",
                self.check_timeout_secs.unwrap_or(2.0),
            )?,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: Option<String>,
    ae_title: Option<String>,
    host: Option<String>,
    port: Option<i64>,
    calling_ae_title: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReport {
    archive_dir: Option<PathBuf>,
    connect_timeout_secs: Option<f64>,
    dimse_timeout_secs: Option<f64>,
    retry_base_secs: Option<f64>,
    retry_max_secs: Option<f64>,
    max_attempts: Option<i64>,
    poll_interval_secs: Option<f64>,
    max_concurrent_sends: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDicom {
    ae_title: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    allowed_calling_ae_titles: Vec<String>,
    max_associations: Option<i64>,
    max_associations_per_host: Option<i64>,
    max_pending_associations: Option<i64>,
    max_pending_per_host: Option<i64>,
    association_request_timeout_secs: Option<f64>,
    receive_memory_mb: Option<f64>,
    max_pdu_length: Option<i64>,
    read_timeout_secs: Option<f64>,
    write_timeout_secs: Option<f64>,
    max_dataset_mb: Option<f64>,
    accepted_sop_classes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStudy {
    quiet_period_secs: Option<f64>,
    workers: Option<i64>,
    max_attempts: Option<i64>,
    lease_secs: Option<f64>,
    retry_base_secs: Option<f64>,
    poll_interval_secs: Option<f64>,
}

impl RawStudy {
    fn validate(self) -> Result<StudyConfig, ConfigError> {
        let workers = self.workers.unwrap_or(1);
        if !(0..=64).contains(&workers) {
            return Err(invalid(
                "study.workers",
                format!("{workers} is out of range 0..=64"),
            ));
        }
        Ok(StudyConfig {
            quiet_period: seconds(
                "study.quiet_period_secs",
                self.quiet_period_secs.unwrap_or(10.0),
            )?,
            workers: workers as usize,
            max_attempts: positive("study.max_attempts", self.max_attempts.unwrap_or(5), 100)?
                as u32,
            lease: seconds("study.lease_secs", self.lease_secs.unwrap_or(600.0))?,
            retry_base: seconds("study.retry_base_secs", self.retry_base_secs.unwrap_or(5.0))?,
            poll_interval: seconds(
                "study.poll_interval_secs",
                self.poll_interval_secs.unwrap_or(0.25),
            )?,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    max_connections: Option<i64>,
    acquire_timeout_secs: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<PathBuf>,
    max_used_percent: Option<f64>,
    retention_days: Option<f64>,
    retention_interval_secs: Option<f64>,
}

impl RawSpool {
    fn validate(self, base: &Path) -> Result<SpoolConfig, ConfigError> {
        let dir = resolve(
            base,
            self.dir.ok_or_else(|| invalid("spool.dir", "missing"))?,
        );
        let max_used_percent = self.max_used_percent.unwrap_or(90.0);
        if !(max_used_percent.is_finite() && max_used_percent > 0.0 && max_used_percent <= 100.0) {
            return Err(invalid(
                "spool.max_used_percent",
                format!("{max_used_percent} is out of range (0, 100]"),
            ));
        }
        let days = self.retention_days.unwrap_or(0.0);
        if !(days.is_finite() && (0.0..=36_500.0).contains(&days)) {
            return Err(invalid(
                "spool.retention_days",
                format!("{days} is out of range 0..=36500 (0 keeps instances forever)"),
            ));
        }
        Ok(SpoolConfig {
            dir,
            max_used_percent,
            retention: (days > 0.0).then(|| Duration::from_secs_f64(days * 86_400.0)),
            retention_interval: seconds(
                "spool.retention_interval_secs",
                self.retention_interval_secs.unwrap_or(600.0),
            )?,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModels {
    onnxruntime_library: Option<PathBuf>,
    segmenter: Option<PathBuf>,
    classifier: Option<PathBuf>,
    execution_providers: Option<Vec<String>>,
    batch_size: Option<i64>,
    intra_threads: Option<i64>,
    tensorrt_fp16: Option<bool>,
    tensorrt_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
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
        apply_env_overrides(&mut table, env)?;
        let secrets = secrets_in_table(&table);
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Shape {
                    message: redact(e.message(), &secrets),
                })?;
        raw.validate(origin.parent().unwrap_or(Path::new(".")))
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

/// Values that must never appear in an error: every string of the `[database]` section (the URL
/// carries the password), and the password part of any URL.
fn secrets_in_table(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(toml::Value::Table(db)) = table.get("database") {
        for v in db.values() {
            if let toml::Value::String(s) = v {
                out.push(s.clone());
                out.extend(url_password(s));
            }
        }
    }
    out
}

/// Secrets of a file that does not parse: the password of every URL in it.
fn secrets_in_text(text: &str) -> Vec<String> {
    text.split(|c: char| c == '"' || c == '\'' || c.is_whitespace())
        .filter_map(url_password)
        .collect()
}

/// `pass` of `scheme://user:pass@host...`.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split(['/', '?', '#']).next()?.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

/// `message` with every secret replaced.
fn redact(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    out
}

/// Apply `CXR_WORKER__SECTION__KEY=value` overrides. A value is read as a TOML value (`32`,
/// `true`, `["A", "B"]`) unless the key already holds a string, or it is not valid TOML.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (var, value) in env {
        if var.starts_with(ENV_PREFIX) {
            overrides.insert(var, value);
        }
    }
    for (var, raw) in overrides {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let [section, key] = path.as_slice() else {
            return Err(ConfigError::Env {
                var,
                message: "expected CXR_WORKER__SECTION__KEY".into(),
            });
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Env {
                var,
                message: format!("`{section}` is not a section"),
            });
        };
        let existing_is_string = matches!(section_table.get(key), Some(toml::Value::String(_)));
        let value = if existing_is_string {
            toml::Value::String(raw)
        } else {
            parse_toml_value(&raw).unwrap_or(toml::Value::String(raw))
        };
        section_table.insert(key.clone(), value);
    }
    Ok(())
}

fn parse_toml_value(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    t.remove("v")
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

impl RawConfig {
    /// Relative paths are taken from the directory of the configuration file.
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let dicom = self.dicom.validate()?;
        let spool = self.spool.validate(base)?;
        let destinations = validate_destinations(self.destinations, &dicom.ae_title)?;
        let report = self.report.validate(base, &spool.dir)?;
        Ok(Config {
            dicom,
            database: self.database.validate()?,
            spool,
            models: self.models.validate(base)?,
            log: self.log.validate()?,
            destinations,
            report,
            study: self.study.validate()?,
            http: self.http.validate()?,
            decode: self.decode.validate()?,
            source: None,
        })
    }
}

fn validate_destinations(
    raw: Vec<RawDestination>,
    our_ae: &AeTitle,
) -> Result<Vec<Destination>, ConfigError> {
    let mut out: Vec<Destination> = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("destinations[{i}].{k}");
        let ae_title = AeTitle::parse(
            d.ae_title
                .as_deref()
                .ok_or_else(|| invalid(&key("ae_title"), "missing"))?,
        )
        .map_err(|m| invalid(&key("ae_title"), m))?;
        let host = d
            .host
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(&key("host"), "missing"))?;
        let port = d.port.ok_or_else(|| invalid(&key("port"), "missing"))?;
        let port = u16::try_from(positive(&key("port"), port, 65_535)?)
            .map_err(|_| invalid(&key("port"), "out of range 1..=65535"))?;
        let calling_ae_title = match d.calling_ae_title.as_deref() {
            Some(raw) => AeTitle::parse(raw).map_err(|m| invalid(&key("calling_ae_title"), m))?,
            None => our_ae.clone(),
        };
        let name = d
            .name
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| ae_title.as_str().to_string());
        if name.is_empty() || name.len() > 64 {
            return Err(invalid(&key("name"), "must have 1 to 64 characters"));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                &key("name"),
                format!("{name:?} names two destinations; names must be unique"),
            ));
        }
        out.push(Destination {
            name,
            ae_title,
            host,
            port,
            calling_ae_title,
        });
    }
    Ok(out)
}

impl RawReport {
    fn validate(self, base: &Path, spool_dir: &Path) -> Result<ReportConfig, ConfigError> {
        let retry_base = seconds(
            "report.retry_base_secs",
            self.retry_base_secs.unwrap_or(5.0),
        )?;
        let retry_max = seconds(
            "report.retry_max_secs",
            self.retry_max_secs.unwrap_or(600.0),
        )?;
        if retry_max < retry_base {
            return Err(invalid(
                "report.retry_max_secs",
                "must not be smaller than report.retry_base_secs",
            ));
        }
        let max_attempts = match self.max_attempts.unwrap_or(0) {
            v @ 0..=1_000_000 => v as u32,
            v => {
                return Err(invalid(
                    "report.max_attempts",
                    format!("{v} is out of range 0..=1000000 (0: never give up)"),
                ));
            }
        };
        Ok(ReportConfig {
            archive_dir: self
                .archive_dir
                .map_or_else(|| spool_dir.join("reports"), |p| resolve(base, p)),
            connect_timeout: seconds(
                "report.connect_timeout_secs",
                self.connect_timeout_secs.unwrap_or(10.0),
            )?,
            dimse_timeout: seconds(
                "report.dimse_timeout_secs",
                self.dimse_timeout_secs.unwrap_or(60.0),
            )?,
            retry_base,
            retry_max,
            max_attempts,
            poll_interval: seconds(
                "report.poll_interval_secs",
                self.poll_interval_secs.unwrap_or(2.0),
            )?,
            max_concurrent_sends: positive(
                "report.max_concurrent_sends",
                self.max_concurrent_sends.unwrap_or(4),
                64,
            )? as usize,
        })
    }
}

impl RawDicom {
    fn validate(self) -> Result<DicomConfig, ConfigError> {
        let ae_title = AeTitle::parse(self.ae_title.as_deref().unwrap_or("CXR_WORKER"))
            .map_err(|m| invalid("dicom.ae_title", m))?;
        let listen_raw = self.listen.unwrap_or_else(|| "0.0.0.0:11112".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            invalid(
                "dicom.listen",
                format!("{listen_raw:?} is not \"host:port\" with an IP address"),
            )
        })?;
        let allowed_calling_ae_titles = self
            .allowed_calling_ae_titles
            .iter()
            .map(|s| AllowedPeer::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("dicom.allowed_calling_ae_titles", m))?;
        let max_associations = positive(
            "dicom.max_associations",
            self.max_associations.unwrap_or(32),
            4096,
        )? as usize;
        let max_associations_per_host = positive(
            "dicom.max_associations_per_host",
            self.max_associations_per_host
                .unwrap_or(16.min(max_associations as i64)),
            max_associations as i64,
        )? as usize;
        let max_pending_associations = positive(
            "dicom.max_pending_associations",
            self.max_pending_associations.unwrap_or(64),
            65_536,
        )? as usize;
        let max_pending_per_host = positive(
            "dicom.max_pending_per_host",
            self.max_pending_per_host
                .unwrap_or(8.min(max_pending_associations as i64)),
            max_pending_associations as i64,
        )? as usize;
        let max_pdu_length = self.max_pdu_length.unwrap_or(131_072);
        if !(4096..=1_048_576).contains(&max_pdu_length) {
            return Err(invalid(
                "dicom.max_pdu_length",
                format!("{max_pdu_length} is out of range 4096..=1048576"),
            ));
        }
        let receive_memory_mb = self.receive_memory_mb.unwrap_or(256.0);
        // one association's read buffers and a few fragments must fit
        let least = (8 * max_pdu_length) as f64 / 1_048_576.0;
        if !(receive_memory_mb.is_finite()
            && receive_memory_mb >= least
            && receive_memory_mb <= 1_048_576.0)
        {
            return Err(invalid(
                "dicom.receive_memory_mb",
                format!(
                    "{receive_memory_mb} is out of range [{least}, 1048576] \
                     (at least 8 PDUs of dicom.max_pdu_length)"
                ),
            ));
        }
        let max_dataset_mb = self.max_dataset_mb.unwrap_or(512.0);
        if !(max_dataset_mb.is_finite() && max_dataset_mb > 0.0 && max_dataset_mb <= 4096.0) {
            return Err(invalid(
                "dicom.max_dataset_mb",
                format!("{max_dataset_mb} is out of range (0, 4096]"),
            ));
        }
        let accepted_sop_classes = match self.accepted_sop_classes {
            None => sop_classes::STORAGE
                .iter()
                .map(|c| c.uid.to_string())
                .collect(),
            Some(list) => {
                for uid in &list {
                    if sop_classes::storage_class(uid).is_none() {
                        return Err(invalid(
                            "dicom.accepted_sop_classes",
                            format!(
                                "{uid} is not a storage SOP class this worker supports ({})",
                                sop_classes::STORAGE
                                    .iter()
                                    .map(|c| c.uid)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
                if list.is_empty() {
                    return Err(invalid("dicom.accepted_sop_classes", "must not be empty"));
                }
                list
            }
        };
        Ok(DicomConfig {
            ae_title,
            listen,
            allowed_calling_ae_titles,
            max_associations,
            max_associations_per_host,
            max_pending_associations,
            max_pending_per_host,
            association_request_timeout: seconds(
                "dicom.association_request_timeout_secs",
                self.association_request_timeout_secs.unwrap_or(10.0),
            )?,
            receive_memory_budget_bytes: (receive_memory_mb * 1_048_576.0) as usize,
            max_pdu_length: max_pdu_length as u32,
            read_timeout: seconds(
                "dicom.read_timeout_secs",
                self.read_timeout_secs.unwrap_or(60.0),
            )?,
            write_timeout: seconds(
                "dicom.write_timeout_secs",
                self.write_timeout_secs.unwrap_or(60.0),
            )?,
            max_dataset_bytes: (max_dataset_mb * 1024.0 * 1024.0) as usize,
            accepted_sop_classes,
        })
    }
}

impl RawDatabase {
    fn validate(self) -> Result<DatabaseConfig, ConfigError> {
        let url = self
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("database.url", "missing"))?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        Ok(DatabaseConfig {
            url,
            max_connections: positive(
                "database.max_connections",
                self.max_connections.unwrap_or(16),
                1000,
            )? as u32,
            acquire_timeout: seconds(
                "database.acquire_timeout_secs",
                self.acquire_timeout_secs.unwrap_or(5.0),
            )?,
        })
    }
}

impl RawModels {
    fn validate(self, base: &Path) -> Result<ModelsConfig, ConfigError> {
        let execution_providers = match self.execution_providers {
            None => vec![
                ExecutionProvider::Tensorrt,
                ExecutionProvider::Cuda,
                ExecutionProvider::Cpu,
            ],
            Some(list) => {
                let mut out = Vec::new();
                for name in list {
                    let ep = match name.to_ascii_lowercase().as_str() {
                        "tensorrt" => ExecutionProvider::Tensorrt,
                        "cuda" => ExecutionProvider::Cuda,
                        "cpu" => ExecutionProvider::Cpu,
                        other => {
                            return Err(invalid(
                                "models.execution_providers",
                                format!(
                                    "unknown provider {other:?}; expected tensorrt, cuda or cpu"
                                ),
                            ));
                        }
                    };
                    if !out.contains(&ep) {
                        out.push(ep);
                    }
                }
                if out.is_empty() {
                    return Err(invalid("models.execution_providers", "must not be empty"));
                }
                out
            }
        };
        Ok(ModelsConfig {
            onnxruntime_library: self.onnxruntime_library.map(|p| resolve(base, p)),
            segmenter: resolve(
                base,
                self.segmenter
                    .unwrap_or_else(|| PathBuf::from("../onnx/anatomy-segmenter.onnx")),
            ),
            classifier: resolve(
                base,
                self.classifier
                    .unwrap_or_else(|| PathBuf::from("../onnx/anatomy-xnet.onnx")),
            ),
            execution_providers,
            batch_size: positive("models.batch_size", self.batch_size.unwrap_or(8), 256)? as usize,
            intra_threads: match self.intra_threads.unwrap_or(0) {
                v @ 0..=256 => v as usize,
                v => {
                    return Err(invalid(
                        "models.intra_threads",
                        format!("{v} is out of range 0..=256"),
                    ));
                }
            },
            tensorrt_fp16: self.tensorrt_fp16.unwrap_or(true),
            tensorrt_cache_dir: self.tensorrt_cache_dir.map(|p| resolve(base, p)),
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let level = self.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{level:?} is not a valid filter"),
            ));
        }
        let format = match self.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: expected \"text\" or \"json\""),
                ));
            }
        };
        Ok(LogConfig { level, format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn minimal_file_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.dicom.ae_title.as_str(), "CXR_WORKER");
        assert_eq!(c.dicom.listen.port(), 11112);
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
            ],
        )
        .unwrap();
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
                "#
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.destinations.len(), 2);
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
