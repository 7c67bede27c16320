//! The relay against real stores (PostgreSQL, SQLite) and the in-memory transport.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use herald_core::{
    DeadLetters, Envelope, OutboxAdmin, Page, Publisher, Result, Selection, Subscriber, Uuid,
};
use herald_memory::MemoryTransport;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::{TestEvent, envelope, interleaved};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_publish_every_event_once_in_key_order_postgres() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = interleaved(100, 30);

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let relay = Relay::new(store.clone(), transport.clone(), fast_config()).unwrap();
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }
    record_pg(&store, &events).await;

    let delivered = collect(&mut stream, events.len(), Duration::from_secs(60)).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }
    assert_eq!(
        delivered.len(),
        events.len(),
        "each event published exactly once"
    );
    let ids: HashSet<Uuid> = delivered.iter().map(|e| e.id).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect());
    assert_key_order(&delivered, false);
    assert_eq!(store.stats().await.unwrap().pending, 0);
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_publish_every_event_once_in_key_order_sqlite() {
    let (_dir, store) = sqlite_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = interleaved(50, 40);

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..2 {
        let relay = Relay::new(store.clone(), transport.clone(), fast_config()).unwrap();
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }
    record_sqlite(&store, &events).await;

    let delivered = collect(&mut stream, events.len(), Duration::from_secs(60)).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }
    assert_eq!(delivered.len(), events.len());
    assert_key_order(&delivered, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_publishes_back_off_then_dead_letter_while_other_keys_flow() {
    let (_dir, store) = sqlite_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let poison = envelope("poison", 0);
    let poison_id = poison.id;
    transport.fail_publishes_when(move |env| {
        (env.id == poison_id).then(|| "injected broker failure".to_owned())
    });
    let after_poison = envelope("poison", 1);
    let mut events = vec![poison.clone(), after_poison.clone()];
    events.extend(interleaved(20, 5));

    let relay = Relay::new(store.clone(), transport.clone(), fast_config()).unwrap();
    let metrics = relay.metrics();
    let (shutdown, task) = spawn_relay(relay);
    record_sqlite(&store, &events).await;

    // Everything but the poison event arrives, including the event queued behind it on its
    // key (once the poison event is dead-lettered).
    let delivered = collect(&mut stream, events.len() - 1, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), events.len() - 1);
    assert!(delivered.iter().all(|e| e.id != poison_id));
    assert!(delivered.iter().any(|e| e.id == after_poison.id));
    assert_key_order(
        &delivered
            .iter()
            .filter(|e| e.partition_key.as_deref() != Some("poison"))
            .cloned()
            .collect::<Vec<_>>(),
        false,
    );

    let dead = store.dead_letters(Page::first(10)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.as_ref().unwrap().id, poison_id);
    assert_eq!(dead[0].attempts, 3, "dead-lettered after max_attempts");
    assert!(
        dead[0].reason.contains("injected broker failure"),
        "reason kept: {}",
        dead[0].reason
    );
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.retried, 2);
    assert_eq!(snapshot.dead_lettered, 1);

    // The operator fixes the broker and replays the dead letter.
    transport.clear_faults();
    assert_eq!(store.replay(Selection::All).await.unwrap(), 1);
    store.notify();
    let replayed = collect(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].id, poison_id);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_wakes_on_commit_not_on_the_poll_interval() {
    let (_dir, store) = sqlite_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let relay = Relay::new(store.clone(), transport.clone(), config).unwrap();
    let (shutdown, task) = spawn_relay(relay);
    // Let the relay find the outbox empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let mut tx = store.begin().await.unwrap();
    tx.record(&TestEvent {
        key: "k".into(),
        n: 0,
        note: String::new(),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let delivered = collect(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(
        delivered.len(),
        1,
        "woken by the commit, long before the 60 s poll"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_in_another_process_is_woken_through_postgres() {
    let store = pg_store().await;
    // A second handle on the same outbox stands for another process: it shares nothing in
    // memory with the writer, only the database.
    let other = herald_postgres::PgOutbox::connect(&database_url(), store.config().clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let listener = other.watch_commits(shutdown.clone()).await.unwrap();
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let config = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let relay = Relay::new(other.clone(), transport.clone(), config).unwrap();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    record_pg(&store, &[envelope("k", 0)]).await;
    let delivered = collect(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 1, "woken by NOTIFY after commit");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    listener.await.unwrap();
    pg_drop(&store).await;
}

/// A publisher that takes its time, so that shutdown lands mid-batch.
#[derive(Clone)]
struct Slow(MemoryTransport);

impl Publisher for Slow {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.0.publish(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_batch_leaves_nothing_claimed_and_loses_nothing() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    // Few keys, many events each: a batch takes many publish rounds.
    let events = interleaved(4, 100);
    record_pg(&store, &events).await;

    let relay = Relay::new(store.clone(), Slow(transport.clone()), fast_config()).unwrap();
    let (shutdown, task) = spawn_relay(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.in_flight, 0,
        "the in-flight batch was finished or released"
    );
    let first = collect(&mut stream, events.len(), Duration::from_millis(300)).await;
    assert!(!first.is_empty() && first.len() < events.len());
    assert_eq!(stats.pending as usize, events.len() - first.len());

    // A new relay picks up exactly where the first stopped.
    finish_with_a_new_relay(
        &store,
        &transport,
        fast_config(),
        &mut stream,
        first,
        &events,
    )
    .await;
    pg_drop(&store).await;
}

#[tokio::test]
async fn one_cycle_publishes_in_key_order_and_gives_back_what_follows_a_failure() {
    let (_dir, store) = sqlite_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = interleaved(3, 4);
    // The second event of key-1 fails its first try.
    let poison_once = events
        .iter()
        .filter(|e| e.partition_key.as_deref() == Some("key-1"))
        .nth(1)
        .unwrap()
        .id;
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    transport.fail_publishes_when({
        let failed = failed.clone();
        move |env| {
            (env.id == poison_once && !failed.swap(true, std::sync::atomic::Ordering::SeqCst))
                .then(|| "injected transient failure".to_owned())
        }
    });
    record_sqlite(&store, &events).await;
    let relay = Relay::new(store.clone(), transport.clone(), fast_config()).unwrap();

    let first = relay.relay_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (
            first.claimed,
            first.published,
            first.retried,
            first.released
        ),
        (12, 9, 1, 2),
        "key-1's first event went, its second failed, the two behind it were given back"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = relay.relay_once(&CancellationToken::new()).await.unwrap();
    assert_eq!((second.claimed, second.published), (3, 3));

    let delivered = collect(&mut stream, events.len(), Duration::from_secs(10)).await;
    assert_eq!(
        delivered.len(),
        events.len(),
        "each event published exactly once"
    );
    assert_key_order(&delivered, false);
    assert_eq!(store.stats().await.unwrap().pending, 0);
}
