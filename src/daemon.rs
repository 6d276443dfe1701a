//! The daemon: start-up order (database and migrations, spool, models, HTTP and DICOM
//! listeners), the tasks it runs (workers, outbox sender, disk sampler, retention, HTTP, reload),
//! signals, drain.
//!
//! SIGTERM or SIGINT stops accepting associations; the C-STOREs in flight finish and are answered;
//! then the process exits 0. SIGHUP reloads the configuration ([`crate::ops::reload`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::analyse::analyser::Analyser;
use crate::analyse::helper::{self, Decoder};
use crate::analyse::infer::{Engine, EngineOptions};
use crate::audit::{self, AuditEvent, Auditor, LocalUser};
use crate::backoff::{Backoff, Failures};
use crate::config::Config;
use crate::db;
use crate::ingest::Ingest;
use crate::ingest::budget::MemoryBudget;
use crate::ingest::diskspace::{self, SpoolSpace};
use crate::ingest::spool;
use crate::ingest::spool::{LocalSpool, Storage};
use crate::ops::http::{self, HttpState};
use crate::ops::metrics::Metrics;
use crate::ops::reload::{self, Live};
use crate::ops::retention;
use crate::ops::systemd::{Heartbeats, Notifier, Watchdog};
use crate::receive::{self, Listener, ScpStats};
use crate::send::outbox;
use crate::worker::{self, WorkerSettings};
use tokio_util::task::TaskTracker;

/// A start-up failure, naming what could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    #[error("cannot listen on {addr} (key {key}): {source}")]
    Listen {
        key: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (key http.listen): {source}")]
    HttpListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("models (keys models.*): {0}")]
    Models(#[from] crate::analyse::infer::InferError),
}

/// Run the daemon until SIGTERM/SIGINT: [`Daemon::build`], then [`Daemon::run`].
pub async fn serve(config: Config) -> Result<(), StartError> {
    match Daemon::build(config).await? {
        Some(daemon) => daemon.run().await,
        None => Ok(()),
    }
}

/// A daemon set up and bound but not yet running: the database migrated, the spool open, the
/// models loaded and both listeners bound, so its real addresses are known (bind port 0 and read
/// them, as zero-to-production's `Application::build` does). Under systemd (`Type=notify`)
/// READY=1 is sent when it starts running; the watchdog is pinged only while the receive loop and
/// the workers are alive. SIGHUP reloads what can change safely (see [`crate::ops::reload`]).
pub struct Daemon {
    config: Config,
    notifier: Notifier,
    shutdown: CancellationToken,
    hangup: tokio::signal::unix::Signal,
    pool: sqlx::PgPool,
    storage: Arc<dyn Storage>,
    space: Arc<SpoolSpace>,
    analysers: Vec<Analyser>,
    listeners: Vec<Listener>,
    dicom_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    http: Option<(TcpListener, SocketAddr)>,
}

