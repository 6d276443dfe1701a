//! The analysis worker: study completion → job → decode + infer → findings → SR → outbox.
//!
//! The one place where the spool, the database, the models and the report meet. Each worker owns
//! one [`Analyser`] (ONNX Runtime sessions) and runs it on a blocking thread. Any number of
//! workers, on any number of machines, share the job queue in PostgreSQL.
//!
//! A running job's lease is renewed every third of its length, so a long job is not taken over
//! while its worker lives. A job that cannot complete is retried with backoff; every take of a job counts as an attempt
//! (also one whose worker died), and a job past `max_attempts` is failed with its reason and never
//! taken again; its study then gets a "not analysed" SR naming the failure when it has no report
//! yet. Images are decoded in a helper process, so a codec crash costs one image; should the
//! models themselves be lost (a panic during inference), they are loaded again, and if that fails
//! the worker declares itself failed (`/healthz`, `/readyz`, watchdog) so that systemd restarts
//! the service.

mod images;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Local;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::analyse::analyser::{Analyser, ImageReport};
use crate::backoff::{Backoff, Failures};
use crate::config::Destination;
use crate::db::analysis::{self, NewReport};
use crate::db::jobs::{self, Job};
use crate::dicom::guard;
use crate::findings::AnalysedImage;
use crate::ingest::spool::{SpoolKey, Storage};
use crate::ops::metrics::Metrics;
use crate::ops::systemd::Heartbeat;
use crate::report::{
    self, Completion, ModelInfo, Output, Predecessor, ReportContent, ReportRequest, SourceStudy,
};
use crate::send::outbox;

/// Builds a worker's [`Analyser`] again (models and decoder) after the first was lost.
#[derive(Clone)]
pub struct AnalyserFactory(pub Arc<dyn Fn() -> Result<Analyser, String> + Send + Sync>);

impl std::fmt::Debug for AnalyserFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnalyserFactory")
    }
}

/// How workers schedule and run jobs (from `[study]` and `[report]`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// A study is ready when nothing has arrived for this long.
    pub quiet_period: Duration,
    /// How long a job is leased to a worker before another may take it.
    pub lease: Duration,
    /// Attempts before a job is marked failed.
    pub max_attempts: u32,
    /// How often an idle worker looks for work.
    pub poll_interval: Duration,
    /// First retry delay; doubles per attempt, capped at 10 minutes.
    pub retry_base: Duration,
    /// Where SRs are written before they are queued for sending.
    pub archive_dir: PathBuf,
    /// Where each SR is sent (one outbox row per destination); a reload (SIGHUP) changes it for
    /// the next SR.
    pub destinations: watch::Receiver<Arc<Vec<Destination>>>,
    /// This worker's name in leases (host:pid:n).
    pub owner: String,
    /// Where decode and inference times are recorded.
    pub metrics: Option<Arc<Metrics>>,
    /// Loads the models again when a worker lost them; `None`: the worker fails instead.
    pub reload: Option<AnalyserFactory>,
}

/// A job that could not complete: retried unless permanent.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("spool: {0}")]
    Spool(String),
    #[error("inference: {0}")]
    Inference(String),
    #[error("report: {0}")]
    Report(String),
    #[error("lease lost: another worker took the job")]
    LeaseLost,
}

/// The outcome of one pass of the loop.
enum Pass {
    Worked,
    Idle,
}

