//! The envelope on the wire: a Kafka record in the CloudEvents Kafka binding's binary mode,
//! readable by a CloudEvents reader in any language.
//!
//! | envelope | record |
//! | --- | --- |
//! | `id` | header `ce_id` |
//! | `event_type` | header `ce_type` |
//! | `occurred_at` | header `ce_time` (RFC 3339) and the record timestamp (milliseconds) |
//! | `content_type` | header `content-type` (the binding's `datacontenttype`) |
//! | `version` | header `ce_eventversion` (decimal) |
//! | `correlation_id` | header `ce_correlationid` |
//! | `causation_id` | header `ce_causationid` |
//! | `partition_key` | the record key, and header `ce_partitionkey` (the Partitioning extension) |
//! | `trace` | headers `traceparent`, `tracestate` (W3C, as OpenTelemetry propagates them) |
//! | `headers` | one header each, under its own name |
//! | `headers["dataschema"]` | header `ce_dataschema` (a Protobuf event's message name) |
//! | `payload` | the record value |
//!
//! plus `ce_specversion` = `1.0` and `ce_source` from the configuration. An envelope without
//! a partition key has a null record key (the partitioner spreads such records). Header names
//! that Herald or CloudEvents use (`ce_*`, `x-herald-*`, `content-type`, `traceparent`,
//! `tracestate`) cannot be free-form headers.

use bytes::Bytes;
use herald_core::envelope::DATASCHEMA;
use herald_core::{Envelope, Error, Headers, Result, TraceContext, Uuid};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::KafkaConfig;

/// Header names of the mapping.
pub mod header {
    /// CloudEvents spec version (`1.0`).
    pub const SPECVERSION: &str = "ce_specversion";
    /// CloudEvents `id`: the envelope id.
    pub const ID: &str = "ce_id";
    /// CloudEvents `type`: the event type.
    pub const TYPE: &str = "ce_type";
    /// CloudEvents `source`: from the configuration.
    pub const SOURCE: &str = "ce_source";
    /// CloudEvents `time`: when the event occurred, RFC 3339.
    pub const TIME: &str = "ce_time";
    /// CloudEvents `datacontenttype`, as the Kafka binding carries it.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Extension: the payload schema version.
    pub const EVENT_VERSION: &str = "ce_eventversion";
    /// Extension: the correlation id.
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// Extension: the causation id.
    pub const CAUSATION_ID: &str = "ce_causationid";
    /// The Partitioning extension's key.
    pub const PARTITION_KEY: &str = "ce_partitionkey";
    /// CloudEvents `dataschema`: the schema the payload follows (a Protobuf event's message
    /// full name), the envelope's [`DATASCHEMA`](herald_core::envelope::DATASCHEMA) header.
    pub const DATASCHEMA: &str = "ce_dataschema";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C vendor trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Which delivery attempt a message is on (1 for the first), raised by each retry.
    pub const ATTEMPT: &str = "x-herald-attempt";
    /// When a retried or deferred message is due (Unix milliseconds).
    pub const NOT_BEFORE: &str = "x-herald-not-before";
    /// Present on a message sent back for a retry or a deferral: it was delivered before.
    pub const REDELIVERED: &str = "x-herald-redelivered";
    /// Why the last retry or deferral was asked for.
    pub const RETRY_REASON: &str = "x-herald-retry-reason";
    /// Why a message was dead-lettered: `rejected`, `max-attempts` or `malformed`.
    pub const DEAD_LETTER_REASON: &str = "x-herald-dead-letter-reason";
    /// The error text that came with the dead-lettering.
    pub const ERROR: &str = "x-herald-error";
    /// Deliveries of the message before it was dead-lettered.
    pub const ATTEMPTS: &str = "x-herald-attempts";
    /// The topic the message was read from when it was dead-lettered.
    pub const ORIGINAL_TOPIC: &str = "x-herald-original-topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "x-herald-original-partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "x-herald-original-offset";
    /// Its record key (a dead letter is keyed by its id).
    pub const ORIGINAL_KEY: &str = "x-herald-original-key";
    /// When the message was dead-lettered (RFC 3339).
    pub const DEAD_LETTERED_AT: &str = "x-herald-dead-lettered-at";
    /// Marks a dead-letter record that purges the dead letters of its key.
    pub const PURGED: &str = "x-herald-purged";
}

