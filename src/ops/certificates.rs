//! The TLS certificates in use, by configuration key, watched for expiry: the metric
//! `cxr_tls_certificate_expiry_seconds{certificate="KEY"}`, a warning on `/readyz` (and in the log
//! at start-up and on reload) from [`WARN_BEFORE`] ahead, and a failed readiness check once one
//! has expired. A SIGHUP that loads renewed files replaces them here.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::config::Config;
use crate::tls::{CertificateInfo, ClientAuth, ServerCheck};

/// How long before a certificate expires `/readyz` and the log start warning.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One certificate and the key that names the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// `dicom.tls.certificate`, `dicom.tls.ca_file`, `destinations.NAME.ca_file`, …; a CA file
    /// with several certificates gives `KEY[1]`, `KEY[2]`… after the first.
    pub key: String,
    pub info: CertificateInfo,
}

/// The certificates of the running configuration.
#[derive(Debug, Default)]
pub struct Certificates {
    inner: Mutex<Vec<Tracked>>,
}

/// What [`Certificates::assess`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// No certificate has expired (or none is in use).
    pub ok: bool,
    /// Expired and expiring certificates, one sentence each.
    pub problems: Vec<String>,
    pub count: usize,
}

impl Certificates {
    /// The certificates `config` uses.
    pub fn of(config: &Config) -> Self {
        Self {
            inner: Mutex::new(in_use(config)),
        }
    }

    /// Replace them with those of `config` (after a reload).
    pub fn update(&self, config: &Config) {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = in_use(config);
    }

    /// A copy of the list.
    pub fn list(&self) -> Vec<Tracked> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Which certificates have expired, or will within [`WARN_BEFORE`], at `now` (Unix seconds).
    pub fn assess(&self, now: i64) -> Assessment {
        let list = self.list();
        let warn = WARN_BEFORE.as_secs() as i64;
        let mut problems = Vec::new();
        let mut ok = true;
        for t in &list {
            let left = t.info.seconds_left(now);
            if left <= 0 {
                ok = false;
                problems.push(format!(
                    "{} ({}) expired {} day(s) ago",
                    t.key,
                    t.info.subject,
                    (-left) / 86_400
                ));
            } else if left <= warn {
                problems.push(format!(
                    "{} ({}) expires in {} day(s)",
                    t.key,
                    t.info.subject,
                    left / 86_400
                ));
            }
        }
        Assessment {
            ok,
            problems,
            count: list.len(),
        }
    }

    /// Log a warning for each expired or expiring certificate.
    pub fn warn_if_expiring(&self, now: i64) {
        for problem in self.assess(now).problems {
            tracing::warn!(certificate = %problem, "TLS certificate expired or expiring: renew it and reload (SIGHUP)");
        }
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn in_use(config: &Config) -> Vec<Tracked> {
    let mut out = Vec::new();
    let mut add = |key: String, infos: &[CertificateInfo]| {
        for (i, info) in infos.iter().enumerate() {
            let key = if i == 0 {
                key.clone()
            } else {
                format!("{key}[{i}]")
            };
            out.push(Tracked {
                key,
                info: info.clone(),
            });
        }
    };
    if let Some(tls) = &config.dicom.tls {
        add(
            "dicom.tls.certificate".into(),
            std::slice::from_ref(&tls.identity.info),
        );
        if let ClientAuth::Optional(a) | ClientAuth::Required(a) = &tls.clients {
            add("dicom.tls.ca_file".into(), &a.certificates);
        }
    }
    for d in &config.destinations {
        let Some(tls) = &d.tls else { continue };
        if let Some(id) = &tls.identity {
            add(
                format!("destinations.{}.certificate", d.name),
                std::slice::from_ref(&id.info),
            );
        }
        if let ServerCheck::Hostname(a) = &tls.check {
            add(format!("destinations.{}.ca_file", d.name), &a.certificates);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    fn tracked(key: &str, not_after: i64) -> Tracked {
        Tracked {
            key: key.into(),
            info: CertificateInfo {
                subject: format!("CN={key}"),
                names: vec![],
                not_before: 0,
                not_after,
                sha256: String::new(),
            },
        }
    }

    #[test]
    fn expired_fails_expiring_warns_and_valid_is_quiet() {
        let now = 1_000_000_000;
        let day = 86_400;
        let c = Certificates {
            inner: Mutex::new(vec![
                tracked("valid", now + 90 * day),
                tracked("soon", now + 10 * day + 5),
            ]),
        };
        let a = c.assess(now);
        assert!(a.ok);
        assert_eq!(a.problems, vec!["soon (CN=soon) expires in 10 day(s)"]);
        c.inner.lock().unwrap().push(tracked("old", now - 3 * day));
        let a = c.assess(now);
        assert!(!a.ok);
        assert_eq!(a.problems.len(), 2);
        assert!(a.problems[1].contains("expired 3 day(s) ago"), "{a:?}");
    }
}
