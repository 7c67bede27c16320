//! Where the outbox lives and what happens to published rows.

use herald_core::{Completion, Identifier, Result};

/// Configuration of a PostgreSQL outbox.
///
/// The tables live in `schema`: `table` holds pending work, `{table}_dead_letters` the events
/// given up on, `{table}_archive` published events (with [`Completion::Archive`]) and
/// `{table}_migrations` the applied migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutboxConfig {
    /// The schema holding the outbox tables (default `herald`).
    pub schema: Identifier,
    /// The name of the outbox table (default `outbox`).
    pub table: Identifier,
    /// What happens to a row once it is published (default: delete it).
    pub completion: Completion,
}

impl PgOutboxConfig {
    /// Default schema name.
    pub const DEFAULT_SCHEMA: &'static str = "herald";
    /// Default table name.
    pub const DEFAULT_TABLE: &'static str = "outbox";

    /// A configuration for `schema`.`table`, deleting published rows.
    ///
    /// Fails with [`herald_core::Error::Config`] if either name is not a plain SQL identifier,
    /// or if the derived table names (`{table}_dead_letters` …) would be too long.
    pub fn new(schema: &str, table: &str) -> Result<Self> {
        let schema = Identifier::parse("schema", schema)?;
        let table = Identifier::parse("table", table)?;
        // The derived names must be valid (not truncated) identifiers too.
        for suffix in TABLE_SUFFIXES {
            Identifier::parse("table", &format!("{table}{suffix}"))?;
        }
        Ok(PgOutboxConfig {
            schema,
            table,
            completion: Completion::default(),
        })
    }

    /// Sets what happens to published rows.
    pub fn with_completion(mut self, completion: Completion) -> Self {
        self.completion = completion;
        self
    }

    /// `"schema"."table{suffix}"`, quoted for SQL.
    pub(crate) fn qualified(&self, suffix: &str) -> String {
        format!("\"{}\".\"{}{suffix}\"", self.schema, self.table)
    }

    /// The NOTIFY channel of this outbox: `herald.{schema}.{table}` when that fits in a
    /// PostgreSQL identifier, else a name with a stable hash of both.
    pub(crate) fn channel(&self) -> String {
        let plain = format!("herald.{}.{}", self.schema, self.table);
        if plain.len() <= Identifier::MAX_LEN {
            plain
        } else {
            format!("herald.{:016x}", fnv1a(plain.as_bytes()))
        }
    }

    /// The advisory lock key that serializes claimers of this outbox table.
    pub(crate) fn claim_lock_key(&self) -> i64 {
        lock_key(&format!("herald.claim:{}.{}", self.schema, self.table))
    }

    /// The advisory lock key that serializes migrations in this schema.
    pub(crate) fn migrate_lock_key(&self) -> i64 {
        lock_key(&format!("herald.migrate:{}", self.schema))
    }
}

/// Suffixes of the tables that sit next to the outbox table.
pub(crate) const TABLE_SUFFIXES: [&str; 4] =
    ["_dead_letters", "_archive", "_migrations", "_claims"];

impl Default for PgOutboxConfig {
    fn default() -> Self {
        PgOutboxConfig {
            schema: default_identifier("schema", Self::DEFAULT_SCHEMA),
            table: default_identifier("table", Self::DEFAULT_TABLE),
            completion: Completion::default(),
        }
    }
}

fn default_identifier(what: &str, name: &str) -> Identifier {
    match Identifier::parse(what, name) {
        Ok(ident) => ident,
        // The defaults are constant, valid identifiers (checked by a unit test).
        Err(err) => unreachable!("default {what} name is valid: {err}"),
    }
}

/// A 64-bit advisory lock key, stable across processes and versions (FNV-1a).
fn lock_key(name: &str) -> i64 {
    i64::from_ne_bytes(fnv1a(name.as_bytes()).to_ne_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_herald_outbox() {
        let config = PgOutboxConfig::default();
        assert_eq!(config.schema.as_str(), "herald");
        assert_eq!(config.table.as_str(), "outbox");
        assert_eq!(config.completion, Completion::Delete);
        assert_eq!(config.qualified(""), "\"herald\".\"outbox\"");
        assert_eq!(
            config.qualified("_archive"),
            "\"herald\".\"outbox_archive\""
        );
        assert_eq!(config.channel(), "herald.herald.outbox");
    }

    #[test]
    fn refuses_invalid_names() {
        assert!(matches!(
            PgOutboxConfig::new("x; drop table y", "outbox"),
            Err(herald_core::Error::Config(_))
        ));
        assert!(matches!(
            PgOutboxConfig::new("herald", "a\"b"),
            Err(herald_core::Error::Config(_))
        ));
        // `{table}_dead_letters` would exceed 63 bytes.
        assert!(PgOutboxConfig::new("herald", &"t".repeat(60)).is_err());
    }

    #[test]
    fn long_names_get_a_hashed_channel() {
        let config = PgOutboxConfig::new(&"s".repeat(63), "outbox").expect("valid");
        let channel = config.channel();
        assert!(channel.len() <= 63, "{channel}");
        assert_eq!(channel, config.channel(), "stable");
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let a = PgOutboxConfig::new("a", "outbox").expect("valid");
        let b = PgOutboxConfig::new("b", "outbox").expect("valid");
        assert_eq!(a.claim_lock_key(), a.clone().claim_lock_key());
        assert_ne!(a.claim_lock_key(), b.claim_lock_key());
        assert_ne!(a.claim_lock_key(), a.migrate_lock_key());
        // FNV-1a of the empty string, as published.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
