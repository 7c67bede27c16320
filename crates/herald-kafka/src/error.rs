//! Client errors as [`herald_core::Error`]s: classified (transient, unreachable or not) and
//! stripped of the configuration's secrets.

use std::sync::Arc;

use herald_core::Error;
use herald_core::error::Message;
use herald_core::redact::scrub_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The secrets of one configuration (SASL passwords, key passwords …): what must never appear
/// in a message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Secrets(Arc<Vec<String>>);

impl Secrets {
    /// The values of the client properties whose names say they are secret.
    pub(crate) fn of_properties<'a>(
        properties: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        let values = properties
            .into_iter()
            .filter(|(name, value)| is_secret(name) && !value.is_empty())
            .map(|(_, value)| value.clone())
            .collect();
        Secrets(Arc::new(values))
    }

    /// `text` without any secret.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub_all(text, &self.0)
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password` …).
pub(crate) fn is_secret(name: &str) -> bool {
    name.contains("password") || name.contains("secret") || name.ends_with(".pem")
}

/// Whether the failure says that the cluster could not be reached (rather than that this
/// message, topic or group is at fault).
pub(crate) fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::NetworkException
            | C::BrokerNotAvailable
    )
}

/// Whether trying the same operation again later may succeed.
pub(crate) fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    is_unreachable(code)
        || matches!(
            code,
            C::QueueFull
                | C::RequestTimedOut
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::RebalanceInProgress
                | C::UnknownTopicOrPartition
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::ThrottlingQuotaExceeded
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::InvalidProducerEpoch
                | C::Fatal
                | C::PurgeQueue
                | C::PurgeInflight
                | C::WaitingForCoordinator
                | C::InProgress
                | C::Retry
        )
}

/// `error` of `operation` as Herald's error, classified and scrubbed.
pub(crate) fn kafka(operation: &'static str, error: &KafkaError, secrets: &Secrets) -> Error {
    let text = Message(secrets.scrub(&error.to_string()));
    match error.rdkafka_error_code() {
        Some(code) if is_unreachable(code) => Error::unreachable(operation, text),
        Some(code) => Error::transport(operation, is_transient(code), text),
        None => Error::transport(operation, false, text),
    }
}

/// A failure of Herald's own making (a message the broker never saw) as Herald's error.
pub(crate) fn other(operation: &'static str, transient: bool, text: impl Into<String>) -> Error {
    Error::transport(operation, transient, Message(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_delivery_is_the_connections_fault() {
        let err = kafka(
            "publish",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            &Secrets::default(),
        );
        assert!(err.is_unreachable() && err.is_transient());
    }

    #[test]
    fn a_message_too_large_is_permanent() {
        let err = kafka(
            "publish",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            &Secrets::default(),
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn secrets_are_scrubbed() {
        let props = [("sasl.password".to_owned(), "hunter2".to_owned())];
        let secrets = Secrets::of_properties(props.iter().map(|(a, b)| (a, b)));
        let err = kafka(
            "connect",
            &KafkaError::ClientCreation("bad sasl.password=hunter2".into()),
            &secrets,
        );
        assert!(!err.chain().contains("hunter2"), "{}", err.chain());
    }
}
