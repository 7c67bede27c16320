//! Per-key order under concurrency: thousands of messages over a few hundred keys, sixteen
//! handlers at a time, and messages that need a delayed redelivery holding their keys.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_consumer::{
    ConsumerConfig, Context, Handler, HandlerError, HandlerResult, Outcome, Router,
};
use herald_memory::MemoryTransport;

const KEYS: usize = 300;
const PER_KEY: u64 = 15;

/// Records, per account, the deposits handled successfully, in the order they were handled.
/// Fails (transiently) the first run of every deposit whose number is in `fail_once`.
struct Recorder {
    handled: Mutex<HashMap<String, Vec<u64>>>,
    fail_once: HashSet<(String, u64)>,
    failed: Mutex<HashSet<(String, u64)>>,
    in_flight: Mutex<HashSet<String>>,
}

impl Handler<Deposited, Context> for Recorder {
    async fn handle(&self, d: Deposited, _ctx: &mut Context) -> HandlerResult {
        let fresh = self.in_flight.lock().unwrap().insert(d.account.clone());
        assert!(
            fresh,
            "two messages of key {} ran at the same time",
            d.account
        );
        // Give other messages the chance to overtake, were order not kept.
        tokio::time::sleep(Duration::from_micros(u64::from(fastrand_u8()) * 4)).await;
        self.in_flight.lock().unwrap().remove(&d.account);
        let key = (d.account.clone(), d.n);
        if self.fail_once.contains(&key) && self.failed.lock().unwrap().insert(key) {
            return Err(HandlerError::transient("first run of this deposit fails"));
        }
        self.handled
            .lock()
            .unwrap()
            .entry(d.account)
            .or_default()
            .push(d.n);
        Ok(Outcome::Done)
    }
}

/// A cheap pseudo-random byte (no extra dependency).
fn fastrand_u8() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos >> 3) as u8
}

async fn run_ordered(fail_once: HashSet<(String, u64)>, config: ConsumerConfig) {
    let recorder = Arc::new(Recorder {
        handled: Mutex::default(),
        fail_once: fail_once.clone(),
        failed: Mutex::default(),
        in_flight: Mutex::default(),
    });
    struct Shared(Arc<Recorder>);
    impl Handler<Deposited, Context> for Shared {
        async fn handle(&self, d: Deposited, ctx: &mut Context) -> HandlerResult {
            self.0.handle(d, ctx).await
        }
    }
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        Router::new().handle("bank.record", Shared(recorder.clone())),
        config,
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);

    // Interleaved like concurrent writers: deposit 0 of every account, then deposit 1, …
    let mut batch = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            batch.push(deposit(&format!("acct-{k}"), n));
        }
    }
    for chunk in batch.chunks(500) {
        publish(&transport, chunk).await;
    }
    let total = (KEYS as u64) * PER_KEY;
    eventually("every message acknowledged", || async {
        metrics.snapshot().acked == total
    })
    .await;
    running.stop().await;

    let handled = recorder.handled.lock().unwrap();
    assert_eq!(handled.len(), KEYS);
    for (account, ns) in handled.iter() {
        let expected: Vec<u64> = (0..PER_KEY).collect();
        assert_eq!(
            ns, &expected,
            "deposits of {account} handled in order, once each"
        );
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.redeliveries, fail_once.len() as u64);
    assert_eq!(snapshot.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_concurrency_16_every_keys_messages_are_handled_in_order() {
    let config = ConsumerConfig {
        concurrency: 16,
        ..config()
    };
    run_ordered(HashSet::new(), config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn later_messages_of_a_key_wait_behind_its_message_being_redelivered() {
    // One deposit in about 25 fails its first run and, with no immediate retries, goes back to
    // the broker for a delayed redelivery — to the back of the queue. Later deposits of its
    // account must wait for it. A small `max_held` makes the consumer defer some of them.
    let fail_once: HashSet<(String, u64)> = (0..KEYS)
        .step_by(5)
        .flat_map(|k| {
            let account = format!("acct-{k}");
            [
                (account.clone(), (k as u64) % PER_KEY),
                (account, PER_KEY - 1),
            ]
        })
        .collect();
    let config = ConsumerConfig {
        concurrency: 16,
        prefetch: 128,
        max_held: 16,
        retry: quick_retry(0, 3),
        ..config()
    };
    run_ordered(fail_once, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_keep_their_place_and_do_not_spend_attempts() {
    // Deposit 0 of one account fails once and goes back for 200 ms; deposits 1–10 arrive
    // meanwhile. Two may be held; the others are deferred behind it. Deposit 9 fails once too:
    // with one redelivery allowed, it would be dead-lettered if its deferrals counted as
    // attempts.
    let recorder = Arc::new(Recorder {
        handled: Mutex::default(),
        fail_once: [("acct".to_owned(), 0), ("acct".to_owned(), 9)].into(),
        failed: Mutex::default(),
        in_flight: Mutex::default(),
    });
    struct Shared(Arc<Recorder>);
    impl Handler<Deposited, Context> for Shared {
        async fn handle(&self, d: Deposited, ctx: &mut Context) -> HandlerResult {
            self.0.handle(d, ctx).await
        }
    }
    let mut retry = quick_retry(0, 1);
    retry.backoff.initial = Duration::from_millis(200);
    retry.backoff.max = Duration::from_millis(200);
    let config = ConsumerConfig {
        concurrency: 2,
        prefetch: 8,
        max_held: 2,
        retry,
        ..config()
    };
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        Router::new().handle("bank.record", Shared(recorder.clone())),
        config,
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);
    let batch: Vec<_> = (0..11).map(|n| deposit("acct", n)).collect();
    publish(&transport, &batch).await;
    eventually("every deposit acknowledged", || async {
        metrics.snapshot().acked == 11
    })
    .await;
    running.stop().await;

    let snapshot = metrics.snapshot();
    assert!(
        snapshot.deferred >= 8,
        "all but two deposits were deferred: {snapshot:?}"
    );
    assert_eq!(snapshot.dead_lettered, 0, "deferrals are not attempts");
    assert_eq!(snapshot.redeliveries, 2);
    let handled = recorder.handled.lock().unwrap();
    assert_eq!(handled["acct"], (0..11).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stops_waiting_for_a_redelivery_that_never_comes_back() {
    // Deposit 0 fails once and is sent for redelivery, but another consumer takes it: after
    // the grace period, the later deposits of its account go ahead.
    let recorder = Arc::new(Recorder {
        handled: Mutex::default(),
        fail_once: [("acct".to_owned(), 0)].into(),
        failed: Mutex::default(),
        in_flight: Mutex::default(),
    });
    struct Shared(Arc<Recorder>);
    impl Handler<Deposited, Context> for Shared {
        async fn handle(&self, d: Deposited, ctx: &mut Context) -> HandlerResult {
            self.0.handle(d, ctx).await
        }
    }
    let memory = MemoryTransport::new();
    let config = ConsumerConfig {
        retry: quick_retry(0, 1),
        redelivery_grace: Duration::from_millis(300),
        ..config()
    };
    let consumer = consumer(
        LosingAcks::retries_vanish(memory.clone()),
        Router::new().handle("bank.record", Shared(recorder.clone())),
        config,
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &memory);
    let batch: Vec<_> = (0..5).map(|n| deposit("acct", n)).collect();
    publish(&memory, &batch).await;
    eventually("the later deposits handled", || async {
        metrics.snapshot().acked == 4
    })
    .await;
    running.stop().await;
    let handled = recorder.handled.lock().unwrap();
    assert_eq!(handled["acct"], vec![1, 2, 3, 4]);
}
