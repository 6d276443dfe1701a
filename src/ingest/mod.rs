//! Ingest: the durable store behind every receiving protocol (the DICOM SCP today; STOW-RS or
//! DICOM TLS later). A protocol hands over a [`Received`] instance and its data set's fragments
//! as they arrive, and gets back a protocol-neutral [`Outcome`] that it translates (the SCP into
//! a DIMSE status). Receive → spool → database, in the order that makes Stored safe: the file is
//! staged (written + fsynced), its row inserted, the file published (renamed + directory
//! fsynced), and only then is the transaction committed and Stored returned. Any failure before
//! that is a refusal and leaves nothing half-done that matters.
//!
//! Group commit: the instances whose data sets are complete go to one committer task per
//! [`Ingest`], which takes everything that is waiting as one batch (instances of
//! every association, as many as arrived while the previous batch was being committed) and runs
//! the same order once for all of them: the staged files fdatasynced (in parallel, while the rows
//! are inserted in one transaction), the files published (renamed, each directory fsynced once),
//! one COMMIT, and only then is each instance answered. A batch in which the server refuses a
//! statement is retried one instance at a time, so that one bad row refuses only its own
//! instance; a database that cannot be reached, or a failed publish or COMMIT, refuses the whole
//! batch. Nothing is answered Stored before the batch is durable and committed.
//!
//! Events logged here name the instance only on the one "stored" line: the receiving protocol
//! opens a span per instance (the SCP's `c_store`, with its SOP Instance UID), which every event
//! inside carries.

pub mod budget;
pub mod diskspace;
pub mod spool;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sqlx::PgPool;

use crate::audit::{
    self, AlertKind, AuditEvent, Auditor, NetworkAccessPoint, RateLimit, RemoteNode,
};
use crate::db;
use crate::db::instances::{self, Arrival, Recorded};
use crate::dicom::guard::{self, GuardError, Walker};
use crate::dicom::header::{self, HeaderError, InstanceHeader};
use budget::{Grant, MemoryBudget};
use diskspace::SpoolSpace;
use spool::{SpoolKey, Staged, Storage};

/// An instance being received, whatever the protocol: what its sender says it is, and who sent
/// it. Its data set goes to the [`DataSink`] from [`StoreHandler::begin`] as it arrives.
#[derive(Debug, Clone)]
pub struct Received {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// The transfer syntax of the data set as it arrives (and as it is stored).
    pub transfer_syntax: String,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    pub peer: SocketAddr,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable in the spool and the database.
    Stored,
    /// Already stored (same SOP Instance UID): the first copy is kept.
    Duplicate,
    /// Already recorded, but retention had removed its file: stored again, analysed again.
    Restored,
    /// Not stored, for `reason`; `detail` is safe to show the sender (no patient data).
    Refused { reason: Refusal, detail: String },
}

/// Why an instance was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes are malformed: they cannot be read as a data set.
    Malformed,
    /// The data set contradicts what its sender said it is, or lacks required attributes.
    Mismatch,
    /// A structural cap or a size limit was exceeded.
    OverLimit,
    /// The spool, the database or the memory budget cannot take it now: the sender may retry.
    Unavailable,
}

impl Outcome {
    /// A refusal for `reason`, with a `detail` for the sender.
    pub fn refused(reason: Refusal, detail: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            detail: detail.into(),
        }
    }
}

/// Takes a data set's fragments in order, as they arrive, so that storing overlaps with
/// receiving. Each fragment comes with the memory [`Grant`] that holds it, to be dropped once the
/// fragment is written. Dropping a sink abandons its data set.
pub trait DataSink: Send + 'static {
    fn push(&mut self, fragment: Vec<u8>, grant: Grant) -> impl Future<Output = ()> + Send;
}