/// Run one worker until `shutdown`; a job in progress is finished first. `heartbeat` is beaten
/// on every pass, and failed when the worker cannot go on.
pub async fn run(
    pool: PgPool,
    storage: Arc<dyn Storage>,
    analyser: Analyser,
    settings: Arc<WorkerSettings>,
    shutdown: CancellationToken,
    heartbeat: Heartbeat,
) {
    let mut analyser = Some(analyser);
    // while the database is down: twice the poll interval, doubling up to 30 s (each wait at
    // most 5 s, so that shutdown and heartbeats stay prompt)
    let db_down = Backoff::new(settings.poll_interval * 2, Duration::from_secs(30));
    let mut failures = Failures::default();
    loop {
        heartbeat.beat();
        if shutdown.is_cancelled() {
            break;
        }
        if analyser.is_none() {
            match reload_models(&settings).await {
                Ok(a) => {
                    tracing::warn!("models loaded again after they were lost");
                    analyser = Some(a);
                }
                Err(reason) => {
                    tracing::error!(%reason, "the models were lost and cannot be loaded again: this worker stops; restart the service");
                    heartbeat.fail(format!("models lost: {reason}"));
                    shutdown.cancelled().await;
                    break;
                }
            }
        }
        let pass = one_pass(&pool, &storage, &mut analyser, &settings).await;
        let wait = match pass {
            Ok(Pass::Worked) => {
                failures.reset();
                continue;
            }
            Ok(Pass::Idle) => {
                failures.reset();
                settings.poll_interval
            }
            Err(e) => {
                tracing::warn!(error = %e, "worker pass failed (database unavailable?)");
                failures.failed(&db_down)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
        }
    }
}

async fn reload_models(s: &WorkerSettings) -> Result<Analyser, String> {
    let Some(factory) = s.reload.clone() else {
        return Err("no way to load them again".into());
    };
    tokio::task::spawn_blocking(move || (factory.0)())
        .await
        .map_err(|e| e.to_string())?
}

async fn one_pass(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    analyser: &mut Option<Analyser>,
    s: &WorkerSettings,
) -> Result<Pass, sqlx::Error> {
    let created = jobs::schedule_ready(pool, s.quiet_period).await?;
    if created > 0 {
        tracing::debug!(created, "studies ready: jobs queued");
    }
    let exhausted = jobs::fail_exhausted(pool, s.max_attempts).await?;
    for job in &exhausted {
        let span = job_span(job.id, &job.study_instance_uid);
        span.in_scope(|| {
            tracing::error!(
                attempts = job.attempts,
                "job abandoned by its worker too often (crash or lost lease): failed for good"
            )
        });
        report_failure(pool, storage, s, job, &job.reason)
            .instrument(span)
            .await;
    }
    let Some(job) = jobs::dequeue(pool, &s.owner, s.lease, s.max_attempts).await? else {
        return Ok(if exhausted.is_empty() {
            Pass::Idle
        } else {
            Pass::Worked
        });
    };
    let span = job_span(job.id, &job.study_instance_uid);
    run_job(pool, storage, analyser, s, &job)
        .instrument(span)
        .await?;
    Ok(Pass::Worked)
}

/// Process a job and settle it: done, retried later, or failed for good (with its SR).
async fn run_job(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    analyser: &mut Option<Analyser>,
    s: &WorkerSettings,
    job: &Job,
) -> Result<(), sqlx::Error> {
    let outcome = tokio::select! {
        biased;
        outcome = process(pool, storage, analyser, s, job) => outcome,
        never = renew_lease(pool, s, job.id) => match never {},
    };
    match outcome {
        Ok(summary) => tracing::info!(%summary, "job done"),
        Err(JobError::LeaseLost) => {
            tracing::warn!("lease lost: leaving the job to its new owner");
        }
        Err(e) if job.attempts as u32 >= s.max_attempts => {
            tracing::error!(error = %e, "job failed for good");
            let reason = e.to_string();
            if jobs::fail(pool, job, &s.owner, &reason).await? {
                let failed = jobs::FailedJob {
                    id: job.id,
                    study_instance_uid: job.study_instance_uid.clone(),
                    attempts: job.attempts,
                    reason: reason.clone(),
                };
                report_failure(pool, storage, s, &failed, &reason).await;
            }
        }
        Err(e) => {
            let delay = retry_delay(s.retry_base, job.attempts);
            tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "job failed: will retry");
            jobs::retry_later(pool, job.id, &s.owner, delay, &e.to_string()).await?;
        }
    }
    Ok(())
}

/// Renew the job's lease every third of its length while the job runs, so that a job that runs
/// longer than its lease is not taken over while its worker is alive; a worker that stalls (or
/// dies) stops renewing, and another takes the job once the lease expires. Never returns: when
/// the lease is lost it stops renewing and waits, and the job's end finds the lease gone
/// (nothing is committed by a worker that no longer holds the job).
async fn renew_lease(pool: &PgPool, s: &WorkerSettings, job_id: i64) -> std::convert::Infallible {
    let every = (s.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match jobs::extend_lease(pool, job_id, &s.owner, s.lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("lease lost while the job runs: another worker took it");
                break;
            }
            // the database is away: try again at the next tick (the lease may still hold)
            Err(e) => tracing::warn!(error = %e, "cannot renew the job's lease"),
        }
    }
    std::future::pending().await
}

