//! Shared set-up for the Kafka integration tests: each test gets topics of its own.
#![allow(dead_code)]

use std::time::Duration;

use herald_core::Uuid;
use herald_kafka::{KafkaConfig, KafkaTransport};

/// The cluster the tests talk to (`HERALD_TEST_KAFKA`).
pub fn servers() -> String {
    herald_testkit::env::kafka()
}

/// A name no other test (or run) uses.
pub fn unique(base: &str) -> String {
    format!("herald-test-{base}-{}", Uuid::now_v7().simple())
}

/// A configuration with an event topic of its own, four partitions, and a short session
/// timeout (groups rebalance quickly when a test's stream goes away).
pub fn config() -> KafkaConfig {
    KafkaConfig {
        topic: unique("events"),
        partitions: 4,
        client_id: "herald-test".into(),
        session_timeout: Duration::from_secs(6),
        ..KafkaConfig::new(servers())
    }
}

/// Logs to the test output when `HERALD_LOG` is set (e.g. `HERALD_LOG=herald_kafka=debug`).
pub fn logs() {
    if let Ok(filter) = std::env::var("HERALD_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A transport on [`config`], its topic declared.
pub async fn transport() -> KafkaTransport {
    logs();
    KafkaTransport::connect(config()).await.unwrap()
}

/// The PostgreSQL database of the relay tests (`HERALD_TEST_DATABASE_URL`).
pub fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// A PostgreSQL outbox in a schema of its own (drop it with [`drop_schema`]).
pub async fn pg_store() -> herald_postgres::PgOutbox {
    let schema = format!("herald_kafka_{}", Uuid::now_v7().simple());
    let config = herald_postgres::PgOutboxConfig::new(&schema, "outbox").unwrap();
    let store = herald_postgres::PgOutbox::connect(&database_url(), config)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Drops the store's schema.
pub async fn drop_schema(store: &herald_postgres::PgOutbox) {
    let sql = format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        store.config().schema
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();
}

/// Records `envelopes` in committed transactions of 500.
pub async fn record(store: &herald_postgres::PgOutbox, envelopes: &[herald_core::Envelope]) {
    for chunk in envelopes.chunks(500) {
        let mut tx = store.begin().await.unwrap();
        tx.record_all(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Relay settings for tests: quick backoff, many attempts (a broker outage must not
/// dead-letter anything).
pub fn relay_config() -> herald_relay::RelayConfig {
    herald_relay::RelayConfig {
        batch_size: 200,
        lease: Duration::from_secs(30),
        publish_timeout: Duration::from_secs(15),
        poll_interval: Duration::from_millis(100),
        max_attempts: 1000,
        backoff: herald_core::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.5,
        },
        ..herald_relay::RelayConfig::default()
    }
}
