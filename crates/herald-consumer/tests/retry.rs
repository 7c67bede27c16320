//! Retries through the in-memory transport: transient failures succeed later, a message that
//! always fails is dead-lettered after exactly the configured attempts, a permanent error
//! skips the retries, a panic is an error like any other, and other messages keep flowing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_consumer::{
    Classifier, ConsumerConfig, Context, ErrorClass, Handler, HandlerError, HandlerResult, Outcome,
    RetryPolicy, Router,
};
use herald_core::Backoff;
use herald_memory::MemoryTransport;

/// What a handler does with the deposits of one account.
#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    /// Fails transiently on its first `n` runs.
    FailFirst(u32),
    AlwaysFail,
    Permanent,
    Panic,
    /// Asks for a redelivery on every run.
    AskRetry,
}

/// Runs per account, in order of occurrence (account, attempt, immediate retry).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, u32, u32)>>>);

impl Log {
    fn runs(&self, account: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, ..)| a == account)
            .count()
    }

    fn position_of_last(&self, account: &str) -> Option<usize> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rposition(|(a, ..)| a == account)
    }

    fn positions(&self, account_prefix: &str) -> Vec<usize> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, (a, ..))| a.starts_with(account_prefix))
            .map(|(i, _)| i)
            .collect()
    }
}

struct Scripted {
    behaviour: HashMap<String, Behaviour>,
    log: Log,
    runs: Mutex<HashMap<String, u32>>,
}

impl Handler<Deposited, Context> for Scripted {
    async fn handle(&self, d: Deposited, ctx: &mut Context) -> HandlerResult {
        self.log
            .0
            .lock()
            .unwrap()
            .push((d.account.clone(), ctx.attempt(), ctx.immediate_retry()));
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let run = runs.entry(d.account.clone()).or_default();
            *run += 1;
            *run
        };
        match self
            .behaviour
            .get(&d.account)
            .copied()
            .unwrap_or(Behaviour::Succeed)
        {
            Behaviour::Succeed => Ok(Outcome::Done),
            Behaviour::FailFirst(n) if run <= n => {
                Err(HandlerError::new(format!("flaky dependency (run {run})")))
            }
            Behaviour::FailFirst(_) => Ok(Outcome::Done),
            Behaviour::AlwaysFail => Err(HandlerError::new("dependency is down")),
            Behaviour::Permanent => Err(HandlerError::permanent("account is closed")),
            Behaviour::Panic => panic!("bug in the handler"),
            Behaviour::AskRetry => Ok(Outcome::retry(Duration::from_millis(5), "not yet")),
        }
    }
}

