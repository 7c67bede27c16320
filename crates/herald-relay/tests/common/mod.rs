//! Shared set-up for the relay's integration tests.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_core::{Backoff, Completion, DeliveryStream, Envelope, SubscriptionSpec};
use herald_memory::MemoryTransport;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_relay::{Relay, RelayConfig};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use herald_testkit::TestEvent;
use tokio_util::sync::CancellationToken;

pub fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// A PostgreSQL outbox in a schema of its own.
pub async fn pg_store() -> PgOutbox {
    let schema = format!("herald_r_{}", herald_core::Uuid::now_v7().simple());
    let config = PgOutboxConfig::new(&schema, "outbox").unwrap();
    let store = PgOutbox::connect(&database_url(), config).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Drops the schema of a store made by [`pg_store`] (at the end of a test that passed).
pub async fn pg_drop(store: &PgOutbox) {
    let schema = store.config().schema.quoted();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(store.pool())
        .await
        .unwrap();
}

/// An SQLite outbox in a file of its own (the directory lives as long as the returned guard).
pub async fn sqlite_store() -> (tempfile::TempDir, SqliteOutbox) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let store = sqlite_at(path.to_str().unwrap()).await;
    (dir, store)
}

pub async fn sqlite_at(path: &str) -> SqliteOutbox {
    let config = SqliteOutboxConfig {
        completion: Completion::Delete,
        ..SqliteOutboxConfig::default()
    };
    let store = SqliteOutbox::connect(&format!("sqlite://{path}"), config)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Relay settings for tests: quick backoff, short lease.
pub fn fast_config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        lease: Duration::from_secs(2),
        publish_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.2,
        },
        retention: RelayConfig::default().retention,
        ..RelayConfig::default()
    }
}

pub async fn record_pg(store: &PgOutbox, envelopes: &[Envelope]) {
    for chunk in envelopes.chunks(250) {
        let mut tx = store.begin().await.unwrap();
        tx.record_all(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

pub async fn record_sqlite(store: &SqliteOutbox, envelopes: &[Envelope]) {
    for chunk in envelopes.chunks(250) {
        let mut tx = store.begin().await.unwrap();
        tx.record_all(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Every delivery (duplicates included) until `expected` distinct ids arrived or `within`
/// passed, in arrival order; each acknowledged.
pub async fn collect<S: DeliveryStream>(
    stream: &mut S,
    expected: usize,
    within: Duration,
) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while seen.len() < expected {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery.unwrap();
        seen.insert(delivery.envelope.id);
        out.push(delivery.envelope.clone());
        delivery.ack().await.unwrap();
    }
    out
}

/// Each key's events arrive as 0, 1, 2, … (first deliveries; `dups` allows repeats).
pub fn assert_key_order(delivered: &[Envelope], dups: bool) {
    let mut seen = HashSet::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    for env in delivered {
        if !seen.insert(env.id) {
            assert!(dups, "{} delivered twice", env.id);
            continue;
        }
        let ev: TestEvent = env.decode().unwrap();
        let expected = next.entry(ev.key.clone()).or_insert(0);
        assert_eq!(ev.n, *expected, "key {} out of order", ev.key);
        *expected += 1;
    }
}

/// A subscription that sees every event, with room for whole test runs.
pub fn audit() -> SubscriptionSpec {
    SubscriptionSpec {
        prefetch: 100_000,
        ..SubscriptionSpec::new("audit", Vec::<String>::new())
    }
}

/// After a relay stopped having published `first`: a new relay on `store` publishes the rest
/// of `events`; together they hold every event exactly once, each key in order.
pub async fn finish_with_a_new_relay<S: DeliveryStream>(
    store: &PgOutbox,
    transport: &MemoryTransport,
    config: RelayConfig,
    stream: &mut S,
    first: Vec<Envelope>,
    events: &[Envelope],
) {
    let relay = Relay::new(store.clone(), transport.clone(), config).unwrap();
    let (shutdown, task) = spawn_relay(relay);
    let rest = collect(stream, events.len() - first.len(), Duration::from_secs(30)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let all: Vec<Envelope> = first.into_iter().chain(rest).collect();
    assert_eq!(all.len(), events.len(), "nothing lost, nothing twice");
    assert_key_order(&all, false);
}

/// Runs `relay` until `stream` has delivered `count` messages (or 30 s have passed), then stops
/// it and checks that it stopped cleanly; returns what was delivered, in arrival order.
pub async fn run_until_delivered<St, P, S>(
    relay: Relay<St, P>,
    stream: &mut S,
    count: usize,
) -> Vec<Envelope>
where
    St: herald_core::OutboxStore,
    P: herald_core::Publisher,
    S: DeliveryStream,
{
    let (shutdown, task) = spawn_relay(relay);
    let delivered = collect(stream, count, Duration::from_secs(30)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    delivered
}

/// Runs `relay` in a task of its own until the returned token is cancelled.
pub fn spawn_relay<St, P>(
    relay: Relay<St, P>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<herald_core::Result<()>>,
)
where
    St: herald_core::OutboxStore,
    P: herald_core::Publisher,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    (shutdown, task)
}
