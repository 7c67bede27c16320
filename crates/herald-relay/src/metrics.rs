//! Counters a relay keeps, readable while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one relay (cheap to clone; all clones see the same numbers).
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    claimed: AtomicU64,
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    abandoned: AtomicU64,
    unreachable: AtomicU64,
    late_claims: AtomicU64,
    store_errors: AtomicU64,
}

/// A point-in-time copy of [`RelayMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaySnapshot {
    /// Non-empty batches claimed.
    pub batches: u64,
    /// Rows claimed.
    pub claimed: u64,
    /// Rows published and completed.
    pub published: u64,
    /// Failed publications rescheduled with backoff.
    pub retried: u64,
    /// Rows dead-lettered.
    pub dead_lettered: u64,
    /// Rows given back unpublished (held behind a failed row of their key, or at shutdown).
    pub released: u64,
    /// Failed or released rows not written back because their lease was nearly over: they
    /// come back after it, the claim counted as an attempt.
    pub abandoned: u64,
    /// Publish calls that found the broker unreachable (their events were given back without
    /// an attempt, and the relay paused).
    pub unreachable: u64,
    /// Claims that came back too late to publish anything under their lease (the relay then
    /// claims smaller batches).
    pub late_claims: u64,
    /// Store operations that failed (the relay backs off and keeps going).
    pub store_errors: u64,
}

impl RelayMetrics {
    /// The current values.
    pub fn snapshot(&self) -> RelaySnapshot {
        let c = &self.inner;
        RelaySnapshot {
            batches: c.batches.load(Ordering::Relaxed),
            claimed: c.claimed.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
            late_claims: c.late_claims.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn batch(&self, claimed: usize) {
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
        self.inner
            .claimed
            .fetch_add(claimed as u64, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self, report: &crate::BatchReport) {
        let c = &self.inner;
        c.published
            .fetch_add(report.published as u64, Ordering::Relaxed);
        c.retried
            .fetch_add(report.retried as u64, Ordering::Relaxed);
        c.dead_lettered
            .fetch_add(report.dead_lettered as u64, Ordering::Relaxed);
        c.released
            .fetch_add(report.released as u64, Ordering::Relaxed);
    }

    pub(crate) fn abandoned(&self, rows: usize) {
        self.inner
            .abandoned
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub(crate) fn unreachable(&self) {
        self.inner.unreachable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn late_claim(&self) {
        self.inner.late_claims.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn store_error(&self) {
        self.inner.store_errors.fetch_add(1, Ordering::Relaxed);
    }
}
