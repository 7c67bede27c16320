//! Messages no handler can take — an unknown type, an unknown version, a malformed payload —
//! follow the configured policy: dead-lettered with the reason, or acknowledged and counted.
//! Never a crash, never a silent loss.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use herald_consumer::{ConsumerConfig, Context, HandlerError, Router, UnhandledPolicy};
use herald_core::{Bytes, Envelope, Event, Metadata, SubscriptionSpec};
use herald_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Withdrawn {
    account: String,
}

impl Event for Withdrawn {
    const TYPE: &'static str = "bank.withdrawn";
}

async fn credit(_d: Deposited, _ctx: &mut Context) -> Result<(), HandlerError> {
    Ok(())
}

/// A good message, then one of each kind that no handler can take.
fn misfits() -> (Envelope, Vec<(Envelope, &'static str)>) {
    let good = deposit("gina", 0);
    let unknown_type = Envelope::from_event(
        &Withdrawn {
            account: "gina".into(),
        },
        Metadata::default(),
    )
    .unwrap();
    let mut unknown_version = deposit("gina", 1);
    unknown_version.version = 2;
    let mut malformed = deposit("gina", 2);
    malformed.payload = Bytes::from_static(b"{\"account\": 42");
    let mut protobuf = deposit("gina", 3);
    protobuf.content_type = "application/protobuf".into();
    (
        good,
        vec![
            (unknown_type, "no handler for event type `bank.withdrawn`"),
            (
                unknown_version,
                "no handler for `bank.deposited` v2 (handlers take v1)",
            ),
            (
                malformed,
                "undecodable message: cannot decode payload of `bank.deposited` v1",
            ),
            (
                protobuf,
                "undecodable message: content type `application/protobuf`",
            ),
        ],
    )
}

async fn run_with(
    policy: UnhandledPolicy,
) -> (
    MemoryTransport,
    String,
    herald_consumer::ConsumerSnapshot,
    Vec<(Envelope, &'static str)>,
) {
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        on_unknown_type: policy,
        on_unknown_version: policy,
        on_malformed: policy,
        ..config()
    };
    let consumer = consumer(
        transport.clone(),
        Router::new().handle("bank.credit", credit),
        config,
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    // The queue also receives types this consumer has no handler for (a shared queue, or a
    // producer that is ahead of it).
    transport.declare(&SubscriptionSpec::new(queue.clone(), Vec::<String>::new()));
    let running = Running::start(consumer, &transport);
    let (good, misfits) = misfits();
    let mut batch: Vec<Envelope> = misfits.iter().map(|(e, _)| e.clone()).collect();
    batch.push(good);
    publish(&transport, &batch).await;
    eventually("every message settled", || async {
        metrics.snapshot().finished() == 5
    })
    .await;
    running.stop().await;
    (transport, queue, metrics.snapshot(), misfits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_unknown_and_undecodable_messages_are_dead_lettered_with_the_reason() {
    let (transport, queue, snapshot, misfits) = run_with(UnhandledPolicy::default()).await;
    assert_eq!(snapshot.acked, 1, "the good message is handled");
    assert_eq!(snapshot.dead_lettered, 4);
    let dead = dead_letters(&transport, &queue).await;
    assert_eq!(dead.len(), 4);
    for (envelope, reason) in misfits {
        let letter = dead
            .iter()
            .find(|d| d.envelope.as_ref().map(|e| e.id) == Some(envelope.id))
            .unwrap();
        assert!(
            letter.reason.starts_with(reason),
            "{} vs {reason}",
            letter.reason
        );
        assert_eq!(letter.attempts, 1, "no retries for what cannot be handled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acknowledge_policy_acknowledges_and_counts_them() {
    let (transport, queue, snapshot, _) = run_with(UnhandledPolicy::Acknowledge).await;
    assert_eq!(snapshot.acked, 1);
    assert_eq!(snapshot.unhandled, 4);
    assert_eq!(snapshot.dead_lettered, 0);
    assert!(dead_letters(&transport, &queue).await.is_empty());
    assert_eq!(transport.depth(&queue), 0);
}

#[tokio::test]
async fn a_router_with_two_handlers_of_one_name_is_refused() {
    let router = Router::new()
        .handle("bank.credit", credit)
        .handle("bank.credit", credit);
    let error =
        herald_consumer::Consumer::new(MemoryTransport::new(), "q", router, config()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("two handlers are named `bank.credit`"),
        "{error}"
    );
    let empty =
        herald_consumer::Consumer::new(MemoryTransport::new(), "q", Router::new(), config());
    assert!(empty.is_err(), "a router without handlers is refused");
}