/// Makes a received instance durable. [`Outcome::Stored`] may be returned only once it is.
pub trait StoreHandler: Send + Sync + 'static {
    type Sink: DataSink;

    /// An instance is announced and its data set follows: where its fragments go.
    fn begin(&self, received: &Received) -> Self::Sink;

    /// The whole data set went into `sink`: make it durable and say how it ended.
    fn store(&self, received: Received, sink: Self::Sink) -> impl Future<Output = Outcome> + Send;

    /// Whether new senders are taken now; `false` (e.g. the spool is above its disk watermark)
    /// answers them with a transient refusal. Must not block.
    fn admits_associations(&self) -> bool {
        true
    }

    /// An association ended after storing `transfer.instances` (audit: instances transferred).
    /// Must not block.
    fn association_ended(&self, transfer: Transfer) {
        let _ = transfer;
    }

    /// A peer was refused before or at association (audit: security alert). Must not block.
    fn peer_refused(&self, refused: RefusedPeer) {
        let _ = refused;
    }
}

/// What one association stored, for the audit trail.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub peer: SocketAddr,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    /// SOP Instance UIDs stored (or already there) in it.
    pub instances: Vec<String>,
}

/// A peer refused, for the audit trail.
#[derive(Debug, Clone)]
pub struct RefusedPeer {
    pub peer: SocketAddr,
    /// Its calling AE title, when it got as far as an association request.
    pub calling_ae_title: Option<String>,
    /// Why (no patient data): a TLS error, an AE title not on the allow-list…
    pub reason: String,
}

/// Counters of what was stored and refused, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected_unreadable: AtomicU64,
    /// Refused with A700 because a structural cap (nesting, element count, header size,
    /// inflated size) or the memory budget was exceeded.
    pub rejected_limits: AtomicU64,
    /// Re-sent instances whose earlier copy retention had removed: stored again.
    pub restored: AtomicU64,
    pub rejected_mismatch: AtomicU64,
    pub rejected_spool: AtomicU64,
    pub rejected_database: AtomicU64,
}

/// The [`StoreHandler`] of the daemon.
#[derive(Debug, Clone)]
pub struct Ingest {
    pool: PgPool,
    spool: Arc<dyn Storage>,
    /// Caps of the structural walk of every data set (the inflated size of deflated ones
    /// included).
    limits: guard::Limits,
    /// Memory held by received data: fragments waiting for the disk, headers kept for checks.
    budget: Arc<MemoryBudget>,
    pub stats: Arc<IngestStats>,
    /// The spool's disk space: above its watermark new associations are refused.
    space: Option<Arc<SpoolSpace>>,
    /// The audit trail, when enabled: every transfer and refused peer is recorded.
    auditor: Option<Auditor>,
    /// Security alerts recorded per minute at most (a flood of refused connections).
    alerts: Arc<RateLimit>,
    /// The queue of the group committer, started with the first instance to commit.
    committer: Arc<OnceLock<tokio::sync::mpsc::Sender<Pending>>>,
}

/// Security alerts for refused peers recorded per minute at most; the rest are counted in the
/// next one.
pub const ALERTS_PER_MINUTE: u32 = 60;

/// A data set parsed and staged, not yet recorded.
struct Prepared {
    header: InstanceHeader,
    key: SpoolKey,
    staged: Staged,
}

enum PrepareError {
    Header(HeaderError),
    Guard(GuardError),
    /// The memory budget could not hold the data set's header.
    Memory,
    Spool(String),
}

impl Ingest {
    /// An ingest sharing `budget` with the association layer.
    pub fn new(pool: PgPool, spool: Arc<dyn Storage>, budget: Arc<MemoryBudget>) -> Self {
        Self {
            pool,
            spool,
            limits: guard::Limits::default(),
            budget,
            stats: Arc::default(),
            space: None,
            auditor: None,
            alerts: Arc::new(RateLimit::new(
                ALERTS_PER_MINUTE,
                std::time::Duration::from_secs(60),
            )),
            committer: Arc::default(),
        }
    }

