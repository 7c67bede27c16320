//! `MemoryTransport` passes the transport conformance suite.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use herald_memory::{MemoryDeadLetterQueue, MemoryTransport};
use herald_testkit::transport::TransportFactory;

struct Memory;

impl TransportFactory for Memory {
    type Transport = MemoryTransport;

    const MANDATORY: bool = true;

    async fn create(&self) -> MemoryTransport {
        MemoryTransport::new()
    }

    type DeadLetters = MemoryDeadLetterQueue;

    fn dead_letter_queue(
        &self,
        transport: &MemoryTransport,
        subscription: &str,
    ) -> MemoryDeadLetterQueue {
        transport.dead_letter_queue(subscription)
    }
}

herald_testkit::transport_suite!(Memory);
