//! Counters a relay keeps, readable while it runs, and the same numbers through the
//! [`metrics`] facade.
//!
//! Every counter of [`RelayMetrics`] is also emitted to whatever recorder the application
//! installed (`metrics-exporter-prometheus`, for one; with none installed, emitting costs next
//! to nothing). The names follow Prometheus conventions and carry no unbounded label (never an
//! event id or a partition key); [`describe`] gives each its unit and help text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Names of the metrics the relay and the [`OutboxMonitor`](crate::OutboxMonitor) emit.
pub mod names {
    /// Counter: non-empty batches claimed.
    pub const BATCHES: &str = "herald_relay_batches_total";
    /// Counter: rows claimed.
    pub const CLAIMED: &str = "herald_relay_claimed_total";
    /// Counter: rows published and completed.
    pub const PUBLISHED: &str = "herald_relay_published_total";
    /// Counter: rows whose publication failed (or that were given up on), written back for a
    /// retry or as a dead letter.
    pub const FAILED: &str = "herald_relay_failed_total";
    /// Counter: rows dead-lettered.
    pub const DEAD_LETTERED: &str = "herald_relay_dead_lettered_total";
    /// Counter: rows given back unpublished.
    pub const RELEASED: &str = "herald_relay_released_total";
    /// Counter: failed or released rows left to come back after their lease.
    pub const ABANDONED: &str = "herald_relay_abandoned_total";
    /// Counter: relay cycle errors, by `kind` (see [`ErrorKind`](super::ErrorKind)).
    pub const ERRORS: &str = "herald_relay_errors_total";
    /// Gauge: rows this process has claimed and not yet written back.
    pub const IN_FLIGHT: &str = "herald_relay_in_flight_rows";
    /// Histogram: rows per claimed batch.
    pub const BATCH_ROWS: &str = "herald_relay_batch_rows";
    /// Histogram: seconds one publish call took until the broker confirmed it.
    pub const PUBLISH_DURATION: &str = "herald_relay_publish_duration_seconds";
    /// Gauge: outbox rows waiting to be claimed, by `state` (`due`, `backing_off`).
    pub const OUTBOX_PENDING: &str = "herald_outbox_pending_rows";
    /// Gauge: outbox rows claimed under a live lease, by any relay.
    pub const OUTBOX_IN_FLIGHT: &str = "herald_outbox_in_flight_rows";
    /// Gauge: dead letters in the outbox's dead-letter table.
    pub const OUTBOX_DEAD_LETTERS: &str = "herald_outbox_dead_letter_rows";
    /// Gauge: published rows kept in the archive.
    pub const OUTBOX_ARCHIVED: &str = "herald_outbox_archived_rows";
    /// Gauge: age in seconds of the oldest due row (0 when none is due).
    pub const OUTBOX_OLDEST_DUE_AGE: &str = "herald_outbox_oldest_due_age_seconds";
    /// Gauge: age in seconds of the oldest pending row, backing off or not (0 when none).
    pub const OUTBOX_OLDEST_PENDING_AGE: &str = "herald_outbox_oldest_pending_age_seconds";
    /// Counter: outbox samples that failed (the database could not be read).
    pub const OUTBOX_SAMPLE_ERRORS: &str = "herald_outbox_sample_errors_total";
}

/// Why a relay cycle went wrong: the `kind` label of `herald_relay_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A claim failed.
    Claim,
    /// A batch could not be written back.
    WriteBack,
    /// A store write failed and was retried.
    StoreRetry,
    /// A publish call found the broker unreachable.
    BrokerUnreachable,
    /// A claim came back too late to publish anything under its lease.
    LateClaim,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Claim => "claim",
            ErrorKind::WriteBack => "write_back",
            ErrorKind::StoreRetry => "store_retry",
            ErrorKind::BrokerUnreachable => "broker_unreachable",
            ErrorKind::LateClaim => "late_claim",
        }
    }
}

