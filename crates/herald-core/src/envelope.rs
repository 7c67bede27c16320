//! The envelope: the only type that crosses the store / transport boundary.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::{Codec, Json};
use crate::{Error, Event, Result};

/// Free-form string headers carried next to the payload.
pub type Headers = BTreeMap<String, String>;

/// W3C trace context (`traceparent` / `tracestate`), carried so that a trace crosses the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// The `traceparent` header, e.g. `00-<trace id>-<span id>-01`.
    pub traceparent: Option<String>,
    /// The vendor-specific `tracestate` header.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Checks the `traceparent` shape (`vv-32 hex-16 hex-2 hex`), as the W3C spec requires of
    /// a reader; an invalid one is refused rather than propagated.
    pub fn validate(&self) -> Result<()> {
        let Some(tp) = &self.traceparent else {
            return Ok(());
        };
        let parts: Vec<&str> = tp.split('-').collect();
        let lens_ok = parts.len() >= 4
            && parts[0].len() == 2
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2;
        let hex_ok = parts.iter().take(4).all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !(lens_ok && hex_ok) {
            return Err(Error::invalid_envelope(
                "traceparent",
                "not a W3C traceparent (vv-<32 hex>-<16 hex>-<2 hex>)",
            ));
        }
        Ok(())
    }
}

/// The optional parts of an envelope that a caller sets when recording an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Groups every message of one conversation. Defaults to the event's own id.
    pub correlation_id: Option<Uuid>,
    /// The id of the message that caused this one.
    pub causation_id: Option<Uuid>,
    /// Overrides [`Event::partition_key`].
    pub partition_key: Option<String>,
    /// Trace context to propagate. Left empty, recording takes the current span's
    /// ([`TraceContext::current`]: with the feature `otel` and an OpenTelemetry layer).
    pub trace: TraceContext,
    /// Extra headers.
    pub headers: Headers,
}

