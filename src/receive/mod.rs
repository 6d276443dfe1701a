//! Receive: the DICOM C-STORE SCP. Listener → association → DIMSE messages → the protocol-neutral
//! [`StoreHandler`] of `ingest` (spool + database), whose outcome is mapped to a DIMSE status here.
//! The listener and the shutdown signal come from outside, so tests bind port 0 and pass their
//! own trigger.

pub mod association;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::DicomConfig;
use crate::dicom::ae::{AeTitle, AllowedPeer, canonical_ip};
use crate::dicom::pdu::{self, PduStream};
use crate::ingest::budget::{Grant, MemoryBudget};
use crate::ingest::{RefusedPeer, StoreHandler};
use crate::tls::{self, CertificateInfo};

/// What the association layer needs to know; built from `[dicom]`. The accept loop reads the
/// current value for each connection, so a reload (SIGHUP) changes the allow-list of the next
/// association; the association and connection caps are fixed at start-up.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    pub ae_title: AeTitle,
    pub allowed: Vec<AllowedPeer>,
    /// Associations served at once (after negotiation); more are rejected as transient.
    pub max_associations: usize,
    /// Associations served at once from one peer address.
    pub max_associations_per_host: usize,
    /// Connections that have not yet sent their A-ASSOCIATE-RQ; more are closed at once.
    pub max_pending_associations: usize,
    /// Such connections from one peer address.
    pub max_pending_per_host: usize,
    /// How long a new connection has to send its A-ASSOCIATE-RQ.
    pub association_request_timeout: Duration,
    pub max_pdu_length: u32,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_dataset_bytes: usize,
    pub accepted_sop_classes: Vec<String>,
    /// The TLS listener's rustls configuration (certificate, key, client CAs); replaced on
    /// SIGHUP, so the next handshake uses the new certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Calling AE titles bound to a client certificate name (`dicom.tls.certificate_names`).
    pub certificate_names: Vec<(AeTitle, String)>,
}

impl From<&DicomConfig> for ScpSettings {
    fn from(c: &DicomConfig) -> Self {
        Self {
            ae_title: c.ae_title.clone(),
            allowed: c.allowed_calling_ae_titles.clone(),
            max_associations: c.max_associations,
            max_associations_per_host: c.max_associations_per_host,
            max_pending_associations: c.max_pending_associations,
            max_pending_per_host: c.max_pending_per_host,
            association_request_timeout: c.association_request_timeout,
            max_pdu_length: c.max_pdu_length,
            read_timeout: c.read_timeout,
            write_timeout: c.write_timeout,
            max_dataset_bytes: c.max_dataset_bytes,
            accepted_sop_classes: c.accepted_sop_classes.clone(),
            tls: c.tls.as_ref().map(|t| t.server.clone()),
            certificate_names: c
                .tls
                .as_ref()
                .map(|t| t.certificate_names.clone())
                .unwrap_or_default(),
        }
    }
}

/// A bound listener and what it speaks.
#[derive(Debug)]
pub struct Listener {
    pub socket: TcpListener,
    /// DICOM over TLS (PS3.15 Annex B): every connection starts with a TLS handshake.
    pub tls: bool,
}

/// Counters of the receiver, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Connections accepted by the listener (each one an association request).
    pub associations_total: AtomicU64,
    /// Connections closed at once: too many waiting for their A-ASSOCIATE-RQ (in all, or from
    /// one address).
    pub connections_refused_pending: AtomicU64,
    /// Connections that sent no A-ASSOCIATE-RQ in time, or something else.
    pub connections_no_request: AtomicU64,
    /// Associations being served now.
    pub associations_open: AtomicU64,
    /// Rejected because `max_associations` were open (transient, local limit exceeded).
    pub associations_rejected_limit: AtomicU64,
    /// Rejected because the spool is above its disk watermark (transient, temporary congestion).
    pub associations_rejected_disk: AtomicU64,
    /// Not established: refused in negotiation (called or calling AE title, no acceptable
    /// presentation context) or failed before it completed.
    pub associations_not_established: AtomicU64,
    /// Rejected because the receive memory budget could not hold another association.
    pub associations_rejected_memory: AtomicU64,
    /// C-STOREs refused because the data set exceeded `max_dataset_mb`.
    pub instances_oversize: AtomicU64,
    /// C-STOREs refused because the receive memory budget could not hold their fragments.
    pub instances_over_budget: AtomicU64,
    /// Connections to the TLS listener whose handshake failed (no or an untrusted client
    /// certificate, an old protocol version, plain DICOM on the TLS port, a timeout).
    pub tls_handshakes_failed: AtomicU64,
}

