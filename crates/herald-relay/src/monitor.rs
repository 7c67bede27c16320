//! The outbox's depth and age as gauges, sampled from the store.

use std::time::Duration;

use herald_core::{OffsetDateTime, OutboxAdmin, OutboxStats, Result};
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::names;

/// Samples an outbox's counts ([`OutboxAdmin::stats`]) every `interval` and sets the
/// `herald_outbox_*` gauges: pending rows due and backing off, rows in flight, dead letters,
/// archived rows, and the age of the oldest *due* row (a row waiting for its retry does not
/// age the outbox: one delayed row would otherwise set off an age alert).
///
/// The counts are one query over the outbox, so they are sampled on an interval, not per
/// claim; one monitor per process is enough however many relays it runs.
#[derive(Debug, Clone)]
pub struct OutboxMonitor<S> {
    store: S,
    interval: Duration,
}

impl<S: OutboxAdmin> OutboxMonitor<S> {
    /// A monitor of `store`, sampling every `interval` (15 s is a good default: the
    /// Prometheus scrape interval).
    pub fn new(store: S, interval: Duration) -> Self {
        OutboxMonitor { store, interval }
    }

    /// Reads the counts once and sets the gauges. A failure is counted
    /// (`herald_outbox_sample_errors_total`) and returned; the gauges keep their last values.
    pub async fn sample(&self) -> Result<OutboxStats> {
        let stats = self
            .store
            .stats()
            .await
            .inspect_err(|_| counter!(names::OUTBOX_SAMPLE_ERRORS).increment(1))?;
        record(&stats, OffsetDateTime::now_utc());
        Ok(stats)
    }

    /// Samples every `interval` until `shutdown` is cancelled; failures are logged and
    /// sampling goes on.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.sample().await {
                warn!(error = %error.chain(), "could not sample the outbox");
            }
        }
    }
}

/// Sets the gauges from `stats`, read at `now`.
fn record(stats: &OutboxStats, now: OffsetDateTime) {
    let due = stats.pending.saturating_sub(stats.retrying);
    gauge!(names::OUTBOX_PENDING, "state" => "due").set(due as f64);
    gauge!(names::OUTBOX_PENDING, "state" => "backing_off").set(stats.retrying as f64);
    gauge!(names::OUTBOX_IN_FLIGHT).set(stats.in_flight as f64);
    gauge!(names::OUTBOX_DEAD_LETTERS).set(stats.dead_lettered as f64);
    gauge!(names::OUTBOX_ARCHIVED).set(stats.archived as f64);
    gauge!(names::OUTBOX_OLDEST_DUE_AGE).set(age(stats.oldest_due_at, now));
    gauge!(names::OUTBOX_OLDEST_PENDING_AGE).set(age(stats.oldest_pending_at, now));
}

/// Seconds since `at` (0 for none, and for a clock that went back).
pub(crate) fn age(at: Option<OffsetDateTime>, now: OffsetDateTime) -> f64 {
    at.map_or(0.0, |at| (now - at).as_seconds_f64().max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_zero_without_a_row_and_never_negative() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(age(None, now), 0.0);
        assert_eq!(age(Some(now + Duration::from_secs(5)), now), 0.0);
        assert_eq!(age(Some(now - Duration::from_secs(90)), now), 90.0);
    }
}
