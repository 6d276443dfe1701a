//! `[http]`: the health, readiness and metrics endpoints; the file's shape, its validation and
//! the typed form.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, seconds};

/// The HTTP endpoints (`[http]`): `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Off: no HTTP listener at all.
    pub enabled: bool,
    /// Loopback by default: the endpoints carry no patient data, but need no wider audience.
    pub listen: SocketAddr,
    /// `/healthz` fails when a loop (receive, a worker) has not beaten for this long.
    pub stale_after: Duration,
    /// `/readyz` fails when a due job has waited this long while no job made progress.
    pub queue_stall: Duration,
    /// Time limit of each database query and spool probe behind `/readyz` and `/metrics`.
    pub check_timeout: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
    stale_after_secs: Option<f64>,
    queue_stall_secs: Option<f64>,
    check_timeout_secs: Option<f64>,
}

impl RawHttp {
    pub(super) fn validate(self) -> Result<HttpConfig, ConfigError> {
        let raw = self.listen.unwrap_or_else(|| "127.0.0.1:8480".into());
        let listen: SocketAddr = raw.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!("{raw:?} is not \"host:port\" with an IP address"),
            )
        })?;
        Ok(HttpConfig {
            enabled: self.enabled.unwrap_or(true),
            listen,
            stale_after: seconds(
                "http.stale_after_secs",
                self.stale_after_secs.unwrap_or(60.0),
            )?,
            queue_stall: seconds(
                "http.queue_stall_secs",
                self.queue_stall_secs.unwrap_or(900.0),
            )?,
            check_timeout: seconds(
                "http.check_timeout_secs",
                self.check_timeout_secs.unwrap_or(2.0),
            )?,
        })
    }
}