/// A study whose job failed for good gets a "not analysed" SR naming the failure, unless it has
/// a report already (which stands). Failures here are logged: the job's failed state remains.
async fn report_failure(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    s: &WorkerSettings,
    job: &jobs::FailedJob,
    reason: &str,
) {
    let result = async {
        if analysis::latest_report(pool, &job.study_instance_uid)
            .await?
            .is_some()
        {
            return Ok::<_, JobError>(None);
        }
        let instances = analysis::failed_instances(pool, &job.study_instance_uid).await?;
        let skipped = vec![format!("analysis failed: {reason}")];
        let outcome = Outcome {
            job_id: job.id,
            study: &job.study_instance_uid,
            pending: &instances,
            analysed: &[],
            found: &Found::default(),
            skipped_reasons: &skipped,
            previous: None,
            failed: true,
            visuals: Vec::new(),
        };
        let (built, _) = issue_report(pool, storage, s, outcome).await?;
        Ok(Some(built))
    }
    .await;
    match result {
        Ok(Some(sop)) => tracing::warn!(
            sr_sop_instance_uid = %sop,
            "a \"not analysed\" SR naming the failure is queued"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(
            error = %e,
            "no SR for the failed job; its failed state is recorded"
        ),
    }
}

/// The span of one job: its events carry the job and its study.
fn job_span(job_id: i64, study: &str) -> tracing::Span {
    tracing::info_span!("job", job_id, study_instance_uid = %study)
}

/// A job's retry delay after its `attempt`-th attempt failed: base × 2^(attempt−1), capped at
/// 10 minutes.
pub fn retry_delay(base: Duration, attempt: i32) -> Duration {
    Backoff::new(base, Duration::from_secs(600)).delay(attempt.max(0) as u32)
}

/// One job as a short pipeline: claim the study's instances → analyse them (each read once,
/// through the storage) → store the findings, build the outputs (the SR) and queue them, in one
/// transaction at the end.
async fn process(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    analyser: &mut Option<Analyser>,
    s: &WorkerSettings,
    job: &Job,
) -> Result<String, JobError> {
    let study = job.study_instance_uid.as_str();
    let pending = analysis::claim_instances(pool, study, job.kind == "reprocess").await?;
    if pending.is_empty() {
        let mut tx = pool.begin().await?;
        complete(&mut tx, job.id, s, false).await?;
        tx.commit().await?;
        return Ok("nothing to analyse".into());
    }
    // Results stay in memory until the single transaction at the end: a failed attempt commits
    // nothing, and its instances stay claimed ('analysing') for the retry.
    let mut found = analyse(storage, analyser, s, &pending).await?;
    if !jobs::extend_lease(pool, job.id, &s.owner, s.lease).await? {
        return Err(JobError::LeaseLost);
    }
    let previous = analysis::latest_report(pool, study).await?;
    if found.fresh.is_empty() && previous.is_some() {
        // nothing new to say: no silent duplicate of the last report
        let mut tx = pool.begin().await?;
        record_results(&mut tx, job.id, study, &found).await?;
        complete(&mut tx, job.id, s, false).await?;
        tx.commit().await?;
        return Ok(format!("{} skipped, report unchanged", found.skipped.len()));
    }
    let analysed = study_findings(pool, study, &pending, &found.fresh).await?;
    let skipped_reasons: Vec<String> = found.skipped.iter().map(|(_, r)| r.clone()).collect();
    let visuals = std::mem::take(&mut found.visuals);
    let outcome = Outcome {
        job_id: job.id,
        study,
        pending: &pending,
        analysed: &analysed,
        found: &found,
        skipped_reasons: &skipped_reasons,
        previous: previous.as_ref(),
        failed: false,
        visuals,
    };
    let (sr, problems) = issue_report(pool, storage, s, outcome).await?;
    let kind = if analysed.is_empty() {
        "not_analysed"
    } else {
        "findings"
    };
    let mut summary = format!(
        "{} analysed, {} skipped, SR {sr} ({kind}) queued",
        found.fresh.len(),
        found.skipped.len(),
    );
    for p in problems {
        summary.push_str("; ");
        summary.push_str(&p);
    }
    Ok(summary)
}

/// What one attempt's analysis found: the findings of each analysed image, and each skipped
/// image with the reason.
#[derive(Default)]
struct Found {
    fresh: Vec<AnalysedImage>,
    skipped: Vec<(String, String)>,
    /// The masks, maps and pictures of the fresh images, for their SEG and SC.
    visuals: Vec<images::Visual>,
}

/// Run the models on the claimed instances; every image is either found or skipped.
async fn analyse(
    storage: &Arc<dyn Storage>,
    analyser: &mut Option<Analyser>,
    s: &WorkerSettings,
    pending: &[analysis::PendingInstance],
) -> Result<Found, JobError> {
    let keys = pending
        .iter()
        .map(|p| SpoolKey::parse(&p.spool_key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JobError::Spool(e.to_string()))?;
    let reports = run_models(analyser, storage, keys).await?;
    if let Some(m) = &s.metrics {
        observe(m, &reports);
    }
    let mut found = Found::default();
    for (p, r) in pending.iter().zip(reports) {
        match r.to_findings(p.image_ref()) {
            Ok(f) => {
                if let (Some(findings), Some(probabilities)) = (r.findings, r.probabilities) {
                    found.visuals.push(images::Visual {
                        image: f.image.clone(),
                        findings: Box::new(findings),
                        probabilities,
                    });
                }
                found.fresh.push(f);
            }
            Err(reason) => found.skipped.push((p.sop_instance_uid.clone(), reason)),
        }
    }
    Ok(found)
}

/// Every analysed image of the study, for its report: earlier jobs' (read back from the
/// database) and this attempt's.
async fn study_findings(
    pool: &PgPool,
    study: &str,
    pending: &[analysis::PendingInstance],
    fresh: &[AnalysedImage],
) -> Result<Vec<AnalysedImage>, sqlx::Error> {
    let mut all: Vec<AnalysedImage> = analysis::analysed_images(pool, study)
        .await?
        .into_iter()
        .filter(|a| {
            !pending
                .iter()
                .any(|p| p.sop_instance_uid == a.image.sop_instance_uid)
        })
        .collect();
    all.extend(fresh.iter().cloned());
    Ok(all)
}

/// What a job found, for its report.
struct Outcome<'a> {
    job_id: i64,
    study: &'a str,
    /// The instances the job took.
    pending: &'a [analysis::PendingInstance],
    /// Every analysed image of the study (earlier jobs' included).
    analysed: &'a [AnalysedImage],
    /// This attempt's findings and skips, recorded with the report.
    found: &'a Found,
    /// Why images were not analysed (or why the job failed).
    skipped_reasons: &'a [String],
    previous: Option<&'a analysis::ReportRow>,
    /// The job failed for good (the report names the failure; the job stays failed).
    failed: bool,
    /// The masks and pictures of this attempt's analysed images, for their SEG and SC.
    visuals: Vec<images::Visual>,
}

/// Build the study's outputs — the SEG and SC of each freshly analysed image, then the SR
/// (findings referencing them, or "not analysed" when nothing is analysed) — archive them, and in
/// one transaction record the job's results, the report row, the image outputs and their outbox
/// rows (each destination gets the kinds it takes) and complete the job (a job already failed
/// stays failed). Returns the SR's SOP Instance UID and why any image output was left out.
async fn issue_report(
    pool: &PgPool,
    storage: &Arc<dyn Storage>,
    s: &WorkerSettings,
    o: Outcome<'_>,
) -> Result<(String, Vec<String>), JobError> {
    let header_key = o
        .pending
        .first()
        .map(|p| p.spool_key.clone())
        .ok_or_else(|| JobError::Report("job has no instance".into()))?;
    let source = read_source(storage, &header_key).await?;
    let now = Local::now().naive_local();
    let model = model_info(o.analysed);
    let destinations = s.destinations.borrow().clone();
    let issued = if o.analysed.is_empty() {
        images::Issued::default()
    } else {
        let wanted = images::Wanted::by(&destinations);
        images::make(pool, s, &source, &model, o.visuals, wanted, now).await?
    };
    let analysed_uids: Vec<&str> = o
        .analysed
        .iter()
        .map(|a| a.image.sop_instance_uid.as_str())
        .collect();
    let mut request = report_request(source, o.analysed, o.pending, o.skipped_reasons, o.previous);
    request.content_datetime = now;
    request.image_outputs = images::study_refs(pool, o.study, &issued, &analysed_uids).await?;
    let built = Arc::new(report::build_sr(&request).map_err(|e| JobError::Report(e.to_string()))?);
    let archive_path = archive(s, built.clone()).await?;
    let kind = if o.analysed.is_empty() {
        "not_analysed"
    } else {
        "findings"
    };
    let reason = (kind == "not_analysed").then(|| summarise(o.skipped_reasons));
    let archive = archive_path.display().to_string();
    let mut tx = pool.begin().await?;
    record_results(&mut tx, o.job_id, o.study, o.found).await?;
    analysis::insert_report(
        &mut tx,
        &NewReport {
            study_instance_uid: o.study,
            job_id: o.job_id,
            kind,
            sr_sop_instance_uid: &built.sop_instance_uid,
            sr_series_instance_uid: &built.series_instance_uid,
            instance_number: request.instance_number as i32,
            predecessor: o.previous.map(|p| p.sr_sop_instance_uid.as_str()),
            analysed_images: o.analysed.len() as i32,
            archive_path: &archive,
            reason: reason.as_deref(),
        },
    )
    .await?;
    // a "not analysed" SR goes only where it is wanted (`not_analysed`)
    let sr_destinations: Vec<Destination> = destinations
        .iter()
        .filter(|d| kind == "findings" || d.outputs.not_analysed)
        .cloned()
        .collect();
    images::record(&mut tx, o.job_id, &issued, &destinations).await?;
    outbox::enqueue(&mut tx, &*built, &archive_path, &sr_destinations)
        .await
        .map_err(|e| JobError::Report(format!("cannot queue the SR: {e}")))?;
    complete(&mut tx, o.job_id, s, o.failed).await?;
    tx.commit().await?;
    Ok((built.sop_instance_uid.clone(), issued.problems))
}

/// Write an output into the archive (blocking I/O, off the async threads).
async fn archive(s: &WorkerSettings, output: Arc<dyn Output>) -> Result<PathBuf, JobError> {
    let dir = s.archive_dir.clone();
    tokio::task::spawn_blocking(move || outbox::archive(&dir, &*output))
        .await
        .map_err(|e| JobError::Report(e.to_string()))?
        .map_err(|e| JobError::Report(e.to_string()))
}

/// Complete the job in the caller's transaction (one already failed stays failed when
/// `failed`); a lost lease is an error.
async fn complete(
    tx: &mut sqlx::PgConnection,
    job_id: i64,
    s: &WorkerSettings,
    failed: bool,
) -> Result<(), JobError> {
    let completed = if failed {
        jobs::complete_unless_failed(tx, job_id, &s.owner).await?
    } else {
        jobs::complete(tx, job_id, &s.owner).await?
    };
    if completed {
        Ok(())
    } else {
        Err(JobError::LeaseLost)
    }
}

/// Store the findings of this attempt and mark the skipped instances, with their reasons.
async fn record_results(
    tx: &mut sqlx::PgConnection,
    job_id: i64,
    study: &str,
    found: &Found,
) -> Result<(), sqlx::Error> {
    for image in &found.fresh {
        analysis::record_analysis(tx, job_id, study, image).await?;
    }
    for (sop, reason) in &found.skipped {
        analysis::set_state(tx, sop, "skipped", Some(reason)).await?;
    }
    Ok(())
}

/// Run the models on a blocking thread, reading each instance through the storage; the analyser
/// travels there and back. A panic during the run loses the analyser (its sessions may be
/// inconsistent): the job fails this attempt and the worker loads the models again.
async fn run_models(
    analyser: &mut Option<Analyser>,
    storage: &Arc<dyn Storage>,
    keys: Vec<SpoolKey>,
) -> Result<Vec<ImageReport>, JobError> {
    let Some(mut a) = analyser.take() else {
        return Err(JobError::Inference("the models are not loaded".into()));
    };
    let storage = storage.clone();
    let (back, result) = tokio::task::spawn_blocking(move || {
        let names: Vec<String> = keys.iter().map(|k| k.as_str().to_string()).collect();
        let mut out = Vec::with_capacity(keys.len());
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            a.analyse_with(
                &names,
                |i| storage.open(&keys[i]).map_err(|e| e.to_string()),
                |r| out.push(r),
            )
        }));
        match run {
            Ok(r) => (Some(a), r.map(|()| out).map_err(|e| e.to_string())),
            Err(_) => (
                None,
                Err("the analysis panicked; the models are loaded again".into()),
            ),
        }
    })
    .await
    .map_err(|e| JobError::Inference(format!("inference thread: {e}")))?;
    *analyser = back;
    result.map_err(JobError::Inference)
}

