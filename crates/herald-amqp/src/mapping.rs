//! The envelope on the wire: AMQP properties plus headers in the CloudEvents AMQP binding's
//! binary mode, readable by a CloudEvents reader in any language.
//!
//! | envelope | AMQP property | header |
//! | --- | --- | --- |
//! | `id` | `message_id` | `cloudEvents:id` |
//! | `event_type` | `type` | `cloudEvents:type` |
//! | `occurred_at` | `timestamp` (seconds) | `cloudEvents:time` (RFC 3339) |
//! | `correlation_id` | `correlation_id` | `cloudEvents:correlationid` |
//! | `content_type` | `content_type` | — (the binding's `datacontenttype`) |
//! | `version` | — | `cloudEvents:eventversion` (integer) |
//! | `causation_id` | — | `cloudEvents:causationid` |
//! | `partition_key` | — | `cloudEvents:partitionkey` (the Partitioning extension) |
//! | `trace` | — | `traceparent`, `tracestate` (W3C, as OpenTelemetry propagates them) |
//! | `headers` | — | one header each, under its own name |
//! | `headers["dataschema"]` | — | `cloudEvents:dataschema` (a Protobuf event's message name) |
//!
//! plus `cloudEvents:specversion` = `1.0`, `cloudEvents:source` from the configuration and
//! `delivery_mode` 2 (persistent). Header names that Herald, CloudEvents or the broker use
//! (`cloudEvents:*`, `x-herald-*`, `x-death` …) cannot be free-form headers.

use bytes::Bytes;
use herald_core::envelope::DATASCHEMA;
use herald_core::{Envelope, Error, Headers, Result, TraceContext, Uuid};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{AmqpConfig, MAX_NAME};

/// Header names of the mapping.
pub mod header {
    /// CloudEvents spec version (`1.0`).
    pub const SPECVERSION: &str = "cloudEvents:specversion";
    /// CloudEvents `id`: the envelope id.
    pub const ID: &str = "cloudEvents:id";
    /// CloudEvents `type`: the event type.
    pub const TYPE: &str = "cloudEvents:type";
    /// CloudEvents `source`: from the configuration.
    pub const SOURCE: &str = "cloudEvents:source";
    /// CloudEvents `time`: when the event occurred, RFC 3339.
    pub const TIME: &str = "cloudEvents:time";
    /// Extension: the payload schema version.
    pub const EVENT_VERSION: &str = "cloudEvents:eventversion";
    /// Extension: the correlation id.
    pub const CORRELATION_ID: &str = "cloudEvents:correlationid";
    /// Extension: the causation id.
    pub const CAUSATION_ID: &str = "cloudEvents:causationid";
    /// The Partitioning extension's key.
    pub const PARTITION_KEY: &str = "cloudEvents:partitionkey";
    /// CloudEvents `dataschema`: the schema the payload follows (a Protobuf event's message
    /// full name), the envelope's [`DATASCHEMA`](herald_core::envelope::DATASCHEMA) header.
    pub const DATASCHEMA: &str = "cloudEvents:dataschema";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C vendor trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Which delivery attempt a message is on (1 for the first), raised by each retry.
    pub const ATTEMPT: &str = "x-herald-attempt";
    /// When a retried message is due (Unix milliseconds), by the clock of the consumer that
    /// sent it for the retry. Written for consumers of earlier versions; read only when
    /// [`DELAY_REMAINING`] is absent.
    pub const NOT_BEFORE: &str = "x-herald-not-before";
    /// What is left of a retry's (or deferral's) delay once the message comes out of the delay
    /// queue it was sent to (milliseconds): more than a few milliseconds sends it round the
    /// delay queues again. Relative, so that no consumer's clock decides when it is due.
    pub const DELAY_REMAINING: &str = "x-herald-delay-remaining";
    /// Why the last retry was asked for.
    pub const RETRY_REASON: &str = "x-herald-retry-reason";
    /// Why a message was dead-lettered: `rejected`, `max-attempts` or `malformed`.
    pub const DEAD_LETTER_REASON: &str = "x-herald-dead-letter-reason";
    /// The error text that came with the dead-lettering.
    pub const ERROR: &str = "x-herald-error";
    /// The routing key the message was first published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-herald-original-routing-key";
    /// The exchange the message was first published to.
    pub const ORIGINAL_EXCHANGE: &str = "x-herald-original-exchange";
    /// When the message was dead-lettered (RFC 3339).
    pub const DEAD_LETTERED_AT: &str = "x-herald-dead-lettered-at";
    /// The delivery count quorum queues add.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
}

