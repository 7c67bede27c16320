//! The error type shared by every Herald crate that speaks the core vocabulary.

use std::fmt;

/// A boxed error from a backend (a database driver, a broker client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with Herald's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Herald, classified so that callers can decide between
/// retrying and giving up without parsing messages ([`Error::is_transient`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event could not be serialized into a payload.
    #[error("cannot encode event `{event_type}`")]
    Encode {
        /// The event's type name.
        event_type: String,
        /// What the codec said.
        #[source]
        source: BoxError,
    },
    /// A payload could not be deserialized into the expected event.
    #[error("cannot decode payload of `{event_type}` v{version}")]
    Decode {
        /// The envelope's type name.
        event_type: String,
        /// The envelope's version.
        version: u32,
        /// What the codec said.
        #[source]
        source: BoxError,
    },
    /// The envelope holds another event type than the one asked for.
    #[error("envelope holds `{found}`, expected `{expected}`")]
    TypeMismatch {
        /// The type asked for.
        expected: &'static str,
        /// The type found in the envelope.
        found: String,
    },
    /// The envelope's version is not one this reader understands.
    #[error("`{event_type}` v{version} is not supported (this reader knows v{supported})")]
    UnsupportedVersion {
        /// The envelope's type name.
        event_type: String,
        /// The version found.
        version: u32,
        /// The version the reader was built for.
        supported: u32,
    },
    /// The envelope's content type is not the one the codec reads.
    #[error("content type `{found}` cannot be read by the {codec} codec")]
    ContentType {
        /// The codec asked to read it.
        codec: &'static str,
        /// The content type found.
        found: String,
    },
    /// The envelope's `dataschema` names another schema than the reader's (a Protobuf
    /// message of another full name).
    #[error("payload follows schema `{found}`, expected `{expected}`")]
    DataSchema {
        /// The reader's schema.
        expected: String,
        /// The schema the envelope names.
        found: String,
    },
    /// A message is larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was measured (payload, headers).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A header or envelope field is missing or malformed.
    #[error("invalid envelope field `{field}`: {reason}")]
    InvalidEnvelope {
        /// The field or header name.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A configuration value is invalid (an identifier, a URL, a limit).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A store operation failed.
    #[error("outbox store failed to {operation}")]
    Store {
        /// What the store was doing (`claim`, `record`, `connect` …).
        operation: &'static str,
        /// Whether trying again later may succeed.
        transient: bool,
        /// The driver's error, already stripped of secrets.
        #[source]
        source: BoxError,
    },
    /// A transport operation failed.
    #[error("transport failed to {operation}")]
    Transport {
        /// What the transport was doing (`publish`, `subscribe`, `ack` …).
        operation: &'static str,
        /// Whether trying again later may succeed.
        transient: bool,
        /// The broker client's error, already stripped of secrets.
        #[source]
        source: BoxError,
    },
    /// The transport's broker could not be reached, or the connection to it was lost (or
    /// stopped answering) during the call: nothing is known to be wrong with the messages of
    /// the call. Always transient. A relay gives such messages back without counting an
    /// attempt and pauses, where a message-level failure ([`Error::Transport`]: a nack, a
    /// message returned as unroutable, too large, not encodable) counts against the message.
    #[error("transport unreachable, could not {operation}")]
    Unreachable {
        /// What the transport was doing (`publish`, `connect` …).
        operation: &'static str,
        /// The broker client's error, already stripped of secrets.
        #[source]
        source: BoxError,
    },
    /// The operation was cancelled by shutdown.
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl Error {
    /// Whether the same operation may succeed if tried again later (a dropped connection,
    /// a timeout, a broker that is restarting), as opposed to a permanent failure
    /// (a malformed payload, an invalid configuration).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { transient, .. } | Error::Transport { transient, .. } => *transient,
            Error::Cancelled | Error::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure is the connection's, not the message's: the broker could not be
    /// reached or the connection was lost mid-call ([`Error::Unreachable`]). Such a failure
    /// should not count as an attempt of the messages it hit.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// Builds an [`Error::Unreachable`].
    pub fn unreachable(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Unreachable {
            operation,
            source: source.into(),
        }
    }

    /// Builds a store error.
    pub fn store(operation: &'static str, transient: bool, source: impl Into<BoxError>) -> Self {
        Error::Store {
            operation,
            transient,
            source: source.into(),
        }
    }

    /// Builds a transport error.
    pub fn transport(
        operation: &'static str,
        transient: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Transport {
            operation,
            transient,
            source: source.into(),
        }
    }

    /// Builds an envelope error.
    pub fn invalid_envelope(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::InvalidEnvelope {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Renders the error with its chain of causes, `a: b: c`, the way logs and dead-letter
    /// records store it.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// Renders any error with its chain of causes, `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// A plain message used as an error source.
#[derive(Debug, Clone)]
pub struct Message(pub String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl From<String> for Message {
    fn from(value: String) -> Self {
        Message(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_transient_errors() {
        assert!(Error::store("claim", true, Message("reset".into())).is_transient());
        assert!(!Error::Config("bad".into()).is_transient());
        assert!(!Error::store("record", false, Message("constraint".into())).is_transient());
    }

    #[test]
    fn an_unreachable_broker_is_transient_and_not_the_messages_fault() {
        let err = Error::unreachable("publish", Message("connection refused".into()));
        assert!(err.is_transient() && err.is_unreachable());
        assert_eq!(
            err.chain(),
            "transport unreachable, could not publish: connection refused"
        );
        let nack = Error::transport("publish", true, Message("nack".into()));
        assert!(nack.is_transient() && !nack.is_unreachable());
    }

    #[test]
    fn chain_joins_causes() {
        let err = Error::transport("publish", true, Message("connection reset".into()));
        assert_eq!(err.chain(), "transport failed to publish: connection reset");
    }
}
