//! sqlx errors as [`herald_core::Error`]s, classified as transient or not.
//!
//! SQLite reports contention as `SQLITE_BUSY` (another connection holds the write lock longer
//! than the busy timeout) or `SQLITE_LOCKED` (a conflict inside one shared-cache connection);
//! both go away when tried again, as do I/O errors and an exhausted pool. Constraint
//! violations, malformed SQL and a file that cannot be opened do not.

use herald_core::error::{Message, error_chain};
use herald_core::{Error, Result};

/// Primary SQLite result codes after which the same operation may succeed
/// (<https://www.sqlite.org/rescode.html>). Extended codes carry the primary code in their
/// low byte.
const TRANSIENT_CODES: [i32; 4] = [
    5,  // SQLITE_BUSY (and BUSY_SNAPSHOT, BUSY_RECOVERY, BUSY_TIMEOUT)
    6,  // SQLITE_LOCKED (and LOCKED_SHAREDCACHE)
    10, // SQLITE_IOERR (every IOERR_* variant)
    15, // SQLITE_PROTOCOL (a WAL lock race; SQLite itself says to retry)
];

/// The primary SQLite result code of a database error, if `error` is one.
pub(crate) fn primary_code(error: &sqlx::Error) -> Option<i32> {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff),
        _ => None,
    }
}

/// Whether `error` is SQLite contention (`SQLITE_BUSY` / `SQLITE_LOCKED`).
pub(crate) fn is_busy(error: &sqlx::Error) -> bool {
    matches!(primary_code(error), Some(5 | 6))
}

/// Whether `error` may go away if the operation is tried again later.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => {
            primary_code(error).is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    }
}

/// Turns a sqlx error into a store error for `operation`.
///
/// The driver error is rendered with its causes into the source text. SQLite connections carry
/// no password, but rendering keeps this crate's errors shaped like `herald-postgres`'s.
pub(crate) fn store_error(operation: &'static str, error: sqlx::Error) -> Error {
    let transient = is_transient(&error);
    Error::store(operation, transient, Message(error_chain(&error)))
}

/// Shorthand to map a sqlx result for `operation`.
pub(crate) trait ResultExt<T> {
    /// Maps the error with [`store_error`].
    fn store_err(self, operation: &'static str) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, sqlx::Error> {
    fn store_err(self, operation: &'static str) -> Result<T> {
        self.map_err(|error| store_error(operation, error))
    }
}

/// Runs `attempt`, and once more if SQLite reported contention (`SQLITE_BUSY` after the busy
/// timeout, or `SQLITE_LOCKED`); maps the final error for `operation`.
pub(crate) async fn retry_busy<T, F, Fut>(operation: &'static str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
{
    match attempt().await {
        Err(error) if is_busy(&error) => {
            tracing::debug!(operation, error = %error, "sqlite is busy, trying once more");
            attempt().await.store_err(operation)
        }
        other => other.store_err(operation),
    }
}

/// A permanent store error for a value read back that does not make sense (a malformed id,
/// a negative count): the row was written by something other than this crate.
pub(crate) fn corrupt(operation: &'static str, what: impl std::fmt::Display) -> Error {
    Error::store(operation, false, Message(format!("unreadable row: {what}")))
}

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
        let err = store_error("claim", io);
        assert!(err.is_transient());
        assert!(err.chain().starts_with("outbox store failed to claim: "));
    }

    #[tokio::test]
    async fn busy_and_constraint_errors_are_told_apart() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory database");
        sqlx::raw_sql("CREATE TABLE t (x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
            .expect("setup");
        let unique = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
            .expect_err("duplicate key");
        assert_eq!(primary_code(&unique), Some(19), "SQLITE_CONSTRAINT");
        assert!(!is_transient(&unique));
        assert!(!is_busy(&unique));
    }
}
