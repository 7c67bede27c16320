//! The write side as an abstraction: a database whose transactions can record outbox events.
//!
//! Engines that run code inside the application's transaction (the consumer's transactional
//! inbox, the domain unit of work) are written against [`TransactionalOutbox`] and so never
//! name a backend. The PostgreSQL and SQLite outboxes implement it.

use std::future::Future;
use std::ops::DerefMut;

use crate::{Envelope, Result};

/// A database whose transactions can record outbox events.
pub trait TransactionalOutbox: Clone + Send + Sync + 'static {
    /// The backend's connection (`sqlx::PgConnection`, `sqlx::SqliteConnection`): what the
    /// application's own queries run on.
    type Connection: Send;

    /// An open transaction; dereferences to the connection (the `&mut *tx` idiom).
    type Transaction: DerefMut<Target = Self::Connection> + Send;

    /// Opens a transaction (on SQLite, one that takes the write lock at once).
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction>> + Send;

    /// Commits, then wakes the relays.
    fn commit(&self, tx: Self::Transaction) -> impl Future<Output = Result<()>> + Send;

    /// Rolls back.
    fn rollback(&self, tx: Self::Transaction) -> impl Future<Output = Result<()>> + Send;

    /// Records envelopes in the transaction behind `conn`: one statement, in slice order.
    fn record_envelopes(
        &self,
        conn: &mut Self::Connection,
        envelopes: &[Envelope],
    ) -> impl Future<Output = Result<()>> + Send;
}
