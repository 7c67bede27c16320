//! Shared set-up for the RabbitMQ integration tests: each test gets an exchange of its own.
#![allow(dead_code)]

use std::time::Duration;

use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::Uuid;

/// The broker the tests talk to (`HERALD_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    herald_testkit::env::amqp_url()
}

/// The PostgreSQL database of the relay tests (`HERALD_TEST_DATABASE_URL`).
pub fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// A name no other test (or run) uses.
pub fn unique(base: &str) -> String {
    format!("herald-test-{base}-{}", Uuid::now_v7().simple())
}

/// A configuration with an exchange of its own, short retry delays, and a topology the
/// broker deletes by itself a while after the test (so that runs leave nothing behind).
pub fn config() -> AmqpConfig {
    AmqpConfig {
        exchange: unique("exchange"),
        connection_name: "herald-test".into(),
        retry_delays: vec![Duration::from_millis(200), Duration::from_millis(600)],
        expires: Some(Duration::from_secs(120)),
        reconnect: herald_core::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        },
        ..AmqpConfig::new(amqp_url())
    }
}

/// Logs to the test output when `HERALD_LOG` is set (e.g. `HERALD_LOG=herald_amqp=debug`).
pub fn logs() {
    if let Ok(filter) = std::env::var("HERALD_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A transport on [`config`].
pub async fn transport() -> AmqpTransport {
    logs();
    AmqpTransport::connect(config()).await.unwrap()
}

/// A plain lapin connection, as another program would open one.
pub async fn plain_connection() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap()
}

/// A PostgreSQL outbox in a schema of its own (drop it with [`drop_schema`]).
pub async fn pg_store() -> herald_postgres::PgOutbox {
    let schema = format!("herald_amqp_{}", Uuid::now_v7().simple());
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
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(3),
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
