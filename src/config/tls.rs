//! `[dicom.tls]` (the DICOM TLS listener) and the TLS keys of a `[[destinations]]` entry; the
//! files' shape, their validation (every certificate, key and CA file is read and checked here,
//! so a missing or unreadable one is an error naming its key at start-up, on SIGHUP and in
//! `check-config`) and the typed forms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{ConfigError, invalid, resolve};
use crate::dicom::ae::AeTitle;
use crate::tls::{self, Anchors, ClientAuth, Identity, ServerCheck};

/// The DICOM TLS listener (`[dicom.tls]`).
#[derive(Clone)]
pub struct ScpTlsConfig {
    /// Where it listens; 2762 is the registered port of DICOM over TLS.
    pub listen: SocketAddr,
    /// Our certificate chain and private key (`certificate`, `private_key`).
    pub identity: Identity,
    /// Whether clients must (or may) present a certificate chaining to `ca_file`.
    pub clients: ClientAuth,
    /// Calling AE titles bound to a certificate name (`certificate_names`): an association
    /// calling as one of them must come over TLS with a client certificate carrying that name
    /// (a DNS or IP subject alternative name, a common name, or the whole subject DN).
    pub certificate_names: Vec<(AeTitle, String)>,
    /// The rustls configuration built from the above.
    pub server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ScpTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScpTlsConfig")
            .field("listen", &self.listen)
            .field("identity", &self.identity)
            .field("clients", &self.clients)
            .field("certificate_names", &self.certificate_names)
            .finish()
    }
}

impl PartialEq for ScpTlsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen
            && self.identity == other.identity
            && self.clients == other.clients
            && self.certificate_names == other.certificate_names
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScpTls {
    listen: Option<String>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    require_client_certificate: Option<bool>,
    #[serde(default)]
    certificate_names: BTreeMap<String, String>,
}

impl RawScpTls {
    pub(super) fn validate(self, base: &Path) -> Result<ScpTlsConfig, ConfigError> {
        let listen_raw = self.listen.unwrap_or_else(|| "0.0.0.0:2762".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            invalid(
                "dicom.tls.listen",
                format!("{listen_raw:?} is not \"host:port\" with an IP address"),
            )
        })?;
        let identity = identity(
            base,
            ("dicom.tls.certificate", self.certificate),
            ("dicom.tls.private_key", self.private_key),
        )?
        .ok_or_else(|| invalid("dicom.tls.certificate", "missing"))?;
        let anchors = self
            .ca_file
            .map(|p| anchors("dicom.tls.ca_file", &resolve(base, p)))
            .transpose()?;
        let clients = match (self.require_client_certificate.unwrap_or(true), anchors) {
            (true, Some(a)) => ClientAuth::Required(a),
            (false, Some(a)) => ClientAuth::Optional(a),
            (false, None) => ClientAuth::None,
            (true, None) => {
                return Err(invalid(
                    "dicom.tls.ca_file",
                    "missing: clients must present a certificate (mutual TLS, the default), \
                     which must chain to the CAs in this file; or set \
                     dicom.tls.require_client_certificate = false",
                ));
            }
        };
        let mut certificate_names = Vec::with_capacity(self.certificate_names.len());
        for (ae, name) in self.certificate_names {
            let key = format!("dicom.tls.certificate_names.{ae}");
            let ae = AeTitle::parse(&ae).map_err(|m| invalid(&key, m))?;
            if name.trim().is_empty() {
                return Err(invalid(
                    &key,
                    "must name a certificate (a DNS name, an IP address, a common name or a subject DN)",
                ));
            }
            if matches!(clients, ClientAuth::None) {
                return Err(invalid(
                    &key,
                    "binds an AE title to a client certificate, but clients are not asked for \
                     one: set dicom.tls.ca_file",
                ));
            }
            certificate_names.push((ae, name.trim().to_string()));
        }
        let server = tls::server_config(&identity, &clients)
            .map_err(|e| invalid("dicom.tls.certificate", e.to_string()))?;
        Ok(ScpTlsConfig {
            listen,
            identity,
            clients,
            certificate_names,
            server,
        })
    }
}

