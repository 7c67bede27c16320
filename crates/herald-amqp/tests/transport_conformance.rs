//! `AmqpTransport` passes the transport conformance suite against the real RabbitMQ.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use herald_amqp::{AmqpDeadLetterQueue, AmqpTransport};
use herald_testkit::transport::TransportFactory;

struct Rabbit;

impl TransportFactory for Rabbit {
    type Transport = AmqpTransport;

    const MANDATORY: bool = true;

    async fn create(&self) -> AmqpTransport {
        common::transport().await
    }

    type DeadLetters = AmqpDeadLetterQueue;

    fn dead_letter_queue(
        &self,
        transport: &AmqpTransport,
        subscription: &str,
    ) -> AmqpDeadLetterQueue {
        transport.dead_letter_queue(subscription).unwrap()
    }
}

herald_testkit::transport_suite!(Rabbit);
