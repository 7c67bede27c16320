//! Settling one delivery: ack; retry through a delay queue; dead-letter with the reason; and,
//! for a delivery dropped unsettled, requeue.
//!
//! A retry or a dead letter is a confirmed copy of the message (same body and properties,
//! Herald's headers updated) published before the original is acknowledged, so a failure in
//! between can only duplicate the message, never lose it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Acknowledger, BoxFuture, Result, Settlement, SubscriptionSpec};
use lapin::options::BasicRejectOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, warn};

use crate::Shared;
use crate::acks::AckHandle;
use crate::config::{ExchangeKind, QueueNames};
use crate::error;
use crate::mapping::{self, header};
use crate::publisher::Target;
use crate::topology::{self, Declaration};

/// Why a message was dead-lettered (the `x-herald-dead-letter-reason` header).
pub(crate) mod reason {
    /// The handler rejected it.
    pub(crate) const REJECTED: &str = "rejected";
    /// Its retries ran out.
    pub(crate) const MAX_ATTEMPTS: &str = "max-attempts";
    /// It could not be read as an envelope.
    pub(crate) const MALFORMED: &str = "malformed";
}

/// Longest error text kept in a header.
const MAX_ERROR_TEXT: usize = 4096;

/// A delivery handed out and not yet settled. Dropped unsettled, it goes back to its queue.
pub(crate) struct Inflight {
    pub(crate) tag: u64,
    pub(crate) acker: Acker,
    pub(crate) acks: AckHandle,
    pub(crate) shared: Arc<Shared>,
    pub(crate) names: Arc<QueueNames>,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) properties: BasicProperties,
    pub(crate) payload: Bytes,
    pub(crate) attempt: u32,
    /// The subscription's cap on attempts
    /// ([`SubscriptionSpec::max_attempts`](herald_core::SubscriptionSpec::max_attempts)).
    pub(crate) max_attempts: u32,
    pub(crate) settled: bool,
}

impl Inflight {
    /// Done: acknowledged in the next batch.
    pub(crate) fn ack(mut self) {
        self.settled = true;
        self.acks.ack(self.tag, self.acker.clone());
    }

    /// Delivers the message again after `delay` as the next attempt, through the delay queue
    /// of that delay; once the subscription's `max_attempts` is reached, dead-letters it
    /// instead.
    pub(crate) async fn retry(self, delay: Duration, why: &str) -> Result<()> {
        if self.attempt >= self.max_attempts {
            let text = format!("gave up after {} attempts: {why}", self.attempt);
            return self.dead_letter(reason::MAX_ATTEMPTS, &text).await;
        }
        let mut properties = self.copy_properties();
        properties = set(
            properties,
            header::ATTEMPT,
            AMQPValue::LongLongInt(i64::from(self.attempt) + 1),
        );
        properties = set(
            properties,
            header::RETRY_REASON,
            mapping::text(why, MAX_ERROR_TEXT),
        );
        self.send_away(delay, properties).await
    }

    /// Delivers the message again after `delay` as the same attempt: a deferral (the consumer
    /// holds an earlier message of its key) is not a failure, so it neither raises the attempt
    /// count nor ever dead-letters the message.
    pub(crate) async fn defer(self, delay: Duration, why: &str) -> Result<()> {
        debug!(queue = %self.names.queue, ?delay, reason = why, "deferred");
        let properties = self.copy_properties();
        self.send_away(delay, properties).await
    }

    /// Publishes the copy (with `properties`) to the delay queue that keeps it closest to
    /// `delay` without coming back early, or straight back to the queue for no delay, with what
    /// will be left to wait once it comes out (a relative time: no host's clock is read to
    /// decide whether it is due); then acks the original.
    async fn send_away(self, delay: Duration, properties: BasicProperties) -> Result<()> {
        // Back ahead of the queue's backlog, so that it arrives when it is due.
        let properties = properties.with_priority(topology::RETURN_PRIORITY);
        if delay.is_zero() {
            let properties = set(
                properties,
                header::DELAY_REMAINING,
                AMQPValue::LongLongInt(0),
            );
            let queue = self.names.queue.clone();
            return self.copy_then_ack("", &queue, properties).await;
        }
        let (level, left) = self.shared.config.delay_hop(delay);
        // Still written for consumers of earlier versions, which compare it with their clock.
        let due = now_ms().saturating_add(millis(delay));
        let mut properties = set(properties, header::NOT_BEFORE, AMQPValue::LongLongInt(due));
        properties = set(
            properties,
            header::DELAY_REMAINING,
            AMQPValue::LongLongInt(millis(left)),
        );
        let queue = self.names.delay_queue(level);
        self.copy_then_ack("", &queue, properties).await
    }

