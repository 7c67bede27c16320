#![doc = include_str!("../README.md")]

mod broker;
mod publisher;
mod subscriber;

use std::fmt;
use std::sync::{Arc, PoisonError};

use herald_core::{DeadLetter, DeadLetters, Envelope, Page, Result, Selection, SubscriptionSpec};

use crate::broker::Broker;

pub use crate::subscriber::MemoryStream;

/// Options of a [`MemoryTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Whether publishing a message that no queue is bound to fails (`true`, like AMQP's
    /// `mandatory` flag) or silently drops it (`false`).
    pub mandatory: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { mandatory: true }
    }
}

/// An in-process broker that behaves like RabbitMQ: durable named queues bound to event
/// types, competing consumers, prefetch, delayed retries, dead letters and redelivery of
/// deliveries dropped unsettled.
///
/// Cheap to clone; every clone talks to the same broker.
#[derive(Clone)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self
            .broker
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryTransport")
            .field("config", &self.broker.config)
            .field(
                "queues",
                &routes
                    .iter()
                    .map(|r| r.queue.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("published_total", &self.broker.published_total())
            .field("closed", &self.broker.is_closed())
            .finish()
    }
}

impl MemoryTransport {
    /// A broker with the default configuration (mandatory routing).
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A broker configured by `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryTransport {
            broker: Arc::new(Broker::new(config)),
        }
    }

    /// Declares the durable queue `spec.name` and binds it to `spec.event_types` without
    /// consuming from it, so that messages published before the first subscriber arrives are
    /// kept (as an operator declares queues ahead of deploying consumers). Bindings of one
    /// queue accumulate over declarations and subscriptions. Does nothing once closed.
    pub fn declare(&self, spec: &SubscriptionSpec) {
        let _ = self.broker.declare(spec, None);
    }

    /// Makes every publish of an envelope for which `fault` returns `Some(text)` fail with a
    /// transient error carrying `text`; replaces any previous fault.
    pub fn fail_publishes_when(
        &self,
        fault: impl Fn(&Envelope) -> Option<String> + Send + Sync + 'static,
    ) {
        *self
            .broker
            .fault
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(fault));
    }

    /// Removes the fault set by [`fail_publishes_when`](Self::fail_publishes_when).
    pub fn clear_faults(&self) {
        *self
            .broker
            .fault
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The dead letters of subscription `queue`: the messages its consumers rejected, listed,
    /// replayed and purged through [`DeadLetters`] (an unknown queue has none).
    pub fn dead_letter_queue(&self, queue: &str) -> MemoryDeadLetterQueue {
        MemoryDeadLetterQueue {
            broker: self.broker.clone(),
            queue: queue.to_owned(),
        }
    }

    /// Messages of subscription `queue` not yet acknowledged or dead-lettered: ready, handed
    /// out and unsettled, or waiting out a retry delay (0 for an unknown queue).
    pub fn depth(&self, queue: &str) -> usize {
        self.broker.queue(queue).map_or(0, |q| q.depth())
    }

    /// How many envelopes publishes accepted since the broker was created.
    pub fn published_total(&self) -> u64 {
        self.broker.published_total()
    }

    /// Shuts the broker down: open streams end (their `next()` returns `None`), further
    /// publishes and subscriptions fail. Settling deliveries already handed out still works.
    pub fn close(&self) {
        self.broker.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.broker.is_closed()
    }
}

/// The dead letters of one subscription of a [`MemoryTransport`]
/// ([`MemoryTransport::dead_letter_queue`]). Listed oldest first; a replayed message goes to
/// the back of the subscription's queue as a first delivery.
#[derive(Clone)]
pub struct MemoryDeadLetterQueue {
    broker: Arc<Broker>,
    queue: String,
}

impl fmt::Debug for MemoryDeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDeadLetterQueue")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl DeadLetters for MemoryDeadLetterQueue {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        Ok(self
            .broker
            .queue(&self.queue)
            .map(|q| q.dead_letters(page))
            .unwrap_or_default())
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        Ok(self
            .broker
            .queue(&self.queue)
            .map_or(0, |q| q.replay_dead(which)))
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        Ok(self
            .broker
            .queue(&self.queue)
            .map_or(0, |q| q.purge_dead(which)))
    }
}
