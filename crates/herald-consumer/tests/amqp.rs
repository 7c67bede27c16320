//! The consumer over RabbitMQ (`HERALD_TEST_AMQP_URL`): duplicates absorbed by the inbox,
//! retries through the broker's delay queues ending in its dead-letter queue, and per-key order
//! with sixteen handlers at a time. Each test has an exchange and a queue of its own.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{
    Consumer, ConsumerConfig, Context, Handler, HandlerError, HandlerResult, Outcome, Router,
    TxContext,
};
use herald_core::{DeadLetters, Envelope, Page, Publisher, Uuid};
use herald_sqlite::SqliteOutbox;
use tokio_util::sync::CancellationToken;

fn amqp_url() -> String {
    herald_testkit::env::amqp_url()
}

/// A transport with an exchange of its own, short delay queues, and a topology the broker
/// removes by itself a while after the test.
async fn transport() -> AmqpTransport {
    let config = AmqpConfig {
        exchange: format!("herald-consumer-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(amqp_url())
    };
    AmqpTransport::connect(config).await.unwrap()
}

/// Runs `consumer` until the returned token is cancelled; declares its queue first.
async fn start(consumer: Consumer<AmqpTransport>, transport: &AmqpTransport) -> Running {
    transport.declare(consumer.subscription()).await.unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { consumer.run(token).await });
    Running { shutdown, task }
}

async fn publish_all(transport: &AmqpTransport, batch: &[Envelope]) {
    for chunk in batch.chunks(500) {
        for result in transport.publish(chunk).await {
            result.unwrap();
        }
    }
}

async fn credit(d: Deposited, ctx: &mut TxContext<SqliteOutbox>) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO accounts (account, balance, deposits) VALUES (?, ?, 1) \
         ON CONFLICT (account) DO UPDATE \
         SET balance = balance + excluded.balance, deposits = deposits + 1",
    )
    .bind(&d.account)
    .bind(d.cents)
    .execute(ctx.db())
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_rabbitmq_delivers_twice_changes_the_tables_once() {
    let (db, _dir) = sqlite_store().await;
    let transport = transport().await;
    let queue = queue();
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().transactional(&db, "bank.credit", credit),
        config(),
    )
    .unwrap();
    let metrics = consumer.metrics();
    let running = start(consumer, &transport).await;
    let message = deposit("amy", 0);
    // Published twice, as a relay does when a confirm is lost.
    publish_all(&transport, &[message.clone(), deposit("amy", 1), message]).await;
    eventually("three deliveries acknowledged", || async {
        metrics.snapshot().acked == 3
    })
    .await;
    running.stop().await;
    let (deposits, balance): (i64, i64) =
        sqlx::query_as("SELECT deposits, balance FROM accounts WHERE account = 'amy'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((deposits, balance), (2, 200));
    assert_eq!(metrics.snapshot().duplicates, 1);
    transport.delete_subscription(&queue).await.unwrap();
}

