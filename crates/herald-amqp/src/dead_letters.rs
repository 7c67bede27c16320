//! A subscription's dead-letter queue, listed, replayed and purged through
//! [`DeadLetters`].
//!
//! Listing reads the queue without consuming it: messages are fetched on a channel of their
//! own, which is closed without acknowledging them, so they go back in order. Replaying or
//! purging one message fetches the queue the same way and acknowledges only the selected ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{
    DeadLetter, DeadLetterOrigin, DeadLetters, Page, RawMessage, Result, Selection, Uuid,
};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::QueueNames;
use crate::error::{self, ResultExt};
use crate::mapping::{self, header};
use crate::publisher::Target;
use crate::{AmqpTransport, Shared};

/// Headers that a replayed copy drops: the dead-lettering's own, and the broker's counts.
const DROPPED_ON_REPLAY: [&str; 10] = [
    header::DEAD_LETTER_REASON,
    header::ERROR,
    header::DEAD_LETTERED_AT,
    header::RETRY_REASON,
    header::NOT_BEFORE,
    header::DELAY_REMAINING,
    header::DELIVERY_COUNT,
    "x-death",
    "x-first-death-reason",
    "x-last-death-reason",
];

impl AmqpTransport {
    /// The dead-letter queue of subscription `name` (`{name}.dlq`), listed oldest first,
    /// replayed to the subscription's queue and purged through [`DeadLetters`]. An undeclared
    /// subscription has no dead letters. Fails only for a name AMQP cannot hold.
    pub fn dead_letter_queue(&self, name: &str) -> Result<AmqpDeadLetterQueue> {
        Ok(AmqpDeadLetterQueue {
            shared: self.shared.clone(),
            names: QueueNames::of(name)?,
        })
    }
}

/// The dead letters of one subscription of an [`AmqpTransport`]
/// ([`AmqpTransport::dead_letter_queue`]).
///
/// A replayed message is published (confirmed) to the subscription's queue through the default
/// exchange, so no other subscription receives it again, as a first attempt without the
/// dead-lettering's headers; then it is removed from the dead-letter queue. A failure in
/// between leaves it in both, never in neither.
#[derive(Clone)]
pub struct AmqpDeadLetterQueue {
    shared: Arc<Shared>,
    names: QueueNames,
}

impl std::fmt::Debug for AmqpDeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDeadLetterQueue")
            .field("queue", &self.names.dead_letter_queue)
            .finish_non_exhaustive()
    }
}

/// One message fetched from the dead-letter queue and not yet acknowledged.
struct Fetched {
    delivery: lapin::message::Delivery,
    letter: DeadLetter,
}

impl AmqpDeadLetterQueue {
    /// Fetches, unacknowledged, up to `most` messages on `channel` (fewer when the queue runs
    /// out, or holds fewer than when the first one was fetched).
    async fn fetch(
        &self,
        channel: &Channel,
        most: usize,
        op: &'static str,
    ) -> Result<Vec<Fetched>> {
        let queue = mapping::short("queue", &self.names.dead_letter_queue)?;
        let mut out = Vec::new();
        let mut bound = most;
        while out.len() < bound {
            let got = match channel
                .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(got) => got,
                Err(err) if is_not_found(&err) => break,
                Err(err) => return Err(error::transport(op, &err, &self.shared.secrets)),
            };
            let Some(message) = got else { break };
            if out.is_empty() {
                // What was there when we began: messages dead-lettered meanwhile wait for
                // the next call (a replayed message rejected again cannot keep us looping).
                let remaining = usize::try_from(message.message_count).unwrap_or(usize::MAX);
                bound = bound.min(remaining.saturating_add(1));
            }
            let delivery = message.delivery;
            let letter = read(
                &delivery.properties,
                &delivery.data,
                delivery.routing_key.as_str(),
                &self.names.queue,
                &self.shared.config,
            );
            out.push(Fetched { delivery, letter });
        }
        Ok(out)
    }

    /// Opens a channel of its own on the consuming connection.
    async fn channel(&self) -> Result<Channel> {
        let (channel, _) = self.shared.consuming.channel().await?;
        Ok(channel)
    }

    /// Closes `channel`, which gives every message fetched and not acknowledged back to the
    /// queue, in order.
    async fn give_back(&self, channel: Channel, op: &'static str) -> Result<()> {
        if channel.status().connected() {
            channel
                .close(200, "peeked".into())
                .await
                .amqp(op, &self.shared.secrets)?;
        }
        Ok(())
    }

    /// Publishes a copy of `fetched` to the subscription's queue as a first attempt, confirmed.
    async fn republish(&self, fetched: &Fetched) -> Result<()> {
        let properties = fresh_properties(&fetched.delivery.properties);
        let target = Target {
            exchange: ShortString::from(""),
            routing_key: mapping::short("queue", &self.names.queue)?,
            properties,
            payload: Bytes::copy_from_slice(&fetched.delivery.data),
        };
        let mut results = self.shared.publishing.send(vec![Ok(target)]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(error::transient("replay dead letters", "no result")))
    }

    /// Acknowledges `fetched` for good (it leaves the dead-letter queue).
    async fn remove(&self, fetched: &Fetched, op: &'static str) -> Result<()> {
        fetched
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .amqp(op, &self.shared.secrets)?;
        Ok(())
    }

    /// Replays or purges the selected messages, giving the others back; returns how many.
    async fn settle_selected(
        &self,
        which: Selection,
        replay: bool,
        op: &'static str,
    ) -> Result<u64> {
        let channel = self.channel().await?;
        let outcome = async {
            let fetched = self.fetch(&channel, usize::MAX, op).await?;
            let mut done = 0;
            for message in fetched.iter().filter(|f| selected(&f.letter, which)) {
                if replay {
                    self.republish(message).await?;
                }
                self.remove(message, op).await?;
                done += 1;
            }
            Ok::<u64, herald_core::Error>(done)
        }
        .await;
        let closed = self.give_back(channel, op).await;
        let done = outcome?;
        closed?;
        Ok(done)
    }
}

