//! `[spool]`: where received instances are kept, the disk-use limit and retention; the file's
//! shape, its validation and the typed form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, resolve, seconds};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Above this use of the spool's file system (percent, as `df` shows it) new associations
    /// are refused (transient A-ASSOCIATE-RJ); associations already open go on.
    pub max_used_percent: f64,
    /// How long a spooled instance is kept after its study's report was delivered to every
    /// destination; `None` (`retention_days = 0`): forever.
    pub retention: Option<Duration>,
    /// How often the retention task looks for instances to remove.
    pub retention_interval: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    dir: Option<PathBuf>,
    max_used_percent: Option<f64>,
    retention_days: Option<f64>,
    retention_interval_secs: Option<f64>,
}

impl RawSpool {
    pub(super) fn validate(self, base: &Path) -> Result<SpoolConfig, ConfigError> {
        let dir = resolve(
            base,
            self.dir.ok_or_else(|| invalid("spool.dir", "missing"))?,
        );
        let max_used_percent = self.max_used_percent.unwrap_or(90.0);
        if !(max_used_percent.is_finite() && max_used_percent > 0.0 && max_used_percent <= 100.0) {
            return Err(invalid(
                "spool.max_used_percent",
                format!("{max_used_percent} is out of range (0, 100]"),
            ));
        }
        let days = self.retention_days.unwrap_or(0.0);
        if !(days.is_finite() && (0.0..=36_500.0).contains(&days)) {
            return Err(invalid(
                "spool.retention_days",
                format!("{days} is out of range 0..=36500 (0 keeps instances forever)"),
            ));
        }
        Ok(SpoolConfig {
            dir,
            max_used_percent,
            retention: (days > 0.0).then(|| Duration::from_secs_f64(days * 86_400.0)),
            retention_interval: seconds(
                "spool.retention_interval_secs",
                self.retention_interval_secs.unwrap_or(600.0),
            )?,
        })
    }
}
