//! `AmqpTransport` passes the transport conformance suite against the real RabbitMQ.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use herald_amqp::AmqpTransport;
use herald_core::Envelope;
use herald_testkit::transport::TransportFactory;

struct Rabbit;

impl TransportFactory for Rabbit {
    type Transport = AmqpTransport;

    const MANDATORY: bool = true;

    async fn create(&self) -> AmqpTransport {
        common::transport().await
    }

    async fn dead_letters(
        &self,
        transport: &AmqpTransport,
        subscription: &str,
    ) -> Vec<(Envelope, String)> {
        transport
            .dead_letters(subscription, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|dead| (dead.envelope.unwrap(), dead.error))
            .collect()
    }
}

herald_testkit::transport_suite!(Rabbit);