/// TLS towards one destination (`tls = true` in its `[[destinations]]` entry).
#[derive(Clone)]
pub struct DestinationTls {
    /// How its certificate is checked: chain to `ca_file` and name, or a pinned fingerprint.
    pub check: ServerCheck,
    /// Our client certificate, when the destination asks for one.
    pub identity: Option<Identity>,
    /// The name its certificate must carry (`server_name`, default: its host): a DNS name or
    /// an IP address.
    pub server_name: String,
    /// The rustls configuration built from the above.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for DestinationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationTls")
            .field("check", &self.check)
            .field("identity", &self.identity)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl PartialEq for DestinationTls {
    fn eq(&self, other: &Self) -> bool {
        self.check == other.check
            && self.identity == other.identity
            && self.server_name == other.server_name
    }
}

/// The TLS keys of a `[[destinations]]` entry, as written.
#[derive(Debug, Default)]
pub(super) struct RawDestinationTls {
    pub tls: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub pinned_sha256: Option<String>,
}

impl RawDestinationTls {
    /// `key("ca_file")` names a key of this destination in errors; `host` is where it is.
    pub(super) fn validate(
        self,
        base: &Path,
        host: &str,
        key: impl Fn(&str) -> String,
    ) -> Result<Option<DestinationTls>, ConfigError> {
        if !self.tls.unwrap_or(false) {
            for (name, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("certificate", self.certificate.is_some()),
                ("private_key", self.private_key.is_some()),
                ("server_name", self.server_name.is_some()),
                ("pinned_sha256", self.pinned_sha256.is_some()),
            ] {
                if set {
                    return Err(invalid(&key(name), "is set but tls is not true"));
                }
            }
            return Ok(None);
        }
        let check = match (self.ca_file, self.pinned_sha256) {
            (Some(ca), None) => {
                ServerCheck::Hostname(anchors(&key("ca_file"), &resolve(base, ca))?)
            }
            (None, Some(pin)) => ServerCheck::Pinned(
                tls::parse_sha256(&pin).map_err(|m| invalid(&key("pinned_sha256"), m))?,
            ),
            (None, None) => {
                return Err(invalid(
                    &key("ca_file"),
                    "missing: with tls = true, the destination's certificate is checked against \
                     a CA file (ca_file) or pinned by its SHA-256 fingerprint (pinned_sha256)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    &key("pinned_sha256"),
                    "is set together with ca_file: keep one of the two",
                ));
            }
        };
        let identity = identity(
            base,
            (&key("certificate"), self.certificate),
            (&key("private_key"), self.private_key),
        )?;
        let server_name = self
            .server_name
            .unwrap_or_else(|| host.to_string())
            .trim()
            .to_string();
        tls::server_name(&server_name).map_err(|m| {
            invalid(
                &key("server_name"),
                format!("{m}: not a DNS name or an IP address"),
            )
        })?;
        let client = tls::client_config(&check, identity.as_ref())
            .map_err(|e| invalid(&key("certificate"), e.to_string()))?;
        Ok(Some(DestinationTls {
            check,
            identity,
            server_name,
            client,
        }))
    }
}

/// A certificate and its key, both or neither; each error names its key.
fn identity(
    base: &Path,
    (cert_key, cert): (&str, Option<PathBuf>),
    (key_key, key): (&str, Option<PathBuf>),
) -> Result<Option<Identity>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            key_key,
            "missing: the certificate needs its private key",
        )),
        (None, Some(_)) => Err(invalid(
            cert_key,
            "missing: the private key needs its certificate",
        )),
        (Some(cert), Some(key)) => load_identity(
            &resolve(base, cert),
            &resolve(base, key),
            (cert_key, key_key),
        )
        .map(Some),
    }
}

/// Read a certificate and its key; an error names `cert_key` or `key_key`, whichever file it
/// is about.
pub(super) fn load_identity(
    cert: &Path,
    key: &Path,
    (cert_key, key_key): (&str, &str),
) -> Result<Identity, ConfigError> {
    Identity::load(cert, key).map_err(|e| {
        let named = match &e {
            tls::TlsError::NoKey { .. } | tls::TlsError::KeyMismatch { .. } => key_key,
            tls::TlsError::Read { path, .. } | tls::TlsError::TooLarge { path, .. }
                if path == key =>
            {
                key_key
            }
            _ => cert_key,
        };
        invalid(named, e.to_string())
    })
}

pub(super) fn anchors(key: &str, path: &Path) -> Result<Anchors, ConfigError> {
    Anchors::load(path).map_err(|e| invalid(key, e.to_string()))
}
