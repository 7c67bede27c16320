//! sqlx errors as [`herald_core::Error`]s: classified (transient or not) and stripped of secrets.

use herald_core::error::{Message, error_chain};
use herald_core::{Error, Result};

/// SQLSTATE codes (or classes, when two characters) after which the same operation may succeed.
const TRANSIENT_SQLSTATES: [&str; 10] = [
    "08",    // connection exception
    "53",    // insufficient resources (too many connections, out of memory, disk full)
    "40001", // serialization failure
    "40P01", // deadlock detected
    "55P03", // lock not available
    "57014", // query canceled (statement timeout)
    "57P01", // admin shutdown
    "57P02", // crash shutdown
    "57P03", // cannot connect now (starting up)
    "58000", // system error
];

/// Whether `error` may go away if the operation is tried again later.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            TRANSIENT_SQLSTATES.iter().any(|t| {
                if t.len() == 2 {
                    code.starts_with(t)
                } else {
                    code == *t
                }
            })
        }),
        _ => false,
    }
}

/// Turns a sqlx error into a store error for `operation`.
///
/// The driver error (with its causes) is rendered to text, every one of `secrets` (the
/// connection password, when known) is removed, and the text becomes the source: no secret
/// survives in `Display`, in the chain or in `Debug`.
pub(crate) fn store_error(
    operation: &'static str,
    error: sqlx::Error,
    secrets: &[String],
) -> Error {
    let transient = is_transient(&error);
    let text = scrub_all(&error_chain(&error), secrets);
    Error::store(operation, transient, Message(text))
}

/// Shorthand to map a sqlx result for `operation`.
pub(crate) trait ResultExt<T> {
    /// Maps the error with [`store_error`].
    fn store_err(self, operation: &'static str, secrets: &[String]) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, sqlx::Error> {
    fn store_err(self, operation: &'static str, secrets: &[String]) -> Result<T> {
        self.map_err(|error| store_error(operation, error, secrets))
    }
}

pub(crate) use herald_core::redact::{scrub_all, url_secrets};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_driver_errors() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        let err = store_error("claim", io, &[]);
        assert!(err.is_transient());
        assert!(err.chain().starts_with("outbox store failed to claim: "));
    }
}
