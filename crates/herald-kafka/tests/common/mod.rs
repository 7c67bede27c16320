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
    sweep_old_topics().await;
    KafkaTransport::connect(config()).await.unwrap()
}

/// How old a test topic must be before [`sweep_old_topics`] deletes it: far longer than any
/// test runs, so that runs in parallel keep theirs.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Deletes the topics that earlier runs left on the broker (a test does not delete its own
/// topics: its consumers may still be leaving their group when it ends): every
/// `herald-test-…-<uuid>` topic whose UUIDv7 is older than [`LEFTOVER_AGE`]. Once per test
/// process; a failure only leaves them for the next run.
pub async fn sweep_old_topics() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            if let Err(err) = delete_leftover_topics().await {
                eprintln!("sweeping old test topics: {err}");
            }
        })
        .await;
}

async fn delete_leftover_topics() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers())
        .create()?;
    let admin = std::sync::Arc::new(admin);
    let metadata = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || admin.inner().fetch_metadata(None, Duration::from_secs(10))
    })
    .await??;
    let now = std::time::SystemTime::now();
    let old: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| name.starts_with("herald-test-"))
        .filter(|name| {
            let created = name
                .rsplit('-')
                .next()
                .and_then(|id| Uuid::parse_str(id).ok())
                .and_then(|id| id.get_timestamp())
                .map(|ts| {
                    let (secs, nanos) = ts.to_unix();
                    std::time::UNIX_EPOCH + Duration::new(secs, nanos)
                });
            created.is_some_and(|at| now.duration_since(at).is_ok_and(|age| age > LEFTOVER_AGE))
        })
        .collect();
    for chunk in old.chunks(200) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        admin
            .delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
    }
    Ok(())
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
