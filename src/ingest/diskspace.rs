//! Spool disk space (receive → **spool**): the spool file system's size and use, sampled by a
//! background task, and the high watermark above which new associations are refused.
//!
//! The accept loop only reads the last sample (an atomic), so a slow or hung file system never
//! stalls it. Above `[spool] max_used_percent` new associations get a transient
//! A-ASSOCIATE-RJ (temporary congestion) so senders retry later; associations already open go on,
//! and a C-STORE that really finds the disk full is answered A700 (out of resources).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the daemon samples the spool's disk space.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// Size and use of one file system, as `df` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the file system in bytes.
    pub total_bytes: u64,
    /// Bytes in use (size minus free).
    pub used_bytes: u64,
    /// Bytes an unprivileged process may still write.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Use in percent of the space available to unprivileged users, as `df` computes `Use%`:
    /// `used / (used + available)`.
    pub fn used_percent(&self) -> f64 {
        let usable = self.used_bytes.saturating_add(self.available_bytes);
        if usable == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / usable as f64
    }
}

/// `statvfs(2)` of the file system holding `path`. Blocking.
pub fn usage(path: &Path) -> io::Result<DiskUsage> {
    let st = rustix::fs::statvfs(path)?;
    let block = st.f_frsize;
    let total = st.f_blocks.saturating_mul(block);
    let free = st.f_bfree.saturating_mul(block);
    Ok(DiskUsage {
        total_bytes: total,
        used_bytes: total.saturating_sub(free),
        available_bytes: st.f_bavail.saturating_mul(block),
    })
}

/// The spool's disk space, shared by the accept loop (admission), the HTTP endpoints and the
/// sampling task. Cheap to read from any thread.
#[derive(Debug)]
pub struct SpoolSpace {
    dir: PathBuf,
    /// `max_used_percent` as `f64` bits (reloadable).
    max_used_percent: AtomicU64,
    /// The last sample, `None` until the first one (or while sampling fails).
    last: Mutex<Option<DiskUsage>>,
    /// The last sample was above the watermark.
    over: AtomicBool,
}

impl SpoolSpace {
    /// Watch the file system of `dir`; refuse above `max_used_percent`.
    pub fn new(dir: &Path, max_used_percent: f64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_used_percent: AtomicU64::new(max_used_percent.to_bits()),
            last: Mutex::new(None),
            over: AtomicBool::new(false),
        }
    }

    /// The watermark in percent.
    pub fn max_used_percent(&self) -> f64 {
        f64::from_bits(self.max_used_percent.load(Ordering::Relaxed))
    }

    /// Change the watermark (SIGHUP); takes effect at the next [`SpoolSpace::refresh`].
    pub fn set_max_used_percent(&self, percent: f64) {
        self.max_used_percent
            .store(percent.to_bits(), Ordering::Relaxed);
    }

    /// Take a sample now. Blocking: call from `spawn_blocking`. A failed sample keeps the
    /// admission decision of the previous one (a transient error does not close the door).
    pub fn refresh(&self) -> io::Result<DiskUsage> {
        let sample = usage(&self.dir);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match sample {
            Ok(u) => {
                *last = Some(u);
                let over = u.used_percent() > self.max_used_percent();
                let was = self.over.swap(over, Ordering::Relaxed);
                if over && !was {
                    tracing::error!(
                        used_percent = u.used_percent(),
                        max_used_percent = self.max_used_percent(),
                        available_bytes = u.available_bytes,
                        "spool file system above its watermark: refusing new associations"
                    );
                } else if was && !over {
                    tracing::warn!(
                        used_percent = u.used_percent(),
                        max_used_percent = self.max_used_percent(),
                        "spool file system below its watermark again: accepting associations"
                    );
                }
                Ok(u)
            }
            Err(e) => {
                *last = None;
                Err(e)
            }
        }
    }

    /// The last sample.
    pub fn last(&self) -> Option<DiskUsage> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the last sample was above the watermark: new associations are refused.
    pub fn over_watermark(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Sample every `interval` until `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let space = self.clone();
            let sample = tokio::task::spawn_blocking(move || space.refresh()).await;
            match sample {
                Ok(Ok(_)) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot sample the spool's disk space");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "disk space sampling task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let u = usage(dir.path()).unwrap();
        assert!(u.total_bytes > 0);
        assert!(u.used_bytes <= u.total_bytes);
        assert!((0.0..=100.0).contains(&u.used_percent()));
        assert!(usage(Path::new("/nonexistent/for/sure")).is_err());
    }

    #[test]
    fn watermark_follows_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let space = SpoolSpace::new(dir.path(), 100.0);
        assert!(space.last().is_none());
        space.refresh().unwrap();
        assert!(!space.over_watermark());
        let used = space.last().unwrap().used_percent();
        if used > 0.0 {
            space.set_max_used_percent(used / 2.0);
            space.refresh().unwrap();
            assert!(space.over_watermark());
        }
        space.set_max_used_percent(100.0);
        space.refresh().unwrap();
        assert!(!space.over_watermark());
    }

    #[test]
    fn percent_like_df() {
        let u = DiskUsage {
            total_bytes: 100,
            used_bytes: 45,
            available_bytes: 45,
        };
        assert_eq!(u.used_percent(), 50.0);
    }
}
