//! Counters a consumer keeps, readable while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one consumer (cheap to clone; all clones see the same numbers).
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
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

macro_rules! counter {
    ($($name:ident => $field:ident),* $(,)?) => {
        impl ConsumerMetrics {
            $(
                pub(crate) fn $name(&self) {
                    self.inner.$field.fetch_add(1, Ordering::Relaxed);
                }
            )*
        }
    };
}

counter! {
    received => received,
    acked => acked,
    duplicate => duplicates,
    immediate_retry => immediate_retries,
    redelivery => redeliveries,
    dead_lettered => dead_lettered,
    unhandled => unhandled,
    deferred => deferred,
    settle_error => settle_errors,
}

impl ConsumerMetrics {
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
}
