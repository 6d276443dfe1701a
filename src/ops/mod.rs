//! Operating the daemon, beside the flow: the HTTP endpoints, metrics, systemd integration,
//! configuration reload, retention, the spool's disk space and the log set-up.
//!
//! - [`certificates`]: the TLS certificates in use, watched for expiry (metric, `/readyz`, log).
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` (loopback by default).
//! - [`metrics`]: the `cxr_` metrics of every stage, in the Prometheus text format.
//! - [`systemd`]: sd_notify (READY, STATUS, STOPPING, RELOADING) and a liveness-tied watchdog.
//! - [`reload`]: SIGHUP re-reads the configuration and applies what can change safely.
//! - [`retention`]: removes spooled instances once their report was delivered and kept long enough.
//! - [`telemetry`]: tracing set-up (text or JSON); no patient data is ever logged.

pub mod certificates;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod retention;
pub mod systemd;
pub mod telemetry;