    /// Cap the inflated size of deflated data sets (normally `[dicom] max_dataset_mb`).
    pub fn max_inflated_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_inflated = bytes;
        self
    }

    /// Record transfers and refused peers in the audit trail.
    pub fn with_auditor(mut self, auditor: Option<Auditor>) -> Self {
        self.auditor = auditor;
        self
    }

    /// Refuse new associations while `space` is above its watermark.
    pub fn with_watermark(mut self, space: Arc<SpoolSpace>) -> Self {
        self.space = Some(space);
        self
    }

    /// Store a received data set in the order the module documents: wait for it to be staged,
    /// check its header ([`Self::prepare`]), then have the group committer record it and publish
    /// its file ([`Committer`]); count, log and answer how it ended.
    async fn store_request(&self, req: Received, sink: IngestSink) -> Outcome {
        let started = Instant::now();
        let prepared = match self.prepare(&req, sink).await {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        let arrival = OwnedArrival {
            transfer_syntax_uid: req.transfer_syntax.clone(),
            calling_ae_title: req.calling_ae_title.clone(),
            called_ae_title: req.called_ae_title.clone(),
            peer_address: req.peer.to_string(),
            spool_key: prepared.key.as_str().to_string(),
            size_bytes: prepared.staged.size as i64,
        };
        let size = prepared.staged.size;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            prepared,
            arrival,
            reply,
        };
        let committed = match self.committer().send(pending).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(CommitError::Spool("committer stopped".into()))),
            Err(tokio::sync::mpsc::error::SendError(pending)) => {
                let spool = self.spool.clone();
                let staged = pending.prepared.staged;
                let _ = tokio::task::spawn_blocking(move || spool.discard(staged)).await;
                Err(CommitError::Spool("committer stopped".into()))
            }
        };
        match committed {
            Ok((recorded, arrival)) => {
                self.stored(recorded, &req.sop_instance_uid, &arrival, size, started)
            }
            Err(e) => self.not_committed(e),
        }
    }

    /// The queue of the group committer, which is started on first use.
    fn committer(&self) -> &tokio::sync::mpsc::Sender<Pending> {
        self.committer.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(COMMIT_QUEUE);
            let committer = Committer {
                pool: self.pool.clone(),
                spool: self.spool.clone(),
            };
            tokio::spawn(committer.run(rx));
            tx
        })
    }

    /// Wait for the data set to be staged, then check its header against what the sender said;
    /// a data set that fails is discarded, and answered (counted and logged).
    async fn prepare(&self, req: &Received, sink: IngestSink) -> Result<Prepared, Outcome> {
        let spool = self.spool.clone();
        let (sc, si, ts) = (
            req.sop_class_uid.clone(),
            req.sop_instance_uid.clone(),
            req.transfer_syntax.clone(),
        );
        let streamed = sink.finish().await;
        let prepared =
            tokio::task::spawn_blocking(move || check_staged(&*spool, streamed, &sc, &si, &ts))
                .await;
        match prepared {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(self.refused(e)),
            Err(join) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop_instance_uid = ?req.sop_instance_uid, error = %join, "ingest task failed");
                Err(Outcome::refused(Refusal::Unavailable, "internal error"))
            }
        }
    }

    /// The answer to a recorded (and published) instance, counted and logged.
    fn stored(
        &self,
        recorded: Recorded,
        sop_instance: &str,
        arrival: &OwnedArrival,
        size: u64,
        started: Instant,
    ) -> Outcome {
        match recorded {
            Recorded::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Recorded::New | Recorded::Restored => {
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                self.stats.stored_bytes.fetch_add(size, Ordering::Relaxed);
            }
        }
        if recorded == Recorded::Restored {
            self.stats.restored.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(
            sop_instance_uid = ?sop_instance,
            transfer_syntax = ?arrival.transfer_syntax_uid,
            bytes = size,
            duplicate = recorded == Recorded::Duplicate,
            restored = recorded == Recorded::Restored,
            ms = started.elapsed().as_millis() as u64,
            "stored"
        );
        match recorded {
            Recorded::New => Outcome::Stored,
            Recorded::Duplicate => Outcome::Duplicate,
            Recorded::Restored => Outcome::Restored,
        }
    }

    /// The answer to a data set that could not be recorded or published, counted and logged.
    fn not_committed(&self, e: CommitError) -> Outcome {
        match e {
            CommitError::Database(e) => {
                self.stats.rejected_database.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "database unavailable: refused");
                Outcome::refused(Refusal::Unavailable, "database unavailable")
            }
            CommitError::Spool(e) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "spool publish failed: refused");
                Outcome::refused(Refusal::Unavailable, "spool unavailable")
            }
        }
    }

    /// The answer to a data set that could not be prepared, counted and logged.
    fn refused(&self, e: PrepareError) -> Outcome {
        match e {
            PrepareError::Guard(e) if e.is_limit() => {
                self.stats.rejected_limits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %e, "data set over a structural limit: refused");
                Outcome::refused(Refusal::OverLimit, e.to_string())
            }
            PrepareError::Guard(e) => {
                self.stats
                    .rejected_unreadable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %e, "data set cannot be understood");
                Outcome::refused(Refusal::Malformed, "data set is malformed")
            }
            PrepareError::Memory => {
                self.stats.rejected_limits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("receive memory budget exhausted: refused");
                Outcome::refused(
                    Refusal::Unavailable,
                    "receive memory budget exhausted; retry later",
                )
            }
            PrepareError::Header(HeaderError::Unreadable(reason)) => {
                self.stats
                    .rejected_unreadable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = ?reason, "data set cannot be understood");
                Outcome::refused(Refusal::Malformed, "data set cannot be parsed")
            }
            PrepareError::Header(HeaderError::Mismatch(reason)) => {
                self.stats.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = ?reason, "data set does not match");
                Outcome::refused(Refusal::Mismatch, reason)
            }
            PrepareError::Spool(reason) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(reason = ?reason, "spool write failed");
                Outcome::refused(Refusal::Unavailable, "spool unavailable")
            }
        }
    }
}

