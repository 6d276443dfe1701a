//! `[audit]`: the DICOM audit trail (PS3.15 A.5 messages, IHE ATNA): whether it is on, the
//! syslog collector, the TLS files towards it, the local file; the file's shape, its validation
//! and the typed form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, resolve, seconds};

/// How audit messages reach the syslog collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// RFC 5426: one message per datagram; a lost datagram goes unnoticed except on loopback.
    Udp,
    /// RFC 5425: octet-counted frames over TLS (the ATNA transport).
    Tls,
}

/// The syslog collector (`audit.syslog = "udp://host:port"` or `"tls://host:port"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// UDP or TLS.
    pub transport: SyslogTransport,
    /// Host name or IP address (without brackets); for TLS also the name the certificate
    /// must carry.
    pub host: String,
    /// The collector's port (514 for UDP and 6514 for TLS are the registered ones).
    pub port: u16,
}

/// The PEM files of the TLS connection to the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTlsFiles {
    /// The CA certificates that may sign the collector's certificate.
    pub ca_file: PathBuf,
    /// Our client certificate chain and its private key, when the collector asks for one
    /// (ATNA requires mutual authentication).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The audit trail (`[audit]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Off (the default): recording does nothing and no sender runs.
    pub enabled: bool,
    /// The syslog collector, if any.
    pub syslog: Option<SyslogTarget>,
    /// Set when `syslog` is `tls://`.
    pub tls: Option<AuditTlsFiles>,
    /// A local file that receives every message, one per line.
    pub file: Option<PathBuf>,
    /// `AuditSourceID`: who reports the events (default: the host name).
    pub source_id: String,
    /// `AuditEnterpriseSiteID`, if set.
    pub enterprise_site_id: Option<String>,
    /// This machine's name: the syslog HOSTNAME of every message recorded here.
    pub hostname: String,
    /// Longest wait between two delivery attempts while the collector or the file fails.
    pub retry_max: Duration,
    /// How often the sender looks for queued messages.
    pub poll_interval: Duration,
    /// Messages sent per round (and per database transaction).
    pub batch_size: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let hostname = local_hostname();
        Self {
            enabled: false,
            syslog: None,
            tls: None,
            file: None,
            source_id: hostname.clone(),
            enterprise_site_id: None,
            hostname,
            retry_max: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    enabled: Option<bool>,
    syslog: Option<String>,
    ca_file: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    file: Option<PathBuf>,
    source_id: Option<String>,
    enterprise_site_id: Option<String>,
    retry_max_secs: Option<f64>,
    poll_interval_secs: Option<f64>,
    batch_size: Option<i64>,
}

impl RawAudit {
    /// Relative paths are taken from `base`, the configuration file's directory.
    pub(super) fn validate(self, base: &Path) -> Result<AuditConfig, ConfigError> {
        let defaults = AuditConfig::default();
        let enabled = self.enabled.unwrap_or(false);
        let syslog = self.syslog.as_deref().map(parse_target).transpose()?;
        let file = self.file.map(|p| resolve(base, p));
        if let Some(f) = &file {
            check_parent(f)?;
        }
        if enabled && syslog.is_none() && file.is_none() {
            return Err(invalid(
                "audit.syslog",
                "audit is enabled but has nowhere to go: set audit.syslog and/or audit.file",
            ));
        }
        let tls = tls_files(
            syslog.as_ref(),
            self.ca_file.map(|p| resolve(base, p)),
            self.certificate.map(|p| resolve(base, p)),
            self.private_key.map(|p| resolve(base, p)),
        )?;
        Ok(AuditConfig {
            enabled,
            syslog,
            tls,
            file,
            source_id: token("audit.source_id", self.source_id)?.unwrap_or(defaults.source_id),
            enterprise_site_id: token("audit.enterprise_site_id", self.enterprise_site_id)?,
            hostname: defaults.hostname,
            retry_max: seconds("audit.retry_max_secs", self.retry_max_secs.unwrap_or(60.0))?,
            poll_interval: seconds(
                "audit.poll_interval_secs",
                self.poll_interval_secs.unwrap_or(1.0),
            )?,
            batch_size: positive("audit.batch_size", self.batch_size.unwrap_or(100), 10_000)?
                as usize,
        })
    }
}

