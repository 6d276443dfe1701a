//! Metrics of every stage (receive → spool → queue → infer → send) for `/metrics`, in the
//! Prometheus text format, every name prefixed `cxr_`.
//!
//! Three sources: counters kept by the stages themselves ([`ScpStats`], [`IngestStats`], the
//! inference histograms and the send counters here), the spool's last disk sample
//! ([`SpoolSpace`]), and a [`Snapshot`] of the database (queue depth, jobs and outbox rows by
//! state) queried on each scrape under a time limit. When the database does not answer in
//! time, `cxr_database_up` is 0 and the database-derived series are left out of that scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;

use crate::ingest::IngestStats;
use crate::ingest::budget::MemoryBudget;
use crate::ingest::diskspace::SpoolSpace;
use crate::ops::certificates::{Certificates, unix_now};
use crate::receive::ScpStats;

/// The `Content-Type` of `/metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of the inference latency histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InferenceLabels {
    /// `segmenter` or `classifier`.
    pub model: String,
    /// The execution provider that ran it: `tensorrt`, `cuda` or `cpu`.
    pub provider: String,
}

/// Labels of the SR send counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    /// The `[[destinations]]` name.
    pub destination: String,
    /// `sent`, `retry` (will be retried) or `failed` (given up).
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Everything `/metrics` shows that is not read from the database. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    inference: HistogramFamily<InferenceLabels>,
    decode: Histogram,
    sends: Family<SendLabels, Counter>,
    purged_instances: Counter,
    purged_bytes: Counter,
}

