//! The operators' HTTP endpoints, beside the flow: `/healthz` (liveness), `/readyz` (readiness)
//! and `/metrics` (Prometheus text format). Loopback by default (`[http] listen`); nothing here
//! carries patient data.
//!
//! - `/healthz`: 200 while every long-running loop (the receive accept loop, each analysis worker)
//!   has beaten within `[http] stale_after_secs`; 503 naming the stale loops otherwise. The same
//!   heartbeats gate the systemd watchdog.
//! - `/readyz`: 200 only when every check passes, 503 otherwise; the JSON body has each check
//!   with `ok` and `detail`:
//!   - `database`: a trivial query answers within `[http] check_timeout_secs`;
//!   - `models`: the analysis workers loaded their models (or the process does not analyse);
//!   - `spool`: a small file can be staged and discarded in the spool, and the spool's file
//!     system is below its watermark (`[spool] max_used_percent`: new associations are refused
//!     above it);
//!   - `queue`: not stalled. Stalled means a job has been due (queued and past its `run_after`,
//!     or running with an expired lease) for longer than `[http] queue_stall_secs` while no job
//!     started, finished or renewed its lease in that time. Receive-only daemons skip it.
//! - `/metrics`: see [`crate::ops::metrics`].
//!
//! At most [`MAX_CONNECTIONS`] connections; headers must arrive within [`HEADER_TIMEOUT`] and a
//! connection lives at most [`CONNECTION_LIFETIME`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;
use crate::ingest::diskspace::SpoolSpace;
use crate::ingest::spool::Storage;
use crate::ops::certificates::{Certificates, unix_now};
use crate::ops::metrics::{self, Metrics};
use crate::ops::systemd::Heartbeats;

/// What the endpoints look at.
#[derive(Debug)]
pub struct HttpState {
    pub pool: PgPool,
    pub storage: Arc<dyn Storage>,
    pub heartbeats: Heartbeats,
    pub metrics: Arc<Metrics>,
    pub space: Arc<SpoolSpace>,
    /// Analysis workers running, each with its models loaded; 0: the process does not analyse.
    pub workers: usize,
    /// `[http]`: thresholds and time limits.
    pub config: HttpConfig,
    /// The TLS certificates in use: an expired one fails readiness, one expiring within 30 days
    /// is a warning.
    pub certificates: Arc<Certificates>,
}

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of a connection, keep-alive included (scrapers reconnect).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serve the endpoints on `listener` until `shutdown`. Bounded like the DICOM side: at most
/// [`MAX_CONNECTIONS`] connections, request headers within [`HEADER_TIMEOUT`], every connection
/// closed after [`CONNECTION_LIFETIME`], so half-sent or idle requests cannot pile up.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!("HTTP connection limit reached: closed");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

/// The routes, for [`serve`] and for tests.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Liveness {
    status: &'static str,
    stale_loops: Vec<String>,
    /// Loops that declared themselves failed, with the reason.
    failed_loops: Vec<String>,
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let stale = state.heartbeats.stale(state.config.stale_after);
    let (code, status) = if stale.is_empty() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stale")
    };
    (
        code,
        axum::Json(Liveness {
            status,
            stale_loops: stale,
            failed_loops: state
                .heartbeats
                .failures()
                .into_iter()
                .map(|(n, r)| format!("{n}: {r}"))
                .collect(),
        }),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    checks: Checks,
    /// What needs attention without making the worker unready (a certificate expiring soon).
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Checks {
    database: Check,
    models: Check,
    spool: Check,
    queue: Check,
    certificates: Check,
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let (database, spool, queue) = tokio::join!(
        check_database(&state),
        check_spool(&state),
        check_queue(&state)
    );
    let failures = state.heartbeats.failures();
    let models = if !failures.is_empty() {
        let named: Vec<String> = failures.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        Check::failed(named.join("; "))
    } else if state.workers == 0 {
        Check::ok(
            "no analysis in this process (study.workers = 0, or process.roles without \"analyse\")",
        )
    } else {
        Check::ok(format!("{} worker(s) with models loaded", state.workers))
    };
    let assessment = state.certificates.assess(unix_now());
    let certificates = if !assessment.ok {
        Check::failed(assessment.problems.join("; "))
    } else if assessment.count == 0 {
        Check::ok("no TLS certificate in use")
    } else {
        Check::ok(format!("{} certificate(s), none expired", assessment.count))
    };
    let warnings = if assessment.ok {
        assessment.problems
    } else {
        Vec::new()
    };
    let checks = Checks {
        database,
        models,
        spool,
        queue,
        certificates,
    };
    let ready = [
        &checks.database,
        &checks.models,
        &checks.spool,
        &checks.queue,
        &checks.certificates,
    ]
    .iter()
    .all(|c| c.ok);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(Readiness {
            ready,
            checks,
            warnings,
        }),
    )
        .into_response()
}

async fn check_database(state: &HttpState) -> Check {
    let probe = crate::db::ping(&state.pool);
    match tokio::time::timeout(state.config.check_timeout, probe).await {
        Ok(Ok(_)) => Check::ok("answered a query"),
        Ok(Err(e)) => Check::failed(format!("unavailable: {e}")),
        Err(_) => Check::failed(format!(
            "no answer within {} ms",
            state.config.check_timeout.as_millis()
        )),
    }
}

