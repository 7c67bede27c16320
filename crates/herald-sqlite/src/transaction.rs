//! The write path as a type: [`SqliteOutboxTx`], a transaction that records events and whose
//! [`commit`](SqliteOutboxTx::commit) wakes the relays. Transactions begun by the outbox take
//! the write lock at once (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading a read
//! lock.

use std::fmt;
use std::ops::{Deref, DerefMut};

use herald_core::{Envelope, Event, Metadata, OutboxTransaction, Result, TransactionalOutbox};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use crate::error::ResultExt;
use crate::outbox::SqliteOutbox;

/// An open SQLite transaction that records outbox events, from [`SqliteOutbox::begin`] or
/// [`SqliteOutbox::adopt`].
///
/// It dereferences to the connection, so the application's own queries run on it as on a sqlx
/// transaction (`query.execute(&mut *tx)`). Events recorded in it ([`record`](Self::record) …)
/// are published if and only if it commits. [`commit`](Self::commit) also wakes the relays;
/// dropping it without committing rolls it back, as sqlx does.
///
/// `'c` is the lifetime of the connection: `'static` for a transaction begun on the pool, that
/// of the borrow for one adopted from `conn.begin()` on a borrowed connection.
#[must_use = "a transaction rolls back unless committed"]
pub struct SqliteOutboxTx<'c> {
    tx: Transaction<'c, Sqlite>,
    outbox: SqliteOutbox,
}

impl SqliteOutbox {
    /// Begins a transaction on the pool, to record events in, with `BEGIN IMMEDIATE`: it holds
    /// SQLite's write lock from the start (waiting up to the busy timeout for it), so it never
    /// fails halfway for want of a lock another writer holds.
    pub async fn begin(&self) -> Result<SqliteOutboxTx<'static>> {
        let tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .store_err("begin")?;
        Ok(self.adopt(tx))
    }

    /// Records events in a transaction the application already holds (begin it with
    /// `begin_with("BEGIN IMMEDIATE")`, as [`begin`](Self::begin) does): the returned
    /// [`SqliteOutboxTx`] owns it from now on, and its [`commit`](SqliteOutboxTx::commit) wakes
    /// the relays. The transaction must be on this outbox's database.
    pub fn adopt<'c>(&self, tx: Transaction<'c, Sqlite>) -> SqliteOutboxTx<'c> {
        SqliteOutboxTx {
            tx,
            outbox: self.clone(),
        }
    }
}

impl<'c> SqliteOutboxTx<'c> {
    /// Records `event` in this transaction: one INSERT. Returns the event's id.
    pub async fn record<E: Event>(&mut self, event: &E) -> Result<Uuid> {
        self.record_with(event, Metadata::default()).await
    }

    /// Like [`record`](Self::record), with correlation, causation, key, trace or headers.
    pub async fn record_with<E: Event>(&mut self, event: &E, metadata: Metadata) -> Result<Uuid> {
        let envelope = Envelope::from_event(event, metadata)?;
        self.record_all(std::slice::from_ref(&envelope)).await?;
        Ok(envelope.id)
    }

    /// Records already-encoded `envelopes` with one multi-row INSERT per 500 envelopes; their
    /// `seq`s increase in slice order.
    pub async fn record_all(&mut self, envelopes: &[Envelope]) -> Result<()> {
        self.outbox
            .inner
            .record
            .insert_all(&mut self.tx, envelopes)
            .await
    }

    /// Commits, then wakes the relays ([`SqliteOutbox::notify`]): those built on this outbox's
    /// handle at once, those of other processes at their
    /// [`watch_commits`](SqliteOutbox::watch_commits) or their next poll.
    pub async fn commit(self) -> Result<()> {
        let outbox = self.outbox.clone();
        self.commit_quietly().await?;
        outbox.notify();
        Ok(())
    }

    /// Rolls back: nothing written or recorded in the transaction stays.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.store_err("rollback")
    }

    /// The outbox this transaction records into.
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    /// Commits without waking the relays (nothing was recorded).
    pub(crate) async fn commit_quietly(self) -> Result<()> {
        self.tx.commit().await.store_err("commit")
    }
}

impl Deref for SqliteOutboxTx<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for SqliteOutboxTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl fmt::Debug for SqliteOutboxTx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutboxTx")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl TransactionalOutbox for SqliteOutbox {
    type Connection = SqliteConnection;
    type Transaction = SqliteOutboxTx<'static>;

    async fn begin(&self) -> Result<SqliteOutboxTx<'static>> {
        SqliteOutbox::begin(self).await
    }
}

impl OutboxTransaction for SqliteOutboxTx<'_> {
    async fn record_all(&mut self, envelopes: &[Envelope]) -> Result<()> {
        SqliteOutboxTx::record_all(self, envelopes).await
    }

    async fn commit(self) -> Result<()> {
        SqliteOutboxTx::commit(self).await
    }

    async fn rollback(self) -> Result<()> {
        SqliteOutboxTx::rollback(self).await
    }
}