/// Latency buckets: 5 ms to about 80 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    /// Register every metric; `space` is the spool's disk sampler, when there is one.
    pub fn new(
        scp: Arc<ScpStats>,
        ingest: Arc<IngestStats>,
        space: Option<Arc<SpoolSpace>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("cxr");
        registry.register_collector(Box::new(ReceiveCollector { scp, ingest }));
        if let Some(space) = space {
            registry.register_collector(Box::new(DiskCollector { space }));
        }
        let inference: HistogramFamily<InferenceLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_duration",
            "Time to run one model on one image (a batch's run divided by its images)",
            Unit::Seconds,
            inference.clone(),
        );
        let decode = latency_histogram();
        registry.register_with_unit(
            "decode_duration",
            "Time to decode one image (pixel data to the grey image)",
            Unit::Seconds,
            decode.clone(),
        );
        let sends = Family::<SendLabels, Counter>::default();
        registry.register(
            "sr_sends",
            "SR send attempts by destination and outcome (sent, retry, failed)",
            sends.clone(),
        );
        let purged_instances = Counter::default();
        registry.register(
            "spool_purged_instances",
            "Spooled instances removed by retention after their report was delivered",
            purged_instances.clone(),
        );
        let purged_bytes = Counter::default();
        registry.register(
            "spool_purged_bytes",
            "Bytes of spooled instances removed by retention",
            purged_bytes.clone(),
        );
        Self {
            registry,
            inference,
            decode,
            sends,
            purged_instances,
            purged_bytes,
        }
    }

    /// Also show the receive memory budget.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.registry
            .register_collector(Box::new(BudgetCollector { budget }));
        self
    }

    /// Also show the expiry of the TLS certificates in use.
    pub fn with_certificates(mut self, certificates: Arc<Certificates>) -> Self {
        self.registry
            .register_collector(Box::new(CertificateCollector { certificates }));
        self
    }

    /// Record the model timings of one analysed image.
    pub fn observe_inference(&self, provider: &str, segment: Duration, classify: Duration) {
        for (model, d) in [("segmenter", segment), ("classifier", classify)] {
            self.inference
                .get_or_create(&InferenceLabels {
                    model: model.into(),
                    provider: provider.into(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// Record the decode time of one image.
    pub fn observe_decode(&self, d: Duration) {
        self.decode.observe(d.as_secs_f64());
    }

    /// Count one SR send attempt to `destination`: `sent`, `retry` or `failed`.
    pub fn count_send(&self, destination: &str, outcome: &str) {
        self.sends
            .get_or_create(&SendLabels {
                destination: destination.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Count instances removed from the spool by retention.
    pub fn count_purged(&self, instances: u64, bytes: u64) {
        self.purged_instances.inc_by(instances);
        self.purged_bytes.inc_by(bytes);
    }

    /// The whole text exposition: this registry, then the database `snapshot` (`None`: the
    /// database did not answer).
    pub fn render(&self, snapshot: Option<&Snapshot>) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        let mut per_scrape = Registry::with_prefix("cxr");
        per_scrape.register_collector(Box::new(SnapshotCollector(snapshot.cloned())));
        prometheus_client::encoding::prometheus_text::encode(&mut out, &per_scrape)?;
        Ok(out)
    }
}

impl crate::send::outbox::SendObserver for Metrics {
    fn attempt(&self, destination: &str, outcome: &str) {
        self.count_send(destination, outcome);
    }
}

// ---- the receiver's counters -----------------------------------------------------------------

#[derive(Debug)]
struct ReceiveCollector {
    scp: Arc<ScpStats>,
    ingest: Arc<IngestStats>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge<V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: V,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One gauge with one label taking several values.
fn labelled_gauges<V: Copy>(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    label: &str,
    values: &[(&str, V)],
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, *value)];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One counter with one label taking several values.
fn labelled_counters(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ReceiveCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let (s, i) = (&*self.scp, &*self.ingest);
        labelled_gauges(
            &mut e,
            (
                "build_info",
                "Always 1; the version label names the running build",
            ),
            "version",
            &[(env!("CARGO_PKG_VERSION"), 1i64)],
        )?;
        counter(
            &mut e,
            "associations",
            "Association requests (connections accepted by the DICOM listener)",
            get(&s.associations_total),
        )?;
        gauge(
            &mut e,
            "associations_open",
            "Associations being served now",
            None,
            get(&s.associations_open) as i64,
        )?;
        labelled_counters(
            &mut e,
            (
                "associations_rejected",
                "Association requests refused: limit (max_associations, max_associations_per_host), disk_space (spool watermark), memory (receive memory budget), negotiation (AE title or presentation contexts refused, or no valid request in time)",
            ),
            "reason",
            &[
                ("limit", get(&s.associations_rejected_limit)),
                ("disk_space", get(&s.associations_rejected_disk)),
                ("memory", get(&s.associations_rejected_memory)),
                ("negotiation", get(&s.associations_not_established)),
            ],
        )?;
        counter(
            &mut e,
            "tls_handshakes_failed",
            "Connections to the DICOM TLS listener whose handshake failed (untrusted, expired or missing client certificate, old protocol, plain DICOM on the TLS port, timeout)",
            get(&s.tls_handshakes_failed),
        )?;
        labelled_counters(
            &mut e,
            (
                "connections_refused",
                "Connections closed before association: pending (too many waiting for their A-ASSOCIATE-RQ, in all or from one address), no_request (no valid A-ASSOCIATE-RQ in time)",
            ),
            "reason",
            &[
                ("pending", get(&s.connections_refused_pending)),
                ("no_request", get(&s.connections_no_request)),
            ],
        )?;
        counter(
            &mut e,
            "instances_received",
            "Instances stored durably (spool and database) and acknowledged with Success",
            get(&i.stored),
        )?;
        counter(
            &mut e,
            "instances_received_bytes",
            "Bytes of the instances stored (Part 10 files)",
            get(&i.stored_bytes),
        )?;
        counter(
            &mut e,
            "instances_duplicate",
            "Instances received again (same SOP Instance UID): acknowledged, first copy kept",
            get(&i.duplicates),
        )?;
        counter(
            &mut e,
            "instances_restored",
            "Instances received again after retention removed their file: stored and analysed again",
            get(&i.restored),
        )?;
        labelled_counters(
            &mut e,
            (
                "instances_rejected",
                "C-STOREs answered with a failure status, by reason",
            ),
            "reason",
            &[
                ("unreadable", get(&i.rejected_unreadable)),
                ("mismatch", get(&i.rejected_mismatch)),
                ("spool", get(&i.rejected_spool)),
                ("database", get(&i.rejected_database)),
                ("oversize", get(&s.instances_oversize)),
                ("limits", get(&i.rejected_limits)),
                ("memory", get(&s.instances_over_budget)),
            ],
        )
    }
}

// ---- TLS certificates --------------------------------------------------------------------------

#[derive(Debug)]
struct CertificateCollector {
    certificates: Arc<Certificates>,
}

impl Collector for CertificateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let list = self.certificates.list();
        if list.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let values: Vec<(&str, i64)> = list
            .iter()
            .map(|t| (t.key.as_str(), t.info.seconds_left(now)))
            .collect();
        labelled_gauges(
            &mut e,
            (
                "tls_certificate_expiry_seconds",
                "Seconds until each TLS certificate in use expires (negative: expired), by the configuration key of its file",
            ),
            "certificate",
            &values,
        )
    }
}

// ---- the receive memory budget ---------------------------------------------------------------

#[derive(Debug)]
struct BudgetCollector {
    budget: Arc<MemoryBudget>,
}

impl Collector for BudgetCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut e,
            "receive_memory_limit_bytes",
            "The receive memory budget ([dicom] receive_memory_mb)",
            None,
            self.budget.limit() as i64,
        )?;
        gauge(
            &mut e,
            "receive_memory_used_bytes",
            "Bytes of the receive memory budget held now (read buffers, fragments not yet on disk, headers)",
            None,
            self.budget.used() as i64,
        )?;
        counter(
            &mut e,
            "receive_memory_refusals",
            "Requests for receive memory refused because the budget was exhausted",
            self.budget.refusals(),
        )
    }
}

