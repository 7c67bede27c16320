//! The envelope: the only type that crosses the store / transport boundary.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::Codec;
use crate::{Error, Event, Result};

/// Free-form string headers carried next to the payload.
pub type Headers = BTreeMap<String, String>;

/// The header that names the schema a payload follows, CloudEvents' `dataschema`: a Protobuf
/// event's message full name (`shipping.v1.OrderShipped`). Stores keep it with the other
/// headers; the transports carry it as the binding's attribute (`cloudEvents:dataschema` on
/// AMQP, `ce_dataschema` on Kafka).
pub const DATASCHEMA: &str = "dataschema";

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
    /// MIME type of the payload (`application/json`, `application/protobuf`).
    pub content_type: String,
    /// W3C trace context.
    pub trace: TraceContext,
    /// Free-form headers.
    pub headers: Headers,
    /// The encoded event.
    pub payload: Bytes,
}

impl Envelope {
    /// Encodes `event` with its own codec ([`Payload::Codec`](crate::Payload::Codec): JSON for
    /// a serde event, Protobuf for a prost message that opted in).
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self> {
        Self::encode_with(&E::Codec::default(), event, metadata)
    }

    /// Encodes `event` with `codec`. Without a `traceparent` in `metadata`, the envelope
    /// carries the current span's trace context ([`TraceContext::current`]). A codec that names
    /// a schema ([`Codec::dataschema`]: Protobuf's message name) writes it into the
    /// [`DATASCHEMA`] header.
    pub fn encode_with<C: Codec<E>, E: Event>(
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
        let mut headers = metadata.headers;
        if let Some(schema) = codec.dataschema() {
            headers.insert(DATASCHEMA.to_owned(), schema);
        }
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
            headers,
            payload,
        })
    }

    /// The same message carrying `event` instead, encoded with `event`'s own codec: its
    /// version, content type and [`DATASCHEMA`] become `E`'s; id, key, correlation, trace and
    /// the other headers stay (what an upcaster does to a message).
    pub fn reencode<E: Event>(&self, event: &E) -> Result<Self> {
        let codec = E::Codec::default();
        let payload = codec.encode(event).map_err(|source| Error::Encode {
            event_type: E::TYPE.to_owned(),
            source,
        })?;
        let mut headers = self.headers.clone();
        // The old payload's schema does not describe the new one.
        headers.remove(DATASCHEMA);
        if let Some(schema) = codec.dataschema() {
            headers.insert(DATASCHEMA.to_owned(), schema);
        }
        Ok(Envelope {
            event_type: E::TYPE.to_owned(),
            version: E::VERSION,
            content_type: codec.content_type().to_owned(),
            headers,
            payload,
            ..self.clone()
        })
    }

    /// Whether this envelope holds an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.event_type == E::TYPE
    }

    /// The schema its payload follows, if the producer named one: the [`DATASCHEMA`] header
    /// (a Protobuf message's full name).
    pub fn dataschema(&self) -> Option<&str> {
        self.headers.get(DATASCHEMA).map(String::as_str)
    }

    /// Decodes the payload as `E` with `E`'s own codec, checking type, version, content type
    /// and schema: a Protobuf event refuses a JSON payload and the other way round
    /// ([`Error::ContentType`]).
    pub fn decode<E: Event>(&self) -> Result<E> {
        self.decode_with(&E::Codec::default())
    }

    /// Decodes the payload as `E` with `codec`, checking type, version, content type, and the
    /// [`DATASCHEMA`] when both the envelope and the codec name one.
    pub fn decode_with<C: Codec<E>, E: Event>(&self, codec: &C) -> Result<E> {
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
        if let (Some(found), Some(expected)) = (self.dataschema(), codec.dataschema())
            && found != expected
        {
            return Err(Error::DataSchema {
                expected,
                found: found.to_owned(),
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

    #[cfg(feature = "protobuf")]
    mod protobuf {
        use super::*;
        use crate::{Payload, Protobuf};

        #[derive(Clone, PartialEq, prost::Message)]
        struct OrderShipped {
            #[prost(int64, tag = "1")]
            order_id: i64,
            #[prost(string, tag = "2")]
            carrier: String,
        }

        impl prost::Name for OrderShipped {
            const NAME: &'static str = "OrderShipped";
            const PACKAGE: &'static str = "shipping.v1";
        }

        impl Payload for OrderShipped {
            type Codec = Protobuf;
        }

        impl Event for OrderShipped {
            const TYPE: &'static str = "shipping.order_shipped";
            fn partition_key(&self) -> Option<String> {
                Some(self.order_id.to_string())
            }
        }

        /// Another message under the same event type: what a misconfigured producer sends.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Parcel {
            #[prost(int64, tag = "1")]
            weight: i64,
        }

        impl prost::Name for Parcel {
            const NAME: &'static str = "Parcel";
            const PACKAGE: &'static str = "shipping.v1";
        }

        impl Payload for Parcel {
            type Codec = Protobuf;
        }

        impl Event for Parcel {
            const TYPE: &'static str = "shipping.order_shipped";
        }

        fn shipped() -> OrderShipped {
            OrderShipped {
                order_id: 7,
                carrier: "dhl".into(),
            }
        }

        #[test]
        fn a_prost_message_round_trips_as_protobuf_with_its_name() {
            let env = Envelope::from_event(&shipped(), Metadata::default()).unwrap();
            assert_eq!(env.content_type, "application/protobuf");
            assert_eq!(env.dataschema(), Some("shipping.v1.OrderShipped"));
            assert_eq!(env.partition_key.as_deref(), Some("7"));
            assert_eq!(
                &env.payload[..],
                &prost::Message::encode_to_vec(&shipped())[..]
            );
            assert_eq!(env.decode::<OrderShipped>().unwrap(), shipped());
        }

        #[test]
        fn each_format_refuses_the_others_payload() {
            let proto = Envelope::from_event(&shipped(), Metadata::default()).unwrap();
            let mut as_json = proto.clone();
            as_json.event_type = OrderCreated::TYPE.into();
            as_json.version = OrderCreated::VERSION;
            assert!(matches!(
                as_json.decode::<OrderCreated>(),
                Err(Error::ContentType { codec: "json", .. })
            ));

            let json =
                Envelope::from_event(&OrderCreated { order_id: 1 }, Metadata::default()).unwrap();
            assert_eq!(json.dataschema(), None);
            let mut as_proto = json.clone();
            as_proto.event_type = OrderShipped::TYPE.into();
            as_proto.version = OrderShipped::VERSION;
            assert!(matches!(
                as_proto.decode::<OrderShipped>(),
                Err(Error::ContentType {
                    codec: "protobuf",
                    ..
                })
            ));
        }

        #[test]
        fn another_message_name_or_malformed_bytes_do_not_decode() {
            let env = Envelope::from_event(&shipped(), Metadata::default()).unwrap();
            assert!(matches!(
                env.decode::<Parcel>(),
                Err(Error::DataSchema { ref found, .. }) if found == "shipping.v1.OrderShipped"
            ));
            let mut broken = env.clone();
            broken.payload = Bytes::from_static(b"\xff\xff\xff");
            assert!(matches!(
                broken.decode::<OrderShipped>(),
                Err(Error::Decode { .. })
            ));
        }

        #[test]
        fn reencoding_takes_the_new_types_format_and_schema() {
            let json = Envelope::from_event(
                &OrderCreated { order_id: 3 },
                Metadata::default().with_header("tenant", "acme"),
            )
            .unwrap();
            let proto = json.reencode(&shipped()).unwrap();
            assert_eq!(proto.id, json.id);
            assert_eq!(proto.content_type, "application/protobuf");
            assert_eq!(proto.dataschema(), Some("shipping.v1.OrderShipped"));
            assert_eq!(proto.headers["tenant"], "acme");
            assert_eq!(proto.decode::<OrderShipped>().unwrap(), shipped());

            let back = proto.reencode(&OrderCreated { order_id: 3 }).unwrap();
            assert_eq!(back.content_type, "application/json");
            assert_eq!(back.dataschema(), None);
            assert_eq!(back.headers["tenant"], "acme");
        }
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