fn scripted(behaviour: &[(&str, Behaviour)], log: &Log) -> Router {
    Router::new().handle(
        "bank.scripted",
        Scripted {
            behaviour: behaviour
                .iter()
                .map(|(a, b)| ((*a).to_owned(), *b))
                .collect(),
            log: log.clone(),
            runs: Mutex::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_succeeds_on_a_later_attempt() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    // 2 immediate retries: runs 1–3 fail in the first delivery, run 4 (redelivery) succeeds.
    let router = scripted(&[("ann", Behaviour::FailFirst(3))], &log);
    let consumer = consumer(transport.clone(), router, config());
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("ann", 0)]).await;
    eventually("acknowledged", || async { metrics.snapshot().acked == 1 }).await;
    running.stop().await;

    let runs = log.0.lock().unwrap().clone();
    let runs: Vec<(u32, u32)> = runs.into_iter().map(|(_, a, r)| (a, r)).collect();
    assert_eq!(
        runs,
        vec![(1, 0), (1, 1), (1, 2), (2, 0)],
        "(delivery, immediate retry)"
    );
    let snapshot = metrics.snapshot();
    assert_eq!((snapshot.immediate_retries, snapshot.redeliveries), (2, 1));
    assert!(dead_letters(&transport, &queue).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_dead_lettered_after_exactly_the_configured_attempts() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        retry: quick_retry(2, 3),
        ..config()
    };
    let expected_runs = config.retry.max_runs() as usize;
    assert_eq!(expected_runs, 12);
    let consumer = consumer(
        transport.clone(),
        scripted(&[("bad", Behaviour::AlwaysFail)], &log),
        config,
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    let poison = deposit("bad", 0);
    publish(&transport, std::slice::from_ref(&poison)).await;
    eventually("dead-lettered", || async {
        metrics.snapshot().dead_lettered == 1
    })
    .await;
    running.stop().await;

    assert_eq!(log.runs("bad"), expected_runs);
    let dead = dead_letters(&transport, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.as_ref().unwrap().id, poison.id);
    assert_eq!(
        dead[0].attempts, 4,
        "the first delivery and three redeliveries"
    );
    let reason = &dead[0].reason;
    assert!(
        reason.starts_with("bank.scripted: gave up after 4 deliveries"),
        "{reason}"
    );
    assert!(reason.contains("12 attempts"), "{reason}");
    assert!(
        reason.contains("dependency is down"),
        "the last error: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_skips_the_retries() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        scripted(&[("closed", Behaviour::Permanent)], &log),
        config(),
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("closed", 0)]).await;
    eventually("dead-lettered", || async {
        metrics.snapshot().dead_lettered == 1
    })
    .await;
    running.stop().await;

    assert_eq!(log.runs("closed"), 1);
    let dead = dead_letters(&transport, &queue).await;
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0]
            .reason
            .contains("permanent error: account is closed"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_classifier_decides_which_errors_are_permanent() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        retry: RetryPolicy {
            classifier: Classifier::new(|error| {
                if error.to_string().contains("is down") {
                    ErrorClass::Permanent
                } else {
                    ErrorClass::Transient
                }
            }),
            ..quick_retry(2, 2)
        },
        ..config()
    };
    let consumer = consumer(
        transport.clone(),
        scripted(&[("bad", Behaviour::AlwaysFail)], &log),
        config,
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("bad", 0)]).await;
    eventually("dead-lettered", || async {
        metrics.snapshot().dead_lettered == 1
    })
    .await;
    running.stop().await;
    assert_eq!(log.runs("bad"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_consumer_lives_on() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        scripted(&[("boom", Behaviour::Panic)], &log),
        config(),
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("boom", 0), deposit("fine", 0)]).await;
    eventually("both settled", || async {
        metrics.snapshot().finished() == 2
    })
    .await;
    running.stop().await;

    assert_eq!(log.runs("boom"), 9, "(1 + 2 immediate) × (1 + 2 delayed)");
    let dead = dead_letters(&transport, &queue).await;
    assert!(
        dead[0]
            .reason
            .contains("handler panicked: bug in the handler"),
        "{}",
        dead[0].reason
    );
    assert_eq!(metrics.snapshot().acked, 1, "the other message was handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_asked_for_by_the_handler_are_bounded_too() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        scripted(&[("later", Behaviour::AskRetry)], &log),
        config(),
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("later", 0)]).await;
    eventually("dead-lettered", || async {
        metrics.snapshot().dead_lettered == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        log.runs("later"),
        3,
        "one run per delivery: no immediate retries for a request"
    );
    let reason = &dead_letters(&transport, &queue).await[0].reason;
    assert!(
        reason.contains("gave up after 3 deliveries") && reason.contains("not yet"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_messages_keep_flowing_while_one_is_retried() {
    let log = Log::default();
    let transport = MemoryTransport::new();
    // Redeliveries 300 ms apart: the poison message is being retried for more than half a
    // second, while fifty other messages (other keys) go through.
    let config = ConsumerConfig {
        retry: RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(300),
                max: Duration::from_millis(300),
                multiplier: 1.0,
                jitter: 0.0,
            },
            ..quick_retry(1, 2)
        },
        ..config()
    };
    let consumer = consumer(
        transport.clone(),
        scripted(&[("poison", Behaviour::AlwaysFail)], &log),
        config,
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    let mut batch = vec![deposit("poison", 0)];
    batch.extend((0..50).map(|i| deposit(&format!("good-{i}"), 0)));
    publish(&transport, &batch).await;
    eventually("all settled", || async {
        metrics.snapshot().finished() == 51
    })
    .await;
    running.stop().await;

    let good = log.positions("good-");
    assert_eq!(good.len(), 50);
    let poison_done = log.position_of_last("poison").unwrap();
    assert!(
        good.iter().all(|&p| p < poison_done),
        "every other message was handled before the poison message's last attempt"
    );
    assert_eq!(dead_letters(&transport, &queue).await.len(), 1);
    assert_eq!(metrics.snapshot().acked, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_over_its_deadline_is_stopped_and_retried() {
    let runs = Arc::new(AtomicU32::new(0));
    struct Slow(Arc<AtomicU32>);
    impl Handler<Deposited, Context> for Slow {
        async fn handle(&self, _d: Deposited, _ctx: &mut Context) -> HandlerResult {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(Outcome::Done)
        }
    }
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        handler_timeout: Some(Duration::from_millis(100)),
        ..config()
    };
    let consumer = consumer(
        transport.clone(),
        Router::new().handle("bank.slow", Slow(runs.clone())),
        config,
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[deposit("slow", 0)]).await;
    eventually("acknowledged", || async { metrics.snapshot().acked == 1 }).await;
    running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(metrics.snapshot().immediate_retries, 1);
}

/// Asks for a redelivery after `after` on its first run of `held-0`, handles everything else.
struct AbsurdDelay {
    after: Duration,
    handled: Mutex<Vec<String>>,
    asked: AtomicU32,
}

impl Handler<Deposited, Context> for Arc<AbsurdDelay> {
    async fn handle(&self, d: Deposited, _ctx: &mut Context) -> HandlerResult {
        if d.account == "held" && self.asked.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(Outcome::retry(self.after, "come back much later"));
        }
        self.handled.lock().unwrap().push(d.account);
        Ok(Outcome::Done)
    }
}

/// A handler may ask for any delay: one too long for the clock neither crashes the consumer
/// (an `Instant` overflow) nor holds up other keys; its key waits, and shutdown is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurdly_long_retry_delay_neither_crashes_the_consumer_nor_blocks_other_keys() {
    for after in [Duration::from_secs(u64::MAX / 2), Duration::MAX] {
        let transport = MemoryTransport::new();
        let handler = Arc::new(AbsurdDelay {
            after,
            handled: Mutex::default(),
            asked: AtomicU32::new(0),
        });
        let router = Router::new().handle("bank.absurd", handler.clone());
        let config = ConsumerConfig {
            retry: quick_retry(0, 3),
            ..config()
        };
        let consumer = consumer(transport.clone(), router, config);
        let metrics = consumer.metrics();
        let running = Running::start(consumer, &transport);
        publish(&transport, &[deposit("held", 0), deposit("held", 1)]).await;
        eventually("the retry was asked for", || async {
            metrics.snapshot().redeliveries == 1
        })
        .await;
        publish(&transport, &[deposit("other", 0), deposit("other", 1)]).await;
        eventually("other keys flow", || async {
            handler.handled.lock().unwrap().len() == 2
        })
        .await;
        assert_eq!(
            *handler.handled.lock().unwrap(),
            ["other", "other"],
            "{after:?}: the held key waits for its away message"
        );
        running.stop().await;
    }
}