/// Why an instance was not committed (the error's text, logged by the instance's own task).
enum CommitError {
    Database(String),
    Spool(String),
}

/// Instances waiting for the group committer at most; more wait to be queued.
const COMMIT_QUEUE: usize = 256;

/// Instances committed in one batch at most.
const MAX_BATCH: usize = 64;

/// [`Arrival`] with its values owned, to travel to the committer and back.
#[derive(Debug, Clone)]
struct OwnedArrival {
    transfer_syntax_uid: String,
    calling_ae_title: String,
    called_ae_title: String,
    peer_address: String,
    spool_key: String,
    size_bytes: i64,
}

impl OwnedArrival {
    fn as_arrival(&self) -> Arrival<'_> {
        Arrival {
            transfer_syntax_uid: &self.transfer_syntax_uid,
            calling_ae_title: &self.calling_ae_title,
            called_ae_title: &self.called_ae_title,
            peer_address: self.peer_address.clone(),
            spool_key: &self.spool_key,
            size_bytes: self.size_bytes,
        }
    }
}

/// How an instance's commit ended, with its arrival handed back for the answer's log line.
type Committed = Result<(Recorded, OwnedArrival), CommitError>;

/// A checked, staged instance waiting for the group committer, and where its answer goes.
struct Pending {
    prepared: Prepared,
    arrival: OwnedArrival,
    reply: tokio::sync::oneshot::Sender<Committed>,
}

/// An instance of a batch being committed, its staged file apart (being synced meanwhile).
struct Entry {
    header: InstanceHeader,
    key: SpoolKey,
    arrival: OwnedArrival,
    reply: tokio::sync::oneshot::Sender<Committed>,
}

impl Entry {
    /// Answer the instance: how its commit ended.
    fn answer(self, committed: Result<Recorded, CommitError>) {
        let _ = self.reply.send(committed.map(|r| (r, self.arrival)));
    }
}

/// The group committer: one task per [`Ingest`] that commits whatever is waiting as one batch,
/// in the order the module documents, and answers each instance only once its batch is durable
/// and committed.
struct Committer {
    pool: PgPool,
    spool: Arc<dyn Storage>,
}

