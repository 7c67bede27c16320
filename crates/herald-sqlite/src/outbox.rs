//! The [`SqliteOutbox`] handle: its pool, configuration and prepared statements, shared by the
//! write path ([`crate::SqliteOutboxTx`]), the relays' claims and the operators' queries.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::redact::redact_url;
use herald_core::{Error, Result, Signal};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::SqliteOutboxConfig;
use crate::error::ResultExt;
use crate::statements::Statements;

/// How long a connection waits for SQLite's write lock before giving up with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite outbox: records events in transactions it opens ([`begin`](Self::begin)) or adopts
/// ([`adopt`](Self::adopt)), and serves relays ([`herald_core::OutboxStore`]) and operators
/// ([`herald_core::OutboxAdmin`]).
///
/// Cheap to clone: every clone shares the pool, the prepared SQL and the wake-up signal.
#[derive(Clone)]
pub struct SqliteOutbox {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("table", &self.inner.config.table)
            .field("completion", &self.inner.config.completion)
            .finish_non_exhaustive()
    }
}

/// What clones of a [`SqliteOutbox`] share.
pub(crate) struct Inner {
    pub(crate) pool: SqlitePool,
    pub(crate) config: SqliteOutboxConfig,
    pub(crate) signal: Signal,
    /// Every statement, built once from `config`.
    pub(crate) sql: Statements,
}

impl SqliteOutbox {
    /// An outbox on an existing pool. Its connections should have a busy timeout (sqlx's
    /// default is 5 s) and, for concurrent readers and writers, WAL journaling
    /// ([`SqliteOutbox::connect`] sets both).
    pub fn new(pool: SqlitePool, config: SqliteOutboxConfig) -> Self {
        let inner = Inner {
            sql: Statements::new(&config),
            signal: Signal::new(),
            pool,
            config,
        };
        SqliteOutbox {
            inner: Arc::new(inner),
        }
    }

    /// Opens (creating it if needed) the database at `url`, `sqlite://path` or a plain file
    /// path, with WAL journaling, `synchronous = NORMAL`, a 5 s busy timeout and foreign keys
    /// on. Does not migrate: call [`SqliteOutbox::migrate`].
    ///
    /// A malformed URL is [`Error::Config`]; a file that cannot be opened is [`Error::Store`].
    pub async fn connect(url: &str, config: SqliteOutboxConfig) -> Result<Self> {
        let (options, in_memory) = connect_options(url)?;
        // SQLite admits one writer at a time, and a writer that finds the file locked sleeps in
        // whole milliseconds (SQLite's busy handler) instead of being woken when the lock is
        // released. One connection makes this process's writers queue on the pool instead:
        // fair, and without those sleeps (measured with `herald demo`: p50 commit → handled
        // 27 ms with the default pool of 10, see the note of the foundation issue).
        let mut pool = SqlitePoolOptions::new().max_connections(1);
        if in_memory {
            // An in-memory database lives as long as one of its connections: keep one.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await.store_err("connect")?;
        tracing::debug!(url = %redact_url(url), table = %config.table, "opened sqlite outbox");
        Ok(Self::new(pool, config))
    }

    /// The connection pool, for the application's other queries (events are recorded in
    /// transactions from [`begin`](Self::begin) or [`adopt`](Self::adopt)).
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &SqliteOutboxConfig {
        &self.inner.config
    }
}

/// Connection options for `url`, and whether the database lives in memory.
fn connect_options(url: &str) -> Result<(SqliteConnectOptions, bool)> {
    let redacted = redact_url(url);
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"));
    let options = match path {
        Some(path) if path.is_empty() || path.starts_with('?') => {
            return Err(Error::Config(format!(
                "sqlite url {redacted:?} names no database file"
            )));
        }
        Some(_) => SqliteConnectOptions::from_str(url)
            .map_err(|err| Error::Config(format!("invalid sqlite url {redacted:?}: {err}")))?,
        None if url.contains("://") => {
            return Err(Error::Config(format!(
                "{redacted:?} is not a sqlite url (expected sqlite://path or a file path)"
            )));
        }
        None if url.is_empty() => {
            return Err(Error::Config("empty sqlite database path".to_owned()));
        }
        None => SqliteConnectOptions::new().filename(url),
    };
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    Ok((options, in_memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_accepted_or_refused_with_a_config_error() {
        assert!(connect_options("sqlite://herald.db").is_ok());
        assert!(connect_options("sqlite:herald.db?mode=rwc").is_ok());
        assert!(connect_options("/tmp/herald.db").is_ok());
        assert!(connect_options("sqlite::memory:").is_ok_and(|(_, mem)| mem));
        for bad in [
            "",
            "sqlite://",
            "postgres://u:secret@h/db",
            "sqlite://x.db?mode=bogus",
        ] {
            match connect_options(bad) {
                Err(Error::Config(text)) => assert!(!text.contains("secret"), "{text}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
