//! The DICOM audit trail (PS3.15 A.5 audit messages, IHE ATNA), beside the flow: the daemon
//! records what happens to patient data (a study received, an SR sent, an admin reading or
//! resending), who started and stopped it, and which peers were refused.
//!
//! [`record`] renders an [`AuditEvent`] to its XML `AuditMessage` and inserts it into the
//! `audit_queue` table (SQL in `db::audit`): durable at once, and never waiting on the network.
//! [`run_sender`] delivers the queue to the syslog collector (RFC 5424 messages over UDP,
//! RFC 5426, or TLS, RFC 5425) and/or a local file, at least once, retrying with backoff while
//! a destination is down. See `docs/audit.md`.
//!
//! Patient names and IDs appear only inside audit messages (the queue, the collector, the
//! file), never in `tracing` events: errors here name addresses, paths and row counts only.

mod event;
mod sender;
pub mod syslog;
mod transport;
mod xml;

use std::path::PathBuf;

use chrono::Utc;
use sqlx::PgPool;

use crate::config::AuditConfig;
use crate::db;

pub use event::{
    Activity, AlertKind, AuditEvent, Code, DatabaseQuery, Direction, LocalApplication, LocalUser,
    NetworkAccessPoint, Outcome, Patient, RemoteNode, SopClassCount, Source, Study, codes,
};
pub use sender::{run_sender, run_sender_to};
pub use transport::{Collector, client_config, server_name};
pub use xml::escape;

