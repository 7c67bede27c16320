//! Shared helpers of the integration tests: the test database and per-test schemas.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use herald_core::Completion;
use herald_postgres::{PgOutbox, PgOutboxConfig, PgPool};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The test database URL (`HERALD_TEST_DATABASE_URL`, default: the server `scripts/services` sets up).
pub fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// A small pool on the test database.
pub async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url())
        .await
        .expect("test database reachable")
}

/// A fresh schema name that no other test uses.
pub fn fresh_schema() -> String {
    format!("herald_t_{}", Uuid::now_v7().simple())
}

/// Drops test schemas left behind by earlier runs (the store suite has no teardown hook): those
/// whose UUIDv7 is more than an hour old. Runs once per test binary.
pub async fn sweep_stale_schemas(pool: &PgPool) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'herald\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .expect("list schemas");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    for name in names {
        let created = Uuid::parse_str(&name["herald_t_".len()..])
            .ok()
            .and_then(|id| id.get_timestamp())
            .map(|ts| ts.to_unix().0);
        if created.is_some_and(|secs| secs + 3600 < now) {
            let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            // Another run may be sweeping the same schema: ignore failures.
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await;
        }
    }
}

/// A migrated outbox in a fresh schema.
pub async fn outbox(completion: Completion) -> PgOutbox {
    let config = PgOutboxConfig::new(&fresh_schema(), "outbox")
        .expect("valid names")
        .with_completion(completion);
    let pool = pool().await;
    sweep_stale_schemas(&pool).await;
    let outbox = PgOutbox::new(pool, config);
    outbox.migrate().await.expect("migrate");
    outbox
}

/// Drops the outbox's schema.
pub async fn drop_schema(outbox: &PgOutbox) {
    let sql = format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        outbox.config().schema.quoted()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(outbox.pool())
        .await
        .expect("drop schema");
}
