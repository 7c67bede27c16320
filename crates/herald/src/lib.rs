#![doc = include_str!("../README.md")]

pub use herald_core::*;

/// Stops a relay or a consumer gracefully (their `run` takes one).
pub use tokio_util::sync::CancellationToken;

/// The outbox relay: claims committed events and publishes them, in order per key.
#[cfg(feature = "relay")]
pub use herald_relay::{self as relay, Relay, RelayConfig, RelayMetrics};

/// The PostgreSQL outbox store (and inbox).
#[cfg(feature = "postgres")]
pub use herald_postgres::{self as postgres, PgOutbox, PgOutboxConfig, PgOutboxTx};

/// The SQLite outbox store (and inbox), the embedded default.
#[cfg(feature = "sqlite")]
pub use herald_sqlite::{self as sqlite, SqliteOutbox, SqliteOutboxConfig, SqliteOutboxTx};

/// The sqlx the stores are built on, for the application's own queries.
#[cfg(feature = "postgres")]
pub use herald_postgres::sqlx;
/// The sqlx the stores are built on, for the application's own queries.
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
pub use herald_sqlite::sqlx;

/// The in-memory transport (tests, demos).
#[cfg(feature = "memory")]
pub use herald_memory::{self as memory, MemoryTransport};

/// The RabbitMQ transport.
#[cfg(feature = "amqp")]
pub use herald_amqp::{self as amqp, AmqpConfig, AmqpTransport};

/// The Apache Kafka transport.
#[cfg(feature = "kafka")]
pub use herald_kafka::{self as kafka, KafkaConfig, KafkaTransport};

/// The consumer: typed handlers, the transactional inbox, retries and dead letters, per-key
/// order.
#[cfg(feature = "consumer")]
pub use herald_consumer::{
    self as consumer, Consumer, ConsumerConfig, Context, Handler, HandlerError, HandlerResult,
    Outcome, RetryPolicy, Router, TxContext,
};

/// The schema catalog: each event's JSON Schema or Protobuf message per (type, version), the
/// compatibility check an application's tests run on its snapshots, and the AsyncAPI document.
#[cfg(feature = "schema")]
pub use herald_schema::{self as schema, Catalog};

/// Domain events, their conversion into integration events, and the unit of work.
#[cfg(feature = "domain")]
pub use herald_domain::{self as domain, Aggregate, DomainEvent, DomainEvents, UnitOfWork};

/// The types most programs name, by feature: `use herald::prelude::*;`.
pub mod prelude {
    pub use herald_core::{
        DeadLetters, Envelope, Event, Metadata, OutboxTransaction, TransactionalOutbox,
    };

    #[cfg(feature = "amqp")]
    pub use herald_amqp::{AmqpConfig, AmqpTransport};
    #[cfg(feature = "consumer")]
    pub use herald_consumer::{
        Consumer, ConsumerConfig, Context, HandlerError, HandlerResult, Outcome, Router, TxContext,
    };
    #[cfg(feature = "domain")]
    pub use herald_domain::{Aggregate, DomainEvent, DomainEvents, UnitOfWork};
    #[cfg(feature = "kafka")]
    pub use herald_kafka::{KafkaConfig, KafkaTransport};
    #[cfg(feature = "memory")]
    pub use herald_memory::MemoryTransport;
    #[cfg(feature = "postgres")]
    pub use herald_postgres::{PgOutbox, PgOutboxConfig, PgOutboxTx};
    #[cfg(feature = "relay")]
    pub use herald_relay::{Relay, RelayConfig};
    #[cfg(feature = "sqlite")]
    pub use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig, SqliteOutboxTx};
}

/// The repository's README, compiled as doctests (`cargo test --doc -p herald`), so that the
/// code a newcomer reads first is code that builds.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct RootReadme;
