//! The pipelined `Relay::run`: batches claimed ahead and publish calls in flight at once must
//! not break per-key order, must hold a failed key in every batch already claimed, and must
//! survive a store that fails to claim or to write a batch back.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use herald_core::{
    ClaimRequest, ClaimedEvent, Envelope, Error, OutboxAdmin, OutboxStore, Publisher, Result, Seq,
    Subscriber, Uuid,
};
use herald_memory::MemoryTransport;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::envelope;
use herald_testkit::wrap::{WrapStore, Wrapped};

/// `per_key` events of `keys` keys, interleaved, plus `flaky` events of key `flaky`.
fn workload(keys: usize, per_key: u64, flaky: u64) -> Vec<Envelope> {
    let mut out = Vec::new();
    for n in 0..per_key {
        for k in 0..keys {
            out.push(envelope(&format!("key-{k}"), n));
        }
        if n < flaky {
            out.push(envelope("flaky", n));
        }
    }
    out
}

/// Confirms calls after uneven delays (so later calls often finish first) and records how
/// many calls were in flight at once.
#[derive(Clone)]
struct Uneven {
    inner: MemoryTransport,
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Uneven {
    fn new(inner: MemoryTransport) -> Self {
        Uneven {
            inner,
            calls: Arc::default(),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
        }
    }
}

impl Publisher for Uneven {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        // The broker takes the messages at once; only the confirmations are slow.
        let results = self.inner.publish(batch).await;
        let delay = [25, 2, 10, 1][call % 4];
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        results
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_together_keep_every_key_in_order_postgres() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    // 7 keys and batches of 9: every batch claimed ahead holds later events of keys that the
    // batch before it is still publishing.
    let events = workload(7, 30, 12);
    // The first try of two `flaky` events fails: the events behind them, already claimed in
    // the same or the next batch, must wait for their retry.
    let fail_once: HashSet<Uuid> = [events[7].id, events[8 * 5 + 7].id].into();
    assert_eq!(events[7].partition_key.as_deref(), Some("flaky"));
    assert_eq!(events[8 * 5 + 7].partition_key.as_deref(), Some("flaky"));
    let failed: Arc<std::sync::Mutex<HashSet<Uuid>>> = Arc::default();
    transport.fail_publishes_when({
        let failed = failed.clone();
        move |env| {
            (fail_once.contains(&env.id) && failed.lock().unwrap().insert(env.id))
                .then(|| "injected transient failure".to_owned())
        }
    });
    record_pg(&store, &events).await;

    let publisher = Uneven::new(transport.clone());
    let config = RelayConfig {
        batch_size: 9,
        ..fast_config()
    };
    let relay = Relay::new(store.clone(), publisher.clone(), config).unwrap();
    let metrics = relay.metrics();
    let (shutdown, task) = spawn_relay(relay);
    let delivered = collect(&mut stream, events.len(), Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(delivered.len(), events.len(), "each event published once");
    assert_key_order(&delivered, false);
    assert_eq!(failed.lock().unwrap().len(), 2, "both failures injected");
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.retried, 2);
    assert_eq!(snapshot.published, events.len() as u64);
    assert!(
        snapshot.released > 0,
        "events behind a failure were held back"
    );
    assert!(
        publisher.most_in_flight.load(Ordering::SeqCst) > 1,
        "publish calls overlapped"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 0);
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_two_batches_in_flight_releases_both_postgres() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = workload(5, 60, 0);
    record_pg(&store, &events).await;

    let config = RelayConfig {
        batch_size: 7,
        ..fast_config()
    };
    let relay = Relay::new(
        store.clone(),
        Uneven::new(transport.clone()),
        config.clone(),
    )
    .unwrap();
    let (shutdown, task) = spawn_relay(relay);
    tokio::time::sleep(Duration::from_millis(250)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_flight, 0, "nothing left claimed");
    let first = collect(&mut stream, events.len(), Duration::from_millis(300)).await;
    assert!(!first.is_empty() && first.len() < events.len());
    assert_eq!(stats.pending as usize, events.len() - first.len());

    finish_with_a_new_relay(&store, &transport, config, &mut stream, first, &events).await;
    pg_drop(&store).await;
}

/// A store whose claims and completions can be made to fail.
#[derive(Clone)]
struct Faulty<S> {
    inner: S,
    failing_claims: Arc<AtomicUsize>,
    failing_completes: Arc<AtomicUsize>,
    completes_failed: Arc<AtomicBool>,
}

fn outage(operation: &'static str) -> Error {
    Error::store(
        operation,
        false,
        herald_core::error::Message("injected store outage".into()),
    )
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl<S: OutboxStore> WrapStore for Faulty<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        if take_one(&self.failing_claims) {
            return Err(outage("claim"));
        }
        self.inner.claim(request).await
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        if take_one(&self.failing_completes) {
            self.completes_failed.store(true, Ordering::SeqCst);
            return Err(outage("complete"));
        }
        self.inner.complete(relay_id, seqs).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outages_while_pipelining_lose_nothing_and_keep_first_deliveries_in_order() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = workload(6, 25, 0);
    record_pg(&store, &events).await;

    let faulty = Faulty {
        inner: store.clone(),
        failing_claims: Arc::new(AtomicUsize::new(2)),
        failing_completes: Arc::new(AtomicUsize::new(2)),
        completes_failed: Arc::default(),
    };
    let config = RelayConfig {
        batch_size: 8,
        ..fast_config()
    };
    let relay = Relay::new(
        Wrapped(faulty.clone()),
        Uneven::new(transport.clone()),
        config,
    )
    .unwrap();
    let metrics = relay.metrics();
    let (shutdown, task) = spawn_relay(relay);
    // Completions that failed: those events come back after their lease (2 s) and are
    // published again.
    let mut delivered = collect(&mut stream, events.len(), Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stats().await.unwrap().pending + store.stats().await.unwrap().in_flight > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!task.is_finished(), "the relay kept running");
    delivered.extend(collect(&mut stream, usize::MAX, Duration::from_millis(500)).await);
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let ids: HashSet<Uuid> = delivered.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "every event published");
    assert!(faulty.completes_failed.load(Ordering::SeqCst));
    assert!(
        delivered.len() > events.len(),
        "events whose completion failed were published again"
    );
    assert_key_order(&delivered, true);
    assert!(metrics.snapshot().store_errors >= 4);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 0, "the outbox drained");
    pg_drop(&store).await;
}
