//! The memory budget of the receiver: one process-wide count of the bytes that received data may
//! hold in memory (association read buffers, data set fragments waiting for the disk, the header
//! kept for the checks). A taker gets a [`Grant`] that gives its bytes back when dropped; beyond
//! the budget nothing is allocated: the association or the data set is refused instead (a
//! transient A-ASSOCIATE-RJ, or A700 Out of Resources).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A shared byte budget.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Woken whenever bytes are given back.
    freed: Notify,
    /// Requests refused because the budget was exhausted.
    refusals: AtomicU64,
}

/// Bytes taken from a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            refusals: AtomicU64::new(0),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// How many requests were refused so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Take `bytes` now, or `None` (counted as a refusal) when the budget cannot hold them.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Grant> {
        if self.reserve(bytes) {
            Some(Grant {
                budget: self.clone(),
                bytes,
            })
        } else {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Take `bytes`, waiting up to `patience` for others to give bytes back; `None` (counted as a
    /// refusal) when they did not, or when `bytes` exceeds the whole budget.
    pub async fn take(self: &Arc<Self>, bytes: usize, patience: Duration) -> Option<Grant> {
        if bytes > self.limit {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // registered before the attempt, so a release in between is not missed
            freed.as_mut().enable();
            if self.reserve(bytes) {
                return Some(Grant {
                    budget: self.clone(),
                    bytes,
                });
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
}

impl Grant {
    /// Bytes held by this grant.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Take `more` bytes into this grant now; false (counted as a refusal) when the budget
    /// cannot hold them.
    pub fn try_grow(&mut self, more: usize) -> bool {
        if self.budget.reserve(more) {
            self.bytes += more;
            true
        } else {
            self.budget.refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// An empty grant on `budget`, to grow later.
    pub fn empty(budget: &Arc<MemoryBudget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn grants_are_bounded_and_given_back() {
        let b = MemoryBudget::new(100);
        let g = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none());
        assert_eq!(b.refusals(), 1);
        let mut h = b.try_take(40).unwrap();
        assert!(!h.try_grow(1));
        drop(g);
        assert!(h.try_grow(60));
        assert_eq!(b.used(), 100);
        drop(h);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_bytes_given_back_or_gives_up() {
        let b = MemoryBudget::new(100);
        let g = b.try_take(100).unwrap();
        assert!(b.take(10, Duration::from_millis(50)).await.is_none());
        assert!(b.take(101, Duration::from_secs(5)).await.is_none());
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.take(30, Duration::from_secs(5)).await.map(|g| g.bytes()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g);
        assert_eq!(waiter.await.unwrap(), Some(30));
        assert_eq!(b.used(), 0);
    }
}
