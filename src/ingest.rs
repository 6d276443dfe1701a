//! Ingest: the durable store behind the SCP. Receive → spool → database, in the order that makes
//! Success safe: the file is staged (written + fsynced), its row inserted, the file published
//! (renamed + directory fsynced), and only then is the transaction committed and Success sent.
//! Any failure before that answers a failure status and leaves nothing half-done that matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sqlx::PgPool;

use crate::db::instances::{self, Arrival, Recorded};
use crate::diskspace::SpoolSpace;
use crate::pipeline::guard;
use crate::scp::dimse::Command;
use crate::scp::dimse::status;
use crate::scp::header::{self, HeaderError, InstanceHeader};
use crate::scp::{DataSink, StoreHandler, StoreOutcome, StoreRequest};
use crate::spool::{SpoolKey, Staged, Storage};

/// Counters of what was stored and refused, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected_unreadable: AtomicU64,
    pub rejected_mismatch: AtomicU64,
    pub rejected_spool: AtomicU64,
    pub rejected_database: AtomicU64,
}

/// The [`StoreHandler`] of the daemon.
#[derive(Debug, Clone)]
pub struct Ingest {
    pool: PgPool,
    spool: Arc<dyn Storage>,
    /// Largest inflated size accepted for a deflated data set.
    max_inflated: u64,
    pub stats: Arc<IngestStats>,
    /// The spool's disk space: above its watermark new associations are refused.
    space: Option<Arc<SpoolSpace>>,
}

/// A data set parsed and staged, not yet recorded.
struct Prepared {
    header: InstanceHeader,
    key: SpoolKey,
    staged: Staged,
}

enum PrepareError {
    Header(HeaderError),
    Spool(String),
}

impl Ingest {
    pub fn new(pool: PgPool, spool: Arc<dyn Storage>) -> Self {
        Self {
            pool,
            spool,
            max_inflated: 1 << 30,
            stats: Arc::default(),
            space: None,
        }
    }

    /// Cap the inflated size of deflated data sets (normally `[dicom] max_dataset_mb`).
    pub fn max_inflated_bytes(mut self, bytes: u64) -> Self {
        self.max_inflated = bytes;
        self
    }

    /// Refuse new associations while `space` is above its watermark.
    pub fn with_watermark(mut self, space: Arc<SpoolSpace>) -> Self {
        self.space = Some(space);
        self
    }

    async fn store_request(&self, req: StoreRequest, sink: IngestSink) -> StoreOutcome {
        let started = Instant::now();
        let sop_class = req
            .command
            .affected_sop_class_uid
            .clone()
            .unwrap_or_default();
        let sop_instance = req
            .command
            .affected_sop_instance_uid
            .clone()
            .unwrap_or_default();
        let spool = self.spool.clone();
        let ts = req.transfer_syntax.clone();
        let (req_ts, req_calling, req_called) = (
            req.transfer_syntax.clone(),
            req.calling_ae_title.clone(),
            req.called_ae_title.clone(),
        );
        let req_peer = req.peer.to_string();
        let (sc, si) = (sop_class.clone(), sop_instance.clone());
        let max_inflated = self.max_inflated;
        let streamed = sink.finish().await;
        let prepared = tokio::task::spawn_blocking(move || {
            let (meta, Streamed { staged, dataset }) = streamed?;
            let checked = check(&meta, &dataset, &sc, &si, &ts, max_inflated);
            match checked {
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
        })
        .await;
        let prepared = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(PrepareError::Header(HeaderError::Unreadable(reason)))) => {
                self.stats
                    .rejected_unreadable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sop_instance_uid = %sop_instance, %reason, "data set cannot be understood");
                return StoreOutcome::failure(
                    status::CANNOT_UNDERSTAND,
                    "data set cannot be parsed",
                );
            }
            Ok(Err(PrepareError::Header(HeaderError::Mismatch(reason)))) => {
                self.stats.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sop_instance_uid = %sop_instance, %reason, "data set does not match");
                return StoreOutcome::failure(status::DATA_SET_MISMATCH, reason);
            }
            Ok(Err(PrepareError::Spool(reason))) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop_instance_uid = %sop_instance, %reason, "spool write failed");
                return StoreOutcome::failure(status::OUT_OF_RESOURCES, "spool unavailable");
            }
            Err(join) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop_instance_uid = %sop_instance, error = %join, "ingest task failed");
                return StoreOutcome::failure(status::OUT_OF_RESOURCES, "internal error");
            }
        };
        let key = prepared.key.as_str().to_string();
        let arrival = Arrival {
            transfer_syntax_uid: &req_ts,
            calling_ae_title: &req_calling,
            called_ae_title: &req_called,
            peer_address: req_peer,
            spool_key: &key,
            size_bytes: prepared.staged.size as i64,
        };
        let size = prepared.staged.size;
        match self.commit(prepared, &arrival).await {
            Ok(recorded) => {
                if recorded == Recorded::Duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    self.stats.stored_bytes.fetch_add(size, Ordering::Relaxed);
                }
                tracing::info!(
                    sop_instance_uid = %sop_instance,
                    calling_ae = %arrival.calling_ae_title,
                    transfer_syntax = %arrival.transfer_syntax_uid,
                    bytes = size,
                    duplicate = recorded == Recorded::Duplicate,
                    ms = started.elapsed().as_millis() as u64,
                    "stored"
                );
                StoreOutcome::success()
            }
            Err(CommitError::Database(e)) => {
                self.stats.rejected_database.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop_instance_uid = %sop_instance, error = %e, "database unavailable: refused");
                StoreOutcome::failure(status::OUT_OF_RESOURCES, "database unavailable")
            }
            Err(CommitError::Spool(e)) => {
                self.stats.rejected_spool.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sop_instance_uid = %sop_instance, error = %e, "spool publish failed: refused");
                StoreOutcome::failure(status::OUT_OF_RESOURCES, "spool unavailable")
            }
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
                return Err(CommitError::Database(e));
            }
        };
        let recorded = match instances::record(&mut tx, &header, arrival).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(staged).await;
                return Err(CommitError::Database(e));
            }
        };
        let spool = self.spool.clone();
        let published = tokio::task::spawn_blocking(move || match recorded {
            Recorded::New => spool.publish(staged, &key).map_err(|e| e.to_string()),
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
        tx.commit().await.map_err(CommitError::Database)?;
        Ok(recorded)
    }

    async fn discard(&self, staged: Staged) {
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.discard(staged)).await;
    }
}

