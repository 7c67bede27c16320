//! The write side as an abstraction: a database whose transactions can record outbox events.
//!
//! Engines that run code inside the application's transaction (the consumer's transactional
//! inbox, the domain unit of work) are written against [`TransactionalOutbox`] and
//! [`OutboxTransaction`] and so never name a backend. The PostgreSQL and SQLite outboxes
//! implement them with their own transaction types (`PgOutboxTx`, `SqliteOutboxTx`), which
//! offer the same verbs as inherent methods, so that an application needs no trait in scope.

use std::future::Future;
use std::ops::DerefMut;

use crate::{Envelope, Result};

/// A database whose transactions can record outbox events.
pub trait TransactionalOutbox: Clone + Send + Sync + 'static {
    /// The backend's connection (`sqlx::PgConnection`, `sqlx::SqliteConnection`): what the
    /// application's own queries run on.
    type Connection: Send;

    /// An open transaction that records events; dereferences to the connection (the
    /// `&mut *tx` idiom).
    type Transaction: OutboxTransaction + DerefMut<Target = Self::Connection>;

    /// Opens a transaction (on SQLite, one that takes the write lock at once).
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction>> + Send;
}

/// An open transaction of a [`TransactionalOutbox`]: the application's writes and the events it
/// records commit together, or not at all. Dropping it without committing rolls it back.
pub trait OutboxTransaction: DerefMut + Send + Sized {
    /// Records envelopes in this transaction: one statement (per few hundred envelopes), in
    /// slice order.
    fn record_all(&mut self, envelopes: &[Envelope]) -> impl Future<Output = Result<()>> + Send;

    /// Commits, then wakes the relays.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;

    /// Rolls back.
    fn rollback(self) -> impl Future<Output = Result<()>> + Send;
}
