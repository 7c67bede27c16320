//! The vocabulary of Herald: typed [`Event`]s, the [`Envelope`] that carries them, the
//! [`Codec`]s that encode them, the traits that stores ([`OutboxStore`]) and transports
//! ([`Publisher`], [`Subscriber`]) implement, and the [`Error`] they all report.
//!
//! This crate does no I/O; the backends (`herald-postgres`, `herald-sqlite`, `herald-memory`,
//! …) and the engines (`herald-relay`, …) build on it.

pub mod backoff;
pub mod codec;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod event;
pub mod ident;
pub mod inbox;
pub mod redact;
pub mod retention;
pub mod signal;
pub mod store;
pub mod trace;
pub mod transaction;
pub mod transport;

pub use backoff::{Backoff, InvalidBackoff};
#[cfg(feature = "protobuf")]
pub use codec::Protobuf;
pub use codec::{Codec, Json};
pub use dead_letter::{DeadLetter, DeadLetterOrigin, DeadLetters, Page, RawMessage, Selection};
pub use envelope::{Envelope, Headers, Metadata, TraceContext};
pub use error::{BoxError, Error, Result};
pub use event::{Event, Payload};
pub use ident::Identifier;
pub use inbox::{Claim, Claimed, Inbox};
pub use retention::{InvalidRetention, Retention};
pub use signal::{Signal, Wakeups};
pub use store::{
    ClaimRequest, ClaimedEvent, Completion, Disposition, Failure, OutboxAdmin, OutboxStats,
    OutboxStore, Seq,
};
pub use transaction::{OutboxTransaction, TransactionalOutbox};
pub use transport::{
    Acknowledger, BoxFuture, Delivery, DeliveryStream, Publisher, Settlement, Subscriber,
    SubscriptionSpec,
};

pub use bytes::Bytes;
pub use time::OffsetDateTime;
pub use uuid::Uuid;
