//! Handler errors and how they are classified: transient (retry) or permanent (reject).
//!
//! A handler returns any error (`?` converts it into a [`HandlerError`]); the retry layer asks a
//! [`Classifier`] whether trying again may help. A handler can also decide itself with
//! [`HandlerError::transient`] or [`HandlerError::permanent`].

use std::fmt;
use std::sync::Arc;

use herald_core::BoxError;
use herald_core::error::error_chain;

/// Whether an error may go away when the message is handled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Trying again may succeed (a lost connection, a deadlock, a timeout): retried.
    Transient,
    /// Trying again cannot succeed (a constraint the message violates, a bug): the message is
    /// dead-lettered at once, without spending the retries.
    Permanent,
}

/// An error returned by a handler.
///
/// Anything that converts into a boxed error converts into it, so `?` works on sqlx, I/O and
/// Herald errors alike, and on `String` / `&str` messages. Like `anyhow::Error`, it does not
/// implement `std::error::Error` itself (that is what makes the blanket conversion possible);
/// [`HandlerError::error`] gives the underlying error.
pub struct HandlerError {
    error: BoxError,
    class: Option<ErrorClass>,
}

impl HandlerError {
    /// An error left to the [`Classifier`].
    pub fn new(error: impl Into<BoxError>) -> Self {
        HandlerError {
            error: error.into(),
            class: None,
        }
    }

    /// An error that is retried, whatever the classifier says.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        HandlerError {
            error: error.into(),
            class: Some(ErrorClass::Transient),
        }
    }

    /// An error that dead-letters the message at once, whatever the classifier says.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            error: error.into(),
            class: Some(ErrorClass::Permanent),
        }
    }

    /// The class the handler chose, if it chose one.
    pub fn class(&self) -> Option<ErrorClass> {
        self.class
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The error with its causes, `a: b: c`, as logs and dead letters show it.
    pub fn chain(&self) -> String {
        error_chain(&*self.error)
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::new(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("error", &self.error)
            .field("class", &self.class)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

/// The error of a handler that panicked (classified like any other error: by default
/// transient, so retried and then dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct Panicked {
    /// The panic's message, when it had one.
    pub message: String,
}

impl Panicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "(no message)".to_owned()
        };
        Panicked { message }
    }
}

type ClassifyFn = dyn Fn(&(dyn std::error::Error + 'static)) -> ErrorClass + Send + Sync;

/// Decides whether a handler error is transient or permanent. Errors the handler classified
/// itself ([`HandlerError::permanent`], [`HandlerError::transient`]) are not asked about.
///
/// The default ([`Classifier::default`], [`default_class`]) looks through the error's chain of
/// causes for an error that knows its class: a [`herald_core::Error`] (its
/// [`is_transient`](herald_core::Error::is_transient)), an I/O error or a timeout (transient).
/// Anything else is treated as transient: it is retried with backoff and, if it keeps
/// failing, dead-lettered — the bounded, safe choice for an error nobody classified, as in
/// MassTransit and NServiceBus. Replace it to recognise your own errors or your driver's
/// (a unique violation is permanent; a serialization failure is not).
#[derive(Clone)]
pub struct Classifier(Arc<ClassifyFn>);

impl Classifier {
    /// A classifier from a function.
    pub fn new(
        classify: impl Fn(&(dyn std::error::Error + 'static)) -> ErrorClass + Send + Sync + 'static,
    ) -> Self {
        Classifier(Arc::new(classify))
    }

    /// The class of `error`: the handler's choice, else this classifier's.
    pub fn classify(&self, error: &HandlerError) -> ErrorClass {
        match error.class {
            Some(class) => class,
            None => (self.0)(error.error()),
        }
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(default_class)
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Classifier")
    }
}

/// The default classification (see [`Classifier`]).
pub fn default_class(error: &(dyn std::error::Error + 'static)) -> ErrorClass {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(herald) = error.downcast_ref::<herald_core::Error>() {
            return if herald.is_transient() {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            };
        }
        if error.is::<std::io::Error>()
            || error.is::<tokio::time::error::Elapsed>()
            || error.is::<crate::TimedOut>()
        {
            return ErrorClass::Transient;
        }
        current = error.source();
    }
    ErrorClass::Transient
}

#[cfg(test)]
mod tests {
    use herald_core::error::Message;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reserving stock failed")]
    struct Wrapper(#[source] herald_core::Error);

    #[test]
    fn herald_errors_keep_their_class_through_wrappers() {
        let classifier = Classifier::default();
        let permanent = herald_core::Error::store("record", false, Message("constraint".into()));
        assert_eq!(
            classifier.classify(&HandlerError::new(Wrapper(permanent))),
            ErrorClass::Permanent
        );
        let transient = herald_core::Error::store("record", true, Message("reset".into()));
        assert_eq!(
            classifier.classify(&HandlerError::new(transient)),
            ErrorClass::Transient
        );
    }

    #[test]
    fn unknown_errors_are_transient_and_the_handler_can_decide() {
        let classifier = Classifier::default();
        assert_eq!(
            classifier.classify(&HandlerError::new("something odd")),
            ErrorClass::Transient
        );
        assert_eq!(
            classifier.classify(&HandlerError::permanent("never")),
            ErrorClass::Permanent
        );
        let custom = Classifier::new(|e| {
            if e.to_string().contains("duplicate key") {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            }
        });
        assert_eq!(
            custom.classify(&HandlerError::new("duplicate key value")),
            ErrorClass::Permanent
        );
        assert_eq!(
            custom.classify(&HandlerError::transient("duplicate key but retry")),
            ErrorClass::Transient
        );
    }

    #[test]
    fn display_shows_the_chain() {
        let err = HandlerError::new(Wrapper(herald_core::Error::Cancelled));
        assert_eq!(
            err.to_string(),
            "reserving stock failed: cancelled by shutdown"
        );
    }
}
