//! systemd integration for the daemon: `sd_notify` messages over `$NOTIFY_SOCKET` (no libsystemd)
//! and a watchdog whose pings are tied to the liveness of every long-running loop.
//!
//! Start-up sends `STATUS=` lines while it works and `READY=1` once the configuration is valid,
//! the migrations are applied, the models are loaded and the port is bound; shutdown sends
//! `STOPPING=1`; a reload sends `RELOADING=1` then `READY=1`. Each long-running loop (the receive
//! accept loop, each worker) registers a [`Heartbeat`] and beats it on every iteration, also when
//! idle; the [`Watchdog`] task sends `WATCHDOG=1` at half the interval only while every registered
//! heartbeat beat within the interval, so one stuck loop stops the pings and systemd restarts the
//! service.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The environment variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The environment variable holding the watchdog timeout in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The environment variable naming the process the watchdog applies to.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// A notification that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@...)")]
    ParseSocket(OsString),
    #[error("cannot use abstract socket name {name:?}: {source}")]
    AbstractAddress { name: String, source: io::Error },
    #[error("cannot create a unix datagram socket: {source}")]
    CreateSocket { source: io::Error },
    #[error("cannot send {state:?} to the notification socket: {source}")]
    Send { state: String, source: io::Error },
    #[error("short send of {state:?}: {sent} of {len} bytes")]
    ShortSend {
        state: String,
        sent: usize,
        len: usize,
    },
}

/// Sends service state changes to systemd. Without `$NOTIFY_SOCKET` (not started by systemd, or
/// not `Type=notify`) every method succeeds and sends nothing.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog_interval: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// A notifier that sends nothing: for tests and for runs outside systemd.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog_interval: None,
        }
    }

    /// Read `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` from the process environment.
    /// The variables are left in place (changing the environment of a threaded process is not
    /// sound); the daemon starts no children that could misread them.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// Build from a variable lookup (`std::env::var_os` in production, a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, NotifyError> {
        let watchdog_interval = watchdog_interval_from(&var);
        let target = match var(NOTIFY_SOCKET).filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(Arc::new(Target::open(raw)?)),
        };
        Ok(Self {
            target,
            watchdog_interval,
        })
    }

    /// Whether notifications are actually sent.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd expects pings within, when the watchdog is on for this process
    /// (`WATCHDOG_USEC` set and `WATCHDOG_PID`, when set, equal to our pid).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// `READY=1`: start-up is complete and the service accepts work.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// `STATUS=…`: a one-line human-readable status shown by `systemctl status`. Line breaks are
    /// replaced by spaces.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", one_line(text)))
    }

    /// `STOPPING=1`: shutdown has begun (in-flight work is draining).
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253+ `Type=notify-reload` needs it; older
    /// versions ignore it). Send [`Notifier::ready`] when the reload is done.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `WATCHDOG=1`: one keep-alive ping. Prefer the [`Watchdog`] task, which pings only while
    /// every loop is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// `EXTEND_TIMEOUT_USEC=…`: ask systemd for more start-up (or stop) time, e.g. while a
    /// TensorRT engine is built; the timeout becomes `extra` from now.
    pub fn extend_timeout(&self, extra: Duration) -> Result<(), NotifyError> {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", extra.as_micros()))
    }

    /// Send raw `KEY=VALUE` lines (newline-separated). Never blocks: a full socket buffer is an
    /// error, not a stall of the async runtime.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sent = target
            .socket
            .send_to_addr(state.as_bytes(), &target.addr)
            .map_err(|source| NotifyError::Send {
                state: state.to_string(),
                source,
            })?;
        if sent != state.len() {
            return Err(NotifyError::ShortSend {
                state: state.to_string(),
                sent,
                len: state.len(),
            });
        }
        Ok(())
    }
}

impl Target {
    fn open(raw: OsString) -> Result<Self, NotifyError> {
        let addr = socket_addr(&raw)?;
        let socket =
            UnixDatagram::unbound().map_err(|source| NotifyError::CreateSocket { source })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| NotifyError::CreateSocket { source })?;
        Ok(Self { socket, addr })
    }
}

/// `/path` → a filesystem socket, `@name` → a Linux abstract socket.
fn socket_addr(raw: &OsString) -> Result<SocketAddr, NotifyError> {
    let text = raw.to_string_lossy();
    if let Some(name) = text.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(|source| {
            NotifyError::AbstractAddress {
                name: name.to_string(),
                source,
            }
        });
    }
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(NotifyError::ParseSocket(raw.clone()));
    }
    SocketAddr::from_pathname(&path).map_err(|_| NotifyError::ParseSocket(raw.clone()))
}