/// `udp://host:port` or `tls://host:port` (an IPv6 address in brackets).
fn parse_target(raw: &str) -> Result<SyslogTarget, ConfigError> {
    let bad = |why: &str| {
        invalid(
            "audit.syslog",
            format!("{raw:?} {why}; expected \"udp://host:port\" or \"tls://host:port\""),
        )
    };
    let (transport, rest) = if let Some(rest) = raw.strip_prefix("udp://") {
        (SyslogTransport::Udp, rest)
    } else if let Some(rest) = raw.strip_prefix("tls://") {
        (SyslogTransport::Tls, rest)
    } else {
        return Err(bad("has no udp:// or tls:// scheme"));
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad("has no valid host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("has no port in 1..=65535"))?;
    Ok(SyslogTarget {
        transport,
        host: host.to_string(),
        port,
    })
}

/// The TLS files: `ca_file` is required for `tls://`, the client pair goes together, and every
/// file named must exist.
fn tls_files(
    syslog: Option<&SyslogTarget>,
    ca_file: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
) -> Result<Option<AuditTlsFiles>, ConfigError> {
    let is_tls = syslog.is_some_and(|s| s.transport == SyslogTransport::Tls);
    for (key, path) in [
        ("audit.ca_file", &ca_file),
        ("audit.certificate", &certificate),
        ("audit.private_key", &private_key),
    ] {
        if let Some(p) = path {
            if !is_tls {
                return Err(invalid(key, "is only used with audit.syslog = \"tls://…\""));
            }
            if !p.is_file() {
                return Err(invalid(key, format!("{} is not a file", p.display())));
            }
        }
    }
    if !is_tls {
        return Ok(None);
    }
    let ca_file = ca_file.ok_or_else(|| {
        invalid(
            "audit.ca_file",
            "required with audit.syslog = \"tls://…\": the CA that signs the collector's certificate",
        )
    })?;
    let client = match (certificate, private_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "audit.private_key",
                "missing: audit.certificate needs its key",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "audit.certificate",
                "missing: audit.private_key needs its certificate",
            ));
        }
    };
    // read and checked now, so a bad file stops start-up (or a reload) naming its key, instead
    // of the sender failing later
    super::tls::anchors("audit.ca_file", &ca_file)?;
    if let Some((cert, key)) = &client {
        super::tls::load_identity(cert, key, ("audit.certificate", "audit.private_key"))?;
    }
    Ok(Some(AuditTlsFiles { ca_file, client }))
}

/// The file's directory must exist (the file itself is created on the first message).
fn check_parent(file: &Path) -> Result<(), ConfigError> {
    match file.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        _ => Err(invalid(
            "audit.file",
            format!("the directory of {} does not exist", file.display()),
        )),
    }
}

/// An XML token: 1 to 256 printable characters, trimmed.
fn token(key: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim().to_string();
    if v.is_empty() || v.chars().count() > 256 || v.chars().any(char::is_control) {
        return Err(invalid(
            key,
            "must have 1 to 256 characters, none of them control characters",
        ));
    }
    Ok(Some(v))
}

/// This machine's host name (`localhost` when the kernel does not say).
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawAudit {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_by_default_and_parses_targets() {
        let c = RawAudit::default().validate(Path::new("/")).unwrap();
        assert!(!c.enabled);
        assert_eq!(c.source_id, c.hostname);
        let c = raw("enabled = true\nsyslog = \"udp://[::1]:514\"")
            .validate(Path::new("/"))
            .unwrap();
        assert_eq!(
            c.syslog,
            Some(SyslogTarget {
                transport: SyslogTransport::Udp,
                host: "::1".into(),
                port: 514
            })
        );
    }

    #[test]
    fn the_whole_file_loads_with_and_without_audit() {
        let base = "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n[spool]\ndir = \"/tmp/s\"\n";
        let load = |text: &str, env: &[(&str, &str)]| {
            super::super::Config::from_toml_str(
                text,
                Path::new("/etc/cxr-worker/cxr-worker.toml"),
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
        };
        assert!(!load(base, &[]).unwrap().audit.enabled);
        let on = format!("{base}[audit]\nenabled = true\nsyslog = \"udp://127.0.0.1:514\"\n");
        assert!(load(&on, &[]).unwrap().audit.enabled);
        let err = load(base, &[("CXR_WORKER__AUDIT__ENABLED", "true")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("audit.syslog"), "{err}");
        let err = load(&format!("{base}[audit]\nsyslg = \"x\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("syslg"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let cases: &[(&str, &str)] = &[
            ("enabled = true", "audit.syslog"),
            ("syslog = \"tcp://h:1\"", "audit.syslog"),
            ("syslog = \"udp://h\"", "audit.syslog"),
            ("syslog = \"udp://h:0\"", "audit.syslog"),
            ("syslog = \"tls://h:6514\"", "audit.ca_file"),
            (
                "syslog = \"udp://h:514\"\nca_file = \"ca.pem\"",
                "audit.ca_file",
            ),
            (
                "syslog = \"tls://h:6514\"\nca_file = \"missing.pem\"",
                "audit.ca_file",
            ),
            (
                "syslog = \"tls://h:6514\"\nca_file = \"ca.pem\"\ncertificate = \"ca.pem\"",
                "audit.private_key",
            ),
            ("file = \"/no/such/dir/audit.log\"", "audit.file"),
            ("source_id = \"\"", "audit.source_id"),
            ("retry_max_secs = 0", "audit.retry_max_secs"),
        ];
        for (text, key) in cases {
            let err = raw(text).validate(dir.path()).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // a CA file that holds no certificate is refused naming the key, a real one is taken
        let err = raw("enabled = true\nsyslog = \"tls://collector:6514\"\nca_file = \"ca.pem\"")
            .validate(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit.ca_file") && err.contains("no usable PEM certificate"),
            "{err}"
        );
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=audit CA",
            ])
            .arg("-keyout")
            .arg(dir.path().join("ca.key"))
            .arg("-out")
            .arg(&ca)
            .output()
            .unwrap();
        assert!(made.status.success(), "openssl: {made:?}");
        let ok = raw("enabled = true\nsyslog = \"tls://collector:6514\"\nca_file = \"ca.pem\"")
            .validate(dir.path())
            .unwrap();
        assert_eq!(ok.tls.unwrap().ca_file, ca);
    }
}