    /// Sends a retried message that came back before it was due round the delay queues again,
    /// as the same attempt.
    pub(crate) async fn park(self, remaining: Duration) -> Result<()> {
        debug!(queue = %self.names.queue, ?remaining, "retried message not yet due; parked again");
        let properties = self.copy_properties();
        self.send_away(remaining, properties).await
    }

    /// Moves the message to the dead-letter queue with `kind` (see [`reason`]) and `text`, the
    /// original routing key and the attempt count in its headers. If that copy cannot be
    /// published, the broker dead-letters the original itself (without Herald's headers).
    pub(crate) async fn dead_letter(mut self, kind: &str, text: &str) -> Result<()> {
        let mut properties = self.copy_properties();
        properties = set(
            properties,
            header::DEAD_LETTER_REASON,
            mapping::text(kind, 64),
        );
        properties = set(
            properties,
            header::ERROR,
            mapping::text(text, MAX_ERROR_TEXT),
        );
        properties = set(
            properties,
            header::ATTEMPT,
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        let at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        properties = set(properties, header::DEAD_LETTERED_AT, mapping::text(&at, 64));
        let dlx = self.names.dead_letter_exchange.clone();
        let key = self.original_routing_key();
        match self.publish(&dlx, &key, properties).await {
            Ok(()) => {
                self.settled = true;
                self.acks.ack(self.tag, self.acker.clone());
                Ok(())
            }
            Err(err) => {
                warn!(
                    queue = %self.names.queue,
                    error = %err.chain(),
                    "cannot publish the dead letter; letting the broker dead-letter the message"
                );
                self.settled = true;
                // The tag stays pending until the reject is on its way: a `multiple` ack sent
                // before it would cover it (the message acknowledged instead of dead-lettered,
                // and the reject of an acknowledged tag closing the channel). Frames of one
                // channel reach the broker in order, so acks sent after it are harmless.
                let rejected = self
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                self.acks.forget(self.tag);
                match rejected {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(error::transient(
                        "dead-letter",
                        "the channel closed before the message could be dead-lettered; it will be redelivered",
                    )),
                    Err(e) => Err(error::transport("dead-letter", &e, &self.shared.secrets)),
                }
            }
        }
    }

    /// Publishes a copy and acks the original; if the copy fails, requeues the original.
    async fn copy_then_ack(
        mut self,
        exchange: &str,
        queue: &str,
        properties: BasicProperties,
    ) -> Result<()> {
        let result = self.publish(exchange, queue, properties).await;
        self.settled = true;
        match result {
            Ok(()) => self.acks.ack(self.tag, self.acker.clone()),
            Err(_) => self.acks.requeue(self.tag, self.acker.clone()),
        }
        result
    }

    /// Publishes a copy; if its delay or dead-letter queue (or exchange) is gone, declares the
    /// subscription's queues again and tries once more, so that a deleted queue does not turn
    /// every retry into an immediate redelivery.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
    ) -> Result<()> {
        match self
            .publish_once(exchange, routing_key, properties.clone())
            .await
        {
            Err(err) if is_missing(&err) => {
                warn!(
                    queue = %self.names.queue,
                    error = %err.chain(),
                    "a retry or dead-letter destination is missing; declaring it again"
                );
                self.redeclare().await?;
                self.publish_once(exchange, routing_key, properties).await
            }
            other => other,
        }
    }

