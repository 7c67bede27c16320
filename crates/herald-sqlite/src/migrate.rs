//! The outbox schema and its migrations.
//!
//! Migrations are SQL templates under `migrations/`, with `{table}` standing for the configured
//! table name. They are applied in order, each at most once, inside one `BEGIN IMMEDIATE`
//! transaction that holds SQLite's write lock: two processes migrating the same file at once
//! take turns, and the second finds nothing left to do. Applied versions are recorded in
//! `{table}_migrations`.

use herald_core::Result;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use crate::error::ResultExt;
use crate::outbox::SqliteOutbox;
use crate::row::unix_micros;

/// One schema migration.
struct Migration {
    /// Applied in increasing order; never renumbered once released.
    version: i64,
    /// What it does, recorded with it.
    description: &'static str,
    /// The SQL template (`{table}` = the outbox table name).
    template: &'static str,
}

/// Every migration, oldest first.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox, dead letters and archive",
        template: include_str!("../migrations/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        description: "inbox",
        template: include_str!("../migrations/0002_inbox.sql"),
    },
    Migration {
        version: 3,
        description: "inbox key holds",
        template: include_str!("../migrations/0003_held_keys.sql"),
    },
];

impl SqliteOutbox {
    /// Creates or upgrades the outbox tables. Idempotent: safe to call at every start, from
    /// several processes at once.
    pub async fn migrate(&self) -> Result<()> {
        let config = self.config();
        let ledger = config.quoted("_migrations");
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .store_err("migrate")?;

        let create_ledger = format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (\
                version     INTEGER PRIMARY KEY, \
                description TEXT    NOT NULL, \
                applied_at  INTEGER NOT NULL)"
        );
        sqlx::query(AssertSqlSafe(create_ledger))
            .execute(&mut *tx)
            .await
            .store_err("migrate")?;

        let applied: Vec<i64> = sqlx::query(AssertSqlSafe(format!("SELECT version FROM {ledger}")))
            .fetch_all(&mut *tx)
            .await
            .store_err("migrate")?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .store_err("migrate")?;

        for migration in MIGRATIONS {
            if applied.contains(&migration.version) {
                continue;
            }
            let sql = render(migration.template, config.table.as_str());
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .store_err("migrate")?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {ledger} (version, description, applied_at) VALUES (?, ?, ?)"
            )))
            .bind(migration.version)
            .bind(migration.description)
            .bind(unix_micros(OffsetDateTime::now_utc()))
            .execute(&mut *tx)
            .await
            .store_err("migrate")?;
            tracing::info!(
                table = %config.table,
                version = migration.version,
                description = migration.description,
                "applied outbox migration"
            );
        }
        tx.commit().await.store_err("migrate")
    }
}

/// The migration's SQL for `table` (a validated identifier: letters, digits and `_` only).
fn render(template: &str, table: &str) -> String {
    template.replace("{table}", table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn templates_name_only_the_configured_tables() {
        let sql = render(MIGRATIONS[0].template, "orders_outbox");
        assert!(!sql.contains("{table}"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"orders_outbox\" ("));
        assert!(sql.contains("\"orders_outbox_dead_letters\""));
        assert!(sql.contains("\"orders_outbox_archive\""));
        let inbox = render(MIGRATIONS[1].template, "orders_outbox");
        assert!(!inbox.contains("{table}"));
        assert!(inbox.contains("CREATE TABLE IF NOT EXISTS \"orders_outbox_inbox\" ("));
    }
}