/// How often the accept loop reports that it is alive, even with no traffic.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Accept associations on `listeners` until `shutdown` is cancelled, then wait for the
/// associations in flight: each finishes the C-STORE it is receiving, then is closed.
/// `beat` is called at least every [`HEARTBEAT_INTERVAL`] while the loop is alive (watchdog).
/// Each association uses the value of `settings` current when it was accepted.
///
/// Capacity is decided per stage: a connection takes a *pending* slot at accept (closed at once
/// when there are too many, in all or from its address) and has
/// `association_request_timeout` to send its A-ASSOCIATE-RQ; only then does it compete for one
/// of `max_associations` (and `max_associations_per_host`) and for its read buffers in the
/// memory budget, and is answered with a transient A-ASSOCIATE-RJ when there is no room.
pub async fn run<H: StoreHandler>(
    listeners: Vec<Listener>,
    settings: watch::Receiver<Arc<ScpSettings>>,
    handler: Arc<H>,
    stats: Arc<ScpStats>,
    budget: Arc<MemoryBudget>,
    shutdown: CancellationToken,
    beat: impl Fn() + Send,
) {
    let gate = {
        let s = settings.borrow();
        Gate::new(
            s.max_associations,
            s.max_associations_per_host,
            s.max_pending_associations,
            s.max_pending_per_host,
        )
    };
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                beat();
                continue;
            }
            accepted = accept_any(&listeners) => accepted,
        };
        beat();
        let (accepted, over_tls) = accepted;
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.associations_total.fetch_add(1, Ordering::Relaxed);
        let ip = canonical_ip(peer.ip());
        let Some(slot) = gate.admit(ip) else {
            stats
                .connections_refused_pending
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "too many connections waiting to associate: closed");
            drop(socket);
            continue;
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let settings = settings.borrow().clone();
        let transport = match (over_tls, &settings.tls) {
            (false, _) => Transport::Plain,
            (true, Some(config)) => Transport::Tls(config.clone()),
            (true, None) => continue,
        };
        let connection = Connection {
            peer,
            settings,
            handler: handler.clone(),
            stats: stats.clone(),
            budget: budget.clone(),
            shutdown: shutdown.clone(),
        };
        let span = tracing::info_span!(
            "association",
            %peer,
            tls = over_tls,
            calling_ae = tracing::field::Empty
        );
        tracker.spawn(connection.start(socket, transport, slot).instrument(span));
    }
    tracker.close();
    tracker.wait().await;
}

/// The next connection on any of `listeners`, and whether it came to a TLS listener. With no
/// listener at all, waits forever (the caller selects on shutdown).
async fn accept_any(listeners: &[Listener]) -> (std::io::Result<(TcpStream, SocketAddr)>, bool) {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    let accepts = listeners
        .iter()
        .map(|l| Box::pin(async move { (l.socket.accept().await, l.tls) }));
    futures::future::select_all(accepts).await.0
}

/// How an accepted connection speaks.
enum Transport {
    Plain,
    /// TLS, with the listener's configuration current at accept.
    Tls(Arc<rustls::ServerConfig>),
}

/// One accepted connection, from its A-ASSOCIATE-RQ to its end.
struct Connection<H> {
    peer: SocketAddr,
    settings: Arc<ScpSettings>,
    handler: Arc<H>,
    stats: Arc<ScpStats>,
    budget: Arc<MemoryBudget>,
    shutdown: CancellationToken,
}