/// Record the decode time of every image and the model times of every analysed one.
fn observe(metrics: &Metrics, reports: &[ImageReport]) {
    let secs = |ms: f64| Duration::try_from_secs_f64(ms / 1000.0).unwrap_or_default();
    for r in reports {
        metrics.observe_decode(secs(r.timings.decode_ms));
        if let Some(f) = &r.findings {
            metrics.observe_inference(
                &f.provider,
                secs(r.timings.segment_ms),
                secs(r.timings.classify_ms),
            );
        }
    }
}

/// The header of a received instance, for the patient and study attributes of the SR.
async fn read_source(storage: &Arc<dyn Storage>, key: &str) -> Result<SourceStudy, JobError> {
    let key = SpoolKey::parse(key).map_err(|e| JobError::Spool(e.to_string()))?;
    let storage = storage.clone();
    tokio::task::spawn_blocking(move || {
        let (_, mut file) = storage
            .open(&key)
            .map_err(|e| JobError::Spool(e.to_string()))?;
        let (ts, header) = guard::read_header(&mut *file, guard::Limits::default())
            .map_err(|e| JobError::Spool(format!("{} is malformed: {e}", key.as_str())))?;
        let obj = crate::dicom::header::parse_header(&header, &ts)
            .map_err(|e| JobError::Spool(format!("cannot read {}: {e}", key.as_str())))?;
        SourceStudy::from_dataset(&obj).map_err(|e| JobError::Report(e.to_string()))
    })
    .await
    .map_err(|e| JobError::Spool(e.to_string()))?
}

