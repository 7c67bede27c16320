//! `MemoryTransport` passes the transport conformance suite.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use herald_core::Envelope;
use herald_memory::MemoryTransport;
use herald_testkit::transport::TransportFactory;

struct Memory;

impl TransportFactory for Memory {
    type Transport = MemoryTransport;

    const MANDATORY: bool = true;

    async fn create(&self) -> MemoryTransport {
        MemoryTransport::new()
    }

    async fn dead_letters(
        &self,
        transport: &MemoryTransport,
        subscription: &str,
    ) -> Vec<(Envelope, String)> {
        transport
            .dead_letters(subscription)
            .into_iter()
            .map(|dead| (dead.envelope, dead.reason))
            .collect()
    }
}

herald_testkit::transport_suite!(Memory);