struct Failing {
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Handler<Deposited, Context> for Failing {
    async fn handle(&self, d: Deposited, _ctx: &mut Context) -> HandlerResult {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(d.account.clone())
            .or_default() += 1;
        if d.account == "poison" {
            return Err(HandlerError::new("dependency is down"));
        }
        Ok(Outcome::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_ends_in_rabbitmqs_dead_letter_queue_after_the_configured_attempts() {
    let transport = transport().await;
    let queue = queue();
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let mut retry = quick_retry(2, 2);
    retry.backoff.initial = Duration::from_millis(100);
    retry.backoff.max = Duration::from_millis(100);
    let config = ConsumerConfig { retry, ..config() };
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.failing", Failing { runs: runs.clone() }),
        config,
    )
    .unwrap();
    let metrics = consumer.metrics();
    let running = start(consumer, &transport).await;
    let mut batch = vec![deposit("poison", 0)];
    batch.extend((0..20).map(|i| deposit(&format!("good-{i}"), 0)));
    publish_all(&transport, &batch).await;
    eventually("all settled", || async {
        metrics.snapshot().finished() == 21
    })
    .await;
    running.stop().await;

    assert_eq!(
        runs.lock().unwrap()["poison"],
        9,
        "(1 + 2 immediate) × (1 + 2 delayed)"
    );
    assert_eq!(metrics.snapshot().acked, 20);
    let dead = transport
        .dead_letter_queue(&queue)
        .unwrap()
        .dead_letters(Page::first(10))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("gave up after 3 deliveries"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("dependency is down"),
        "{}",
        dead[0].reason
    );
    transport.delete_subscription(&queue).await.unwrap();
}

/// Fails every delivery before `succeeds_on`; records the attempts it saw.
struct FailsUntil {
    succeeds_on: u32,
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Handler<Deposited, Context> for FailsUntil {
    async fn handle(&self, _d: Deposited, ctx: &mut Context) -> HandlerResult {
        self.attempts.lock().unwrap().push(ctx.attempt());
        if ctx.attempt() < self.succeeds_on {
            return Err(HandlerError::new("not yet"));
        }
        Ok(Outcome::Done)
    }
}

/// The consumer's retry policy is the only place the number of deliveries is set: with more
/// redeliveries allowed than the transport's default cap (10), RabbitMQ delivers the message
/// as often as the policy says, instead of dead-lettering it at the transport's own cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqs_cap_on_attempts_follows_the_consumers_retry_policy() {
    let transport = transport().await;
    let queue = queue();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle(
            "bank.patient",
            FailsUntil {
                succeeds_on: 12,
                attempts: attempts.clone(),
            },
        ),
        ConsumerConfig {
            retry: quick_retry(0, 11),
            ..config()
        },
    )
    .unwrap();
    assert_eq!(consumer.subscription().max_attempts, 12, "1 + 11 delayed");
    let metrics = consumer.metrics();
    let running = start(consumer, &transport).await;
    publish_all(&transport, &[deposit("pat", 0)]).await;
    eventually("the message settled", || async {
        metrics.snapshot().finished() == 1
    })
    .await;
    running.stop().await;

    assert_eq!(*attempts.lock().unwrap(), (1..=12).collect::<Vec<_>>());
    assert_eq!(metrics.snapshot().acked, 1);
    assert!(
        transport
            .dead_letter_queue(&queue)
            .unwrap()
            .dead_letters(Page::first(10))
            .await
            .unwrap()
            .is_empty()
    );
    transport.delete_subscription(&queue).await.unwrap();
}

/// Records handled deposits per account; fails the first run of the chosen ones.
struct Recorder {
    handled: Mutex<HashMap<String, Vec<u64>>>,
    fail_once: Mutex<HashSet<(String, u64)>>,
}

impl Handler<Deposited, Context> for Arc<Recorder> {
    async fn handle(&self, d: Deposited, _ctx: &mut Context) -> HandlerResult {
        if self
            .fail_once
            .lock()
            .unwrap()
            .remove(&(d.account.clone(), d.n))
        {
            return Err(HandlerError::transient("first run fails"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_rabbitmq_every_keys_messages_are_handled_in_order() {
    const KEYS: usize = 200;
    const PER_KEY: u64 = 10;
    let transport = transport().await;
    let queue = queue();
    let fail_once: HashSet<(String, u64)> = (0..KEYS)
        .step_by(10)
        .map(|k| (format!("acct-{k}"), (k as u64 / 10) % PER_KEY))
        .collect();
    let failures = fail_once.len() as u64;
    let recorder = Arc::new(Recorder {
        handled: Mutex::default(),
        fail_once: Mutex::new(fail_once),
    });
    let mut retry = quick_retry(0, 3);
    retry.backoff.initial = Duration::from_millis(100);
    retry.backoff.max = Duration::from_millis(100);
    let config = ConsumerConfig {
        concurrency: 16,
        retry,
        ..config()
    };
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.record", recorder.clone()),
        config,
    )
    .unwrap();
    let metrics = consumer.metrics();
    let running = start(consumer, &transport).await;
    let mut batch = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            batch.push(deposit(&format!("acct-{k}"), n));
        }
    }
    publish_all(&transport, &batch).await;
    let total = KEYS as u64 * PER_KEY;
    eventually("every message acknowledged", || async {
        metrics.snapshot().acked == total
    })
    .await;
    running.stop().await;

    let handled = recorder.handled.lock().unwrap().clone();
    for k in 0..KEYS {
        let account = format!("acct-{k}");
        assert_eq!(
            handled[&account],
            (0..PER_KEY).collect::<Vec<_>>(),
            "deposits of {account} in order"
        );
    }
    assert_eq!(metrics.snapshot().redeliveries, failures);
    transport.delete_subscription(&queue).await.unwrap();
}

/// Records handled deposits per account; the first run of each listed deposit asks for a
/// redelivery after `after`.
struct RetriesOnce {
    after: Duration,
    /// How long each run takes.
    pace: Duration,
    handled: Mutex<Vec<(String, u64, u32)>>,
    retry_once: Mutex<HashSet<(String, u64)>>,
}

impl RetriesOnce {
    fn new(after: Duration, retry_once: impl IntoIterator<Item = (&'static str, u64)>) -> Self {
        RetriesOnce {
            after,
            pace: Duration::ZERO,
            handled: Mutex::default(),
            retry_once: Mutex::new(
                retry_once
                    .into_iter()
                    .map(|(account, n)| (account.to_owned(), n))
                    .collect(),
            ),
        }
    }

    /// Each run takes `pace`.
    fn paced(self, pace: Duration) -> Self {
        RetriesOnce { pace, ..self }
    }

    /// The deposits of `account` in the order they were handled, with their attempts.
    fn handled(&self, account: &str) -> Vec<(u64, u32)> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _, _)| a == account)
            .map(|(_, n, attempt)| (*n, *attempt))
            .collect()
    }
}

impl Handler<Deposited, Context> for Arc<RetriesOnce> {
    async fn handle(&self, d: Deposited, ctx: &mut Context) -> HandlerResult {
        if !self.pace.is_zero() {
            tokio::time::sleep(self.pace).await;
        }
        if self
            .retry_once
            .lock()
            .unwrap()
            .remove(&(d.account.clone(), d.n))
        {
            return Ok(Outcome::retry(self.after, "not yet"));
        }
        self.handled
            .lock()
            .unwrap()
            .push((d.account, d.n, ctx.attempt()));
        Ok(Outcome::Done)
    }
}

/// Messages deferred behind an earlier message of their key (more are held than `max_held`)
/// are given back to the broker, but a deferral is not an attempt: with two attempts allowed
/// (one delayed redelivery, which the consumer passes on as the transport's cap), each message
/// may still be retried once, and none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_spend_no_attempt_and_are_never_dead_lettered_for_it() {
    let transport = transport().await;
    let queue = queue();
    let handler = Arc::new(RetriesOnce::new(
        Duration::from_millis(100),
        (0..6).map(|n| ("kim", n)),
    ));
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.record", handler.clone()),
        ConsumerConfig {
            concurrency: 2,
            prefetch: 8,
            max_held: 1,
            retry: quick_retry(0, 1),
            ..config()
        },
    )
    .unwrap();
    let metrics = consumer.metrics();
    let running = start(consumer, &transport).await;
    publish_all(
        &transport,
        &(0..6).map(|n| deposit("kim", n)).collect::<Vec<_>>(),
    )
    .await;
    eventually("every deposit handled", || async {
        handler.handled("kim").len() == 6
    })
    .await;
    running.stop().await;

