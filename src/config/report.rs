//! `[report]` and `[[destinations]]`: the archive of outputs, the sending policy and the peers
//! that receive them (each its choice of SR, SEG and SC); the file's shape, its validation and the typed form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::tls::{DestinationTls, RawDestinationTls};
use super::{ConfigError, invalid, positive, resolve, seconds};
use crate::dicom::ae::AeTitle;

/// A DICOM peer that receives our outputs (`[[destinations]]`).
#[derive(Debug, Clone, PartialEq)]
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
    /// DICOM TLS towards this peer (`tls = true`); `None`: plain TCP.
    pub tls: Option<DestinationTls>,
    /// What this peer receives (`outputs`, `not_analysed`).
    pub outputs: DestinationOutputs,
}

/// The outputs a destination receives: `outputs = ["sr", "seg", "sc"]` (the default: all three)
/// and `not_analysed = true` (the default: it also gets the "not analysed" SR of a study with no
/// analysable image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationOutputs {
    /// The findings SR (`"sr"`).
    pub sr: bool,
    /// The anatomy Segmentation of each analysed image (`"seg"`).
    pub seg: bool,
    /// The Secondary Capture picture of each analysed image (`"sc"`).
    pub sc: bool,
    /// The "not analysed" SR (only with `sr`).
    pub not_analysed: bool,
}

impl Default for DestinationOutputs {
    fn default() -> Self {
        Self {
            sr: true,
            seg: true,
            sc: true,
            not_analysed: true,
        }
    }
}

impl DestinationOutputs {
    /// The output names `outputs` accepts, as `outbox.kind` spells them.
    pub const NAMES: [&'static str; 3] = ["sr", "seg", "sc"];

    /// Whether the destination takes objects of this outbox kind (`sr`, `seg`, `sc`).
    pub fn takes(&self, kind: &str) -> bool {
        match kind {
            "sr" => self.sr,
            "seg" => self.seg,
            "sc" => self.sc,
            _ => false,
        }
    }

    fn parse(
        names: Option<Vec<String>>,
        not_analysed: Option<bool>,
        key: impl Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let mut out = Self {
            not_analysed: not_analysed.unwrap_or(true),
            ..Self::default()
        };
        let Some(names) = names else {
            return Ok(out);
        };
        if names.is_empty() {
            return Err(invalid(
                &key("outputs"),
                "is empty: list at least one of \"sr\", \"seg\", \"sc\" (or remove the destination)",
            ));
        }
        (out.sr, out.seg, out.sc) = (false, false, false);
        for name in &names {
            let flag = match name.trim() {
                "sr" => &mut out.sr,
                "seg" => &mut out.seg,
                "sc" => &mut out.sc,
                other => {
                    return Err(invalid(
                        &key("outputs"),
                        format!("{other:?} is not an output; use \"sr\", \"seg\" or \"sc\""),
                    ));
                }
            };
            *flag = true;
        }
        if not_analysed == Some(true) && !out.sr {
            return Err(invalid(
                &key("not_analysed"),
                "the \"not analysed\" SR is an SR: add \"sr\" to outputs, or remove not_analysed",
            ));
        }
        out.not_analysed &= out.sr;
        Ok(out)
    }
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    name: Option<String>,
    ae_title: Option<String>,
    host: Option<String>,
    port: Option<i64>,
    calling_ae_title: Option<String>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    server_name: Option<String>,
    pinned_sha256: Option<String>,
    outputs: Option<Vec<String>>,
    not_analysed: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReport {
    archive_dir: Option<PathBuf>,
    connect_timeout_secs: Option<f64>,
    dimse_timeout_secs: Option<f64>,
    retry_base_secs: Option<f64>,
    retry_max_secs: Option<f64>,
    max_attempts: Option<i64>,
    poll_interval_secs: Option<f64>,
    max_concurrent_sends: Option<i64>,
}

pub(super) fn validate_destinations(
    raw: Vec<RawDestination>,
    our_ae: &AeTitle,
    base: &Path,
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
        let tls = RawDestinationTls {
            tls: d.tls,
            ca_file: d.ca_file,
            certificate: d.certificate,
            private_key: d.private_key,
            server_name: d.server_name,
            pinned_sha256: d.pinned_sha256,
        }
        .validate(base, &host, key)?;
        let outputs = DestinationOutputs::parse(d.outputs, d.not_analysed, key)?;
        out.push(Destination {
            name,
            ae_title,
            host,
            port,
            calling_ae_title,
            tls,
            outputs,
        });
    }
    Ok(out)
}

impl RawReport {
    pub(super) fn validate(
        self,
        base: &Path,
        spool_dir: &Path,
    ) -> Result<ReportConfig, ConfigError> {
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