/// Header names a free-form header may not take: they belong to Herald, CloudEvents or the
/// broker and its plugins.
fn is_reserved(name: &str) -> bool {
    const EXACT: [&str; 13] = [
        header::TRACEPARENT,
        header::TRACESTATE,
        "x-death",
        header::DELIVERY_COUNT,
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-received-from",
        "x-shovelled",
        "x-shovelled-timestamp",
    ];
    name.starts_with("cloudEvents:")
        || name.starts_with("cloudEvents_")
        || name.starts_with("x-herald-")
        || EXACT.contains(&name)
}

/// A message ready for `basic.publish`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) payload: Bytes,
}

/// Maps `envelope` onto AMQP properties and headers, checking sizes and names.
pub(crate) fn encode(envelope: &Envelope, config: &AmqpConfig) -> Result<Outgoing> {
    if envelope.payload.len() > config.max_message_bytes {
        return Err(Error::TooLarge {
            what: "payload",
            size: envelope.payload.len(),
            limit: config.max_message_bytes,
        });
    }
    let routing_key = short("routing key", config.routing_key(&envelope.event_type))?;
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    let id = envelope.id.to_string();
    let time = envelope
        .occurred_at
        .format(&Rfc3339)
        .map_err(|e| Error::invalid_envelope("occurred_at", e))?;
    put(header::SPECVERSION, "1.0");
    put(header::ID, &id);
    put(header::TYPE, &envelope.event_type);
    put(header::SOURCE, &config.source);
    put(header::TIME, &time);
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
                "the name is reserved for Herald, CloudEvents or the broker",
            ));
        }
        // The CloudEvents attribute, under the binding's name.
        let name = if name == DATASCHEMA {
            header::DATASCHEMA
        } else {
            name
        };
        let name = short("header name", name)?;
        headers.insert(name, AMQPValue::LongString(value.as_str().into()));
    }
    headers.insert(
        header::EVENT_VERSION.into(),
        AMQPValue::LongLongInt(i64::from(envelope.version)),
    );
    let size = headers_size(&headers);
    if size > config.max_header_bytes {
        return Err(Error::TooLarge {
            what: "headers",
            size,
            limit: config.max_header_bytes,
        });
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short("id", &id)?)
        .with_type(short("event type", &envelope.event_type)?)
        .with_timestamp(envelope.occurred_at.unix_timestamp().max(0) as u64)
        .with_correlation_id(short(
            "correlation id",
            &envelope.correlation_id.to_string(),
        )?)
        .with_content_type(short("content type", &envelope.content_type)?)
        .with_headers(headers);
    Ok(Outgoing {
        routing_key,
        properties,
        payload: envelope.payload.clone(),
    })
}

