//! Which tables hold the outbox and what happens to published rows.

use std::time::Duration;

use herald_core::{Completion, Identifier, Result};

/// Configuration of a SQLite outbox.
///
/// `table` holds pending work, `{table}_dead_letters` the events given up on,
/// `{table}_archive` published events (with [`Completion::Archive`]) and `{table}_migrations`
/// the applied migrations. SQLite has no schemas worth the name, so the table name alone keeps
/// several outboxes apart in one database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOutboxConfig {
    /// The name of the outbox table (default `herald_outbox`).
    pub table: Identifier,
    /// What happens to a row once it is published (default: delete it).
    pub completion: Completion,
    /// How often [`SqliteOutbox::watch_commits`](crate::SqliteOutbox::watch_commits) reads
    /// the database's commit counter (default 10 ms: one read of shared memory each).
    pub watch_interval: Duration,
}

impl SqliteOutboxConfig {
    /// Default table name.
    pub const DEFAULT_TABLE: &'static str = "herald_outbox";

    /// Default [`watch_interval`](Self::watch_interval).
    pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(10);

    /// A configuration for `table`, deleting published rows.
    ///
    /// Fails with [`herald_core::Error::Config`] if the name is not a plain SQL identifier, or
    /// if the derived table names (`{table}_dead_letters` …) would be too long.
    pub fn new(table: &str) -> Result<Self> {
        let table = Identifier::parse("table", table)?;
        // The derived names must be valid identifiers too (same limits as herald-postgres,
        // so a configuration moves between the two backends unchanged).
        for suffix in TABLE_SUFFIXES {
            Identifier::parse("table", &format!("{table}{suffix}"))?;
        }
        Ok(SqliteOutboxConfig {
            table,
            completion: Completion::default(),
            watch_interval: Self::DEFAULT_WATCH_INTERVAL,
        })
    }

    /// Sets what happens to published rows.
    pub fn with_completion(mut self, completion: Completion) -> Self {
        self.completion = completion;
        self
    }

    /// Sets how often [`watch_commits`](crate::SqliteOutbox::watch_commits) looks for commits.
    pub fn with_watch_interval(mut self, every: Duration) -> Self {
        self.watch_interval = every;
        self
    }

    /// `"table{suffix}"`, quoted for SQL.
    pub(crate) fn quoted(&self, suffix: &str) -> String {
        format!("\"{}{suffix}\"", self.table)
    }
}

/// Suffixes of the tables that sit next to the outbox table.
pub(crate) const TABLE_SUFFIXES: [&str; 3] = ["_dead_letters", "_archive", "_migrations"];

impl Default for SqliteOutboxConfig {
    fn default() -> Self {
        let table = match Identifier::parse("table", Self::DEFAULT_TABLE) {
            Ok(table) => table,
            // The default is a constant, valid identifier (checked by a unit test).
            Err(err) => unreachable!("default table name is valid: {err}"),
        };
        SqliteOutboxConfig {
            table,
            completion: Completion::default(),
            watch_interval: Self::DEFAULT_WATCH_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_herald_outbox() {
        let config = SqliteOutboxConfig::default();
        assert_eq!(config.table.as_str(), "herald_outbox");
        assert_eq!(config.completion, Completion::Delete);
        assert_eq!(config.quoted(""), "\"herald_outbox\"");
        assert_eq!(config.quoted("_archive"), "\"herald_outbox_archive\"");
        assert_eq!(
            SqliteOutboxConfig::new(SqliteOutboxConfig::DEFAULT_TABLE).expect("valid"),
            config
        );
    }

    #[test]
    fn refuses_invalid_names() {
        for name in ["x; drop table y", "a\"b", "", "1outbox"] {
            assert!(
                matches!(
                    SqliteOutboxConfig::new(name),
                    Err(herald_core::Error::Config(_))
                ),
                "{name:?}"
            );
        }
        // `{table}_dead_letters` would exceed 63 bytes.
        assert!(SqliteOutboxConfig::new(&"t".repeat(60)).is_err());
    }

    #[test]
    fn completion_is_configurable() {
        let config = SqliteOutboxConfig::new("events")
            .expect("valid")
            .with_completion(Completion::Archive);
        assert_eq!(config.completion, Completion::Archive);
    }
}
