//! Subscribing: a stream per consumer of a durable queue, bounded by prefetch credit, and the
//! acknowledger that settles (or, when dropped, requeues) each delivery.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Acknowledger, BoxFuture, Delivery, DeliveryStream, Envelope, Error, Result, Settlement,
    Subscriber, SubscriptionSpec,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::MemoryTransport;
use crate::broker::{Broker, Message, Queue};

impl Subscriber for MemoryTransport {
    type Stream = MemoryStream;

    /// Declares the durable queue `spec.name` bound to `spec.event_types` (bindings accumulate)
    /// and opens a consumer on it. A prefetch of 0 means unbounded, as in AMQP. A retry asked
    /// on attempt `spec.max_attempts` or later dead-letters the message instead.
    fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> impl Future<Output = Result<MemoryStream>> + Send {
        std::future::ready(self.open(spec))
    }
}

impl MemoryTransport {
    fn open(&self, spec: &SubscriptionSpec) -> Result<MemoryStream> {
        if spec.name.is_empty() {
            return Err(Error::Config("subscription name must not be empty".into()));
        }
        let permits = match spec.prefetch {
            0 => Semaphore::MAX_PERMITS,
            n => n.min(Semaphore::MAX_PERMITS),
        };
        let credit = Arc::new(Semaphore::new(permits));
        let queue = self
            .broker
            .declare(spec, Some(&credit))
            .ok_or_else(|| Error::transport("subscribe", false, "transport is closed"))?;
        tracing::debug!(queue = %spec.name, prefetch = spec.prefetch, "consumer opened");
        Ok(MemoryStream {
            broker: Arc::clone(&self.broker),
            queue,
            credit,
            max_attempts: spec.max_attempts,
        })
    }
}

/// The deliveries of one consumer of a [`MemoryTransport`] queue. Consumers of the same queue
/// compete: each message goes to one of them. Ends only when the transport is closed.
pub struct MemoryStream {
    broker: Arc<Broker>,
    queue: Arc<Queue>,
    /// One permit per delivery that may be handed out unsettled (the prefetch).
    credit: Arc<Semaphore>,
    /// The subscription's cap on attempts ([`SubscriptionSpec::max_attempts`]).
    max_attempts: u32,
}

impl fmt::Debug for MemoryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStream")
            .field("queue", &self.queue.name)
            .field("free_credit", &self.credit.available_permits())
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl DeliveryStream for MemoryStream {
    /// Waits for prefetch credit, then for a ready message. Cancel-safe: a message is taken
    /// from the queue only in the poll that returns it.
    async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.broker.is_closed() {
            return None;
        }
        // Fails only when the broker closed the credit on shutdown.
        let permit = Arc::clone(&self.credit).acquire_owned().await.ok()?;
        loop {
            // Register for the signal before looking, so that no wake-up is lost.
            let mut ready = pin!(self.queue.ready_signal().notified());
            ready.as_mut().enable();
            if self.broker.is_closed() {
                return None;
            }
            if let Some(message) = self.queue.take() {
                return Some(Ok(deliver(
                    Arc::clone(&self.queue),
                    message,
                    permit,
                    self.max_attempts,
                )));
            }
            ready.await;
        }
    }
}

fn deliver(
    queue: Arc<Queue>,
    message: Message,
    permit: OwnedSemaphorePermit,
    max_attempts: u32,
) -> Delivery {
    let envelope = Envelope::clone(&message.envelope);
    let (attempt, redelivered) = (message.attempt, message.redelivered);
    let acknowledger = MemoryAcknowledger {
        inflight: Some(Inflight {
            queue,
            message,
            max_attempts,
            _permit: permit,
        }),
    };
    Delivery::new(envelope, attempt, redelivered, Box::new(acknowledger))
}

/// Settles one delivery; if dropped unsettled, puts the message back at the front of its queue
/// for redelivery, as a broker does when a consumer's channel closes.
struct MemoryAcknowledger {
    /// `None` once settled.
    inflight: Option<Inflight>,
}

