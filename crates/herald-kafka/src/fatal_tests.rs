//! A producer that librdkafka declares fatally failed is rebuilt, and the relay above it loses
//! nothing and reorders nothing.
//!
//! A real broker cannot be made to fence an idempotent producer on demand, so this test runs
//! on librdkafka's in-process mock cluster, which answers the next produce request with the
//! error an idempotent producer cannot recover from (a sequence desynchronization). Everything else
//! about the transport is proven against the real broker (`tests/`). It sits inside the crate
//! because it checks which producer generation is in use.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_core::{Backoff, Publisher};
use herald_relay::{Relay, RelayConfig};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use herald_testkit::{TestEvent, envelope, interleaved};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

use crate::{KafkaConfig, KafkaTransport};

const TOPIC: &str = "events";
const PARTITIONS: i32 = 4;

/// Every record of the topic, per partition in offset order: (key, event number).
fn read_all(servers: &str, expected: usize) -> Vec<(String, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "herald-fatal-test-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let event: TestEvent = serde_json::from_slice(message.payload().unwrap()).unwrap();
                out.push((event.key, event.n));
                quiet_since = Instant::now();
            }
            Some(Err(err)) => panic!("reading the topic: {err}"),
            None if out.len() >= expected && quiet_since.elapsed() > Duration::from_secs(2) => {
                break;
            }
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_rebuilds_the_producer_and_the_relay_loses_and_reorders_nothing() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let servers = mock.bootstrap_servers();
    let transport = KafkaTransport::lazy(KafkaConfig {
        topic: TOPIC.into(),
        partitions: PARTITIONS,
        delivery_timeout: Duration::from_secs(10),
        ..KafkaConfig::new(servers.clone())
    })
    .unwrap();

    // The producer works: a first batch (keys of its own) goes through on generation 0.
    let warm_up: Vec<_> = (0..4)
        .flat_map(|k| (0..5).map(move |n| envelope(&format!("warm-{k}"), n)))
        .collect();
    assert!(
        transport.publish(&warm_up).await.iter().all(Result::is_ok),
        "the first batch is delivered"
    );
    assert_eq!(transport.shared.producing.generation(), 0);

    // The next produce request is refused as out of order while it is the first one in
    // flight: librdkafka can no longer vouch for order or once-ness and declares the
    // idempotent producer fatally failed. The relay drains an outbox through it.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let store = SqliteOutbox::connect(&url, SqliteOutboxConfig::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let events = interleaved(20, 50);
    let mut tx = store.begin().await.unwrap();
    tx.record_all(&events).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(
        store.clone(),
        transport.clone(),
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
            max_attempts: 1000,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                multiplier: 2.0,
                jitter: 0.5,
            },
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let metrics = relay.metrics();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.snapshot().published < events.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the relay drains through the rebuilt producer: {:?}",
            metrics.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let snapshot = metrics.snapshot();
    assert!(
        transport.shared.producing.generation() >= 1,
        "the fatally failed producer was replaced ({snapshot:?})"
    );
    assert!(
        snapshot.retried > 0,
        "the refused messages failed and were retried: {snapshot:?}"
    );
    assert_eq!(snapshot.dead_lettered, 0, "{snapshot:?}");

    // At the broker: every event, and per key the first arrivals in recording order
    // (a key lives on one partition, read in offset order).
    let records = read_all(&servers, warm_up.len() + events.len());
    let mut first: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for (key, n) in &records {
        if seen.insert((key.clone(), *n)) {
            first.entry(key.clone()).or_default().push(*n);
        }
    }
    let relayed: usize = first
        .iter()
        .filter(|(k, _)| k.starts_with("key-"))
        .map(|(_, ns)| ns.len())
        .sum();
    assert_eq!(
        relayed,
        events.len(),
        "every recorded event reached the topic ({} records read)",
        records.len()
    );
    for (key, ns) in &first {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key}: first arrivals in recording order");
    }
}