impl Daemon {
    /// Set up everything in start-up order (signals, database and migrations, spool, disk space,
    /// models, HTTP and DICOM listeners). `Ok(None)`: SIGTERM or SIGINT arrived while waiting for
    /// the database.
    pub async fn build(config: Config) -> Result<Option<Self>, StartError> {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NOTIFY_SOCKET unusable: not notifying systemd");
            Notifier::disabled()
        });
        let roles = config.process.roles;
        if roles.receive {
            config.dicom.check_admission()?;
        }
        if roles.receive && config.dicom.allow_any_calling_ae {
            tracing::warn!(
                "dicom.allow_any_calling_ae = true: any peer that reaches the port may store studies under any calling AE title"
            );
        }
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone(), notifier.clone())?;
        // installed now: a SIGHUP during start-up must not end the process
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signals)?;
        let pool = db::pool(&config.database)?;
        notify_status(&notifier, "applying database migrations");
        migrate_when_available(&pool, &shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let storage = open_spool(&config)?;
        let space = Arc::new(SpoolSpace::new(
            &config.spool.dir,
            config.spool.max_used_percent,
        ));
        sample_disk_space(&space).await;
        let analysers = load_analysers(&config, &notifier)?;
        let http = bind_http(&config).await?;
        let mut listeners = Vec::with_capacity(2);
        let dicom_addr = match config.dicom.listen {
            Some(addr) if roles.receive => {
                Some(bind_dicom(addr, false, &config, &mut listeners).await?)
            }
            _ => None,
        };
        let tls_addr = match &config.dicom.tls {
            Some(tls) if roles.receive => {
                Some(bind_dicom(tls.listen, true, &config, &mut listeners).await?)
            }
            _ => None,
        };
        Ok(Some(Self {
            config,
            notifier,
            shutdown,
            hangup,
            pool,
            storage,
            space,
            analysers,
            listeners,
            dicom_addr,
            tls_addr,
            http,
        }))
    }

    /// The address the plain DICOM listener is bound to (`None`: `dicom.listen = "off"`, or the
    /// process does not receive).
    pub fn dicom_addr(&self) -> Option<SocketAddr> {
        self.dicom_addr
    }

    /// The address the DICOM TLS listener is bound to, when `[dicom.tls]` is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the HTTP endpoints, when `[http] enabled`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// The token that stops the daemon as SIGTERM does: cancel it to drain and return.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run until shutdown: declare READY, start the background tasks (workers, outbox sender,
    /// disk sampler, retention, HTTP, reload), receive until SIGTERM/SIGINT (or the shutdown
    /// token), then drain: C-STOREs in flight are answered, workers finish the job in hand.
    pub async fn run(self) -> Result<(), StartError> {
        let Self {
            config,
            notifier,
            shutdown,
            hangup,
            pool,
            storage,
            space,
            analysers,
            listeners,
            dicom_addr,
            tls_addr,
            http,
        } = self;
        let roles = config.process.roles;
        let heartbeats = Heartbeats::new();
        let receive_beat = roles.receive.then(|| heartbeats.register("receive"));
        let _watchdog = Watchdog::spawn_if_enabled(&notifier, &heartbeats, shutdown.clone());
        if let Err(e) = notifier.ready() {
            tracing::warn!(error = %e, "cannot notify READY");
        }
        tracing::info!(roles = %roles.names(), workers = analysers.len(), "running");
        let status = if roles.receive {
            format!(
                "receiving as {} on {}",
                config.dicom.ae_title,
                [
                    dicom_addr.map(|a| a.to_string()),
                    tls_addr.map(|a| format!("{a} (TLS)"))
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" and ")
            )
        } else {
            format!("running as {}", roles.names())
        };
        notify_status(&notifier, &status);
        let live = Live::new(&config, space.clone());
        live.certificates
            .warn_if_expiring(crate::ops::certificates::unix_now());
        let budget = MemoryBudget::new(config.dicom.receive_memory_budget_bytes);
        let auditor = Auditor::new(pool.clone(), &config.audit, config.dicom.ae_title.as_str());
        let audit_stop = CancellationToken::new();
        let audit_sender = tokio::spawn(audit::run_sender(
            pool.clone(),
            config.audit.clone(),
            audit_stop.clone(),
        ));
        if let Some(a) = &auditor {
            a.record(&AuditEvent::application_start(
                a.application(None),
                Some(LocalUser::current()),
            ))
            .await;
            live.outbox.send_modify(|s| {
                let mut next = (**s).clone();
                next.auditor = Some(a.clone());
                *s = Arc::new(next);
            });
        }
        let ingest = Ingest::new(pool.clone(), storage.clone(), budget.clone())
            .with_auditor(auditor.clone())
            .with_watermark(space.clone())
            .max_inflated_bytes(config.dicom.max_dataset_bytes as u64);
        let scp_stats = Arc::new(ScpStats::default());
        let metrics = Arc::new(
            Metrics::new(scp_stats.clone(), ingest.stats.clone(), Some(space.clone()))
                .with_budget(budget.clone())
                .with_certificates(live.certificates.clone()),
        );
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            pool: pool.clone(),
            storage,
            metrics,
            heartbeats,
            shutdown: shutdown.clone(),
        };
        let workers = analysers.len();
        tasks.spawn_workers(&config, &live, analysers);
        if roles.send {
            tasks.spawn_sender(&live);
            tasks.spawn_retention(&live);
        }
        tasks.spawn_disk_sampler(&space);
        if let Some((listener, _)) = http {
            tasks.spawn_http(listener, &config, &live, workers);
        }
        let scp_settings = live.scp.subscribe();
        tasks.tracker.spawn(reload::run(
            hangup,
            config.source.clone(),
            config.clone(),
            live,
            notifier.clone(),
            shutdown.clone(),
        ));
        tasks.tracker.close();
        match receive_beat {
            Some(beat) => {
                receive::run(
                    listeners,
                    scp_settings,
                    Arc::new(ingest),
                    scp_stats,
                    budget,
                    shutdown,
                    move || beat.beat(),
                )
                .await
            }
            None => shutdown.cancelled().await,
        }
        // the receiver has drained (or there is none); workers finish the job in hand
        tasks.tracker.wait().await;
        if let Some(a) = &auditor {
            a.record(&AuditEvent::application_stop(
                a.application(None),
                Some(LocalUser::current()),
            ))
            .await;
        }
        // the audit sender's last round delivers what is queued (the stop included)
        audit_stop.cancel();
        match audit_sender.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "audit sender stopped"),
            Err(e) => tracing::warn!(error = %e, "audit sender failed"),
            Ok(Ok(())) => {}
        }
        pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The background tasks of a running daemon and what they share.