    let snapshot = metrics.snapshot();
    assert!(snapshot.deferred > 0, "deferrals happened: {snapshot:?}");
    assert_eq!(
        handler.handled("kim"),
        (0..6).map(|n| (n, 2)).collect::<Vec<_>>(),
        "in order, each on its second attempt (its one retry), deferrals not counted"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    assert!(
        transport
            .dead_letter_queue(&queue)
            .unwrap()
            .dead_letters(Page::first(10))
            .await
            .unwrap()
            .is_empty()
    );
    transport.delete_subscription(&queue).await.unwrap();
}

/// A retry waits in the shortest delay queue not shorter than asked for: here 3 s for 200 ms
/// asked. The key must stay held for the time the broker really keeps the message, not the
/// time asked for plus the grace (1.2 s), or later messages of the key overtake it. (The grace
/// is generous: a loaded broker dead-letters an expired message late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_rounded_up_to_a_longer_delay_queue_still_holds_its_key() {
    let transport = AmqpTransport::connect(AmqpConfig {
        exchange: format!("herald-consumer-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_millis(100), Duration::from_millis(3000)],
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(amqp_url())
    })
    .await
    .unwrap();
    let queue = queue();
    let handler = Arc::new(RetriesOnce::new(Duration::from_millis(200), [("lee", 0)]));
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.record", handler.clone()),
        ConsumerConfig {
            redelivery_grace: Duration::from_millis(1000),
            retry: quick_retry(0, 3),
            ..config()
        },
    )
    .unwrap();
    let running = start(consumer, &transport).await;
    publish_all(&transport, &[deposit("lee", 0), deposit("lee", 1)]).await;
    eventually("both deposits handled", || async {
        handler.handled("lee").len() == 2
    })
    .await;
    running.stop().await;
    assert_eq!(
        handler.handled("lee"),
        vec![(0, 2), (1, 1)],
        "the retried deposit first"
    );
    transport.delete_subscription(&queue).await.unwrap();
}