impl DeadLetters for AmqpDeadLetterQueue {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        let op = "read dead letters";
        let channel = self.channel().await?;
        let fetched = self
            .fetch(&channel, page.offset.saturating_add(page.limit), op)
            .await;
        self.give_back(channel, op).await?;
        Ok(fetched?
            .into_iter()
            .skip(page.offset)
            .map(|f| f.letter)
            .collect())
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        self.settle_selected(which, true, "replay dead letters")
            .await
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        let op = "purge dead letters";
        match which {
            Selection::One(_) => self.settle_selected(which, false, op).await,
            Selection::All => {
                let queue = mapping::short("queue", &self.names.dead_letter_queue)?;
                let channel = self.channel().await?;
                let purged = match channel
                    .queue_purge(queue, QueuePurgeOptions::default())
                    .await
                {
                    Ok(n) => u64::from(n),
                    Err(err) if is_not_found(&err) => 0,
                    Err(err) => return Err(error::transport(op, &err, &self.shared.secrets)),
                };
                self.give_back(channel, op).await?;
                Ok(purged)
            }
        }
    }
}

fn selected(letter: &DeadLetter, which: Selection) -> bool {
    match which {
        Selection::All => true,
        Selection::One(id) => letter.id == Some(id),
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

/// The properties of a replayed copy: the original's, as a first attempt, without the
/// dead-lettering's headers.
fn fresh_properties(properties: &BasicProperties) -> BasicProperties {
    let headers: FieldTable = properties.headers().clone().unwrap_or_default();
    let mut kept: BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| !DROPPED_ON_REPLAY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    kept.insert(header::ATTEMPT.into(), AMQPValue::LongLongInt(1));
    properties.clone().with_headers(kept.into())
}

/// A header value as text: strings as they are, anything else as its debug form.
fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn read(
    properties: &BasicProperties,
    payload: &[u8],
    routing_key: &str,
    queue: &str,
    config: &crate::AmqpConfig,
) -> DeadLetter {
    let mut raw: BTreeMap<String, String> = properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), value_text(v)))
                .collect()
        })
        .unwrap_or_default();
    let mut property = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            raw.insert(format!("amqp:{name}"), value);
        }
    };
    property(
        "message_id",
        properties.message_id().as_ref().map(ToString::to_string),
    );
    property("type", properties.kind().as_ref().map(ToString::to_string));
    property(
        "content_type",
        properties.content_type().as_ref().map(ToString::to_string),
    );
    property("routing_key", Some(routing_key.to_owned()));

    let decoded = mapping::decode(properties, payload, config);
    let decode_error = decoded.as_ref().err().map(|e| e.chain());
    let envelope = decoded.ok();
    let text = |name: &str| raw.get(name).filter(|s| !s.is_empty()).cloned();
    // The last error in words: Herald's error text; else why decoding fails; else the
    // broker's own reason for moving it.
    let reason = text(header::ERROR)
        .or(decode_error)
        .or_else(|| {
            text("x-first-death-reason").map(|why| format!("dead-lettered by the broker: {why}"))
        })
        .unwrap_or_else(|| "dead-lettered for no recorded reason".to_owned());
    let id = envelope.as_ref().map(|e| e.id).or_else(|| {
        text(header::ID)
            .or_else(|| text("amqp:message_id"))
            .and_then(|id| Uuid::parse_str(&id).ok())
    });
    let dead_lettered_at =
        text(header::DEAD_LETTERED_AT).and_then(|at| OffsetDateTime::parse(&at, &Rfc3339).ok());
    DeadLetter {
        id,
        envelope,
        origin: DeadLetterOrigin::Queue {
            name: queue.to_owned(),
        },
        reason,
        attempts: mapping::attempt(properties).unwrap_or(1),
        dead_lettered_at,
        raw: RawMessage {
            headers: raw,
            payload: Bytes::copy_from_slice(payload),
        },
    }
}