impl Metadata {
    /// Metadata for an event caused by `cause`: same correlation id, `cause.id` as causation id,
    /// and the same trace.
    pub fn caused_by(cause: &Envelope) -> Self {
        Metadata {
            correlation_id: Some(cause.correlation_id),
            causation_id: Some(cause.id),
            trace: cause.trace.clone(),
            ..Metadata::default()
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the partition key.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// An event in transit: its identity and metadata plus the encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique message id (UUIDv7, so ids sort by creation time).
    pub id: Uuid,
    /// Stable type name such as `ordering.order_created`.
    pub event_type: String,
    /// Payload schema version.
    pub version: u32,
    /// When the fact happened (UTC).
    pub occurred_at: OffsetDateTime,
    /// Groups every message of one conversation.
    pub correlation_id: Uuid,
    /// The message that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// Orders this message relative to others with the same key.
    pub partition_key: Option<String>,
    /// MIME type of the payload (`application/json`).
    pub content_type: String,
    /// W3C trace context.
    pub trace: TraceContext,
    /// Free-form headers.
    pub headers: Headers,
    /// The encoded event.
    pub payload: Bytes,
}

impl Envelope {
    /// Encodes `event` with the JSON codec.
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self> {
        Self::encode_with(&Json, event, metadata)
    }

    /// Encodes `event` with `codec`. Without a `traceparent` in `metadata`, the envelope
    /// carries the current span's trace context ([`TraceContext::current`]).
    pub fn encode_with<C: Codec, E: Event>(
        codec: &C,
        event: &E,
        metadata: Metadata,
    ) -> Result<Self> {
        let payload = codec.encode(event).map_err(|source| Error::Encode {
            event_type: E::TYPE.to_owned(),
            source,
        })?;
        metadata.trace.validate()?;
        // Recorded inside a traced request: the request's trace goes with the event.
        let trace = if metadata.trace.is_empty() {
            TraceContext::current()
        } else {
            metadata.trace
        };
        let id = Uuid::now_v7();
        Ok(Envelope {
            id,
            event_type: E::TYPE.to_owned(),
            version: E::VERSION,
            occurred_at: OffsetDateTime::now_utc(),
            correlation_id: metadata.correlation_id.unwrap_or(id),
            causation_id: metadata.causation_id,
            partition_key: metadata.partition_key.or_else(|| event.partition_key()),
            content_type: codec.content_type().to_owned(),
            trace,
            headers: metadata.headers,
            payload,
        })
    }

    /// Whether this envelope holds an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.event_type == E::TYPE
    }

    /// Decodes the payload as `E` with the JSON codec, checking type and version.
    pub fn decode<E: Event>(&self) -> Result<E> {
        self.decode_with(&Json)
    }

    /// Decodes the payload as `E` with `codec`, checking type, version and content type.
    pub fn decode_with<C: Codec, E: Event>(&self, codec: &C) -> Result<E> {
        if self.event_type != E::TYPE {
            return Err(Error::TypeMismatch {
                expected: E::TYPE,
                found: self.event_type.clone(),
            });
        }
        if self.version != E::VERSION {
            return Err(Error::UnsupportedVersion {
                event_type: self.event_type.clone(),
                version: self.version,
                supported: E::VERSION,
            });
        }
        if !codec.reads(&self.content_type) {
            return Err(Error::ContentType {
                codec: codec.name(),
                found: self.content_type.clone(),
            });
        }
        codec.decode(&self.payload).map_err(|source| Error::Decode {
            event_type: self.event_type.clone(),
            version: self.version,
            source,
        })
    }

    /// Size of the payload plus headers, the figure limits are checked against.
    pub fn encoded_size(&self) -> usize {
        self.payload.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OrderCreated {
        order_id: u64,
    }

    impl Event for OrderCreated {
        const TYPE: &'static str = "ordering.order_created";
        const VERSION: u32 = 2;
        fn partition_key(&self) -> Option<String> {
            Some(format!("order-{}", self.order_id))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Other;

    impl Event for Other {
        const TYPE: &'static str = "ordering.other";
    }

    #[test]
    fn round_trips_an_event() {
        let env = Envelope::from_event(&OrderCreated { order_id: 7 }, Metadata::default()).unwrap();
        assert_eq!(env.id.get_version_num(), 7);
        assert_eq!(env.event_type, "ordering.order_created");
        assert_eq!(env.version, 2);
        assert_eq!(env.correlation_id, env.id);
        assert_eq!(env.partition_key.as_deref(), Some("order-7"));
        assert_eq!(env.content_type, "application/json");
        assert_eq!(
            env.decode::<OrderCreated>().unwrap(),
            OrderCreated { order_id: 7 }
        );
    }

    #[test]
    fn metadata_overrides_defaults() {
        let corr = Uuid::now_v7();
        let meta = Metadata::default()
            .with_correlation_id(corr)
            .with_partition_key("k")
            .with_header("tenant", "acme");
        let env = Envelope::from_event(&OrderCreated { order_id: 1 }, meta).unwrap();
        assert_eq!(env.correlation_id, corr);
        assert_eq!(env.partition_key.as_deref(), Some("k"));
        assert_eq!(env.headers["tenant"], "acme");

        let child = Metadata::caused_by(&env);
        assert_eq!(child.correlation_id, Some(corr));
        assert_eq!(child.causation_id, Some(env.id));
    }

    #[test]
    fn decoding_checks_type_version_and_payload() {
        let mut env =
            Envelope::from_event(&OrderCreated { order_id: 1 }, Metadata::default()).unwrap();
        assert!(matches!(
            env.decode::<Other>(),
            Err(Error::TypeMismatch { .. })
        ));
        env.version = 3;
        assert!(matches!(
            env.decode::<OrderCreated>(),
            Err(Error::UnsupportedVersion { version: 3, .. })
        ));
        env.version = 2;
        env.payload = Bytes::from_static(b"{not json");
        assert!(matches!(
            env.decode::<OrderCreated>(),
            Err(Error::Decode { .. })
        ));
        env.content_type = "application/protobuf".into();
        assert!(matches!(
            env.decode::<OrderCreated>(),
            Err(Error::ContentType { .. })
        ));
    }

    #[test]
    fn refuses_a_malformed_traceparent() {
        let meta = Metadata {
            trace: TraceContext {
                traceparent: Some("garbage".into()),
                tracestate: None,
            },
            ..Metadata::default()
        };
        assert!(matches!(
            Envelope::from_event(&OrderCreated { order_id: 1 }, meta),
            Err(Error::InvalidEnvelope { .. })
        ));
        let ok = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        };
        ok.validate().unwrap();
    }
}