enum CommitError {
    Database(sqlx::Error),
    Spool(String),
}

/// Check a received data set: its structure (every length fits, sequences closed), then its
/// header against the command.
fn check(
    meta: &[u8],
    dataset: &[u8],
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    max_inflated: u64,
) -> Result<(InstanceHeader, SpoolKey), PrepareError> {
    guard::check_data_set(dataset, transfer_syntax, max_inflated)
        .map_err(|e| PrepareError::Header(HeaderError::Unreadable(e.to_string())))?;
    let header = header::read_header(meta, dataset, sop_class, sop_instance)
        .map_err(PrepareError::Header)?;
    let key = SpoolKey::for_instance(&header.study_instance_uid, &header.sop_instance_uid)
        .map_err(|e| PrepareError::Header(HeaderError::Mismatch(e.to_string())))?;
    Ok((header, key))
}

/// A fragment for the staging task, or the end of the data set.
enum Chunk {
    Data(Vec<u8>),
    Finish,
}

/// The staged file and the data set it holds (kept for the checks).
struct Streamed {
    staged: Staged,
    dataset: Vec<u8>,
}

/// Fragments queued per C-STORE before the receiver waits for the disk.
const SINK_QUEUE: usize = 64;

/// Where a received data set goes while it arrives: a blocking task writes each fragment to the
/// staged file (preamble and meta first), asking the kernel to write back as it goes, so that
/// little is left to do once the last fragment is in. Dropped unfinished, the file is removed.
pub struct IngestSink {
    tx: Option<tokio::sync::mpsc::Sender<Chunk>>,
    task: Option<tokio::task::JoinHandle<Result<Streamed, PrepareError>>>,
    meta: Result<Vec<u8>, HeaderError>,
}

impl IngestSink {
    /// Close the data set and wait for it to be staged durably.
    async fn finish(self) -> Result<(Vec<u8>, Streamed), PrepareError> {
        let meta = self.meta.map_err(PrepareError::Header)?;
        if let Some(tx) = self.tx {
            let _ = tx.send(Chunk::Finish).await;
        }
        let Some(task) = self.task else {
            return Err(PrepareError::Spool("no staging task".into()));
        };
        let streamed = task
            .await
            .map_err(|e| PrepareError::Spool(format!("staging task: {e}")))??;
        Ok((meta, streamed))
    }
}

impl DataSink for IngestSink {
    async fn push(&mut self, fragment: Vec<u8>) {
        if let Some(tx) = &self.tx
            && tx.send(Chunk::Data(fragment)).await.is_err()
        {
            // the staging task failed; its error is reported when the data set is complete
            self.tx = None;
        }
    }
}

/// The staging task: write the preamble and meta, then every fragment, then fsync.
fn stage_stream(
    spool: &dyn Storage,
    meta: &[u8],
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<Streamed, PrepareError> {
    let spool_error = |e: crate::spool::SpoolError| PrepareError::Spool(e.to_string());
    let mut writer = spool.stage_writer().map_err(spool_error)?;
    writer.write(meta).map_err(spool_error)?;
    let mut dataset: Vec<u8> = Vec::new();
    while let Some(chunk) = rx.blocking_recv() {
        match chunk {
            Chunk::Data(bytes) => {
                writer.write(&bytes).map_err(spool_error)?;
                if dataset.is_empty() {
                    dataset = bytes;
                } else {
                    dataset.extend_from_slice(&bytes);
                }
            }
            Chunk::Finish => {
                let staged = writer.finish().map_err(spool_error)?;
                return Ok(Streamed { staged, dataset });
            }
        }
    }
    // the association ended before the data set did: the writer removes the partial file
    Err(PrepareError::Spool("data set abandoned".into()))
}

impl StoreHandler for Ingest {
    type Sink = IngestSink;

    fn begin(
        &self,
        command: &Command,
        transfer_syntax: &str,
        calling_ae_title: &str,
    ) -> IngestSink {
        let meta = header::file_preamble_and_meta(
            command
                .affected_sop_class_uid
                .as_deref()
                .unwrap_or_default(),
            command
                .affected_sop_instance_uid
                .as_deref()
                .unwrap_or_default(),
            transfer_syntax,
            calling_ae_title,
        );
        let Ok(bytes) = &meta else {
            return IngestSink {
                tx: None,
                task: None,
                meta,
            };
        };
        let (tx, rx) = tokio::sync::mpsc::channel(SINK_QUEUE);
        let spool = self.spool.clone();
        let bytes = bytes.clone();
        let task = tokio::task::spawn_blocking(move || stage_stream(&*spool, &bytes, rx));
        IngestSink {
            tx: Some(tx),
            task: Some(task),
            meta,
        }
    }

    fn store(
        &self,
        request: StoreRequest,
        sink: IngestSink,
    ) -> impl Future<Output = StoreOutcome> + Send {
        self.store_request(request, sink)
    }

    fn admits_associations(&self) -> bool {
        self.space.as_ref().is_none_or(|s| !s.over_watermark())
    }
}