// ---- the spool's file system ----------------------------------------------------------------

#[derive(Debug)]
struct DiskCollector {
    space: Arc<SpoolSpace>,
}

impl Collector for DiskCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut e,
            "spool_watermark_percent",
            "Use of the spool file system above which new associations are refused",
            None,
            self.space.max_used_percent(),
        )?;
        gauge(
            &mut e,
            "spool_above_watermark",
            "1 while new associations are refused for lack of spool space",
            None,
            i64::from(self.space.over_watermark()),
        )?;
        let Some(u) = self.space.last() else {
            return Ok(());
        };
        gauge(
            &mut e,
            "spool_filesystem_size",
            "Size of the spool's file system",
            Some(&Unit::Bytes),
            u.total_bytes,
        )?;
        gauge(
            &mut e,
            "spool_filesystem_used",
            "Bytes used on the spool's file system (by anything)",
            Some(&Unit::Bytes),
            u.used_bytes,
        )?;
        gauge(
            &mut e,
            "spool_filesystem_available",
            "Bytes still available to the service on the spool's file system",
            Some(&Unit::Bytes),
            u.available_bytes,
        )?;
        gauge(
            &mut e,
            "spool_filesystem_used_percent",
            "Use of the spool's file system in percent, as df shows it",
            None,
            u.used_percent(),
        )
    }
}

// ---- the database, per scrape ----------------------------------------------------------------

pub use crate::db::stats::Snapshot;

/// Query the database's [`Snapshot`]; `None` when it does not answer within `limit`.
pub async fn snapshot(pool: &PgPool, limit: Duration) -> Option<Snapshot> {
    match tokio::time::timeout(limit, crate::db::stats::snapshot(pool)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: database snapshot failed");
            None
        }
        Err(_) => {
            tracing::debug!("metrics: database snapshot timed out");
            None
        }
    }
}

