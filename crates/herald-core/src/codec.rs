//! Payload codecs.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::BoxError;

/// Turns events into payload bytes and back.
pub trait Codec: Send + Sync + 'static {
    /// Short name for messages (`json`).
    fn name(&self) -> &'static str;
    /// The MIME type written into envelopes.
    fn content_type(&self) -> &'static str;
    /// Whether this codec reads payloads of `content_type`.
    fn reads(&self, content_type: &str) -> bool;
    /// Serializes a value.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, BoxError>;
    /// Deserializes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// The JSON codec (`application/json`), Herald's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn reads(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(serde_json::to_vec(value)?))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_json_content_types() {
        assert!(Json.reads("application/json"));
        assert!(Json.reads("application/json; charset=utf-8"));
        assert!(Json.reads("application/cloudevents+json"));
        assert!(!Json.reads("application/protobuf"));
    }
}
