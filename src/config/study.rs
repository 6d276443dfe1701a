//! `[study]`: study completion and the analysis workers; the file's shape, its validation and
//! the typed form.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, positive, seconds};

/// Study completion and the analysis workers (`[study]`).
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// A study is ready for analysis when nothing has arrived for this long.
    pub quiet_period: Duration,
    /// Analysis workers in this process (each loads the models once); 0: receive only.
    pub workers: usize,
    /// Attempts before a job is marked failed with its reason.
    pub max_attempts: u32,
    /// How long a worker holds a job before another may take it over (a crashed worker's job).
    pub lease: Duration,
    /// First retry delay of a failed job; doubled per attempt, at most 10 minutes.
    pub retry_base: Duration,
    /// How often an idle worker looks for ready studies.
    pub poll_interval: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStudy {
    quiet_period_secs: Option<f64>,
    workers: Option<i64>,
    max_attempts: Option<i64>,
    lease_secs: Option<f64>,
    retry_base_secs: Option<f64>,
    poll_interval_secs: Option<f64>,
}

impl RawStudy {
    pub(super) fn validate(self) -> Result<StudyConfig, ConfigError> {
        let workers = self.workers.unwrap_or(1);
        if !(0..=64).contains(&workers) {
            return Err(invalid(
                "study.workers",
                format!("{workers} is out of range 0..=64"),
            ));
        }
        Ok(StudyConfig {
            quiet_period: seconds(
                "study.quiet_period_secs",
                self.quiet_period_secs.unwrap_or(10.0),
            )?,
            workers: workers as usize,
            max_attempts: positive("study.max_attempts", self.max_attempts.unwrap_or(5), 100)?
                as u32,
            lease: seconds("study.lease_secs", self.lease_secs.unwrap_or(600.0))?,
            retry_base: seconds("study.retry_base_secs", self.retry_base_secs.unwrap_or(5.0))?,
            poll_interval: seconds(
                "study.poll_interval_secs",
                self.poll_interval_secs.unwrap_or(0.25),
            )?,
        })
    }
}
