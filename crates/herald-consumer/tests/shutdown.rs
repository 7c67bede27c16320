//! Graceful shutdown and crashes: in-flight handlers finish, nothing waiting is lost, nothing
//! runs twice; handlers past the deadline, and a consumer that dies abruptly, leave their
//! messages to be redelivered and the inbox absorbs what had committed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_consumer::{
    Consumer, ConsumerConfig, Context, Handler, HandlerError, HandlerResult, Outcome, Router,
    TxContext,
};
use herald_core::{Envelope, Uuid};
use herald_memory::MemoryTransport;
use herald_postgres::PgOutbox;
use sqlx::AssertSqlSafe;

/// Counts runs per message and takes its time.
#[derive(Clone, Default)]
struct Counting {
    runs: Arc<Mutex<HashMap<Uuid, u32>>>,
    started: Arc<AtomicU32>,
}

impl Handler<Deposited, Context> for Counting {
    async fn handle(&self, _d: Deposited, ctx: &mut Context) -> HandlerResult {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        *self
            .runs
            .lock()
            .unwrap()
            .entry(ctx.message_id())
            .or_default() += 1;
        Ok(Outcome::Done)
    }
}

fn batch(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| deposit(&format!("acct-{}", i % 37), i as u64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_handlers_run_loses_nothing_and_runs_nothing_twice() {
    let transport = MemoryTransport::new();
    let queue = queue();
    let handler = Counting::default();
    let config = ConsumerConfig {
        concurrency: 8,
        prefetch: 32,
        max_held: 8,
        ..config()
    };
    let first = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.count", handler.clone()),
        config.clone(),
    )
    .unwrap();
    let first_metrics = first.metrics();
    let running = Running::start(first, &transport);
    let messages = batch(300);
    publish(&transport, &messages).await;
    eventually("a few handled", || async {
        handler.runs.lock().unwrap().len() >= 20
    })
    .await;
    // Shut down with handlers running and deliveries waiting.
    running.stop().await;
    let stopped_at = first_metrics.snapshot();
    assert!(stopped_at.acked < 300, "stopped part way: {stopped_at:?}");
    assert_eq!(
        handler.started.load(Ordering::SeqCst) as u64,
        stopped_at.acked,
        "every handler that started finished and was acknowledged"
    );

    let second = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.count", handler.clone()),
        config,
    )
    .unwrap();
    let second_metrics = second.metrics();
    let running = Running::start(second, &transport);
    eventually("the rest handled", || async {
        first_metrics.snapshot().acked + second_metrics.snapshot().acked == 300
    })
    .await;
    running.stop().await;

    let runs = handler.runs.lock().unwrap();
    assert_eq!(runs.len(), 300, "nothing lost");
    assert!(runs.values().all(|&n| n == 1), "nothing ran twice");
    assert!(messages.iter().all(|m| runs.contains_key(&m.id)));
    assert_eq!(transport.depth(&queue), 0);
}

/// Credits a deposit; while `slow` is set, takes an hour after writing.
#[derive(Clone)]
struct SlowCredit {
    slow: Arc<AtomicBool>,
    started: Arc<AtomicU32>,
}

impl Handler<Deposited, TxContext<PgOutbox>> for SlowCredit {
    async fn handle(&self, d: Deposited, ctx: &mut TxContext<PgOutbox>) -> HandlerResult {
        self.started.fetch_add(1, Ordering::SeqCst);
        let store = ctx.outbox().clone();
        credit_pg_account(&store, ctx.db(), &d)
            .await
            .map_err(HandlerError::new)?;
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(Outcome::Done)
    }
}

async fn total_deposits(store: &PgOutbox) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(sum(deposits), 0)::bigint FROM {}",
        pg_accounts(store)
    )))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_past_the_shutdown_deadline_are_dropped_and_their_messages_redelivered() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let queue = queue();
    let handler = SlowCredit {
        slow: Arc::new(AtomicBool::new(true)),
        started: Arc::default(),
    };
    let config = ConsumerConfig {
        concurrency: 4,
        prefetch: 16,
        max_held: 4,
        shutdown_timeout: Duration::from_millis(200),
        handler_timeout: None,
        ..config()
    };
    let router = || Router::new().transactional(&store, "bank.credit", handler.clone());
    let first = Consumer::new(transport.clone(), queue.clone(), router(), config.clone()).unwrap();
    let running = Running::start(first, &transport);
    publish(&transport, &batch(20)).await;
    // Two groups (transactions) run at once, each with one handler stuck.
    eventually("handlers stuck", || async {
        handler.started.load(Ordering::SeqCst) >= 2
    })
    .await;
    running.stop().await; // returns after the 200 ms deadline
    assert_eq!(
        total_deposits(&store).await,
        0,
        "the dropped runs rolled back"
    );

    handler.slow.store(false, Ordering::SeqCst);
    let second = Consumer::new(transport.clone(), queue.clone(), router(), config).unwrap();
    let metrics = second.metrics();
    let running = Running::start(second, &transport);
    eventually("all handled", || async { metrics.snapshot().acked == 20 }).await;
    running.stop().await;
    assert_eq!(total_deposits(&store).await, 20);
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_abruptly_loses_nothing_and_applies_nothing_twice() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let queue = queue();
    let handler = SlowCredit {
        slow: Arc::new(AtomicBool::new(false)),
        started: Arc::default(),
    };
    let router = || Router::new().transactional(&store, "bank.credit", handler.clone());
    let first = Consumer::new(transport.clone(), queue.clone(), router(), config()).unwrap();
    transport.declare(first.subscription());
    let task =
        tokio::spawn(async move { first.run(tokio_util::sync::CancellationToken::new()).await });
    publish(&transport, &batch(500)).await;
    eventually("some handled", || async {
        handler.started.load(Ordering::SeqCst) >= 100
    })
    .await;
    task.abort(); // no graceful anything: deliveries in flight are simply dropped
    assert!(task.await.unwrap_err().is_cancelled());

    let second = Consumer::new(transport.clone(), queue.clone(), router(), config()).unwrap();
    let running = Running::start(second, &transport);
    eventually("the queue drained", || async {
        transport.depth(&queue) == 0
    })
    .await;
    running.stop().await;
    assert_eq!(
        total_deposits(&store).await,
        500,
        "every deposit applied exactly once"
    );
    pg_drop(&store).await;
}