struct Inflight {
    queue: Arc<Queue>,
    message: Message,
    /// Attempts after which a retry dead-letters the message instead.
    max_attempts: u32,
    /// Returns the stream's prefetch credit when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

impl Acknowledger for MemoryAcknowledger {
    fn settle(mut self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        let result = match self.inflight.take() {
            Some(inflight) => {
                inflight.settle(settlement);
                Ok(())
            }
            None => Err(Error::transport(
                "settle",
                false,
                "delivery already settled",
            )),
        };
        Box::pin(std::future::ready(result))
    }
}

impl Drop for MemoryAcknowledger {
    fn drop(&mut self) {
        if let Some(Inflight { queue, message, .. }) = self.inflight.take() {
            tracing::debug!(
                queue = %queue.name,
                id = %message.envelope.id,
                "delivery dropped unsettled; requeued"
            );
            queue.requeue_front(message.again());
        }
    }
}

impl Inflight {
    fn settle(self, settlement: Settlement) {
        let Inflight {
            queue,
            message,
            max_attempts,
            ..
        } = self;
        match settlement {
            Settlement::Ack => queue.ack(),
            // Attempts spent: dead-lettered, like RabbitMQ's transport does.
            Settlement::Retry { reason, .. } if message.attempt >= max_attempts => {
                let reason = format!("gave up after {} attempts: {reason}", message.attempt);
                tracing::debug!(
                    queue = %queue.name,
                    id = %message.envelope.id,
                    %reason,
                    "attempts spent; dead-lettered"
                );
                queue.dead_letter(message, reason);
            }
            Settlement::Retry { delay, .. } => redeliver(queue, message.again(), delay),
            // The same attempt again: a deferral is not one.
            Settlement::Defer { delay, .. } => redeliver(queue, message.deferred(), delay),
            Settlement::Reject { reason } => {
                tracing::debug!(
                    queue = %queue.name,
                    id = %message.envelope.id,
                    %reason,
                    "delivery rejected; dead-lettered"
                );
                queue.dead_letter(message, reason);
            }
        }
    }
}

/// Puts `message` back at the end of `queue` after `delay`.
fn redeliver(queue: Arc<Queue>, message: Message, delay: Duration) {
    if delay.is_zero() {
        queue.requeue_back(message);
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            queue.start_delay();
            runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                queue.end_delay(message);
            });
        }
        Err(_) => {
            // No timer to wait on outside a runtime: redeliver now rather than lose it.
            tracing::debug!(queue = %queue.name, "no tokio runtime; redelivering without delay");
            queue.requeue_back(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{DeadLetter, DeadLetters, Page, Publisher};
    use herald_testkit::envelope;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    async fn dead_letters(transport: &MemoryTransport, queue: &str) -> Vec<DeadLetter> {
        transport
            .dead_letter_queue(queue)
            .dead_letters(Page::ALL)
            .await
            .expect("list dead letters")
    }

    fn spec(name: &str, prefetch: usize) -> SubscriptionSpec {
        SubscriptionSpec {
            prefetch,
            ..SubscriptionSpec::new(name, Vec::<String>::new())
        }
    }

    async fn next(stream: &mut MemoryStream) -> Delivery {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a delivery within the timeout")
            .expect("stream is open")
            .expect("delivery is ok")
    }

    #[tokio::test]
    async fn dead_letters_list_envelope_reason_and_attempts() {
        let transport = MemoryTransport::new();
        let mut stream = transport
            .subscribe(&spec("orders", 10))
            .await
            .expect("subscribe");
        let env = envelope("a", 0);
        assert!(transport.publish(std::slice::from_ref(&env)).await[0].is_ok());

        next(&mut stream)
            .await
            .retry(Duration::ZERO, "later")
            .await
            .expect("retry");
        let second = next(&mut stream).await;
        assert_eq!((second.attempt, second.redelivered), (2, true));
        second.reject("cannot parse").await.expect("reject");

        let dead = dead_letters(&transport, "orders").await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].envelope, Some(env));
        assert_eq!(dead[0].reason, "cannot parse");
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(transport.depth("orders"), 0, "a dead letter is not pending");
        assert!(dead_letters(&transport, "unknown").await.is_empty());
        assert_eq!(transport.depth("unknown"), 0);
    }

    #[tokio::test]
    async fn depth_counts_ready_unacked_and_delayed_messages() {
        let transport = MemoryTransport::new();
        let mut stream = transport
            .subscribe(&spec("q", 10))
            .await
            .expect("subscribe");
        let batch = [envelope("a", 0), envelope("a", 1), envelope("a", 2)];
        assert!(transport.publish(&batch).await.iter().all(Result::is_ok));
        assert_eq!(transport.depth("q"), 3);

        let first = next(&mut stream).await;
        let second = next(&mut stream).await;
        assert_eq!(transport.depth("q"), 3, "unacked deliveries still count");
        first.ack().await.expect("ack");
        assert_eq!(transport.depth("q"), 2);
        second
            .retry(Duration::from_millis(100), "busy")
            .await
            .expect("retry");
        assert_eq!(transport.depth("q"), 2, "a delayed retry still counts");

        let third = next(&mut stream).await;
        assert_eq!(third.envelope.id, batch[2].id);
        third.ack().await.expect("ack");
        let retried = next(&mut stream).await;
        assert_eq!(retried.envelope.id, batch[1].id);
        retried.ack().await.expect("ack");
        assert_eq!(transport.depth("q"), 0);
    }

    #[tokio::test]
    async fn close_ends_streams_waiting_for_messages_or_credit() {
        let transport = MemoryTransport::new();
        let quiet_type = SubscriptionSpec::new("idle", ["never.published"]);
        let mut idle = transport.subscribe(&quiet_type).await.expect("subscribe");
        let mut full = transport
            .subscribe(&spec("full", 1))
            .await
            .expect("subscribe");
        assert!(
            transport
                .publish(&[envelope("a", 0), envelope("a", 1)])
                .await
                .iter()
                .all(Result::is_ok)
        );
        let held = next(&mut full).await;

        let idle_task = tokio::spawn(async move { idle.next().await.is_none() });
        let full_task = tokio::spawn(async move { full.next().await.is_none() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        transport.close();
        assert!(
            tokio::time::timeout(WAIT, idle_task)
                .await
                .expect("ends")
                .expect("joins")
        );
        assert!(
            tokio::time::timeout(WAIT, full_task)
                .await
                .expect("ends")
                .expect("joins")
        );

        held.ack().await.expect("settling after close still works");
        assert!(transport.subscribe(&spec("idle", 10)).await.is_err());
    }

    #[tokio::test]
    async fn acked_message_is_gone_and_not_redelivered() {
        let transport = MemoryTransport::new();
        let mut stream = transport
            .subscribe(&spec("q", 10))
            .await
            .expect("subscribe");
        assert!(transport.publish(&[envelope("a", 0)]).await[0].is_ok());
        next(&mut stream).await.ack().await.expect("ack");
        assert_eq!(transport.depth("q"), 0);
        let nothing = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        assert!(nothing.is_err(), "an acked message is not redelivered");
    }
}
