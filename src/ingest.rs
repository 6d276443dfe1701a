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
use crate::scp::dimse::status;
use crate::scp::header::{self, HeaderError, InstanceHeader};
use crate::scp::{StoreHandler, StoreOutcome, StoreRequest};
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

    async fn store_request(&self, req: StoreRequest) -> StoreOutcome {
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
        let calling = req.calling_ae_title.clone();
        let (req_ts, req_calling, req_called) = (
            req.transfer_syntax.clone(),
            req.calling_ae_title.clone(),
            req.called_ae_title.clone(),
        );
        let req_peer = req.peer.to_string();
        let (sc, si) = (sop_class.clone(), sop_instance.clone());
        let max_inflated = self.max_inflated;
        let prepared = tokio::task::spawn_blocking(move || {
            let names = Names {
                sop_class: &sc,
                sop_instance: &si,
                transfer_syntax: &ts,
                calling_ae: &calling,
            };
            prepare(&*spool, &req.dataset, &names, max_inflated)
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

/// Build the Part 10 file, read and check its header, stage it in the spool.
/// What the command and the association say about a data set.
struct Names<'a> {
    sop_class: &'a str,
    sop_instance: &'a str,
    transfer_syntax: &'a str,
    calling_ae: &'a str,
}

fn prepare(
    spool: &dyn Storage,
    dataset: &[u8],
    names: &Names<'_>,
    max_inflated: u64,
) -> Result<Prepared, PrepareError> {
    let Names {
        sop_class,
        sop_instance,
        transfer_syntax,
        calling_ae,
    } = *names;
    guard::check_data_set(dataset, transfer_syntax, max_inflated)
        .map_err(|e| PrepareError::Header(HeaderError::Unreadable(e.to_string())))?;
    let meta = header::file_preamble_and_meta(sop_class, sop_instance, transfer_syntax, calling_ae)
        .map_err(PrepareError::Header)?;
    let header = header::read_header(&meta, dataset, sop_class, sop_instance)
        .map_err(PrepareError::Header)?;
    let key = SpoolKey::for_instance(&header.study_instance_uid, &header.sop_instance_uid)
        .map_err(|e| PrepareError::Header(HeaderError::Mismatch(e.to_string())))?;
    let staged = spool
        .stage(&[&meta, dataset])
        .map_err(|e| PrepareError::Spool(e.to_string()))?;
    Ok(Prepared {
        header,
        key,
        staged,
    })
}

impl StoreHandler for Ingest {
    fn store(&self, request: StoreRequest) -> impl Future<Output = StoreOutcome> + Send {
        self.store_request(request)
    }

    fn admits_associations(&self) -> bool {
        self.space.as_ref().is_none_or(|s| !s.over_watermark())
    }
}