struct Tasks {
    tracker: TaskTracker,
    pool: sqlx::PgPool,
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    heartbeats: Heartbeats,
    shutdown: CancellationToken,
}

impl Tasks {
    /// One worker task per loaded analyser, each with its own lease owner name and heartbeat.
    fn spawn_workers(&self, config: &Config, live: &Live, analysers: Vec<Analyser>) {
        let settings = WorkerSettings {
            quiet_period: config.study.quiet_period,
            lease: config.study.lease,
            max_attempts: config.study.max_attempts,
            poll_interval: config.study.poll_interval,
            retry_base: config.study.retry_base,
            archive_dir: config.report.archive_dir.clone(),
            destinations: live.destinations.subscribe(),
            owner: String::new(),
            metrics: Some(self.metrics.clone()),
            reload: Some(analyser_factory(config)),
        };
        for (n, analyser) in analysers.into_iter().enumerate() {
            let mut settings = settings.clone();
            settings.owner = format!("{}:{}:{n}", hostname(), std::process::id());
            let heartbeat = self.heartbeats.register(format!("worker-{n}"));
            self.tracker.spawn(worker::run(
                self.pool.clone(),
                self.storage.clone(),
                analyser,
                Arc::new(settings),
                self.shutdown.clone(),
                heartbeat,
            ));
        }
    }

    /// The outbox sender (its destinations follow reloads).
    fn spawn_sender(&self, live: &Live) {
        self.tracker.spawn(outbox::run_live(
            self.pool.clone(),
            live.outbox.subscribe(),
            Some(self.metrics.clone() as Arc<dyn outbox::SendObserver>),
            self.shutdown.clone(),
        ));
    }

    /// The disk-space sampler (the receive watermark, and the metric in every role).
    fn spawn_disk_sampler(&self, space: &Arc<SpoolSpace>) {
        self.tracker.spawn(
            space
                .clone()
                .run(diskspace::SAMPLE_INTERVAL, self.shutdown.clone()),
        );
    }

    /// Retention: removes what has been delivered, so it runs with the sender.
    fn spawn_retention(&self, live: &Live) {
        self.tracker.spawn(retention::run(
            self.pool.clone(),
            self.storage.clone(),
            live.retention.subscribe(),
            Some(self.metrics.clone()),
            self.shutdown.clone(),
        ));
    }

    /// The HTTP endpoints (health, readiness, metrics) on their bound listener.
    fn spawn_http(&self, listener: TcpListener, config: &Config, live: &Live, workers: usize) {
        let state = Arc::new(HttpState {
            pool: self.pool.clone(),
            storage: self.storage.clone(),
            heartbeats: self.heartbeats.clone(),
            metrics: self.metrics.clone(),
            space: live.space.clone(),
            workers,
            config: config.http.clone(),
            certificates: live.certificates.clone(),
        });
        let token = self.shutdown.clone();
        self.tracker.spawn(async move {
            if let Err(e) = http::serve(listener, state, token).await {
                tracing::error!(error = %e, "HTTP endpoints stopped");
            }
        });
    }
}

/// Open the spool and remove what an earlier run left staged.
fn open_spool(config: &Config) -> Result<Arc<dyn Storage>, StartError> {
    let local = LocalSpool::open(&config.spool.dir)?;
    let swept = local.sweep_staged()?;
    if swept > 0 {
        tracing::info!(swept, "removed staged files left by an earlier run");
    }
    Ok(Arc::new(local))
}