/// A retried message and the deferred ones behind it come back through the delay queues while
/// the consumer queue holds a backlog of other keys' messages. Sent to the tail of that backlog,
/// they would come back long after they are due: the lane would give up on them after the
/// grace, and the key's later messages would go first. They must come back ahead of the
/// backlog instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_and_deferrals_returning_to_a_backlogged_queue_keep_their_keys_order() {
    let transport = transport().await;
    let queue = queue();
    let handler = Arc::new(
        RetriesOnce::new(Duration::from_millis(100), [("amy", 0)]).paced(Duration::from_millis(4)),
    );
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.record", handler.clone()),
        ConsumerConfig {
            concurrency: 1,
            prefetch: 4,
            max_held: 1,
            redelivery_grace: Duration::from_millis(400),
            retry: quick_retry(0, 2),
            ..config()
        },
    )
    .unwrap();
    let metrics = consumer.metrics();
    transport.declare(consumer.subscription()).await.unwrap();
    // The backlog is in the queue before the consumer starts: amy's deposits first, then
    // 500 others (about 2 s of handling, five times the grace).
    let mut batch: Vec<Envelope> = (0..4).map(|n| deposit("amy", n)).collect();
    batch.extend((0..500).map(|i| deposit(&format!("other-{i}"), 0)));
    publish_all(&transport, &batch).await;
    let running = start(consumer, &transport).await;
    eventually("amy's deposits handled", || async {
        handler.handled("amy").len() == 4
    })
    .await;
    let early = handler.handled.lock().unwrap().len();
    running.stop().await;

    assert_eq!(
        handler.handled("amy"),
        vec![(0, 2), (1, 1), (2, 1), (3, 1)],
        "in order: the retried deposit first, then the ones held or deferred behind it"
    );
    assert!(
        metrics.snapshot().deferred > 0,
        "deferrals happened: {:?}",
        metrics.snapshot()
    );
    assert!(
        early < 250,
        "amy's deposits came back ahead of the backlog ({early} of 504 handled by then)"
    );
    transport.delete_subscription(&queue).await.unwrap();
}

/// Records the order in which it handles deposits (once each: in the transaction, the inbox
/// makes every message's run count once), and asks for one delayed retry of deposit 0.
#[derive(Clone)]
struct Ordered {
    handled: Arc<Mutex<Vec<u64>>>,
    retried: Arc<Mutex<bool>>,
}

