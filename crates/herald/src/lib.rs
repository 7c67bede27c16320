#![doc = include_str!("../README.md")]

pub use herald_core::*;

/// The outbox relay.
#[cfg(feature = "relay")]
pub mod relay {
    pub use herald_relay::*;
}

/// The PostgreSQL outbox store.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use herald_postgres::*;
}

/// The SQLite outbox store.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use herald_sqlite::*;
}

/// The consumer: typed handlers, the inbox, retries and dead letters, per-key order.
#[cfg(feature = "consumer")]
pub mod consumer {
    pub use herald_consumer::*;
}

/// The in-memory transport.
#[cfg(feature = "memory")]
pub mod memory {
    pub use herald_memory::*;
}

/// The RabbitMQ transport.
#[cfg(feature = "amqp")]
pub mod amqp {
    pub use herald_amqp::*;
}

/// Domain events, their conversion into integration events, and the unit of work.
#[cfg(feature = "domain")]
pub mod domain {
    pub use herald_domain::*;
}
