//! Counters a consumer keeps, readable while it runs, and the same numbers through the
//! [`metrics`] facade.
//!
//! Every counter of [`ConsumerMetrics`] is also emitted to whatever recorder the application
//! installed, labelled with the consumer's name (its subscription); each handler run is counted
//! and timed by handler and outcome, and the end-to-end lag of handled messages (handled at
//! minus occurred at) goes to a histogram. Labels are bounded: never a message id or a
//! partition key. [`describe`] gives each metric its unit and help text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::OffsetDateTime;
use metrics::{Unit, describe_counter, describe_histogram, histogram};

/// Names of the metrics a consumer emits; every one has a `consumer` label.
pub mod names {
    /// Counter: deliveries received from the transport.
    pub const RECEIVED: &str = "herald_consumer_received_total";
    /// Counter: deliveries acknowledged after every handler was done with them.
    pub const ACKED: &str = "herald_consumer_acked_total";
    /// Counter: handler runs skipped because the inbox had already recorded the message.
    pub const DUPLICATES: &str = "herald_consumer_duplicates_total";
    /// Counter: handler runs retried at once, in process.
    pub const IMMEDIATE_RETRIES: &str = "herald_consumer_immediate_retries_total";
    /// Counter: deliveries sent back to the transport for a delayed redelivery.
    pub const REDELIVERIES: &str = "herald_consumer_redeliveries_total";
    /// Counter: deliveries dead-lettered.
    pub const DEAD_LETTERED: &str = "herald_consumer_dead_lettered_total";
    /// Counter: unknown or undecodable messages acknowledged under the acknowledge policy.
    pub const UNHANDLED: &str = "herald_consumer_unhandled_total";
    /// Counter: deliveries given back to wait behind an earlier message of their key.
    pub const DEFERRED: &str = "herald_consumer_deferred_total";
    /// Counter: settlements the transport failed to take.
    pub const SETTLE_ERRORS: &str = "herald_consumer_settle_errors_total";
    /// Counter: handler runs by `handler` and `outcome` (`done`, `duplicate`, `retry`,
    /// `dead_letter`, `error`).
    pub const HANDLED: &str = "herald_consumer_handled_total";
    /// Histogram: seconds a handler took, immediate retries included, by `handler`.
    pub const HANDLING_DURATION: &str = "herald_consumer_handling_duration_seconds";
    /// Histogram: seconds from the event's `occurred_at` to its handling, by `handler`.
    pub const LAG: &str = "herald_consumer_lag_seconds";
}

/// Gives every consumer metric its unit and help text in the installed recorder. Call it once,
/// after installing the recorder; metrics work without it.
pub fn describe() {
    use names::*;
    for (name, help) in [
        (RECEIVED, "Deliveries received from the transport."),
        (
            ACKED,
            "Deliveries acknowledged after every handler was done.",
        ),
        (
            DUPLICATES,
            "Handler runs skipped: the inbox had already recorded the message.",
        ),
        (
            IMMEDIATE_RETRIES,
            "Handler runs retried at once, in process.",
        ),
        (
            REDELIVERIES,
            "Deliveries sent back for a delayed redelivery.",
        ),
        (DEAD_LETTERED, "Deliveries dead-lettered."),
        (UNHANDLED, "Unknown or undecodable messages acknowledged."),
        (
            DEFERRED,
            "Deliveries given back to wait behind an earlier message of their key.",
        ),
        (SETTLE_ERRORS, "Settlements the transport failed to take."),
        (HANDLED, "Handler runs by handler and outcome."),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        HANDLING_DURATION,
        Unit::Seconds,
        "Time a handler took, immediate retries included."
    );
    describe_histogram!(
        LAG,
        Unit::Seconds,
        "Time from an event's occurrence to its handling (handled at minus occurred at)."
    );
}

/// Live counters of one consumer (cheap to clone; all clones see the same numbers).
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// The `consumer` label of the emitted metrics.
    consumer: Arc<str>,
    received: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    immediate_retries: AtomicU64,
    redeliveries: AtomicU64,
    dead_lettered: AtomicU64,
    unhandled: AtomicU64,
    deferred: AtomicU64,
    settle_errors: AtomicU64,
}

