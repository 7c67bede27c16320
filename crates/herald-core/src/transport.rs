//! What a relay needs from a broker (publishing) and what a consumer needs (subscribing).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{Envelope, Result};

/// A boxed future, for the object-safe parts of the transport API.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Publishes envelopes to a broker.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `batch` in slice order, pipelined (not one broker round trip per message),
    /// and resolves when the broker has confirmed or refused each message. The result has one
    /// entry per envelope, in the same order: `Ok` only once the broker took responsibility.
    fn publish(&self, batch: &[Envelope]) -> impl Future<Output = Vec<Result<()>>> + Send;

    /// The broker's name in traces: `messaging.system` of OpenTelemetry's messaging
    /// conventions (`rabbitmq`, `kafka`, `nats`, …); `unknown` unless the transport says.
    fn messaging_system(&self) -> &'static str {
        UNKNOWN_SYSTEM
    }

    /// Where `envelope` goes, in traces (`messaging.destination.name`): an exchange, a
    /// topic. By default the event type, which routes it.
    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        &envelope.event_type
    }
}

/// The `messaging.system` of a transport that does not name its broker.
pub const UNKNOWN_SYSTEM: &str = "unknown";

/// What a subscriber consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The durable subscription's name (a queue, a durable consumer). Subscribers with the same
    /// name compete for messages; each name receives its own copy of every matching message.
    pub name: String,
    /// Event types to receive; empty means every type.
    pub event_types: Vec<String>,
    /// Most deliveries handed out and not yet settled; 0 means no bound, as in AMQP (default
    /// 200). A consumer sets it from its own configuration (`ConsumerConfig::prefetch`).
    pub prefetch: usize,
    /// Deliveries of a message after which a further [`Settlement::Retry`] dead-letters it
    /// instead: a retried message comes back as attempt `n + 1` only while `n` is below this
    /// (default 10, for a subscriber used on its own). Deferrals ([`Settlement::Defer`]) spend
    /// no attempt. A consumer sets it from its retry policy (one delivery plus its delayed
    /// redeliveries), so that the transport's cap and the consumer's always agree; 0 acts as 1.
    pub max_attempts: u32,
}

impl SubscriptionSpec {
    /// The prefetch of [`SubscriptionSpec::new`].
    pub const DEFAULT_PREFETCH: usize = 200;
    /// The cap on deliveries of [`SubscriptionSpec::new`].
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

    /// A subscription named `name` for `event_types`, with a prefetch of 200 and at most 10
    /// attempts per message.
    pub fn new<I, S>(name: impl Into<String>, event_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SubscriptionSpec {
            name: name.into(),
            event_types: event_types.into_iter().map(Into::into).collect(),
            prefetch: Self::DEFAULT_PREFETCH,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Whether this subscription wants `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// Opens subscriptions on a broker.
pub trait Subscriber: Send + Sync + 'static {
    /// The stream of deliveries of one subscription.
    type Stream: DeliveryStream;

    /// Declares (if needed) and starts consuming a subscription.
    fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> impl Future<Output = Result<Self::Stream>> + Send;

    /// The broker's name in traces (see [`Publisher::messaging_system`]); `unknown` unless
    /// the transport says.
    fn messaging_system(&self) -> &'static str {
        UNKNOWN_SYSTEM
    }
}

/// Deliveries of one subscription.
pub trait DeliveryStream: Send + 'static {
    /// The next delivery; `None` once the subscription has ended for good.
    fn next(&mut self) -> impl Future<Output = Option<Result<Delivery>>> + Send;
}

/// How a delivery is settled with the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Done: remove it.
    Ack,
    /// Deliver it again after `delay`, with the attempt count raised.
    Retry {
        /// How long to wait.
        delay: Duration,
        /// Why, for logs and headers.
        reason: String,
    },
    /// Not yet, and not a failure: deliver it again after `delay` as the same attempt. A
    /// consumer defers a message that must wait behind an earlier one of its key; a deferral
    /// never raises the attempt count and never dead-letters the message.
    Defer {
        /// How long to wait.
        delay: Duration,
        /// Why, for logs.
        reason: String,
    },
    /// Give up: move it to the dead letters with `reason`.
    Reject {
        /// Why.
        reason: String,
    },
}

/// The broker side of a delivery; implemented by each transport.
pub trait Acknowledger: Send + Sync + 'static {
    /// Settles the delivery.
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>>;

    /// How long a message asked to come back after `requested` ([`Settlement::Retry`],
    /// [`Settlement::Defer`]) really stays away. A broker with fixed delay queues rounds it
    /// up; the default is exact. Never shorter than `requested`.
    fn effective_delay(&self, requested: Duration) -> Duration {
        requested
    }
}

/// A message received from a subscription. Settle it with [`ack`](Delivery::ack),
/// [`retry`](Delivery::retry) or [`reject`](Delivery::reject); a delivery dropped unsettled is
/// handed out again, as a broker does when a consumer goes away.
pub struct Delivery {
    /// The message.
    pub envelope: Envelope,
    /// Which delivery attempt this is (1 for the first).
    pub attempt: u32,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    acknowledger: Box<dyn Acknowledger>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.envelope.id)
            .field("event_type", &self.envelope.event_type)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Wraps a received envelope with the transport's acknowledger.
    pub fn new(
        envelope: Envelope,
        attempt: u32,
        redelivered: bool,
        acknowledger: Box<dyn Acknowledger>,
    ) -> Self {
        Delivery {
            envelope,
            attempt,
            redelivered,
            acknowledger,
        }
    }

    /// How long the message stays away if it is asked to come back after `requested`: what a
    /// consumer waits for before it gives up on seeing it again (see
    /// [`Acknowledger::effective_delay`]).
    pub fn effective_delay(&self, requested: Duration) -> Duration {
        self.acknowledger.effective_delay(requested).max(requested)
    }

    /// Settles the delivery as decided.
    pub async fn settle(self, settlement: Settlement) -> Result<()> {
        self.acknowledger.settle(settlement).await
    }

    /// Acknowledges: the message is done.
    pub async fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack).await
    }

    /// Asks for redelivery after `delay`.
    pub async fn retry(self, delay: Duration, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Retry {
            delay,
            reason: reason.into(),
        })
        .await
    }

    /// Gives the message back for delivery after `delay`, as the same attempt (see
    /// [`Settlement::Defer`]).
    pub async fn defer(self, delay: Duration, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Defer {
            delay,
            reason: reason.into(),
        })
        .await
    }

    /// Dead-letters the message with `reason`.
    pub async fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Reject {
            reason: reason.into(),
        })
        .await
    }
}
