//! `[dicom]`: the C-STORE SCP's AE title, address, admission limits, timeouts and accepted SOP
//! classes; the file's shape, its validation and the typed form.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::tls::{RawScpTls, ScpTlsConfig};
use super::{ConfigError, invalid, positive, seconds};
use crate::dicom::ae::{AeTitle, AllowedPeer};
use crate::dicom::sop_classes;

#[derive(Debug, Clone)]
pub struct DicomConfig {
    pub ae_title: AeTitle,
    /// The plain TCP listener; `None` when `listen = "off"` (TLS only).
    pub listen: Option<SocketAddr>,
    /// The DICOM TLS listener (`[dicom.tls]`), when configured.
    pub tls: Option<ScpTlsConfig>,
    /// The calling AE titles (optionally bound to an address) allowed to store. Empty: any
    /// calling AE title is accepted — which a configuration file must say explicitly with
    /// `allow_any_calling_ae = true` ([`DicomConfig::check_admission`]).
    pub allowed_calling_ae_titles: Vec<AllowedPeer>,
    /// `allow_any_calling_ae`: the file accepts any calling AE title on purpose.
    pub allow_any_calling_ae: bool,
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

impl DicomConfig {
    /// Secure by default: a file that lists no calling AE title must say
    /// `allow_any_calling_ae = true`, or anyone who reaches the port could store studies (and
    /// have reports about them sent into the PACS). Checked when a file is loaded to run from.
    pub fn check_admission(&self) -> Result<(), ConfigError> {
        if self.allowed_calling_ae_titles.is_empty() && !self.allow_any_calling_ae {
            return Err(invalid(
                "dicom.allowed_calling_ae_titles",
                "is empty: list the calling AE titles allowed to store (\"AE\" or \"AE@address\"), \
                 or set dicom.allow_any_calling_ae = true to accept any peer that reaches the port",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDicom {
    ae_title: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    allowed_calling_ae_titles: Vec<String>,
    allow_any_calling_ae: Option<bool>,
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
    tls: Option<RawScpTls>,
}

impl RawDicom {
    /// Relative TLS file paths are taken from `base`, the configuration file's directory.
    pub(super) fn validate(mut self, base: &Path) -> Result<DicomConfig, ConfigError> {
        let ae_title = AeTitle::parse(self.ae_title.as_deref().unwrap_or("CXR_WORKER"))
            .map_err(|m| invalid("dicom.ae_title", m))?;
        let listen_raw = self.listen.take().unwrap_or_else(|| "0.0.0.0:11112".into());
        let listen: Option<SocketAddr> = match listen_raw.trim() {
            "off" => None,
            text => Some(text.parse().map_err(|_| {
                invalid(
                    "dicom.listen",
                    format!("{listen_raw:?} is not \"host:port\" with an IP address, or \"off\""),
                )
            })?),
        };
        let tls = self.tls.take().map(|t| t.validate(base)).transpose()?;
        if listen.is_none() && tls.is_none() {
            return Err(invalid(
                "dicom.listen",
                "is \"off\" and there is no [dicom.tls] listener: nothing would receive",
            ));
        }
        if let (Some(plain), Some(t)) = (listen, &tls)
            && plain.port() == t.listen.port()
            && plain.port() != 0
            && (plain.ip() == t.listen.ip()
                || plain.ip().is_unspecified()
                || t.listen.ip().is_unspecified())
        {
            return Err(invalid(
                "dicom.tls.listen",
                format!(
                    "{} is also dicom.listen: the two listeners need their own ports",
                    t.listen
                ),
            ));
        }
        let allowed_calling_ae_titles = self
            .allowed_calling_ae_titles
            .iter()
            .map(|s| AllowedPeer::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("dicom.allowed_calling_ae_titles", m))?;
        let (max_associations, max_associations_per_host) = self.association_limits()?;
        let (max_pending_associations, max_pending_per_host) = self.pending_limits()?;
        let (max_pdu_length, receive_memory_mb) = self.pdu_and_memory()?;
        let max_dataset_mb = self.max_dataset_mb.unwrap_or(512.0);
        if !(max_dataset_mb.is_finite() && max_dataset_mb > 0.0 && max_dataset_mb <= 4096.0) {
            return Err(invalid(
                "dicom.max_dataset_mb",
                format!("{max_dataset_mb} is out of range (0, 4096]"),
            ));
        }
        let accepted_sop_classes = accepted_sop_classes(self.accepted_sop_classes.take())?;
        let allow_any_calling_ae = self.allow_any_calling_ae.unwrap_or(false);
        if allow_any_calling_ae && !allowed_calling_ae_titles.is_empty() {
            return Err(invalid(
                "dicom.allow_any_calling_ae",
                "is true while dicom.allowed_calling_ae_titles lists peers: keep one of the two",
            ));
        }
        Ok(DicomConfig {
            ae_title,
            listen,
            tls,
            allowed_calling_ae_titles,
            allow_any_calling_ae,
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

impl RawDicom {
    /// `max_associations` and `max_associations_per_host` (at most the former).
    fn association_limits(&self) -> Result<(usize, usize), ConfigError> {
        total_and_per_host(
            ("dicom.max_associations", self.max_associations, 32, 4096),
            (
                "dicom.max_associations_per_host",
                self.max_associations_per_host,
                16,
            ),
        )
    }

    /// `max_pending_associations` and `max_pending_per_host` (at most the former).
    fn pending_limits(&self) -> Result<(usize, usize), ConfigError> {
        total_and_per_host(
            (
                "dicom.max_pending_associations",
                self.max_pending_associations,
                64,
                65_536,
            ),
            ("dicom.max_pending_per_host", self.max_pending_per_host, 8),
        )
    }

    /// `max_pdu_length`, and `receive_memory_mb`, which must hold at least 8 such PDUs.
    fn pdu_and_memory(&self) -> Result<(i64, f64), ConfigError> {
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
        Ok((max_pdu_length, receive_memory_mb))
    }
}

/// A limit in all, `(key, value, default, max)`, and its share per peer address, `(key, value,
/// default)`: the share defaults to at most the total and may not exceed it.
fn total_and_per_host(
    (total_key, total, total_default, total_max): (&str, Option<i64>, i64, i64),
    (host_key, per_host, host_default): (&str, Option<i64>, i64),
) -> Result<(usize, usize), ConfigError> {
    let total = positive(total_key, total.unwrap_or(total_default), total_max)?;
    let per_host = positive(host_key, per_host.unwrap_or(host_default.min(total)), total)?;
    Ok((total as usize, per_host as usize))
}

/// `accepted_sop_classes`: storage classes this worker supports (by default CR and DX; Secondary
/// Capture only when listed).
fn accepted_sop_classes(configured: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    match configured {
        None => Ok(sop_classes::STORAGE
            .iter()
            .filter(|c| c.by_default)
            .map(|c| c.uid.to_string())
            .collect()),
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
            Ok(list)
        }
    }
}