async fn check_spool(state: &HttpState) -> Check {
    let storage = state.storage.clone();
    let probe = tokio::task::spawn_blocking(move || {
        storage
            .stage(&[b"readyz"])
            .map(|staged| storage.discard(staged))
    });
    match tokio::time::timeout(state.config.check_timeout, probe).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Check::failed(format!("not writable: {e}")),
        Ok(Err(e)) => return Check::failed(format!("probe failed: {e}")),
        Err(_) => {
            return Check::failed(format!(
                "a small write took longer than {} ms",
                state.config.check_timeout.as_millis()
            ));
        }
    }
    let max = state.space.max_used_percent();
    match state.space.last() {
        Some(u) if state.space.over_watermark() => Check::failed(format!(
            "file system {:.1}% used, above the watermark of {max}%: new associations are refused",
            u.used_percent()
        )),
        Some(u) => Check::ok(format!(
            "writable; file system {:.1}% used (watermark {max}%)",
            u.used_percent()
        )),
        None => Check::ok("writable; disk use not sampled yet"),
    }
}

async fn check_queue(state: &HttpState) -> Check {
    if state.workers == 0 {
        return Check::ok("not checked: no analysis in this process");
    }
    let query = async {
        let waiting = crate::db::jobs::oldest_waiting(&state.pool)
            .await?
            .map_or(0.0, |j| j.age_secs.max(0.0));
        let since_progress = crate::db::jobs::seconds_since_progress(&state.pool).await?;
        Ok::<_, sqlx::Error>((waiting, since_progress))
    };
    let (waiting, since_progress) =
        match tokio::time::timeout(state.config.check_timeout, query).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Check::failed(format!("cannot read the queue: {e}")),
            Err(_) => return Check::failed("cannot read the queue in time"),
        };
    let stall = state.config.queue_stall.as_secs_f64();
    let progressing = since_progress.is_some_and(|p| p <= stall);
    if waiting > stall && !progressing {
        Check::failed(format!(
            "stalled: a job has been due for {waiting:.0} s and no job progressed for {} (limit {stall:.0} s)",
            since_progress.map_or("ever".into(), |p| format!("{p:.0} s"))
        ))
    } else {
        Check::ok(format!("oldest due job waiting {waiting:.0} s"))
    }
}

async fn metrics_text(State(state): State<Arc<HttpState>>) -> Response {
    let snapshot = metrics::snapshot(&state.pool, state.config.check_timeout).await;
    match state.metrics.render(snapshot.as_ref()) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestStats;
    use crate::ingest::spool::LocalSpool;
    use crate::receive::ScpStats;
    use std::time::Duration;

    fn state(dir: &std::path::Path, heartbeats: Heartbeats, workers: usize) -> Arc<HttpState> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let space = Arc::new(SpoolSpace::new(dir, 100.0));
        space.refresh().unwrap();
        Arc::new(HttpState {
            pool,
            storage: Arc::new(LocalSpool::open(dir).unwrap()),
            heartbeats,
            metrics: Arc::new(Metrics::new(
                Arc::new(ScpStats::default()),
                Arc::new(IngestStats::default()),
                Some(space.clone()),
            )),
            space,
            workers,
            config: HttpConfig {
                enabled: true,
                listen: "127.0.0.1:0".parse().unwrap(),
                stale_after: Duration::from_millis(50),
                queue_stall: Duration::from_secs(900),
                check_timeout: Duration::from_millis(300),
            },
            certificates: Arc::new(Certificates::default()),
        })
    }

    async fn body(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn healthz_names_a_loop_that_stopped_beating() {
        let dir = tempfile::tempdir().unwrap();
        let beats = Heartbeats::new();
        let receive = beats.register("receive");
        let _stuck = beats.register("worker-0");
        let s = state(dir.path(), beats, 1);
        let r = healthz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(80)).await;
        receive.beat();
        let r = healthz(State(s)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = body(r).await;
        assert_eq!(v["stale_loops"], serde_json::json!(["worker-0"]));
    }

    #[tokio::test]
    async fn a_worker_that_lost_its_models_fails_health_and_readiness_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let beats = Heartbeats::new();
        let worker = beats.register("worker-0");
        let s = state(dir.path(), beats, 1);
        worker.fail("models lost: cannot load them again");
        worker.beat(); // beating does not hide a failure
        let r = healthz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = body(r).await;
        assert_eq!(v["stale_loops"], serde_json::json!(["worker-0"]));
        assert_eq!(
            v["failed_loops"],
            serde_json::json!(["worker-0: models lost: cannot load them again"])
        );
        let v = body(readyz(State(s)).await).await;
        assert_eq!(v["checks"]["models"]["ok"], false, "{v}");
        assert!(
            v["checks"]["models"]["detail"]
                .as_str()
                .unwrap()
                .contains("models lost")
        );
    }

    #[tokio::test]
    async fn readyz_reports_each_check() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path(), Heartbeats::new(), 0);
        let r = readyz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = body(r).await;
        assert_eq!(v["ready"], false);
        assert_eq!(v["checks"]["database"]["ok"], false);
        assert_eq!(v["checks"]["spool"]["ok"], true, "{v}");
        assert_eq!(v["checks"]["models"]["ok"], true);
        assert_eq!(
            v["checks"]["queue"]["detail"],
            "not checked: no analysis in this process"
        );
        // the spool above its watermark fails the spool check
        s.space.set_max_used_percent(1e-9);
        s.space.refresh().unwrap();
        let v = body(readyz(State(s)).await).await;
        assert_eq!(v["checks"]["spool"]["ok"], false, "{v}");
        assert!(
            v["checks"]["spool"]["detail"]
                .as_str()
                .unwrap()
                .contains("watermark")
        );
    }
}
