//! What a handler decides about a message, and what it may return to say so.

use std::time::Duration;

use crate::HandlerError;

/// A handler's verdict on a message. Each maps onto one settlement with the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: the message is acknowledged.
    Done,
    /// Not now: the message is delivered again after `after`, through the transport's delay
    /// mechanism. Counts as one of the policy's delayed redeliveries; once those are spent the
    /// message is dead-lettered instead.
    Retry {
        /// How long to wait.
        after: Duration,
        /// Why, for the logs and the dead letter.
        reason: String,
    },
    /// Never: the message goes to the dead letters with `reason`, without further attempts.
    Reject {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// [`Outcome::Retry`] after `after` for `reason`.
    pub fn retry(after: Duration, reason: impl Into<String>) -> Self {
        Outcome::Retry {
            after,
            reason: reason.into(),
        }
    }

    /// [`Outcome::Reject`] for `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject {
            reason: reason.into(),
        }
    }

    /// Whether this is [`Outcome::Done`].
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done)
    }
}

/// What handlers and layers produce: an outcome, or an error that the retry layer classifies
/// (transient: retry; permanent: reject).
pub type HandlerResult = Result<Outcome, HandlerError>;

/// What a handler function may return: `()`, an [`Outcome`], or a `Result` of either whose
/// error converts into a [`HandlerError`] (any `std::error::Error + Send + Sync`, a `String`,
/// a `&str`), so that `?` works in handlers.
pub trait IntoOutcome: Send {
    /// The outcome, or the error to classify.
    fn into_outcome(self) -> HandlerResult;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> HandlerResult {
        Ok(Outcome::Done)
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> HandlerResult {
        Ok(self)
    }
}

impl<T, E> IntoOutcome for Result<T, E>
where
    T: IntoOutcome,
    E: Into<HandlerError> + Send,
{
    fn into_outcome(self) -> HandlerResult {
        match self {
            Ok(value) => value.into_outcome(),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    #[test]
    fn unit_and_ok_mean_done() {
        assert_eq!(().into_outcome().ok(), Some(Outcome::Done));
        let ok: Result<(), HandlerError> = Ok(());
        assert_eq!(ok.into_outcome().ok(), Some(Outcome::Done));
        let nested: Result<Outcome, std::io::Error> = Ok(Outcome::reject("no"));
        assert_eq!(nested.into_outcome().ok(), Some(Outcome::reject("no")));
    }

    #[test]
    fn errors_of_any_kind_become_handler_errors() {
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("disk"));
        let err = io.into_outcome().expect_err("an error");
        assert_eq!(err.chain(), "disk");
        assert_eq!(err.class(), None, "left to the classifier");

        let text: Result<(), &str> = Err("out of stock");
        assert_eq!(
            text.into_outcome().expect_err("an error").chain(),
            "out of stock"
        );

        let marked: Result<(), HandlerError> = Err(HandlerError::permanent("bad"));
        let err = marked.into_outcome().expect_err("an error");
        assert_eq!(err.class(), Some(ErrorClass::Permanent));
    }
}