/// Gives every relay and outbox metric its unit and help text in the installed recorder.
/// Call it once, after installing the recorder; metrics work without it.
pub fn describe() {
    use names::*;
    for (name, help) in [
        (BATCHES, "Non-empty batches claimed."),
        (CLAIMED, "Outbox rows claimed."),
        (PUBLISHED, "Outbox rows published and completed."),
        (
            FAILED,
            "Outbox rows whose publication failed, written back for a retry or as a dead letter.",
        ),
        (DEAD_LETTERED, "Outbox rows dead-lettered."),
        (RELEASED, "Outbox rows given back unpublished."),
        (
            ABANDONED,
            "Failed or released rows left to come back after their lease.",
        ),
        (ERRORS, "Relay cycle errors by kind."),
        (OUTBOX_SAMPLE_ERRORS, "Outbox samples that failed."),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Rows this process claimed and has not written back."
    );
    describe_gauge!(
        OUTBOX_PENDING,
        Unit::Count,
        "Outbox rows waiting to be claimed, by state."
    );
    describe_gauge!(
        OUTBOX_IN_FLIGHT,
        Unit::Count,
        "Outbox rows claimed under a live lease."
    );
    describe_gauge!(
        OUTBOX_DEAD_LETTERS,
        Unit::Count,
        "Dead letters of the outbox."
    );
    describe_gauge!(
        OUTBOX_ARCHIVED,
        Unit::Count,
        "Published rows kept in the archive."
    );
    describe_gauge!(
        OUTBOX_OLDEST_DUE_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row that is due (not backing off); 0 when none is."
    );
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest pending outbox row, backing off or not; 0 when none is."
    );
    describe_histogram!(BATCH_ROWS, Unit::Count, "Rows per claimed batch.");
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time one publish call took until the broker confirmed it."
    );
}

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

    /// A batch of `claimed` rows came in: they are in flight until [`settled`](Self::settled)
    /// or [`unsettled`](Self::unsettled).
    pub(crate) fn batch(&self, claimed: usize) {
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
        self.inner
            .claimed
            .fetch_add(claimed as u64, Ordering::Relaxed);
        counter!(names::BATCHES).increment(1);
        counter!(names::CLAIMED).increment(claimed as u64);
        histogram!(names::BATCH_ROWS).record(claimed as f64);
        gauge!(names::IN_FLIGHT).increment(claimed as f64);
    }

    /// One publish call took `took` to be confirmed (or to fail).
    pub(crate) fn published_call(&self, took: Duration) {
        histogram!(names::PUBLISH_DURATION).record(took.as_secs_f64());
    }

    /// A batch's fates were written back.
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
        counter!(names::PUBLISHED).increment(report.published as u64);
        counter!(names::FAILED).increment((report.retried + report.dead_lettered) as u64);
        counter!(names::DEAD_LETTERED).increment(report.dead_lettered as u64);
        counter!(names::RELEASED).increment(report.released as u64);
        gauge!(names::IN_FLIGHT).decrement(report.claimed as f64);
    }

    /// A batch of `claimed` rows left this process without its fates written: they come back
    /// after their lease.
    pub(crate) fn unsettled(&self, claimed: usize) {
        gauge!(names::IN_FLIGHT).decrement(claimed as f64);
    }

    pub(crate) fn abandoned(&self, rows: usize) {
        self.inner
            .abandoned
            .fetch_add(rows as u64, Ordering::Relaxed);
        counter!(names::ABANDONED).increment(rows as u64);
    }

    pub(crate) fn unreachable(&self) {
        self.inner.unreachable.fetch_add(1, Ordering::Relaxed);
        error(ErrorKind::BrokerUnreachable);
    }

    pub(crate) fn late_claim(&self) {
        self.inner.late_claims.fetch_add(1, Ordering::Relaxed);
        error(ErrorKind::LateClaim);
    }

    /// A store operation failed (counted in `store_errors`), for the reason `kind`.
    pub(crate) fn store_error(&self, kind: ErrorKind) {
        self.inner.store_errors.fetch_add(1, Ordering::Relaxed);
        error(kind);
    }
}

fn error(kind: ErrorKind) {
    counter!(names::ERRORS, "kind" => kind.as_str()).increment(1);
}
