//! Exponential backoff: the one schedule every retry in the daemon follows (a job's retries, an
//! SR's delivery retries, the worker and sender loops while the database is down, migrations at
//! start-up). Plain arithmetic on durations, below every other layer.

use std::time::Duration;

/// `base · 2^(n−1)` after the n-th consecutive failure, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A schedule from `base`, doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay after the `failures`-th consecutive failure (1-based; 0 counts as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// [`delay`](Self::delay) times `0.75 + 0.5 · jitter` (`jitter` in [0, 1]), capped at `max`
    /// again: spreads the retries of many rows that failed together.
    pub fn jittered(&self, failures: u32, jitter: f64) -> Duration {
        self.delay(failures)
            .mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
            .min(self.max)
    }
}

/// A loop's running count of consecutive failures against a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures(u32);

impl Failures {
    /// Count one more failure; the delay to wait before trying again.
    pub fn failed(&mut self, schedule: &Backoff) -> Duration {
        self.0 = self.0.saturating_add(1);
        schedule.delay(self.0)
    }

    /// A success: the next failure starts from the base delay again.
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_caps() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(b.delay(0), Duration::from_secs(5));
        assert_eq!(b.delay(1), Duration::from_secs(5));
        assert_eq!(b.delay(2), Duration::from_secs(10));
        assert_eq!(b.delay(3), Duration::from_secs(20));
        assert_eq!(b.delay(5), Duration::from_secs(60));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_within_a_quarter_and_keeps_the_cap() {
        let b = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(b.jittered(1, 0.0), Duration::from_secs(3));
        assert_eq!(b.jittered(1, 1.0), Duration::from_secs(5));
        assert_eq!(b.jittered(1, 7.0), Duration::from_secs(5));
        assert_eq!(b.jittered(9, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut f = Failures::default();
        assert_eq!(f.failed(&b), Duration::from_millis(500));
        assert_eq!(f.failed(&b), Duration::from_secs(1));
        assert_eq!(f.failed(&b), Duration::from_secs(2));
        f.reset();
        assert_eq!(f.failed(&b), Duration::from_millis(500));
    }
}