impl Handler<Deposited, TxContext<herald_postgres::PgOutbox>> for Ordered {
    async fn handle(
        &self,
        d: Deposited,
        ctx: &mut TxContext<herald_postgres::PgOutbox>,
    ) -> HandlerResult {
        if d.n == 0 && !std::mem::replace(&mut *self.retried.lock().unwrap(), true) {
            return Ok(Outcome::retry(Duration::from_secs(2), "not yet"));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (account, balance, deposits) VALUES ($1, $2, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = accounts.balance + EXCLUDED.balance, deposits = accounts.deposits + 1",
            pg_accounts(ctx.outbox())
        )))
        .bind(&d.account)
        .bind(d.cents)
        .execute(ctx.db())
        .await?;
        self.handled.lock().unwrap().push(d.n);
        Ok(Outcome::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_survives_a_consumer_restart_while_a_retry_waits_in_a_delay_queue() {
    let db = pg_store().await;
    // One delay queue, of 2 s.
    let amqp = AmqpConfig {
        exchange: format!("herald-consumer-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_secs(2)],
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(amqp_url())
    };
    let transport = AmqpTransport::connect(amqp).await.unwrap();
    let queue = queue();
    let handler = Ordered {
        handled: Arc::default(),
        retried: Arc::default(),
    };
    let start_consumer = |handler: Ordered| {
        Consumer::new(
            transport.clone(),
            queue.clone(),
            Router::new().transactional(&db, "bank.ordered", handler),
            ConsumerConfig {
                transaction_batch: 1,
                ..config()
            },
        )
        .unwrap()
    };

    // The first consumer sends deposit 0 for a delayed retry, then stops.
    let first = start_consumer(handler.clone());
    let metrics = first.metrics();
    let running = start(first, &transport).await;
    publish_all(&transport, &[deposit("amy", 0)]).await;
    eventually("deposit 0 sent for a delayed retry", || async {
        metrics.snapshot().redeliveries == 1
    })
    .await;
    running.stop().await;

    // Another one takes over while deposit 0 waits in the delay queue; the key's later
    // deposits arrive at once.
    let second = start_consumer(handler.clone());
    let metrics = second.metrics();
    let running = start(second, &transport).await;
    let later: Vec<Envelope> = (1..5).map(|n| deposit("amy", n)).collect();
    publish_all(&transport, &later).await;
    eventually("every deposit handled", || async {
        handler.handled.lock().unwrap().len() == 5
    })
    .await;
    running.stop().await;

    assert_eq!(
        *handler.handled.lock().unwrap(),
        vec![0, 1, 2, 3, 4],
        "deposits of one account are handled in order, across the restart"
    );
    assert!(
        metrics.snapshot().acked >= 5,
        "deposit 0 came back to the second consumer"
    );
    let holds: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.outbox_held_keys",
        db.config().schema.quoted()
    )))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(holds, 0, "deposit 0's hold went with its effects");
    transport.delete_subscription(&queue).await.unwrap();
    pg_drop(&db).await;
}

/// A consumer stops while deposit 0 waits in a delay queue for its retry, deposit 1 is deferred
/// behind it (over `max_held`) and deposit 2 is held: deposit 2 goes back to the head of the
/// queue unsettled. Another consumer takes over after `downtime`: the three are handled in
/// order, whether the away ones are back in the queue by then (they must come back ahead of
/// deposit 2, not only ahead of the backlog) or still away (the inbox must hold the key for
/// the deferred one too, not only for the retry).
async fn restart_while_a_retry_and_a_deferral_are_away(downtime: Duration) {
    let db = pg_store().await;
    let amqp = AmqpConfig {
        exchange: format!("herald-consumer-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_secs(2)],
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(amqp_url())
    };
    let transport = AmqpTransport::connect(amqp).await.unwrap();
    let queue = queue();
    let handler = Ordered {
        handled: Arc::default(),
        retried: Arc::default(),
    };
    let start_consumer = |handler: Ordered| {
        Consumer::new(
            transport.clone(),
            queue.clone(),
            Router::new().transactional(&db, "bank.ordered", handler),
            ConsumerConfig {
                transaction_batch: 1,
                max_held: 1,
                ..config()
            },
        )
        .unwrap()
    };

    let first = start_consumer(handler.clone());
    let metrics = first.metrics();
    let running = start(first, &transport).await;
    publish_all(
        &transport,
        &(0..3).map(|n| deposit("amy", n)).collect::<Vec<_>>(),
    )
    .await;
    eventually("deposit 0 retried and deposit 1 deferred", || async {
        let snapshot = metrics.snapshot();
        snapshot.redeliveries == 1 && snapshot.deferred == 1
    })
    .await;
    running.stop().await;
    assert!(handler.handled.lock().unwrap().is_empty());

    tokio::time::sleep(downtime).await;
    let second = start_consumer(handler.clone());
    let running = start(second, &transport).await;
    eventually("every deposit handled", || async {
        handler.handled.lock().unwrap().len() == 3
    })
    .await;
    running.stop().await;
    assert_eq!(
        *handler.handled.lock().unwrap(),
        vec![0, 1, 2],
        "deposits of one account are handled in order, across the restart"
    );
    let holds: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.outbox_held_keys",
        db.config().schema.quoted()
    )))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(holds, 0, "the holds went with their messages' effects");
    transport.delete_subscription(&queue).await.unwrap();
    pg_drop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_survives_a_restart_after_which_a_retry_and_a_deferral_are_back_in_the_queue()
{
    restart_while_a_retry_and_a_deferral_are_away(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_survives_a_restart_while_a_retry_and_a_deferral_are_still_away() {
    restart_while_a_retry_and_a_deferral_are_away(Duration::ZERO).await;
}
