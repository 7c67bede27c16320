//! What can go wrong in a unit of work.

use herald_core::BoxError;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a unit of work did not commit. Whatever the variant, nothing of it was committed:
/// neither the application's writes nor the domain handlers' nor the outbox rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The outbox failed: the transaction could not begin, commit or roll back, the integration
    /// events could not be recorded, or one could not be encoded.
    #[error(transparent)]
    Outbox(#[from] herald_core::Error),
    /// A domain event handler returned an error.
    #[error("handler of domain event `{event}` failed")]
    Handler {
        /// The domain event's Rust type name.
        event: &'static str,
        /// What the handler returned.
        #[source]
        source: BoxError,
    },
    /// Handlers kept raising domain events past the configured depth: most likely two of them
    /// raise each other's events in a cycle.
    #[error(
        "domain event `{event}` is {depth} handler generations deep, over the limit of \
         {max_depth}: do handlers raise each other's events in a cycle?"
    )]
    TooDeep {
        /// The domain event's Rust type name.
        event: &'static str,
        /// Its generation: 0 for events raised by the work itself, n + 1 for events raised by
        /// a handler of a generation-n event.
        depth: u32,
        /// [`UnitOfWorkConfig::max_depth`](crate::UnitOfWorkConfig::max_depth).
        max_depth: u32,
    },
}

impl Error {
    /// Whether running the same unit of work again may succeed: a dropped connection, a
    /// serialization failure or a busy database, as opposed to a bug or invalid data.
    ///
    /// A handler's error counts as transient when it is a transient Herald error; other
    /// errors (a driver's, an application's) are not classified here: inspect
    /// [`std::error::Error::source`] for them.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Outbox(error) => error.is_transient(),
            Error::Handler { source, .. } => {
                if let Some(error) = source.downcast_ref::<herald_core::Error>() {
                    error.is_transient()
                } else if let Some(error) = source.downcast_ref::<Error>() {
                    error.is_transient()
                } else {
                    false
                }
            }
            Error::TooDeep { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::error::Message;

    #[test]
    fn classifies_transient_errors_through_handlers() {
        let reset = || herald_core::Error::store("commit", true, Message("reset".into()));
        assert!(Error::Outbox(reset()).is_transient());
        let handler = |source: BoxError| Error::Handler {
            event: "Placed",
            source,
        };
        assert!(handler(Box::new(reset())).is_transient());
        assert!(handler(Box::new(Error::Outbox(reset()))).is_transient());
        assert!(!handler("out of stock".into()).is_transient());
        let deep = Error::TooDeep {
            event: "Placed",
            depth: 9,
            max_depth: 8,
        };
        assert!(!deep.is_transient());
        assert!(deep.to_string().contains("cycle"));
    }
}