impl<H: StoreHandler> Connection<H> {
    /// Plain: straight to the association. TLS: the handshake first, within
    /// `association_request_timeout`; the client certificate it yields (mutual TLS) goes to
    /// negotiation for the AE-title binding.
    async fn start(self, socket: TcpStream, transport: Transport, slot: Slot) {
        let config = match transport {
            Transport::Plain => return self.run(socket, None, slot).await,
            Transport::Tls(config) => config,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(
            self.settings.association_request_timeout,
            acceptor.accept(socket),
        )
        .await;
        let reason = match handshake {
            Ok(Ok(stream)) => {
                let certificate = tls::peer_certificate(stream.get_ref().1.peer_certificates());
                let (version, suite) = (
                    stream.get_ref().1.protocol_version(),
                    stream.get_ref().1.negotiated_cipher_suite(),
                );
                tracing::debug!(
                    ?version,
                    suite = ?suite.map(|s| s.suite()),
                    client = ?certificate.as_ref().map(|c| &c.subject),
                    "TLS established"
                );
                return self.run(stream, certificate, slot).await;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no TLS handshake within association_request_timeout_secs".to_string(),
        };
        self.stats
            .tls_handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .associations_not_established
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %reason, "TLS handshake failed: connection refused");
        self.handler.peer_refused(RefusedPeer {
            peer: self.peer,
            calling_ae_title: None,
            reason: format!("TLS handshake failed: {reason}"),
        });
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        socket: S,
        certificate: Option<CertificateInfo>,
        slot: Slot,
    ) {
        let s = &self.settings;
        let mut pdus = PduStream::new(socket, s.association_request_timeout, s.write_timeout);
        // the whole request within the deadline, however slowly its bytes trickle in
        let request =
            tokio::time::timeout(s.association_request_timeout, pdus.read(s.max_pdu_length)).await;
        let rq = match request {
            Ok(Ok(Pdu::AssociationRQ(rq))) => rq,
            Ok(Ok(other)) => {
                self.no_request(&format!("{other:?}").chars().take(40).collect::<String>());
                return;
            }
            Ok(Err(e)) => {
                self.no_request(&e.to_string());
                return;
            }
            Err(_) => {
                self.no_request("no request within association_request_timeout_secs");
                return;
            }
        };
        let (ac, negotiated) =
            match association::negotiate(&rq, s, self.peer.ip(), certificate.as_ref()) {
                Ok(pair) => pair,
                Err(rj) => {
                    self.not_established(&rq, &rj, certificate.as_ref());
                    let _ = pdus.write(&Pdu::AssociationRJ(rj)).await;
                    pdus.shutdown().await;
                    return;
                }
            };
        tracing::Span::current()
            .record("calling_ae", tracing::field::debug(&negotiated.calling_ae));
        let Some((_permit, _buffers)) = self.capacity(slot, &mut pdus).await else {
            return;
        };
        if let Err(e) = pdus.write(&Pdu::AssociationAC(ac)).await {
            tracing::info!(error = %e, "association not established: cannot answer");
            return;
        }
        pdus.set_read_timeout(s.read_timeout);
        self.stats.associations_open.fetch_add(1, Ordering::Relaxed);
        let env = association::Env {
            peer: self.peer,
            settings: s,
            handler: &*self.handler,
            stats: &self.stats,
            budget: &self.budget,
            shutdown: &self.shutdown,
        };
        association::serve(&mut pdus, negotiated, env).await;
        self.stats.associations_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Count and log a rejected request; a calling AE title refused is a refused peer.
    fn not_established(
        &self,
        rq: &AssociationRQ,
        rj: &AssociationRJ,
        certificate: Option<&CertificateInfo>,
    ) {
        self.stats
            .associations_not_established
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            calling_ae = ?rq.calling_ae_title.trim(),
            called_ae = ?rq.called_ae_title.trim(),
            reason = ?rj.source,
            tls_client = ?certificate.map(|c| &c.subject),
            "association not established"
        );
        let refused_ae = AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        );
        if rj.source == refused_ae {
            self.handler.peer_refused(RefusedPeer {
                peer: self.peer,
                calling_ae_title: Some(rq.calling_ae_title.trim().to_string()),
                reason: match certificate {
                    Some(c) => format!(
                        "calling AE title not recognized (TLS client certificate {})",
                        c.subject
                    ),
                    None => "calling AE title not recognized".to_string(),
                },
            });
        }
    }

    fn no_request(&self, reason: &str) {
        self.stats
            .connections_no_request
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .associations_not_established
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(reason = ?reason, "association not established: no A-ASSOCIATE-RQ");
    }

