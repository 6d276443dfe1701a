//! Receive: the DICOM C-STORE SCP. Listener → association → DIMSE messages → a [`StoreHandler`]
//! (spool + database, wired in `ingest`). The listener and the shutdown signal come from outside,
//! so tests bind port 0 and pass their own trigger.

pub mod association;
pub mod dimse;
pub mod header;
pub mod sop_classes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AeTitle, AllowedPeer, DicomConfig};
use dimse::Command;

/// What the association layer needs to know; built from `[dicom]`. The accept loop reads the
/// current value for each association, so a reload (SIGHUP) changes the allow-list of the next
/// association; `max_associations` is fixed at start-up.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    pub ae_title: AeTitle,
    pub allowed: Vec<AllowedPeer>,
    pub max_associations: usize,
    pub max_pdu_length: u32,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_dataset_bytes: usize,
    pub accepted_sop_classes: Vec<String>,
}

impl From<&DicomConfig> for ScpSettings {
    fn from(c: &DicomConfig) -> Self {
        Self {
            ae_title: c.ae_title.clone(),
            allowed: c.allowed_calling_ae_titles.clone(),
            max_associations: c.max_associations,
            max_pdu_length: c.max_pdu_length,
            read_timeout: c.read_timeout,
            write_timeout: c.write_timeout,
            max_dataset_bytes: c.max_dataset_bytes,
            accepted_sop_classes: c.accepted_sop_classes.clone(),
        }
    }
}

/// One received C-STORE: the command, its transfer syntax, and who sent it. The data set itself
/// went to the handler's [`DataSink`] as it arrived.
#[derive(Debug)]
pub struct StoreRequest {
    pub command: Command,
    pub transfer_syntax: String,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    pub peer: SocketAddr,
}

/// The answer to a C-STORE: a DIMSE status and an optional Error Comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    pub status: u16,
    pub comment: Option<String>,
}

impl StoreOutcome {
    pub fn success() -> Self {
        Self {
            status: dimse::status::SUCCESS,
            comment: None,
        }
    }

    pub fn failure(status: u16, comment: impl Into<String>) -> Self {
        Self {
            status,
            comment: Some(comment.into()),
        }
    }
}

/// Takes a data set's fragments in order, as they arrive, so that storing overlaps with
/// receiving. Dropping a sink abandons its data set.
pub trait DataSink: Send + 'static {
    fn push(&mut self, fragment: Vec<u8>) -> impl Future<Output = ()> + Send;
}

/// Makes a received instance durable. Success may be returned only once it is.
pub trait StoreHandler: Send + Sync + 'static {
    type Sink: DataSink;

    /// A C-STORE command is complete and its data set follows: where its fragments go.
    fn begin(&self, command: &Command, transfer_syntax: &str, calling_ae_title: &str)
    -> Self::Sink;

    /// The whole data set went into `sink`: make it durable and answer.
    fn store(
        &self,
        request: StoreRequest,
        sink: Self::Sink,
    ) -> impl Future<Output = StoreOutcome> + Send;

    /// Whether new associations are taken now; `false` (e.g. the spool is above its disk
    /// watermark) answers them with a transient rejection. Called once per connection, from the
    /// accept loop: it must not block.
    fn admits_associations(&self) -> bool {
        true
    }
}

/// Counters of the receiver, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Connections accepted by the listener (each one an association request).
    pub associations_total: AtomicU64,
    /// Associations being served now.
    pub associations_open: AtomicU64,
    /// Rejected because `max_associations` were open (transient, local limit exceeded).
    pub associations_rejected_limit: AtomicU64,
    /// Rejected because the spool is above its disk watermark (transient, temporary congestion).
    pub associations_rejected_disk: AtomicU64,
    /// Not established: refused in negotiation (called or calling AE title, no acceptable
    /// presentation context) or failed before it completed.
    pub associations_not_established: AtomicU64,
    /// C-STOREs refused because the data set exceeded `max_dataset_mb`.
    pub instances_oversize: AtomicU64,
}

/// How often the accept loop reports that it is alive, even with no traffic.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Accept associations on `listener` until `shutdown` is cancelled, then wait for the
/// associations in flight: each finishes the C-STORE it is receiving, then is closed.
/// `beat` is called at least every [`HEARTBEAT_INTERVAL`] while the loop is alive (watchdog).
/// Each association uses the value of `settings` current when it was accepted.
pub async fn run<H: StoreHandler>(
    listener: TcpListener,
    settings: watch::Receiver<Arc<ScpSettings>>,
    handler: Arc<H>,
    stats: Arc<ScpStats>,
    shutdown: CancellationToken,
    beat: impl Fn() + Send,
) {
    let max_associations = settings.borrow().max_associations;
    let limit = Arc::new(Semaphore::new(max_associations));
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                beat();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        beat();
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        stats.associations_total.fetch_add(1, Ordering::Relaxed);
        let settings = settings.borrow().clone();
        if !handler.admits_associations() {
            stats
                .associations_rejected_disk
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "spool above its disk watermark: rejecting the association");
            tracker.spawn(reject_transient(
                socket,
                settings.read_timeout,
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
            ));
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats
                .associations_rejected_limit
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = max_associations, "association limit reached: rejecting");
            tracker.spawn(reject_transient(
                socket,
                settings.read_timeout,
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ));
            continue;
        };
        let handler = handler.clone();
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            stats.associations_open.fetch_add(1, Ordering::Relaxed);
            let established =
                association::serve(socket, peer, &settings, &*handler, &stats, &shutdown).await;
            if !established {
                stats
                    .associations_not_established
                    .fetch_add(1, Ordering::Relaxed);
            }
            stats.associations_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Answer an association request with a transient rejection by the service provider
/// (`reason`: local limit exceeded, temporary congestion), so the sender retries later.
async fn reject_transient(
    mut socket: TcpStream,
    read_timeout: Duration,
    reason: AssociationRJServiceProviderPresentationReason,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let read_request = async {
        loop {
            match dicom_ul::pdu::read_pdu(&mut std::io::Cursor::new(&buf[..]), 65_536, false) {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => {}
            }
            if buf.len() > 1 << 20 || matches!(socket.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                return;
            }
        }
    };
    if tokio::time::timeout(read_timeout, read_request)
        .await
        .is_err()
    {
        return;
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(reason),
    });
    let mut out = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut out, &rj).is_ok() {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    }
}