/// Header names a free-form header may not take: they belong to Herald or CloudEvents.
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with("ce_")
        || name.starts_with("x-herald-")
        || [
            header::CONTENT_TYPE,
            header::TRACEPARENT,
            header::TRACESTATE,
        ]
        .contains(&name)
}

/// Record headers: names and raw values, in record order.
pub type RecordHeaders = Vec<(String, Vec<u8>)>;

/// A record ready to produce: what the transport sends for an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The event's topic ([`KafkaConfig::topic_for`]).
    pub topic: String,
    /// The record key: the partition key.
    pub key: Option<String>,
    /// The CloudEvents headers and the envelope's own, in record order.
    pub headers: RecordHeaders,
    /// The record value: the envelope's payload.
    pub payload: Bytes,
    /// The record timestamp: `occurred_at` in Unix milliseconds.
    pub timestamp_ms: i64,
}

/// Maps `envelope` onto a record of its topic, checking sizes and names: exactly what the
/// transport produces (tools that must produce the same records use it, e.g. benchmarks).
pub fn encode(envelope: &Envelope, config: &KafkaConfig) -> Result<Outgoing> {
    if envelope.payload.len() > config.max_message_bytes {
        return Err(Error::TooLarge {
            what: "payload",
            size: envelope.payload.len(),
            limit: config.max_message_bytes,
        });
    }
    if envelope.event_type.is_empty() {
        return Err(Error::invalid_envelope("event_type", "empty"));
    }
    let time = envelope
        .occurred_at
        .format(&Rfc3339)
        .map_err(|e| Error::invalid_envelope("occurred_at", e))?;
    let mut headers = RecordHeaders::new();
    let mut put = |name: &str, value: &str| headers.push((name.to_owned(), value.into()));
    put(header::SPECVERSION, "1.0");
    put(header::ID, &envelope.id.to_string());
    put(header::TYPE, &envelope.event_type);
    put(header::SOURCE, &config.source);
    put(header::TIME, &time);
    put(header::CONTENT_TYPE, &envelope.content_type);
    put(header::EVENT_VERSION, &envelope.version.to_string());
    put(header::CORRELATION_ID, &envelope.correlation_id.to_string());
    if let Some(causation) = envelope.causation_id {
        put(header::CAUSATION_ID, &causation.to_string());
    }
    if let Some(key) = &envelope.partition_key {
        put(header::PARTITION_KEY, key);
    }
    if let Some(traceparent) = &envelope.trace.traceparent {
        put(header::TRACEPARENT, traceparent);
    }
    if let Some(tracestate) = &envelope.trace.tracestate {
        put(header::TRACESTATE, tracestate);
    }
    for (name, value) in &envelope.headers {
        if is_reserved(name) {
            return Err(Error::invalid_envelope(
                format!("headers.{name}"),
                "the name is reserved for Herald or CloudEvents",
            ));
        }
        if name == DATASCHEMA {
            // The CloudEvents attribute, under the binding's name.
            put(header::DATASCHEMA, value);
        } else {
            put(name, value);
        }
    }
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum::<usize>()
        + envelope.payload.len()
        + envelope.partition_key.as_ref().map_or(0, String::len);
    if size > config.max_message_bytes {
        return Err(Error::TooLarge {
            what: "message",
            size,
            limit: config.max_message_bytes,
        });
    }
    Ok(Outgoing {
        topic: config.topic_for(&envelope.event_type).to_owned(),
        key: envelope.partition_key.clone(),
        headers,
        payload: envelope.payload.clone(),
        timestamp_ms: i64::try_from(envelope.occurred_at.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0),
    })
}