fn summarise(reasons: &[String]) -> String {
    let mut unique: Vec<&str> = reasons.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    if unique.is_empty() {
        "no image could be analysed".into()
    } else {
        unique.join("; ")
    }
}

/// The models and software named in every output, from the analysed images (placeholders
/// for a study with none).
fn model_info(analysed: &[AnalysedImage]) -> ModelInfo {
    match analysed.first() {
        Some(a) => ModelInfo {
            classifier_name: a.models.classifier_name.clone(),
            classifier_version: a.models.classifier_version.clone(),
            segmenter_name: a.models.segmenter_name.clone(),
            segmenter_version: a.models.segmenter_version.clone(),
            trained: analysed.iter().all(|a| a.models.trained),
            manufacturer: "cxr-worker".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        },
        None => ModelInfo {
            classifier_name: "Anatomy-XNet".into(),
            classifier_version: "n/a".into(),
            segmenter_name: "anatomy segmenter".into(),
            segmenter_version: "n/a".into(),
            trained: false,
            manufacturer: "cxr-worker".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

fn report_request(
    study: SourceStudy,
    analysed: &[AnalysedImage],
    pending: &[analysis::PendingInstance],
    skipped: &[String],
    previous: Option<&analysis::ReportRow>,
) -> ReportRequest {
    let model = model_info(analysed);
    let content = if analysed.is_empty() {
        ReportContent::NotAnalysed {
            received: pending.iter().map(|p| p.image_ref()).collect(),
            reason: summarise(skipped),
        }
    } else {
        ReportContent::Findings(analysed.to_vec())
    };
    let predecessor = previous.map(|p| Predecessor {
        study_instance_uid: study.study_instance_uid.clone(),
        series_instance_uid: p.sr_series_instance_uid.clone(),
        sop_class_uid: report::sr::SR_SOP_CLASS_UID.to_string(),
        sop_instance_uid: p.sr_sop_instance_uid.clone(),
    });
    ReportRequest {
        study,
        model,
        content,
        predecessor,
        completion: Completion::Complete,
        instance_number: previous.map_or(1, |p| p.instance_number as u32 + 1),
        series_number: 9901,
        content_datetime: Local::now().naive_local(),
        sop_instance_uid: None,
        series_instance_uid: previous.map(|p| p.sr_series_instance_uid.clone()),
        uid_root: None,
        image_outputs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(5);
        assert_eq!(retry_delay(b, 1), Duration::from_secs(5));
        assert_eq!(retry_delay(b, 2), Duration::from_secs(10));
        assert_eq!(retry_delay(b, 4), Duration::from_secs(40));
        assert_eq!(retry_delay(b, 30), Duration::from_secs(600));
    }
}
