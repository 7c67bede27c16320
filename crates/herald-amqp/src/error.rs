//! Broker and client errors as [`herald_core::Error`]s: classified (transient or not) and
//! stripped of the connection password.

use std::sync::Arc;

use herald_core::error::{Message, error_chain};
use herald_core::redact::{scrub_all, url_secrets};
use herald_core::{Error, Result};
use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// The secrets of one configuration: what must never appear in a message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Secrets(Arc<Vec<String>>);

impl Secrets {
    /// The password of `url` (userinfo or `?password=`), as written and percent-decoded.
    pub(crate) fn of_url(url: &str) -> Self {
        Secrets(Arc::new(url_secrets(url)))
    }

    /// `text` without any secret.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub_all(text, &self.0)
    }
}

/// Whether trying the same operation again later may succeed.
///
/// Refusals that name a mistake (access refused, a declaration that contradicts the existing
/// one, a message too large, a protocol violation) are permanent; lost connections, closed
/// channels, a broker shutting down, missed heartbeats and resource alarms are transient.
pub(crate) fn is_transient(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => !matches!(
                soft,
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
            ),
            AMQPErrorKind::Hard(hard) => matches!(
                hard,
                AMQPHardError::CONNECTIONFORCED
                    | AMQPHardError::RESOURCEERROR
                    | AMQPHardError::CHANNELERROR
                    | AMQPHardError::INTERNALERROR
            ),
        },
        ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::ParsingError(_)
        | ErrorKind::SerialisationError(_)
        | ErrorKind::NoDefaultRuntime
        | ErrorKind::AuthProviderError(_) => false,
        _ => true,
    }
}

/// Whether `error` says that the broker refused a declaration because the object exists with
/// other arguments.
pub(crate) fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// A client error as a transport error of `operation`, classified, without secrets.
pub(crate) fn transport(operation: &'static str, error: &lapin::Error, secrets: &Secrets) -> Error {
    Error::transport(
        operation,
        is_transient(error),
        Message(secrets.scrub(&error_chain(error))),
    )
}

/// A transient transport error of `operation` carrying `text`.
pub(crate) fn transient(operation: &'static str, text: impl Into<String>) -> Error {
    Error::transport(operation, true, Message(text.into()))
}

/// A permanent transport error of `operation` carrying `text`.
pub(crate) fn permanent(operation: &'static str, text: impl Into<String>) -> Error {
    Error::transport(operation, false, Message(text.into()))
}

/// Shorthand to map a lapin result for `operation`.
pub(crate) trait ResultExt<T> {
    /// Maps the error with [`transport`].
    fn amqp(self, operation: &'static str, secrets: &Secrets) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, lapin::Error> {
    fn amqp(self, operation: &'static str, secrets: &Secrets) -> Result<T> {
        self.map_err(|error| transport(operation, &error, secrets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_as_written_and_decoded() {
        let secrets = Secrets::of_url("amqps://app:p%40ss%3Aw0rd@broker:5671/prod");
        let text = "login as app with p%40ss%3Aw0rd (that is p@ss:w0rd) failed";
        let clean = secrets.scrub(text);
        assert!(!clean.contains("w0rd"), "{clean}");
        assert!(Secrets::of_url("amqp://broker/").scrub("x") == "x");
    }

    #[test]
    fn io_errors_are_transient_refusals_are_not() {
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert!(is_transient(&io));
        let parse: lapin::Error = ErrorKind::NoDefaultRuntime.into();
        assert!(!is_transient(&parse));
    }
}