/// Reads an envelope back from a record's headers, key and value.
///
/// Missing or malformed fields are [`Error::InvalidEnvelope`], an oversized value
/// [`Error::TooLarge`]. Without `ce_partitionkey`, the record key stands for the partition
/// key (a record from another producer). An invalid `traceparent` is dropped, as the W3C
/// spec asks of a reader, rather than failing the message.
pub fn decode(
    headers: &[(String, Vec<u8>)],
    key: Option<&[u8]>,
    payload: &[u8],
    config: &KafkaConfig,
) -> Result<Envelope> {
    if payload.len() > config.max_message_bytes {
        return Err(Error::TooLarge {
            what: "payload",
            size: payload.len(),
            limit: config.max_message_bytes,
        });
    }
    let h = Lookup(headers);
    match h.string(header::SPECVERSION)? {
        Some(v) if v == "1.0" => {}
        Some(v) => {
            return Err(Error::invalid_envelope(
                header::SPECVERSION,
                format!("unsupported CloudEvents version `{v}`"),
            ));
        }
        None => return Err(missing(header::SPECVERSION)),
    }
    let id = uuid(header::ID, &h.required(header::ID)?)?;
    let event_type = h.required(header::TYPE)?;
    if event_type.is_empty() {
        return Err(Error::invalid_envelope(header::TYPE, "empty"));
    }
    let time = h.required(header::TIME)?;
    let occurred_at = OffsetDateTime::parse(&time, &Rfc3339)
        .map_err(|e| Error::invalid_envelope(header::TIME, format!("not RFC 3339: {e}")))?;
    let version = match h.string(header::EVENT_VERSION)? {
        Some(v) => v.trim().parse::<u32>().map_err(|_| {
            Error::invalid_envelope(header::EVENT_VERSION, format!("`{v}` is not a version"))
        })?,
        None => 1,
    };
    let correlation_id = match h.string(header::CORRELATION_ID)? {
        Some(c) => uuid(header::CORRELATION_ID, &c)?,
        None => id,
    };
    let causation_id = match h.string(header::CAUSATION_ID)? {
        Some(c) => Some(uuid(header::CAUSATION_ID, &c)?),
        None => None,
    };
    let content_type = match h.string(header::CONTENT_TYPE)? {
        Some(c) if !c.is_empty() => c,
        _ => return Err(missing(header::CONTENT_TYPE)),
    };
    let partition_key = match h.string(header::PARTITION_KEY)? {
        Some(k) => Some(k),
        None => match key {
            Some(k) => Some(utf8("key", k)?),
            None => None,
        },
    };
    let mut trace = TraceContext {
        traceparent: h.string(header::TRACEPARENT)?,
        tracestate: h.string(header::TRACESTATE)?,
    };
    if trace.validate().is_err() {
        tracing::debug!(%id, "dropping an invalid traceparent");
        trace = TraceContext::default();
    }
    let mut free = Headers::new();
    for (name, value) in headers {
        if !is_reserved(name) {
            free.insert(name.clone(), utf8(name, value)?);
        }
    }
    if let Some(schema) = h.string(header::DATASCHEMA)? {
        free.insert(DATASCHEMA.to_owned(), schema);
    }
    Ok(Envelope {
        id,
        event_type,
        version,
        occurred_at,
        correlation_id,
        causation_id,
        partition_key,
        content_type,
        trace,
        headers: free,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Typed access to record headers; the last of repeated names wins, as Kafka's own readers
/// (`lastHeader`) have it.
pub(crate) struct Lookup<'a>(pub(crate) &'a [(String, Vec<u8>)]);

impl Lookup<'_> {
    /// A header's raw value.
    pub(crate) fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A text header.
    pub(crate) fn string(&self, name: &str) -> Result<Option<String>> {
        self.bytes(name).map(|v| utf8(name, v)).transpose()
    }

    fn required(&self, name: &str) -> Result<String> {
        self.string(name)?.ok_or_else(|| missing(name))
    }

    /// A decimal header; `None` when absent or not a number.
    pub(crate) fn number(&self, name: &str) -> Option<i64> {
        self.string(name).ok().flatten()?.trim().parse().ok()
    }
}

/// Which attempt a record is on: `x-herald-attempt`, 1 when absent.
pub(crate) fn attempt(headers: &[(String, Vec<u8>)]) -> u32 {
    Lookup(headers)
        .number(header::ATTEMPT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1)
}

/// Sets header `name` to `value`, replacing any earlier value.
pub(crate) fn set(headers: &mut RecordHeaders, name: &str, value: impl Into<Vec<u8>>) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.to_owned(), value.into()));
}

/// A text value cut to `max` bytes on a character boundary.
pub(crate) fn cut(value: &str, max: usize) -> &str {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn utf8(name: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::invalid_envelope(name, "not UTF-8"))
}

fn uuid(name: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text)
        .map_err(|_| Error::invalid_envelope(name, format!("`{text}` is not a UUID")))
}

fn missing(name: &str) -> Error {
    Error::invalid_envelope(name, "missing")
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
