//! A broker outage is not the events' fault (issue 13, item 6): the relay gives their rows back
//! without spending an attempt and pauses with backoff, so a long outage dead-letters nothing.
//! The outage is real: an AMQP transport whose broker cannot be reached.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::{DeadLetters, Envelope, Page, Publisher, Result, Subscriber};
use herald_memory::MemoryTransport;
use herald_relay::Relay;
use herald_testkit::interleaved;

/// Publishes to a broker that cannot be reached while `outage` is set, to `up` afterwards.
#[derive(Clone)]
struct Outage {
    down: AmqpTransport,
    up: MemoryTransport,
    outage: Arc<AtomicBool>,
    calls_during_outage: Arc<AtomicUsize>,
}

impl Publisher for Outage {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        if self.outage.load(Ordering::SeqCst) {
            self.calls_during_outage.fetch_add(1, Ordering::SeqCst);
            return self.down.publish(batch).await;
        }
        self.up.publish(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_spends_no_attempt_and_dead_letters_nothing() {
    let store = pg_store().await;
    let up = MemoryTransport::new();
    let mut stream = up.subscribe(&audit()).await.unwrap();
    // Nothing listens on port 1: every connection attempt is refused.
    let down = AmqpTransport::lazy(AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")).unwrap();
    let publisher = Outage {
        down,
        up,
        outage: Arc::new(AtomicBool::new(true)),
        calls_during_outage: Arc::default(),
    };
    let events = interleaved(3, 4);
    record_pg(&store, &events).await;

    // Three attempts with backoff of 20 to 50 ms: an outage of 2 s is many times that.
    let config = fast_config();
    assert_eq!(config.max_attempts, 3);
    let relay = Relay::new(store.clone(), publisher.clone(), config).unwrap();
    let metrics = relay.metrics();
    let (shutdown, task) = spawn_relay(relay);
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher.outage.store(false, Ordering::SeqCst);

    let delivered = collect(&mut stream, events.len(), Duration::from_secs(30)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let dead = store.dead_letters(Page::first(100)).await.unwrap();
    assert!(
        dead.is_empty(),
        "{} events dead-lettered by the outage: {}",
        dead.len(),
        dead.first().map_or("", |d| d.reason.as_str())
    );
    assert_eq!(delivered.len(), events.len(), "every event published once");
    assert_key_order(&delivered, false);
    let snapshot = metrics.snapshot();
    assert_eq!(
        (snapshot.retried, snapshot.dead_lettered),
        (0, 0),
        "no attempt spent"
    );
    let calls = publisher.calls_during_outage.load(Ordering::SeqCst);
    assert!(
        (1..=12).contains(&calls),
        "the relay paused with backoff during the outage ({calls} publish calls in 2 s)"
    );
    pg_drop(&store).await;
}
