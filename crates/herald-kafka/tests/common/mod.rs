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