#[derive(Debug)]
struct SnapshotCollector(Option<Snapshot>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut e,
            "database_up",
            "1 when the database answered this scrape's queries in time",
            None,
            i64::from(self.0.is_some()),
        )?;
        let Some(s) = &self.0 else {
            return Ok(());
        };
        let jobs: Vec<(&str, i64)> = s.jobs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        labelled_gauges(&mut e, ("jobs", "Analysis jobs by state"), "state", &jobs)?;
        gauge(
            &mut e,
            "queue_depth",
            "Analysis jobs queued (due, or waiting for a retry)",
            None,
            s.queue_depth,
        )?;
        gauge(
            &mut e,
            "queue_oldest_age",
            "How long the job waiting longest for a worker has waited (due, or its lease expired)",
            Some(&Unit::Seconds),
            s.queue_oldest_age_secs,
        )?;
        gauge(
            &mut e,
            "instances_unprocessed",
            "Instances received and not yet analysed",
            None,
            s.instances_unprocessed,
        )?;
        let outbox: Vec<(&str, i64)> = s.outbox.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        labelled_gauges(
            &mut e,
            (
                "outbox",
                "SR deliveries (one per SR and destination) by state",
            ),
            "state",
            &outbox,
        )?;
        gauge(
            &mut e,
            "outbox_oldest_age",
            "Age of the oldest delivery not yet done (queued or sending)",
            Some(&Unit::Seconds),
            s.outbox_oldest_age_secs,
        )?;
        gauge(
            &mut e,
            "spool_instances",
            "Instances whose file is in the spool",
            None,
            s.spool_instances,
        )?;
        gauge(
            &mut e,
            "spool_instances",
            "Bytes of the instance files in the spool",
            Some(&Unit::Bytes),
            s.spool_bytes,
        )?;
        gauge(
            &mut e,
            "audit_queued",
            "Audit messages waiting for their syslog collector or file",
            None,
            s.audit_queued,
        )?;
        gauge(
            &mut e,
            "audit_oldest_age",
            "Age of the oldest audit message not yet delivered",
            Some(&Unit::Seconds),
            s.audit_oldest_age_secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_cxr_names() {
        let scp = Arc::new(ScpStats::default());
        let ingest = Arc::new(IngestStats::default());
        scp.associations_total.fetch_add(3, Ordering::Relaxed);
        scp.associations_rejected_disk
            .fetch_add(1, Ordering::Relaxed);
        ingest.stored.fetch_add(2, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let space = Arc::new(SpoolSpace::new(dir.path(), 90.0));
        space.refresh().unwrap();
        let m = Metrics::new(scp, ingest, Some(space));
        m.observe_inference("cpu", Duration::from_millis(20), Duration::from_millis(70));
        m.count_send("PACS", "sent");
        m.count_purged(2, 100);
        let snapshot = Snapshot {
            jobs: ["queued", "running", "done", "failed"]
                .iter()
                .map(|s| (s.to_string(), i64::from(*s == "done") * 2))
                .collect(),
            queue_depth: 0,
            spool_instances: 1,
            spool_bytes: 1234,
            audit_queued: 3,
            audit_oldest_age_secs: 1.5,
            ..Snapshot::default()
        };
        let text = m.render(Some(&snapshot)).unwrap();
        for line in [
            "cxr_associations_total 3",
            "cxr_associations_rejected_total{reason=\"disk_space\"} 1",
            "cxr_instances_received_total 2",
            "cxr_instances_rejected_total{reason=\"oversize\"} 0",
            "cxr_inference_duration_seconds_count{model=\"classifier\",provider=\"cpu\"} 1",
            "cxr_sr_sends_total{destination=\"PACS\",outcome=\"sent\"} 1",
            "cxr_spool_purged_instances_total 2",
            "cxr_jobs{state=\"done\"} 2",
            "cxr_jobs{state=\"queued\"} 0",
            "cxr_database_up 1",
            "cxr_spool_instances_bytes 1234",
            "cxr_spool_watermark_percent 90.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("cxr_spool_filesystem_size_bytes "), "{text}");
        assert!(text.contains(
            "cxr_inference_duration_seconds_bucket{model=\"segmenter\",provider=\"cpu\",le=\"0.04\"} 1"
        ));
        let down = m.render(None).unwrap();
        assert!(down.lines().any(|l| l == "cxr_database_up 0"));
        assert!(!down.contains("cxr_jobs{"));
    }
}
