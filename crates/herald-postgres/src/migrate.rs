//! Schema migrations: idempotent, safe to run from several processes at once.
//!
//! The migrations are templates in `migrations/` with `{schema}` and `{table}` placeholders,
//! filled with the configured identifiers (validated, always quoted in the templates). They run
//! in one transaction holding an advisory lock derived from the schema name, and each applied
//! version is recorded in `"{schema}"."{table}_migrations"`.

use herald_core::Result;
use sqlx::{AssertSqlSafe, PgPool};

use crate::config::PgOutboxConfig;
use crate::error::ResultExt;
use crate::outbox::PgOutbox;

/// One versioned migration template.
struct Migration {
    version: i32,
    name: &'static str,
    template: &'static str,
}

/// Every migration, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        template: include_str!("../migrations/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "inbox",
        template: include_str!("../migrations/0002_inbox.sql"),
    },
    Migration {
        version: 3,
        name: "inbox key holds",
        template: include_str!("../migrations/0003_held_keys.sql"),
    },
    Migration {
        version: 4,
        name: "lease index by relay",
        template: include_str!("../migrations/0004_lease_by_relay.sql"),
    },
    Migration {
        version: 5,
        name: "claims",
        template: include_str!("../migrations/0005_claims.sql"),
    },
    Migration {
        version: 6,
        name: "claims uncompressed",
        template: include_str!("../migrations/0006_claims_uncompressed.sql"),
    },
];

/// Fills a template's placeholders.
fn render(template: &str, config: &PgOutboxConfig) -> String {
    template
        .replace("{schema}", config.schema.as_str())
        .replace("{table}", config.table.as_str())
}

/// The newest migration version this crate knows.
pub(crate) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

impl PgOutbox {
    /// Creates or upgrades the schema and tables. Idempotent and safe to run concurrently.
    pub async fn migrate(&self) -> Result<()> {
        run(&self.inner.pool, &self.inner.config, &self.inner.secrets).await
    }
}

/// Brings the schema up to date; does nothing when it already is.
async fn run(pool: &PgPool, config: &PgOutboxConfig, secrets: &[String]) -> Result<()> {
    let history = config.qualified("_migrations");
    if is_current(pool, config, &history, secrets).await? {
        return Ok(());
    }

    let mut tx = pool.begin().await.store_err("migrate", secrets)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(config.migrate_lock_key())
        .execute(&mut *tx)
        .await
        .store_err("migrate", secrets)?;

    // `CREATE SCHEMA IF NOT EXISTS` needs the CREATE privilege on the database even when the
    // schema exists, so look first: a role that may only use an existing schema can migrate.
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(config.schema.as_str())
            .fetch_one(&mut *tx)
            .await
            .store_err("migrate", secrets)?;
    if !schema_exists {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA {}",
            config.schema.quoted()
        )))
        .execute(&mut *tx)
        .await
        .store_err("migrate", secrets)?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {history} (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    )))
    .execute(&mut *tx)
    .await
    .store_err("migrate", secrets)?;

    let applied: Vec<i32> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {history}")))
            .fetch_all(&mut *tx)
            .await
            .store_err("migrate", secrets)?;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tracing::info!(
            schema = %config.schema,
            table = %config.table,
            version = migration.version,
            name = migration.name,
            "applying outbox migration"
        );
        sqlx::raw_sql(AssertSqlSafe(render(migration.template, config)))
            .execute(&mut *tx)
            .await
            .store_err("migrate", secrets)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {history} (version, name) VALUES ($1, $2)"
        )))
        .bind(migration.version)
        .bind(migration.name)
        .execute(&mut *tx)
        .await
        .store_err("migrate", secrets)?;
    }
    tx.commit().await.store_err("migrate", secrets)
}

/// Whether the history table exists and holds the latest version (no lock, no DDL).
async fn is_current(
    pool: &PgPool,
    config: &PgOutboxConfig,
    history: &str,
    secrets: &[String],
) -> Result<bool> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(history)
        .fetch_one(pool)
        .await
        .store_err("migrate", secrets)?;
    if !exists {
        return Ok(false);
    }
    let latest: Option<i32> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT max(version) FROM {history}")))
            .fetch_one(pool)
            .await
            .store_err("migrate", secrets)?;
    tracing::debug!(schema = %config.schema, table = %config.table, ?latest, "outbox schema version");
    Ok(latest.unwrap_or(0) >= latest_version())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_use_only_known_placeholders() {
        let config = PgOutboxConfig::new("s", "t").expect("valid");
        for migration in MIGRATIONS {
            let sql = render(migration.template, &config);
            assert!(!sql.contains("{schema}") && !sql.contains("{table}"));
        }
        let outbox = render(MIGRATIONS[0].template, &config);
        assert!(outbox.contains("\"s\".\"t\""));
        assert!(outbox.contains("\"s\".\"t_dead_letters\""));
        assert!(outbox.contains("\"s\".\"t_archive\""));
        assert!(render(MIGRATIONS[1].template, &config).contains("\"s\".\"t_inbox\""));
        assert!(render(MIGRATIONS[2].template, &config).contains("\"s\".\"t_held_keys\""));
        let lease = render(MIGRATIONS[3].template, &config);
        assert!(lease.contains("ON \"s\".\"t\" (locked_by, locked_until)"));
        assert!(lease.contains("DROP INDEX \"s\".\"t_lease_idx\""));
        let claims = render(MIGRATIONS[4].template, &config);
        assert!(claims.contains("CREATE TABLE \"s\".\"t_claims\""));
        assert!(claims.contains("DROP COLUMN locked_by, DROP COLUMN locked_until"));
        assert_eq!(latest_version(), 6);
    }
}