/// An audit operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Inserting a message into the queue failed (the event is not recorded).
    #[error("cannot queue the audit message: {0}")]
    Enqueue(sqlx::Error),
    /// Claiming, marking or deleting queued messages failed.
    #[error("audit queue query failed: {0}")]
    Queue(sqlx::Error),
    /// Reading a PEM file of the TLS connection failed.
    #[error("cannot load the audit TLS file {path}: {message}")]
    ReadTlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The TLS client configuration cannot be built.
    #[error("invalid audit TLS configuration: {message}")]
    TlsConfig {
        /// What is wrong.
        message: String,
    },
    /// Resolving, or connecting to, the collector failed.
    #[error("cannot connect to the audit collector {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake with the collector failed.
    #[error("TLS handshake with the audit collector {address} failed: {source}")]
    Handshake {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Sending a message to the collector failed.
    #[error("cannot send to the audit collector {address}: {source}")]
    Send {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Appending to the audit file failed.
    #[error("cannot write the audit file {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Who reports events under `config`: its source ID and site, this host and this process.
pub fn source(config: &AuditConfig) -> Source {
    Source {
        id: config.source_id.clone(),
        enterprise_site_id: config.enterprise_site_id.clone(),
        hostname: config.hostname.clone(),
        process_id: std::process::id(),
    }
}

/// Record `event`: render it, now, and queue it for the sender. A no-op when audit is off.
/// Waits for one database insert only, never for the collector. Returns the queue row's id.
pub async fn record(
    pool: &PgPool,
    config: &AuditConfig,
    event: &AuditEvent,
) -> Result<Option<i64>, AuditError> {
    if !config.enabled {
        return Ok(None);
    }
    let now = Utc::now();
    let source = source(config);
    let xml = event.to_xml(&source, now);
    let procid = source.process_id.to_string();
    let id = db::audit::insert(
        pool,
        &db::audit::NewAuditMessage {
            created_at: now,
            event_kind: event.kind(),
            severity: i16::from(event.outcome().severity()),
            hostname: &config.hostname,
            procid: &procid,
            message: &xml,
        },
    )
    .await
    .map_err(AuditError::Enqueue)?;
    tracing::debug!(audit_id = id, event = event.kind(), "audit event recorded");
    Ok(Some(id))
}

/// What the daemon's stages hold to record events: the pool, the `[audit]` settings and our AE
/// title. Cheap to clone. Exists only while audit is enabled ([`Auditor::new`] gives `None`
/// otherwise), so a stage without one records nothing.
#[derive(Clone)]
pub struct Auditor {
    pool: PgPool,
    config: std::sync::Arc<AuditConfig>,
    ae_title: String,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("ae_title", &self.ae_title)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// A recorder for `config`, or `None` when audit is off.
    pub fn new(pool: PgPool, config: &AuditConfig, ae_title: &str) -> Option<Self> {
        config.enabled.then(|| Self {
            pool,
            config: std::sync::Arc::new(config.clone()),
            ae_title: ae_title.to_string(),
        })
    }

    /// This application, as a participant: our AE title (or `ae_title`) on this host.
    pub fn application(&self, ae_title: Option<&str>) -> LocalApplication {
        LocalApplication {
            ae_title: ae_title.unwrap_or(&self.ae_title).to_string(),
            access_point: NetworkAccessPoint::Name(self.config.hostname.clone()),
        }
    }

    /// The pool events are queued in (for the lookups a stage makes before recording).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Record `event` now; a failure is logged (without patient data) and otherwise ignored:
    /// auditing never stops the work it describes.
    pub async fn record(&self, event: &AuditEvent) {
        if let Err(e) = record(&self.pool, &self.config, event).await {
            tracing::warn!(error = %e, event = event.kind(), "audit event not recorded");
        }
    }

    /// Record `event` in a task of its own, so the caller does not wait for the database.
    pub fn spawn(&self, event: AuditEvent) {
        let me = self.clone();
        tokio::spawn(async move { me.record(&event).await });
    }
}

/// The patient and study objects of one study of a transfer.
pub fn patient_and_study(t: &db::audit::TransferredStudy) -> (Patient, Study) {
    (
        Patient {
            id: t.patient_id.clone().unwrap_or_default(),
            name: t.patient_name.clone(),
        },
        Study {
            instance_uid: t.study_instance_uid.clone(),
            sop_classes: t
                .sop_classes
                .iter()
                .map(|(uid, n)| SopClassCount {
                    uid: uid.clone(),
                    instances: u32::try_from(*n).unwrap_or(u32::MAX),
                })
                .collect(),
            accession_number: t.accession_number.clone(),
        },
    )
}

/// A cap on how many events of one kind are recorded per window, so a flood (thousands of
/// refused connections a minute) cannot fill the queue: beyond the cap events are counted, and
/// the count is reported with the next event recorded.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: std::time::Duration,
    /// Window start, events recorded in it, events dropped since the last recorded one.
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl RateLimit {
    /// At most `per_window` events per `window`.
    pub fn new(per_window: u32, window: std::time::Duration) -> Self {
        Self {
            per_window,
            window,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(dropped)` when an event at `now` may be recorded (`dropped`: how many were not
    /// since the last recorded one); `None` when it is dropped.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.duration_since(s.0) >= self.window {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 >= self.per_window {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

/// A destination (or any node we call) as a participant: its AE title, and its host as an IP
/// address when it is one, else as a name.
pub fn node_at(ae_title: &str, host: &str) -> RemoteNode {
    RemoteNode {
        ae_title: Some(ae_title.to_string()),
        access_point: host.parse().map_or_else(
            |_| NetworkAccessPoint::Name(host.to_string()),
            NetworkAccessPoint::Ip,
        ),
    }
}

/// The patient and study objects for one object of `sop_class_uid` about `study_uid`, patient
/// and accession read from the database; `None` (logged) when it cannot be read.
pub async fn one_object_of_study(
    pool: &PgPool,
    study_uid: &str,
    sop_class_uid: &str,
) -> Option<(Patient, Study)> {
    let (patient_id, patient_name, accession_number) =
        match db::audit::study_patient(pool, study_uid).await {
            Ok(Some(p)) => p,
            Ok(None) => (None, None, None),
            Err(e) => {
                tracing::warn!(error = %e, "audit: cannot read the study of an event");
                return None;
            }
        };
    Some(patient_and_study(&db::audit::TransferredStudy {
        study_instance_uid: study_uid.to_string(),
        patient_id,
        patient_name,
        accession_number,
        sop_classes: vec![(sop_class_uid.to_string(), 1)],
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod rate_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flood_is_capped_and_counted() {
        let limit = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Some(0));
        assert_eq!(limit.admit(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.admit(t0), None);
        }
        // the next window: the first event carries the count of the dropped ones
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(limit.admit(t1), Some(5));
        assert_eq!(limit.admit(t1), Some(0));
    }
}