fn watchdog_interval_from(var: &impl Fn(&str) -> Option<OsString>) -> Option<Duration> {
    if let Some(pid) = var(WATCHDOG_PID) {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != std::process::id() {
            return None;
        }
    }
    let usec: u64 = var(WATCHDOG_USEC)?.to_str()?.trim().parse().ok()?;
    (usec > 0).then_some(Duration::from_micros(usec))
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec.max(0) as u64) * 1_000_000 + (ts.tv_nsec.max(0) as u64) / 1_000
}

// ---- liveness --------------------------------------------------------------------------------

/// The registry of long-running loops whose liveness gates the watchdog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    inner: Arc<Registry>,
}

#[derive(Debug)]
struct Registry {
    epoch: Instant,
    slots: Mutex<Vec<Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    name: String,
    /// Milliseconds since the registry's epoch at the last beat.
    last_beat_ms: AtomicU64,
    /// Set when the loop cannot go on (e.g. a worker lost its models): counts as stale for good.
    failed: Mutex<Option<String>>,
}

/// One loop's heartbeat. Call [`Heartbeat::beat`] on every iteration of the loop, including idle
/// ones (select on a `tokio::time::interval` of a quarter of the watchdog interval next to the
/// real work). Dropping it deregisters the loop: a loop that ends cleanly does not stop the pings.
#[derive(Debug)]
pub struct Heartbeat {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeats {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Registry {
                epoch: Instant::now(),
                slots: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Register a loop named `name` (e.g. `receive`, `worker-3`); it counts as having just beaten.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let slot = Arc::new(Slot {
            name: name.into(),
            last_beat_ms: AtomicU64::new(self.inner.now_ms()),
            failed: Mutex::new(None),
        });
        self.inner.lock().push(Arc::clone(&slot));
        Heartbeat {
            registry: Arc::clone(&self.inner),
            slot,
        }
    }

    /// Names of the registered loops that have not beaten within `max_age`, or that declared
    /// themselves failed, sorted. Empty when everything is alive (also when nothing is
    /// registered).
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        let now = self.inner.now_ms();
        let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut names: Vec<String> = self
            .inner
            .lock()
            .iter()
            .filter(|s| {
                now.saturating_sub(s.last_beat_ms.load(Ordering::Relaxed)) > max_ms
                    || s.failure().is_some()
            })
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The loops that declared themselves failed, with their reasons, sorted by name.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .inner
            .lock()
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.failure()?)))
            .collect();
        out.sort();
        out
    }

    /// How many loops are registered.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no loop is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot list stays consistent even if a holder panicked: every update is one push/remove.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot {
    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Heartbeat {
    /// Declare that this loop cannot go on: `/healthz` and `/readyz` fail naming `reason`, and
    /// the watchdog stops its pings, so that systemd restarts the service.
    pub fn fail(&self, reason: impl Into<String>) {
        *self
            .slot
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// Record that the loop is alive now. Lock-free; callable from blocking threads.
    pub fn beat(&self) {
        self.slot
            .last_beat_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }

    /// The name this loop registered with.
    pub fn name(&self) -> &str {
        &self.slot.name
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.registry.lock().retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// The watchdog task: pings `WATCHDOG=1` every half `interval` while every heartbeat beat within
/// `interval`.
#[derive(Debug, Clone)]
pub struct Watchdog {
    notifier: Notifier,
    heartbeats: Heartbeats,
    interval: Duration,
}

impl Watchdog {
    /// A watchdog for systemd's interval (see [`Notifier::watchdog_interval`]).
    pub fn new(notifier: Notifier, heartbeats: Heartbeats, interval: Duration) -> Self {
        Self {
            notifier,
            heartbeats,
            interval,
        }
    }

    /// Ping until `shutdown` is cancelled. A stale loop is logged once when the pings stop and
    /// once when they resume; a failed send is logged and retried at the next tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut withheld = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stale = self.heartbeats.stale(self.interval);
            if !stale.is_empty() {
                if !withheld {
                    tracing::error!(
                        loops = %stale.join(","),
                        interval_ms = self.interval.as_millis() as u64,
                        "loops stopped beating: withholding watchdog pings so systemd restarts the service"
                    );
                    withheld = true;
                }
                continue;
            }
            if withheld {
                tracing::warn!("all loops beating again: watchdog pings resumed");
                withheld = false;
            }
            if let Err(error) = self.notifier.watchdog() {
                tracing::warn!(%error, "watchdog ping failed");
            }
        }
    }

    /// Spawn [`Watchdog::run`] when systemd asked for a watchdog; `None` otherwise.
    pub fn spawn_if_enabled(
        notifier: &Notifier,
        heartbeats: &Heartbeats,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let interval = notifier.watchdog_interval()?;
        let dog = Self::new(notifier.clone(), heartbeats.clone(), interval);
        Some(tokio::spawn(dog.run(shutdown)))
    }
}