/// Bind a DICOM listener (`dicom.listen`, or `dicom.tls.listen` when `tls`) and add it to
/// `listeners`; its real address is logged and returned.
async fn bind_dicom(
    addr: SocketAddr,
    tls: bool,
    config: &Config,
    listeners: &mut Vec<Listener>,
) -> Result<SocketAddr, StartError> {
    let key = if tls {
        "dicom.tls.listen"
    } else {
        "dicom.listen"
    };
    let err = |source| StartError::Listen { key, addr, source };
    let socket = TcpListener::bind(addr).await.map_err(err)?;
    let bound = socket.local_addr().map_err(err)?;
    match &config.dicom.tls {
        Some(t) if tls => tracing::info!(
            addr = %bound,
            ae_title = %config.dicom.ae_title,
            certificate = %t.identity.info.subject,
            mutual_tls = matches!(t.clients, crate::tls::ClientAuth::Required(_)),
            "listening (DICOM TLS)"
        ),
        _ => tracing::info!(addr = %bound, ae_title = %config.dicom.ae_title, "listening"),
    }
    listeners.push(Listener { socket, tls });
    Ok(bound)
}

/// Bind the HTTP endpoints' listener, when `[http] enabled`.
async fn bind_http(config: &Config) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    if !config.http.enabled {
        return Ok(None);
    }
    let addr = config.http.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::HttpListen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::HttpListen { addr, source })?;
    tracing::info!(addr = %bound, "HTTP endpoints (healthz, readyz, metrics) listening");
    Ok(Some((listener, bound)))
}

/// The first disk sample, before the first association.
async fn sample_disk_space(space: &Arc<SpoolSpace>) {
    let s = space.clone();
    match tokio::task::spawn_blocking(move || s.refresh()).await {
        Ok(Ok(u)) => tracing::info!(
            used_percent = u.used_percent(),
            max_used_percent = space.max_used_percent(),
            "spool disk space"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sample the spool's disk space"),
        Err(e) => tracing::warn!(error = %e, "disk space sampling task failed"),
    }
}

/// One analyser (ONNX Runtime sessions) per worker, none unless the process analyses; a model
/// that breaks the contract stops start-up with the mismatch named.
fn load_analysers(config: &Config, notifier: &Notifier) -> Result<Vec<Analyser>, StartError> {
    if !config.process.roles.analyse {
        return Ok(Vec::new());
    }
    let mut analysers = Vec::with_capacity(config.study.workers);
    for _ in 0..config.study.workers {
        notify_status(notifier, "loading models");
        let engine = Engine::load(&EngineOptions::from(&config.models))?;
        analysers.push(Analyser {
            engine,
            limits: helper::decode_limits(config),
            batch_size: config.models.batch_size,
            decoder: Decoder::from_config(&config.decode),
        });
    }
    Ok(analysers)
}

/// Loads a worker's models and decoder again (after a panic lost them).
fn analyser_factory(config: &Config) -> worker::AnalyserFactory {
    let options = EngineOptions::from(&config.models);
    let limits = helper::decode_limits(config);
    let batch_size = config.models.batch_size;
    let decode = config.decode.clone();
    worker::AnalyserFactory(Arc::new(move || {
        Ok(Analyser {
            engine: Engine::load(&options).map_err(|e| e.to_string())?,
            limits,
            batch_size,
            decoder: Decoder::from_config(&decode),
        })
    }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Apply migrations, retrying while the database cannot be reached (it may start after us).
async fn migrate_when_available(
    pool: &sqlx::PgPool,
    shutdown: &CancellationToken,
) -> Result<(), db::DbError> {
    let schedule = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut failures = Failures::default();
    loop {
        match db::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(db::DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)))
                if is_connection_error(&e) =>
            {
                let delay = failures.failed(&schedule);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable at start-up");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

fn notify_status(notifier: &Notifier, text: &str) {
    if let Err(e) = notifier.status(text) {
        tracing::warn!(error = %e, "cannot notify STATUS");
    }
}

fn spawn_signal_handler(shutdown: CancellationToken, notifier: Notifier) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        if let Err(e) = notifier.stopping() {
            tracing::warn!(error = %e, "cannot notify STOPPING");
        }
        shutdown.cancel();
    });
    Ok(())
}
