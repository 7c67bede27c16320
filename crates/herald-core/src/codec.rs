//! Payload codecs: how an event's value becomes payload bytes and back.
//!
//! An event's own codec is [`Payload::Codec`](crate::Payload::Codec): [`Json`] for every serde
//! type, `Protobuf` (feature `protobuf`) for a prost message that opts in. The envelope says
//! which one wrote it (its `content_type`), and a reader refuses a payload its codec does not
//! read ([`Error::ContentType`](crate::Error::ContentType)) instead of misreading it.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::BoxError;

/// Turns values of `T` into payload bytes and back, in one format.
pub trait Codec<T>: Send + Sync + 'static {
    /// Short name for messages (`json`, `protobuf`).
    fn name(&self) -> &'static str;
    /// The MIME type written into envelopes.
    fn content_type(&self) -> &'static str;
    /// Whether this codec reads payloads of `content_type`.
    fn reads(&self, content_type: &str) -> bool;
    /// The schema the payload follows, carried on the envelope as its CloudEvents `dataschema`
    /// ([`DATASCHEMA`](crate::envelope::DATASCHEMA)): a Protobuf message's full name. `None`
    /// (the default) for a self-describing format such as JSON.
    fn dataschema(&self) -> Option<String> {
        None
    }
    /// Serializes a value.
    fn encode(&self, value: &T) -> Result<Bytes, BoxError>;
    /// Deserializes a value.
    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// The JSON codec (`application/json`), the codec of every serde event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn reads(&self, content_type: &str) -> bool {
        let essence = essence(content_type);
        essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    }

    fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(serde_json::to_vec(value)?))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The Protobuf codec (`application/protobuf`), for prost messages (feature `protobuf`).
///
/// The message's full name ([`prost::Name::full_name`]) goes on the envelope as its
/// `dataschema`; a reader whose message has another full name refuses the payload
/// ([`Error::DataSchema`](crate::Error::DataSchema)), since Protobuf's wire format would
/// otherwise decode one message as another without a word.
#[cfg(feature = "protobuf")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Protobuf;

#[cfg(feature = "protobuf")]
impl<T: prost::Message + prost::Name + Default + 'static> Codec<T> for Protobuf {
    fn name(&self) -> &'static str {
        "protobuf"
    }

    fn content_type(&self) -> &'static str {
        "application/protobuf"
    }

    fn reads(&self, content_type: &str) -> bool {
        let essence = essence(content_type);
        essence.eq_ignore_ascii_case("application/protobuf")
            || essence.eq_ignore_ascii_case("application/x-protobuf")
    }

    fn dataschema(&self) -> Option<String> {
        Some(T::full_name())
    }

    fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(value.encode_to_vec()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(T::decode(bytes)?)
    }
}

/// A MIME type without its parameters (`application/json; charset=utf-8` → `application/json`).
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_json(content_type: &str) -> bool {
        Codec::<serde_json::Value>::reads(&Json, content_type)
    }

    #[test]
    fn json_reads_json_content_types() {
        assert!(reads_json("application/json"));
        assert!(reads_json("application/json; charset=utf-8"));
        assert!(reads_json("application/cloudevents+json"));
        assert!(!reads_json("application/protobuf"));
    }

    #[cfg(feature = "protobuf")]
    #[derive(Clone, PartialEq, prost::Message)]
    struct Shipped {
        #[prost(string, tag = "1")]
        order: String,
    }

    #[cfg(feature = "protobuf")]
    impl prost::Name for Shipped {
        const NAME: &'static str = "Shipped";
        const PACKAGE: &'static str = "shipping.v1";
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_reads_protobuf_content_types_only() {
        let reads = |ct| Codec::<Shipped>::reads(&Protobuf, ct);
        assert!(reads("application/protobuf"));
        assert!(reads("application/x-protobuf; proto=ordering.Shipped"));
        assert!(!reads("application/json"));
        assert_eq!(
            Codec::<Shipped>::dataschema(&Protobuf).as_deref(),
            Some("shipping.v1.Shipped")
        );
    }
}
