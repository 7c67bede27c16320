//! A stream pauses its partitions while it holds many records nobody took yet. librdkafka
//! keeps that pause across a rebalance: a partition paused before a rebalance and assigned to
//! the same member again must still be read (found by `herald-chaos`'s
//! `kafka-broker-restart`: after the consumers' sessions timed out with their partitions
//! paused, they rejoined, got the same partitions back, and read nothing more).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_core::{DeliveryStream, Envelope, Publisher, Subscriber, SubscriptionSpec};
use herald_testkit::envelope;

/// More than the stream reads ahead (1 000 records) before it pauses.
const EVENTS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_before_a_rebalance_are_read_again_when_assigned_again() {
    let transport = common::transport().await;
    let name = common::unique("pause");
    transport.declare_subscription(&name).await.unwrap();
    let events: Vec<Envelope> = (0..EVENTS)
        .map(|i| envelope(&format!("k{}", i % 40), (i / 40) as u64))
        .collect();
    for chunk in events.chunks(500) {
        for result in transport.publish(chunk).await {
            result.unwrap();
        }
    }
    let spec = SubscriptionSpec {
        prefetch: 10,
        ..SubscriptionSpec::new(&name, Vec::<String>::new())
    };
    // The first member reads ahead until it pauses its partitions; nobody takes anything.
    let mut first = transport.subscribe(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A second member joins (every partition is revoked and assigned again) and leaves (the
    // first gets all of them back).
    let second = transport.subscribe(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(second);

    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < EVENTS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, first.next()).await else {
            panic!(
                "{} of {EVENTS} events delivered: the stream stopped reading",
                seen.len()
            );
        };
        let delivery = next.expect("open").expect("a delivery");
        seen.insert(delivery.envelope.id);
        delivery.ack().await.unwrap();
    }
    let expected: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(seen, expected);
}