impl Committer {
    /// Take every instance that is waiting (as many as queued up while the previous batch was
    /// committed, no waiting for more) and commit them together, until every [`Ingest`] is gone.
    async fn run(self, mut rx: tokio::sync::mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.commit_batch(std::mem::take(&mut batch)).await;
        }
    }

    /// Commit a batch: fdatasync the staged files (in parallel) while the rows go into one
    /// transaction, publish the files, COMMIT, answer. A staged file that cannot be synced is
    /// refused; when the database refuses the batch, each instance is committed alone.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        tracing::debug!(instances = batch.len(), "group commit");
        let (entries, staged): (Vec<Entry>, Vec<Staged>) = batch
            .into_iter()
            .map(|p| {
                let Prepared {
                    header,
                    key,
                    staged,
                } = p.prepared;
                let entry = Entry {
                    header,
                    key,
                    arrival: p.arrival,
                    reply: p.reply,
                };
                (entry, staged)
            })
            .unzip();
        let (synced, recorded) = tokio::join!(self.sync_all(staged), self.record_all(&entries));
        let mut ready = Vec::with_capacity(entries.len());
        for (entry, sync) in entries.into_iter().zip(synced) {
            match sync {
                Ok(staged) => ready.push((entry, staged)),
                Err(e) => entry.answer(Err(CommitError::Spool(e))),
            }
        }
        match recorded {
            Ok((tx, recorded)) if recorded.len() == ready.len() => {
                self.publish_and_commit(tx, ready, recorded).await;
            }
            // a file failed to sync: its row is in the transaction, which is dropped (rolled
            // back); the others are committed alone
            Ok(_) => self.commit_each(ready).await,
            // the server refused a statement (a row it will not take, a deadlock with another
            // receiver): the culprit is refused alone, the others are stored
            Err(e @ sqlx::Error::Database(_)) if ready.len() > 1 => {
                tracing::warn!(error = %e, instances = ready.len(),
                    "group commit refused by the database: committing one at a time");
                self.commit_each(ready).await;
            }
            // the database cannot be reached: every instance is refused
            Err(e) => {
                let error = e.to_string();
                let (entries, staged): (Vec<Entry>, Vec<Staged>) = ready.into_iter().unzip();
                let spool = self.spool.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    staged.into_iter().for_each(|s| spool.discard(s));
                })
                .await;
                for entry in entries {
                    entry.answer(Err(CommitError::Database(error.clone())));
                }
            }
        }
    }

    /// Fdatasync every staged file of the batch, each in a blocking task of its own so that the
    /// file system can flush them together; each comes back synced, or is discarded with the
    /// error.
    async fn sync_all(&self, staged: Vec<Staged>) -> Vec<Result<Staged, String>> {
        let tasks: Vec<_> = staged
            .into_iter()
            .map(|mut staged| {
                let spool = self.spool.clone();
                tokio::task::spawn_blocking(move || match staged.sync() {
                    Ok(()) => Ok(staged),
                    Err(e) => {
                        spool.discard(staged);
                        Err(e.to_string())
                    }
                })
            })
            .collect();
        let mut synced = Vec::with_capacity(tasks.len());
        for task in tasks {
            synced.push(task.await.map_err(|e| e.to_string()).and_then(|r| r));
        }
        synced
    }

    /// Insert every instance's rows in one transaction, in the order of the batch: a duplicate
    /// of an instance earlier in the same batch is a duplicate (its first copy is being
    /// published); one of an instance whose file retention removed is restored, as
    /// [`Self::commit`] does for one instance.
    async fn record_all(
        &self,
        batch: &[Entry],
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Vec<Recorded>), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut recorded = Vec::with_capacity(batch.len());
        let mut published: HashSet<&str> = HashSet::new();
        for entry in batch {
            let arrival = entry.arrival.as_arrival();
            let mut r = instances::record(&mut tx, &entry.header, &arrival).await?;
            if r == Recorded::Duplicate
                && !published.contains(entry.key.as_str())
                && !self.kept(&entry.key).await
            {
                instances::restore(&mut tx, &entry.header, &arrival).await?;
                r = Recorded::Restored;
            }
            if r != Recorded::Duplicate {
                published.insert(entry.key.as_str());
            }
            recorded.push(r);
        }
        Ok((tx, recorded))
    }

    /// Publish the batch's new and restored files (discarding the duplicates' copies), then
    /// COMMIT, then answer every instance; a failure of either refuses the whole batch.
    async fn publish_and_commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        batch: Vec<(Entry, Staged)>,
        recorded: Vec<Recorded>,
    ) {
        let mut entries = Vec::with_capacity(batch.len());
        let mut objects = Vec::with_capacity(batch.len());
        let mut copies = Vec::new();
        for ((entry, staged), r) in batch.into_iter().zip(recorded) {
            match r {
                Recorded::New | Recorded::Restored => objects.push((staged, entry.key.clone())),
                Recorded::Duplicate => copies.push(staged),
            }
            entries.push((entry, r));
        }
        let spool = self.spool.clone();
        let published = tokio::task::spawn_blocking(move || {
            copies.into_iter().for_each(|staged| spool.discard(staged));
            spool.publish_all(objects).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let committed = match published {
            // the transaction rolls back on drop: no row without its file
            Err(e) => Err(CommitError::Spool(e)),
            Ok(()) => tx
                .commit()
                .await
                .map_err(|e| CommitError::Database(e.to_string())),
        };
        for (entry, r) in entries {
            let answer = match &committed {
                Ok(()) => Ok(r),
                Err(CommitError::Spool(e)) => Err(CommitError::Spool(e.clone())),
                Err(CommitError::Database(e)) => Err(CommitError::Database(e.clone())),
            };
            entry.answer(answer);
        }
    }

    /// Commit each instance of a batch alone, one after the other.
    async fn commit_each(&self, batch: Vec<(Entry, Staged)>) {
        for (entry, staged) in batch {
            let prepared = Prepared {
                header: entry.header.clone(),
                key: entry.key.clone(),
                staged,
            };
            let committed = self.commit(prepared, &entry.arrival.as_arrival()).await;
            entry.answer(committed);
        }
    }

    /// Record the instance and publish its file in one transaction; the transaction commits only
    /// once the file is durable under its key. A duplicate's staged copy is discarded.
    async fn commit(
        &self,
        prepared: Prepared,
        arrival: &Arrival<'_>,
    ) -> Result<Recorded, CommitError> {
        let Prepared {
            header,
            key,
            staged,
        } = prepared;
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                self.discard(staged).await;
                return Err(CommitError::Database(e.to_string()));
            }
        };
        let mut recorded = match instances::record(&mut tx, &header, arrival).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(staged).await;
                return Err(CommitError::Database(e.to_string()));
            }
        };
        if recorded == Recorded::Duplicate && !self.kept(&key).await {
            // retention removed the first copy (or a crash cut its removal short): what is
            // acknowledged now must be stored, and is analysed again
            if let Err(e) = instances::restore(&mut tx, &header, arrival).await {
                self.discard(staged).await;
                return Err(CommitError::Database(e.to_string()));
            }
            recorded = Recorded::Restored;
        }
        let spool = self.spool.clone();
        let published = tokio::task::spawn_blocking(move || match recorded {
            Recorded::New | Recorded::Restored => {
                spool.publish(staged, &key).map_err(|e| e.to_string())
            }
            Recorded::Duplicate => {
                spool.discard(staged);
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = published {
            // the transaction rolls back on drop: no row without its file
            return Err(CommitError::Spool(e));
        }
        tx.commit()
            .await
            .map_err(|e| CommitError::Database(e.to_string()))?;
        Ok(recorded)
    }

    /// Whether the spool still holds the published object under `key`.
    async fn kept(&self, key: &SpoolKey) -> bool {
        let spool = self.spool.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || spool.exists(&key))
            .await
            .unwrap_or(true)
    }

    async fn discard(&self, staged: Staged) {
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.discard(staged)).await;
    }
}

