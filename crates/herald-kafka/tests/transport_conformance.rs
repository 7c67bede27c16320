//! `KafkaTransport` passes the transport conformance suite against a real Kafka broker.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use herald_kafka::{KafkaDeadLetterQueue, KafkaTransport};
use herald_testkit::transport::TransportFactory;

struct Kafka;

impl TransportFactory for Kafka {
    type Transport = KafkaTransport;

    // Kafka keeps a record whether or not a consumer group reads its topic.
    const MANDATORY: bool = false;

    // A topic keeps order per partition, so per partition key.
    const TOTAL_ORDER: bool = false;

    async fn create(&self) -> KafkaTransport {
        common::transport().await
    }

    type DeadLetters = KafkaDeadLetterQueue;

    fn dead_letter_queue(
        &self,
        transport: &KafkaTransport,
        subscription: &str,
    ) -> KafkaDeadLetterQueue {
        transport.dead_letter_queue(subscription).unwrap()
    }
}

herald_testkit::transport_suite!(Kafka);