    /// Declares the subscription's queues and exchanges again, without its bindings to the
    /// main exchange (those belong to the subscription's streams).
    async fn redeclare(&self) -> Result<()> {
        let config = &self.shared.config;
        let types: Vec<String> = match config.exchange_kind {
            ExchangeKind::Fanout => Vec::new(),
            _ => vec!["herald.redeclare".to_owned()],
        };
        let spec = SubscriptionSpec::new(self.names.queue.clone(), types);
        let plan: Vec<Declaration> = topology::plan(config, &spec)?
            .into_iter()
            .filter(|d| !matches!(d, Declaration::Binding { exchange, .. } if *exchange == config.exchange))
            .collect();
        let (channel, _) = self.shared.consuming.channel().await?;
        let result = topology::apply(&channel, &plan, &self.shared.secrets).await;
        let _ = channel.close(200, "declared".into()).await;
        result
    }

    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
    ) -> Result<()> {
        let target = Target {
            exchange: mapping::short("exchange", exchange)?,
            routing_key: ShortString::try_new(routing_key).unwrap_or_default(),
            properties,
            payload: self.payload.clone(),
        };
        let mut results = self.shared.publishing.send(vec![Ok(target)]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(error::transient("republish", "no result")))
    }

    /// The original properties, with the routing the message first had recorded and the
    /// broker's per-delivery count dropped (the attempt header carries it on).
    fn copy_properties(&self) -> BasicProperties {
        let mut headers: FieldTable = self.properties.headers().clone().unwrap_or_default();
        if !headers.contains_key(header::ORIGINAL_ROUTING_KEY) {
            headers.insert(
                header::ORIGINAL_ROUTING_KEY.into(),
                mapping::text(&self.routing_key, 255),
            );
            headers.insert(
                header::ORIGINAL_EXCHANGE.into(),
                mapping::text(&self.exchange, 255),
            );
        }
        headers.insert(
            header::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        let kept: std::collections::BTreeMap<_, _> = headers
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != header::DELIVERY_COUNT)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.properties.clone().with_headers(kept.into())
    }

    fn original_routing_key(&self) -> String {
        match self
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(header::ORIGINAL_ROUTING_KEY))
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => self.routing_key.clone(),
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if !self.settled {
            debug!(queue = %self.names.queue, tag = self.tag, "delivery dropped unsettled; requeued");
            self.acks.requeue(self.tag, self.acker.clone());
        }
    }
}

/// Whether a copy failed because its destination does not exist.
fn is_missing(err: &herald_core::Error) -> bool {
    let text = err.chain();
    text.contains("unroutable") || text.contains("NOT_FOUND")
}

fn set(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    mapping::with_header(properties, name, value)
}

/// `duration` in whole milliseconds, saturated.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// How long until a message due at `due_ms` (Unix milliseconds) is due; zero if it is.
pub(crate) fn until(due_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(due_ms.saturating_sub(now_ms())).unwrap_or(0))
}

/// The [`Acknowledger`] of an AMQP delivery.
pub(crate) struct AmqpAcknowledger(pub(crate) Option<Inflight>);

impl Acknowledger for AmqpAcknowledger {
    /// The time spent in the delay queues (see [`AmqpConfig::effective_delay`]).
    ///
    /// [`AmqpConfig::effective_delay`]: crate::AmqpConfig::effective_delay
    fn effective_delay(&self, requested: Duration) -> Duration {
        match &self.0 {
            Some(inflight) => inflight.shared.config.effective_delay(requested),
            None => requested,
        }
    }

    fn settle(mut self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        let inflight = self.0.take();
        Box::pin(async move {
            let Some(inflight) = inflight else {
                return Err(error::permanent("settle", "delivery already settled"));
            };
            match settlement {
                Settlement::Ack => {
                    inflight.ack();
                    Ok(())
                }
                Settlement::Retry { delay, reason } => inflight.retry(delay, &reason).await,
                Settlement::Defer { delay, reason } => inflight.defer(delay, &reason).await,
                Settlement::Reject { reason } => {
                    inflight.dead_letter(reason::REJECTED, &reason).await
                }
            }
        })
    }
}