/// Reads an envelope back from a delivery's properties and payload.
///
/// Missing, mistyped or oversized fields are [`Error::InvalidEnvelope`] or
/// [`Error::TooLarge`]. The CloudEvents headers are authoritative; the AMQP properties stand
/// in where a header is absent (a message from another producer). An invalid `traceparent` is
/// dropped, as the W3C spec asks of a reader, rather than failing the message.
pub fn decode(
    properties: &BasicProperties,
    payload: &[u8],
    config: &AmqpConfig,
) -> Result<Envelope> {
    if payload.len() > config.max_message_bytes {
        return Err(Error::TooLarge {
            what: "payload",
            size: payload.len(),
            limit: config.max_message_bytes,
        });
    }
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let size = headers_size(table);
    if size > config.max_header_bytes {
        return Err(Error::TooLarge {
            what: "headers",
            size,
            limit: config.max_header_bytes,
        });
    }
    let h = Lookup(table);
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
    let id = match h.string(header::ID)? {
        Some(id) => uuid(header::ID, &id)?,
        None => match properties.message_id() {
            Some(id) => uuid("message_id", id.as_str())?,
            None => return Err(missing(header::ID)),
        },
    };
    let event_type = match h.string(header::TYPE)? {
        Some(t) => t,
        None => match properties.kind() {
            Some(t) => t.to_string(),
            None => return Err(missing(header::TYPE)),
        },
    };
    if event_type.is_empty() {
        return Err(Error::invalid_envelope(header::TYPE, "empty"));
    }
    let occurred_at = match table.inner().get(header::TIME) {
        Some(AMQPValue::Timestamp(secs)) => timestamp(header::TIME, *secs)?,
        Some(_) => {
            let text = h.string(header::TIME)?.unwrap_or_default();
            OffsetDateTime::parse(&text, &Rfc3339)
                .map_err(|e| Error::invalid_envelope(header::TIME, format!("not RFC 3339: {e}")))?
        }
        None => match properties.timestamp() {
            Some(secs) => timestamp("timestamp", *secs)?,
            None => return Err(missing(header::TIME)),
        },
    };
    let version = match h.integer(header::EVENT_VERSION)? {
        Some(v) => u32::try_from(v).map_err(|_| {
            Error::invalid_envelope(header::EVENT_VERSION, format!("{v} is not a version"))
        })?,
        None => 1,
    };
    let correlation_id = match h.string(header::CORRELATION_ID)? {
        Some(c) => uuid(header::CORRELATION_ID, &c)?,
        None => match properties.correlation_id() {
            Some(c) => uuid("correlation_id", c.as_str())?,
            None => id,
        },
    };
    let causation_id = match h.string(header::CAUSATION_ID)? {
        Some(c) => Some(uuid(header::CAUSATION_ID, &c)?),
        None => None,
    };
    let content_type = match properties.content_type() {
        Some(c) if !c.as_str().is_empty() => c.to_string(),
        _ => return Err(missing("content_type")),
    };
    let mut trace = TraceContext {
        traceparent: h.string(header::TRACEPARENT)?,
        tracestate: h.string(header::TRACESTATE)?,
    };
    if trace.validate().is_err() {
        tracing::debug!(%id, "dropping an invalid traceparent");
        trace = TraceContext::default();
    }
    let mut headers = Headers::new();
    for (name, value) in table {
        let name = name.as_str();
        if is_reserved(name) {
            continue;
        }
        match scalar(value) {
            Some(text) => {
                let text = text.map_err(|reason| Error::invalid_envelope(name, reason))?;
                headers.insert(name.to_owned(), text);
            }
            // Structured values under infrastructure names (`x-…`) are the broker's or a
            // plugin's business, not the event's.
            None if name.starts_with("x-") => {}
            None => {
                return Err(Error::invalid_envelope(
                    name,
                    format!("a {:?} cannot be a header value", value.get_type()),
                ));
            }
        }
    }
    if let Some(schema) = h.string(header::DATASCHEMA)? {
        headers.insert(DATASCHEMA.to_owned(), schema);
    }
    Ok(Envelope {
        id,
        event_type,
        version,
        occurred_at,
        correlation_id,
        causation_id,
        partition_key: h.string(header::PARTITION_KEY)?,
        content_type,
        trace,
        headers,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Which attempt a delivery is: the `x-herald-attempt` header (1 when absent) plus the
/// deliveries a quorum queue counted.
pub(crate) fn attempt(properties: &BasicProperties) -> Result<u32> {
    let empty = FieldTable::default();
    let h = Lookup(properties.headers().as_ref().unwrap_or(&empty));
    let base = h.integer(header::ATTEMPT)?.unwrap_or(1).max(1);
    let redeliveries = h.integer(header::DELIVERY_COUNT)?.unwrap_or(0).max(0);
    Ok(u32::try_from(base.saturating_add(redeliveries)).unwrap_or(u32::MAX))
}

/// What is left to wait of a retry's delay, if the message says (milliseconds).
pub(crate) fn delay_remaining(properties: &BasicProperties) -> Option<i64> {
    let table = properties.headers().as_ref()?;
    Lookup(table)
        .integer(header::DELAY_REMAINING)
        .ok()
        .flatten()
}

/// When a retried message is due, if it carries a due time (Unix milliseconds).
pub(crate) fn not_before(properties: &BasicProperties) -> Option<i64> {
    let table = properties.headers().as_ref()?;
    Lookup(table).integer(header::NOT_BEFORE).ok().flatten()
}

/// Sets header `name` on `properties` (string values).
pub(crate) fn with_header(
    properties: BasicProperties,
    name: &str,
    value: AMQPValue,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties.with_headers(headers)
}

/// A string header value, cut to `max` bytes on a character boundary.
pub(crate) fn text(value: &str, max: usize) -> AMQPValue {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    AMQPValue::LongString(LongString::from(&value[..end]))
}

/// Typed access to a header table.
struct Lookup<'a>(&'a FieldTable);

impl Lookup<'_> {
    /// A string header; a value of another type is an error.
    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.0.inner().get(name) {
            None => Ok(None),
            Some(AMQPValue::LongString(s)) => utf8(name, s.as_bytes()).map(Some),
            Some(AMQPValue::ShortString(s)) => Ok(Some(s.to_string())),
            Some(AMQPValue::ByteArray(b)) => utf8(name, b.as_slice()).map(Some),
            Some(other) => Err(Error::invalid_envelope(
                name,
                format!("expected a string, found a {:?}", other.get_type()),
            )),
        }
    }

    /// An integer header, or a decimal string (the CloudEvents canonical string form).
    fn integer(&self, name: &str) -> Result<Option<i64>> {
        let value = match self.0.inner().get(name) {
            None => return Ok(None),
            Some(value) => value,
        };
        let n = match value {
            AMQPValue::ShortShortInt(n) => i64::from(*n),
            AMQPValue::ShortShortUInt(n) => i64::from(*n),
            AMQPValue::ShortInt(n) => i64::from(*n),
            AMQPValue::ShortUInt(n) => i64::from(*n),
            AMQPValue::LongInt(n) => i64::from(*n),
            AMQPValue::LongUInt(n) => i64::from(*n),
            AMQPValue::LongLongInt(n) => *n,
            AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
                let text = self.string(name)?.unwrap_or_default();
                text.trim().parse().map_err(|_| {
                    Error::invalid_envelope(name, format!("`{text}` is not an integer"))
                })?
            }
            other => {
                return Err(Error::invalid_envelope(
                    name,
                    format!("expected an integer, found a {:?}", other.get_type()),
                ));
            }
        };
        Ok(Some(n))
    }
}

