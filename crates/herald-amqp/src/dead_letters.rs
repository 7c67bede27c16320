//! Reading a subscription's dead-letter queue without consuming it.

use bytes::Bytes;
use herald_core::{Envelope, Result};
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

use crate::AmqpTransport;
use crate::config::QueueNames;
use crate::error::{self, ResultExt};
use crate::mapping::{self, header};

/// A message in a subscription's dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpDeadLetter {
    /// The message as an envelope; `None` when it cannot be read as one (see `error`).
    pub envelope: Option<Envelope>,
    /// The AMQP message id, when set.
    pub message_id: Option<String>,
    /// Why it was dead-lettered: `rejected`, `max-attempts` or `malformed` (Herald), or the
    /// broker's reason (`rejected`, `expired`, `delivery_limit` …) when the broker moved it.
    pub reason: String,
    /// The error text given with it (the handler's reason, the decoding error …).
    pub error: String,
    /// The delivery attempts it had.
    pub attempts: u32,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// The body.
    pub payload: Bytes,
}

impl AmqpTransport {
    /// Up to `limit` dead letters of subscription `name`, oldest first. They stay in the
    /// dead-letter queue: they are read on a channel of their own, which is closed without
    /// acknowledging them. An undeclared subscription has none.
    pub async fn dead_letters(&self, name: &str, limit: usize) -> Result<Vec<AmqpDeadLetter>> {
        let names = QueueNames::of(name)?;
        let secrets = &self.shared.secrets;
        let (channel, _) = self.shared.consuming.channel().await?;
        let queue = mapping::short("queue", &names.dead_letter_queue)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let got = match channel
                .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(got) => got,
                Err(err) if is_not_found(&err) => break,
                Err(err) => return Err(error::transport("read dead letters", &err, secrets)),
            };
            let Some(message) = got else { break };
            let delivery = message.delivery;
            out.push(read(
                &delivery.properties,
                &delivery.data,
                &delivery.routing_key.to_string(),
                &self.shared.config,
            ));
        }
        // Closing the channel gives every message read back to the queue, in order.
        if channel.status().connected() {
            channel
                .close(200, "peeked".into())
                .await
                .amqp("read dead letters", secrets)?;
        }
        Ok(out)
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

fn read(
    properties: &BasicProperties,
    payload: &[u8],
    routing_key: &str,
    config: &crate::AmqpConfig,
) -> AmqpDeadLetter {
    let headers = properties.headers().clone().unwrap_or_default();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let decoded = mapping::decode(properties, payload, config);
    let decode_error = decoded.as_ref().err().map(|e| e.chain());
    AmqpDeadLetter {
        envelope: decoded.ok(),
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        reason: text(header::DEAD_LETTER_REASON)
            .or_else(|| text("x-first-death-reason"))
            .unwrap_or_else(|| "unknown".to_owned()),
        error: text(header::ERROR).or(decode_error).unwrap_or_default(),
        attempts: mapping::attempt(properties).unwrap_or(1),
        routing_key: text(header::ORIGINAL_ROUTING_KEY).unwrap_or_else(|| routing_key.to_owned()),
        payload: Bytes::copy_from_slice(payload),
    }
}
