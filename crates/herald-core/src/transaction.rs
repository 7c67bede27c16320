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

/// Writes what every store's outbox transaction type says the same way, word for word, so
/// that the stores cannot drift apart: `record` and `record_with` (over the type's inherent
/// `record_all`), `commit` (over its `commit_quietly` and the outbox's `notify`), `outbox`,
/// the dereference to the connection (the `&mut *tx` idiom), a `Debug` that shows the outbox,
/// and the [`TransactionalOutbox`] and [`OutboxTransaction`] impls over the inherent `begin`,
/// `record_all`, `commit` and `rollback`.
///
/// `outbox_transaction!(PgOutboxTx, PgOutbox, PgConnection)`: the transaction type (with a
/// lifetime `'c` and the fields `tx`, a `sqlx::Transaction<'c, _>`, and `outbox`), the store,
/// and the connection it dereferences to. For store crates; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! outbox_transaction {
    ($tx:ident, $outbox:ty, $conn:ty) => {
        impl<'c> $tx<'c> {
            /// Records `event` in this transaction: one INSERT. Returns the event's id.
            pub async fn record<E: $crate::Event>(
                &mut self,
                event: &E,
            ) -> $crate::Result<$crate::Uuid> {
                self.record_with(event, $crate::Metadata::default()).await
            }

            /// Like [`record`](Self::record), with correlation, causation, key, trace or headers.
            pub async fn record_with<E: $crate::Event>(
                &mut self,
                event: &E,
                metadata: $crate::Metadata,
            ) -> $crate::Result<$crate::Uuid> {
                let envelope = $crate::Envelope::from_event(event, metadata)?;
                self.record_all(::std::slice::from_ref(&envelope)).await?;
                Ok(envelope.id)
            }

            /// Commits, then wakes the relays: this process's at once, other processes' the
            /// way the outbox's `notify` says, after the commit and never inside it.
            pub async fn commit(self) -> $crate::Result<()> {
                let outbox = self.outbox.clone();
                self.commit_quietly().await?;
                outbox.notify();
                Ok(())
            }

            /// The outbox this transaction records into.
            pub fn outbox(&self) -> &$outbox {
                &self.outbox
            }
        }

        impl ::std::ops::Deref for $tx<'_> {
            type Target = $conn;

            fn deref(&self) -> &$conn {
                &self.tx
            }
        }

        impl ::std::ops::DerefMut for $tx<'_> {
            fn deref_mut(&mut self) -> &mut $conn {
                &mut self.tx
            }
        }

        impl ::std::fmt::Debug for $tx<'_> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(::std::stringify!($tx))
                    .field("outbox", &self.outbox)
                    .finish_non_exhaustive()
            }
        }

        impl $crate::TransactionalOutbox for $outbox {
            type Connection = $conn;
            type Transaction = $tx<'static>;

            async fn begin(&self) -> $crate::Result<$tx<'static>> {
                <$outbox>::begin(self).await
            }
        }

        impl $crate::OutboxTransaction for $tx<'_> {
            async fn record_all(&mut self, envelopes: &[$crate::Envelope]) -> $crate::Result<()> {
                $tx::record_all(self, envelopes).await
            }

            async fn commit(self) -> $crate::Result<()> {
                $tx::commit(self).await
            }

            async fn rollback(self) -> $crate::Result<()> {
                $tx::rollback(self).await
            }
        }
    };
}