/// A scalar header value as text; `None` for structured values (tables, arrays).
fn scalar(value: &AMQPValue) -> Option<std::result::Result<String, String>> {
    let text = match value {
        AMQPValue::LongString(s) => {
            return Some(String::from_utf8(s.as_bytes().to_vec()).map_err(|_| "not UTF-8".into()));
        }
        AMQPValue::ByteArray(b) => {
            return Some(String::from_utf8(b.as_slice().to_vec()).map_err(|_| "not UTF-8".into()));
        }
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::Void => return None,
    };
    Some(Ok(text))
}

/// Bytes of header names and values (numbers count 8), what the header limit is checked on.
fn headers_size(table: &FieldTable) -> usize {
    fn value_size(value: &AMQPValue) -> usize {
        match value {
            AMQPValue::LongString(s) => s.len(),
            AMQPValue::ShortString(s) => s.as_str().len(),
            AMQPValue::ByteArray(b) => b.len(),
            AMQPValue::FieldArray(a) => a.as_slice().iter().map(value_size).sum(),
            AMQPValue::FieldTable(t) => headers_size(t),
            _ => 8,
        }
    }
    table
        .inner()
        .iter()
        .map(|(name, value)| name.as_str().len() + value_size(value))
        .sum()
}

fn utf8(name: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::invalid_envelope(name, "not UTF-8"))
}

fn uuid(name: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text)
        .map_err(|_| Error::invalid_envelope(name, format!("`{text}` is not a UUID")))
}

fn timestamp(name: &str, secs: u64) -> Result<OffsetDateTime> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| Error::invalid_envelope(name, format!("{secs} is not a valid time")))
}

fn missing(name: &str) -> Error {
    Error::invalid_envelope(name, "missing")
}

/// `value` as an AMQP short string (at most 255 bytes).
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString> {
    if value.len() > MAX_NAME {
        return Err(Error::invalid_envelope(
            what,
            format!("{} bytes, over AMQP's limit of {MAX_NAME}", value.len()),
        ));
    }
    ShortString::try_new(value).map_err(|e| Error::invalid_envelope(what, e))
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