/// A point-in-time copy of [`ConsumerMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerSnapshot {
    /// Deliveries received from the transport.
    pub received: u64,
    /// Deliveries acknowledged after every handler was done with them (duplicates included).
    pub acked: u64,
    /// Handler runs skipped because the inbox had already recorded the message.
    pub duplicates: u64,
    /// Handler runs retried at once, in process.
    pub immediate_retries: u64,
    /// Deliveries sent back to the transport for a delayed redelivery.
    pub redeliveries: u64,
    /// Deliveries dead-lettered (rejected by a handler, permanent errors, retries spent, and
    /// unknown or undecodable messages under the dead-letter policy).
    pub dead_lettered: u64,
    /// Unknown or undecodable messages acknowledged (and logged) under the acknowledge policy.
    pub unhandled: u64,
    /// Deliveries given back to wait behind an earlier message of their key that is waiting
    /// for its redelivery (see the crate docs on ordering).
    pub deferred: u64,
    /// Settlements (ack, retry, reject) the transport failed to take; the broker redelivers
    /// those messages.
    pub settle_errors: u64,
}

impl ConsumerSnapshot {
    /// Deliveries settled for good: acknowledged, dead-lettered or acknowledged unhandled.
    pub fn finished(&self) -> u64 {
        self.acked + self.dead_lettered + self.unhandled
    }
}

macro_rules! counters {
    ($($name:ident => $field:ident, $metric:ident);* $(;)?) => {
        impl ConsumerMetrics {
            $(
                pub(crate) fn $name(&self) {
                    self.inner.$field.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::$metric, "consumer" => self.inner.consumer.clone())
                        .increment(1);
                }
            )*
        }
    };
}

counters! {
    received => received, RECEIVED;
    acked => acked, ACKED;
    duplicate => duplicates, DUPLICATES;
    immediate_retry => immediate_retries, IMMEDIATE_RETRIES;
    redelivery => redeliveries, REDELIVERIES;
    dead_lettered => dead_lettered, DEAD_LETTERED;
    unhandled => unhandled, UNHANDLED;
    deferred => deferred, DEFERRED;
    settle_error => settle_errors, SETTLE_ERRORS;
}

/// What became of one handler run, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// Handled.
    Done,
    /// Skipped by the inbox: already handled.
    Duplicate,
    /// To be redelivered later.
    Retry,
    /// To be dead-lettered.
    DeadLetter,
    /// An error that no layer turned into an outcome.
    Error,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Done => "done",
            RunOutcome::Duplicate => "duplicate",
            RunOutcome::Retry => "retry",
            RunOutcome::DeadLetter => "dead_letter",
            RunOutcome::Error => "error",
        }
    }
}

impl ConsumerMetrics {
    /// Counters whose emitted metrics carry `consumer` as their `consumer` label.
    pub(crate) fn new(consumer: &str) -> Self {
        ConsumerMetrics {
            inner: Arc::new(Counters {
                consumer: consumer.into(),
                ..Counters::default()
            }),
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> ConsumerSnapshot {
        let c = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerSnapshot {
            received: load(&c.received),
            acked: load(&c.acked),
            duplicates: load(&c.duplicates),
            immediate_retries: load(&c.immediate_retries),
            redeliveries: load(&c.redeliveries),
            dead_lettered: load(&c.dead_lettered),
            unhandled: load(&c.unhandled),
            deferred: load(&c.deferred),
            settle_errors: load(&c.settle_errors),
        }
    }

    /// Handler `handler` ran on an event that occurred at `occurred_at`, for `took`, with
    /// `outcome`; its end-to-end lag is recorded when it was handled (not a duplicate).
    pub(crate) fn handled(
        &self,
        handler: &Arc<str>,
        outcome: RunOutcome,
        took: Duration,
        occurred_at: OffsetDateTime,
    ) {
        let consumer = self.inner.consumer.clone();
        metrics::counter!(
            names::HANDLED,
            "consumer" => consumer.clone(),
            "handler" => handler.clone(),
            "outcome" => outcome.as_str()
        )
        .increment(1);
        histogram!(
            names::HANDLING_DURATION,
            "consumer" => consumer.clone(),
            "handler" => handler.clone(),
        )
        .record(took.as_secs_f64());
        if outcome == RunOutcome::Done {
            let lag = (OffsetDateTime::now_utc() - occurred_at).as_seconds_f64();
            histogram!(names::LAG, "consumer" => consumer, "handler" => handler.clone())
                .record(lag.max(0.0));
        }
    }
}