/// Check a received data set's header (the elements before Pixel Data, already walked by the
/// [`guard`]) against the command.
fn check(
    header_bytes: &[u8],
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> Result<(InstanceHeader, SpoolKey), PrepareError> {
    let header = header::read_header(header_bytes, transfer_syntax, sop_class, sop_instance)
        .map_err(PrepareError::Header)?;
    // the header's UIDs are parsed (safe path components): the key cannot fail
    let key = SpoolKey::for_uids(&header.study_instance_uid, &header.sop_instance_uid);
    Ok((header, key))
}

/// The staging task's result checked ([`check`]) into a [`Prepared`] instance; a staged file
/// whose header fails is discarded.
fn check_staged(
    spool: &dyn Storage,
    streamed: Result<Streamed, PrepareError>,
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> Result<Prepared, PrepareError> {
    let Streamed { staged, header, .. } = streamed?;
    match check(&header, sop_class, sop_instance, transfer_syntax) {
        Ok((header, key)) => Ok(Prepared {
            header,
            key,
            staged,
        }),
        Err(e) => {
            spool.discard(staged);
            Err(e)
        }
    }
}

/// A fragment for the staging task (with the memory it holds), or the end of the data set.
enum Chunk {
    Data(Vec<u8>, Grant),
    Finish,
}

/// The staged file and the header walked out of it (kept for the checks, with its memory).
struct Streamed {
    staged: Staged,
    header: Vec<u8>,
    _header_memory: Grant,
}

/// Fragments queued per C-STORE before the receiver waits for the disk.
const SINK_QUEUE: usize = 64;

/// Where a received data set goes while it arrives: a blocking task walks each fragment through
/// the structural [`guard`] and writes it to the staged file (preamble and meta first), asking the
/// kernel to write back as it goes, so that little is left to do once the last fragment is in.
/// Only the header is kept in memory. Dropped unfinished, the file is removed.
pub struct IngestSink {
    tx: Option<tokio::sync::mpsc::Sender<Chunk>>,
    task: Option<tokio::task::JoinHandle<Result<Streamed, PrepareError>>>,
    meta: Result<(), HeaderError>,
}

impl IngestSink {
    /// Close the data set and wait for it to be staged (written; the committer syncs it).
    async fn finish(self) -> Result<Streamed, PrepareError> {
        self.meta.map_err(PrepareError::Header)?;
        if let Some(tx) = self.tx {
            let _ = tx.send(Chunk::Finish).await;
        }
        let Some(task) = self.task else {
            return Err(PrepareError::Spool("no staging task".into()));
        };
        task.await
            .map_err(|e| PrepareError::Spool(format!("staging task: {e}")))?
    }
}

impl DataSink for IngestSink {
    async fn push(&mut self, fragment: Vec<u8>, grant: Grant) {
        if let Some(tx) = &self.tx
            && tx.send(Chunk::Data(fragment, grant)).await.is_err()
        {
            // the staging task failed; its error is reported when the data set is complete
            self.tx = None;
        }
    }
}

/// The staging task: write the preamble and meta, then walk and write every fragment, then
/// close the file, its tail already on its way to the disk (the group committer fdatasyncs it). A data set the walk refuses is not written further; its fragments are still taken (and
/// their memory given back) until the end, and the partial file is removed.
fn stage_stream(
    spool: &dyn Storage,
    meta: &[u8],
    mut walker: Walker,
    budget: &Arc<MemoryBudget>,
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<Streamed, PrepareError> {
    let spool_error = |e: crate::ingest::spool::SpoolError| PrepareError::Spool(e.to_string());
    let mut writer = Some(spool.stage_writer().map_err(spool_error)?);
    let mut failed: Option<PrepareError> = None;
    if let Some(w) = writer.as_mut()
        && let Err(e) = w.write(meta)
    {
        failed = Some(spool_error(e));
    }
    let mut header_memory = Grant::empty(budget);
    let mut finished = false;
    while let Some(chunk) = rx.blocking_recv() {
        let bytes = match chunk {
            Chunk::Data(bytes, _grant) => bytes,
            Chunk::Finish => {
                finished = true;
                break;
            }
        };
        if failed.is_some() {
            continue;
        }
        if let Err(e) = walker.feed(&bytes) {
            failed = Some(PrepareError::Guard(e));
        } else if !header_memory.try_grow(walker.header_len() - header_memory.bytes()) {
            failed = Some(PrepareError::Memory);
        } else if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(&bytes)
        {
            failed = Some(spool_error(e));
        }
        // the fragment's buffer goes back to the receive side for a later fragment
        crate::dicom::pdu::recycle(bytes);
        if failed.is_some() {
            // the writer removes the partial file
            writer = None;
        }
    }
    if !finished {
        // the association ended before the data set did: the writer removes the partial file
        return Err(PrepareError::Spool("data set abandoned".into()));
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let summary = walker.finish().map_err(PrepareError::Guard)?;
    let Some(w) = writer else {
        return Err(PrepareError::Spool("no staged file".into()));
    };
    let staged = w.close().map_err(spool_error)?;
    Ok(Streamed {
        staged,
        header: summary.header.unwrap_or_default(),
        _header_memory: header_memory,
    })
}

impl StoreHandler for Ingest {
    type Sink = IngestSink;

    fn begin(&self, received: &Received) -> IngestSink {
        let meta = header::file_preamble_and_meta(
            &received.sop_class_uid,
            &received.sop_instance_uid,
            &received.transfer_syntax,
            &received.calling_ae_title,
        );
        let transfer_syntax = received.transfer_syntax.as_str();
        let bytes = match meta {
            Ok(bytes) => bytes,
            Err(e) => {
                return IngestSink {
                    tx: None,
                    task: None,
                    meta: Err(e),
                };
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(SINK_QUEUE);
        let spool = self.spool.clone();
        let budget = self.budget.clone();
        let walker = Walker::new(transfer_syntax, self.limits, true);
        let task =
            tokio::task::spawn_blocking(move || stage_stream(&*spool, &bytes, walker, &budget, rx));
        IngestSink {
            tx: Some(tx),
            task: Some(task),
            meta: Ok(()),
        }
    }

    fn store(&self, received: Received, sink: IngestSink) -> impl Future<Output = Outcome> + Send {
        self.store_request(received, sink)
    }

    fn admits_associations(&self) -> bool {
        self.space.as_ref().is_none_or(|s| !s.over_watermark())
    }

    fn association_ended(&self, transfer: Transfer) {
        let Some(auditor) = self.auditor.clone() else {
            return;
        };
        if transfer.instances.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let studies =
                match db::audit::studies_of_instances(auditor.pool(), &transfer.instances).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit: cannot read the studies of a transfer");
                        return;
                    }
                };
            let peer = RemoteNode {
                ae_title: Some(transfer.calling_ae_title.clone()),
                access_point: NetworkAccessPoint::Ip(transfer.peer.ip()),
            };
            let app = auditor.application(Some(&transfer.called_ae_title));
            for study in &studies {
                let (patient, study) = audit::patient_and_study(study);
                auditor
                    .record(&AuditEvent::study_received(
                        app.clone(),
                        peer.clone(),
                        patient,
                        study,
                    ))
                    .await;
            }
        });
    }

    fn peer_refused(&self, refused: RefusedPeer) {
        let Some(auditor) = &self.auditor else {
            return;
        };
        let reason = match self.alerts.admit(std::time::Instant::now()) {
            None => return,
            Some(0) => refused.reason,
            Some(n) => format!(
                "{} ({n} earlier refusals not recorded one by one: more than \
                 {ALERTS_PER_MINUTE} a minute)",
                refused.reason
            ),
        };
        let peer = RemoteNode {
            ae_title: refused.calling_ae_title,
            access_point: NetworkAccessPoint::Ip(refused.peer.ip()),
        };
        // the peer failed to authenticate: by certificate (TLS) or by AE title and address
        auditor.spawn(AuditEvent::peer_refused(
            AlertKind::NodeAuthentication,
            auditor.application(None),
            peer,
            reason,
        ));
    }
}
