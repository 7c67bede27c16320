//! A fault that real networks produce: the broker took a message, but its confirm never
//! reached the publisher (the connection dropped on the way back). The relay cannot tell this
//! from a refused publish, so it publishes the message again — and the broker now holds it
//! twice. The consumer's inbox is what makes that harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::error::Message;
use herald_core::{Envelope, Error, Publisher};

/// Counts what the broker accepted and which confirms were lost.
#[derive(Debug, Default)]
pub struct ConfirmCounters {
    /// Messages the broker accepted (every copy of a message published twice).
    pub accepted: AtomicU64,
    /// Confirms dropped on their way back: messages the relay publishes again.
    pub lost: AtomicU64,
}

/// A publisher whose confirms are lost for a share of the messages the broker accepted.
#[derive(Clone)]
pub struct LostConfirms<P> {
    inner: P,
    rate: f64,
    counters: Arc<ConfirmCounters>,
}

impl<P> LostConfirms<P> {
    /// Loses the confirm of each accepted message with probability `rate`.
    pub fn new(inner: P, rate: f64, counters: Arc<ConfirmCounters>) -> Self {
        LostConfirms {
            inner,
            rate,
            counters,
        }
    }
}

impl<P: Publisher> Publisher for LostConfirms<P> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<herald_core::Result<()>> {
        let results = self.inner.publish(batch).await;
        results
            .into_iter()
            .map(|result| {
                // Refused by the broker: the relay sees that as it is.
                result?;
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                if fastrand::f64() < self.rate {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::transport(
                        "publish",
                        true,
                        Message("confirm lost: connection reset before the broker's ack".into()),
                    ));
                }
                Ok(())
            })
            .collect()
    }

    fn messaging_system(&self) -> &'static str {
        self.inner.messaging_system()
    }

    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        self.inner.destination(envelope)
    }
}
