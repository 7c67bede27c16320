//! Conformance suites that every Herald store and every transport must pass.
//!
//! A backend's integration tests implement a small factory trait and invoke a macro that
//! expands to one `#[tokio::test]` per behaviour, so each guarantee shows up (and fails) on
//! its own:
//!
//! ```no_run
//! use herald_memory::{MemoryDeadLetterQueue, MemoryTransport};
//! use herald_testkit::transport::TransportFactory;
//!
//! struct Memory;
//!
//! impl TransportFactory for Memory {
//!     type Transport = MemoryTransport;
//!     type DeadLetters = MemoryDeadLetterQueue;
//!     const MANDATORY: bool = true;
//!
//!     async fn create(&self) -> MemoryTransport {
//!         MemoryTransport::new()
//!     }
//!
//!     fn dead_letter_queue(&self, transport: &MemoryTransport, name: &str) -> Self::DeadLetters {
//!         transport.dead_letter_queue(name)
//!     }
//! }
//!
//! herald_testkit::transport_suite!(Memory);
//! # fn main() {}
//! ```
//!
//! A store does the same with [`store::StoreFactory`] and [`store_suite!`].
//! [`inbox`] does the same for an [`Inbox`](herald_core::Inbox) (`inbox_suite!`).
//! [`wrap`] lets a test wrap a store to inject faults into a few of its calls.
//! [`protobuf`] holds Protobuf and JSON events for one outbox, and what a consumer must make
//! of them.
//!
//! [`sim`] holds the deterministic, seeded simulations' models (outbox, broker, queue, inbox)
//! that the relay's and the consumer's `tests/simulation.rs` run the real engines against.

pub mod env;
pub mod inbox;
pub mod protobuf;
pub mod sim;
pub mod store;
pub mod transport;
pub mod wrap;

use herald_core::{Envelope, Event, Metadata};
use serde::{Deserialize, Serialize};

/// The event the suites record and publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestEvent {
    /// The aggregate the event belongs to (its partition key).
    pub key: String,
    /// Position of the event within its key, from 0.
    pub n: u64,
    /// Padding to give the payload a realistic size.
    pub note: String,
}

impl Event for TestEvent {
    const TYPE: &'static str = "testkit.test_event";

    fn partition_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// A business event for the stores' write-path tests: an order placed, keyed by the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order (its partition key is `order-{order_id}`).
    pub order_id: i64,
    /// The order's total.
    pub total_cents: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "ordering.order_placed";

    fn partition_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order_id))
    }
}

/// An envelope holding the `n`-th [`TestEvent`] of `key`.
pub fn envelope(key: &str, n: u64) -> Envelope {
    let event = TestEvent {
        key: key.to_owned(),
        n,
        note: "x".repeat(64),
    };
    match Envelope::from_event(&event, Metadata::default()) {
        Ok(env) => env,
        Err(err) => panic!("test event must encode: {err}"),
    }
}

/// `per_key` envelopes for each of `keys` keys, interleaved the way concurrent writers would
/// record them (key 0 event 0, key 1 event 0, …, key 0 event 1, …).
pub fn interleaved(keys: usize, per_key: u64) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(keys * per_key as usize);
    for n in 0..per_key {
        for k in 0..keys {
            out.push(envelope(&format!("key-{k}"), n));
        }
    }
    out
}