    /// Room for one more association: the disk below its watermark, a slot under the
    /// association caps, and its read buffers in the memory budget. Without it the requester gets
    /// a transient rejection and `None` comes back.
    async fn capacity<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        slot: Slot,
        pdus: &mut PduStream<S>,
    ) -> Option<(Slot, Grant)> {
        use AssociationRJServiceProviderPresentationReason as Reason;
        let refusal = if !self.handler.admits_associations() {
            self.stats
                .associations_rejected_disk
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("spool above its disk watermark: rejecting the association");
            Some(Reason::TemporaryCongestion)
        } else {
            None
        };
        let slot = match refusal {
            Some(r) => Err(r),
            None => slot.establish().map_err(|limit| {
                self.stats
                    .associations_rejected_limit
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(limit, "association limit reached: rejecting");
                Reason::LocalLimitExceeded
            }),
        };
        // a PDU being read and the values decoded from it
        let buffers = 2 * (self.settings.max_pdu_length as usize + pdu::PDU_HEADER_BYTES);
        let granted = slot.and_then(|slot| match self.budget.try_take(buffers) {
            Some(grant) => Ok((slot, grant)),
            None => {
                self.stats
                    .associations_rejected_memory
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    budget_bytes = self.budget.limit(),
                    "receive memory budget exhausted: rejecting the association"
                );
                Err(Reason::LocalLimitExceeded)
            }
        });
        match granted {
            Ok(pair) => Some(pair),
            Err(reason) => {
                let rj = Pdu::AssociationRJ(AssociationRJ {
                    result: AssociationRJResult::Transient,
                    source: AssociationRJSource::ServiceProviderPresentation(reason),
                });
                let _ = pdus.write(&rj).await;
                pdus.shutdown().await;
                None
            }
        }
    }
}

/// Counts of connections per stage, in all and per peer address.
#[derive(Debug)]
struct Gate {
    inner: Arc<Mutex<GateState>>,
}

#[derive(Debug)]
struct GateState {
    max_established: usize,
    max_established_per_host: usize,
    max_pending: usize,
    max_pending_per_host: usize,
    pending: usize,
    established: usize,
    hosts: HashMap<IpAddr, (usize, usize)>,
}

/// A connection's place in the [`Gate`]: pending until [`Slot::establish`]; released on drop.
#[derive(Debug)]
struct Slot {
    gate: Arc<Mutex<GateState>>,
    ip: IpAddr,
    established: bool,
}

impl Gate {
    fn new(
        max_established: usize,
        max_established_per_host: usize,
        max_pending: usize,
        max_pending_per_host: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(GateState {
                max_established,
                max_established_per_host,
                max_pending,
                max_pending_per_host,
                pending: 0,
                established: 0,
                hosts: HashMap::new(),
            })),
        }
    }

    /// A pending slot for a new connection from `ip`, or `None` when too many wait already.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let host_pending = g.hosts.get(&ip).map_or(0, |h| h.0);
        if g.pending >= g.max_pending || host_pending >= g.max_pending_per_host {
            return None;
        }
        g.pending += 1;
        g.hosts.entry(ip).or_default().0 += 1;
        Some(Slot {
            gate: self.inner.clone(),
            ip,
            established: false,
        })
    }
}

impl Slot {
    /// Move from pending to established; `Err(limit)` when the association cap in all, or for
    /// this address, is reached (the slot is then released).
    fn establish(mut self) -> Result<Self, usize> {
        let mut g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let host_established = g.hosts.get(&self.ip).map_or(0, |h| h.1);
        if g.established >= g.max_established {
            return Err(g.max_established);
        }
        if host_established >= g.max_established_per_host {
            return Err(g.max_established_per_host);
        }
        g.pending -= 1;
        g.established += 1;
        if let Some(h) = g.hosts.get_mut(&self.ip) {
            h.0 -= 1;
            h.1 += 1;
        }
        drop(g);
        self.established = true;
        Ok(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let ip = self.ip;
        if self.established {
            g.established = g.established.saturating_sub(1);
        } else {
            g.pending = g.pending.saturating_sub(1);
        }
        let empty = match g.hosts.get_mut(&ip) {
            Some(h) => {
                if self.established {
                    h.1 = h.1.saturating_sub(1);
                } else {
                    h.0 = h.0.saturating_sub(1);
                }
                *h == (0, 0)
            }
            None => false,
        };
        if empty {
            g.hosts.remove(&ip);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn the_gate_counts_pending_and_established_per_host() {
        let gate = Gate::new(2, 1, 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let a2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "two pending per host");
        let b1 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "three pending in all");
        let a1 = a1.establish().unwrap();
        assert_eq!(a2.establish().unwrap_err(), 1, "one association per host");
        let b1 = b1.establish().unwrap();
        let b2 = gate.admit(b).unwrap();
        assert_eq!(b2.establish().unwrap_err(), 2, "two associations in all");
        drop(a1);
        drop(b1);
        let g = gate.inner.lock().unwrap();
        assert_eq!((g.pending, g.established), (0, 0));
        assert!(g.hosts.is_empty());
    }
}
