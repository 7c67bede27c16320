//! The write path as a type: [`SqliteOutboxTx`], a transaction that records events and whose
//! [`commit`](SqliteOutboxTx::commit) wakes the relays. Transactions begun by the outbox take
//! the write lock at once (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading a read
//! lock.

use herald_core::{Envelope, Result};
use sqlx::{Sqlite, SqliteConnection, Transaction};

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
    /// Records already-encoded `envelopes` with one multi-row INSERT per 500 envelopes; their
    /// `seq`s increase in slice order.
    pub async fn record_all(&mut self, envelopes: &[Envelope]) -> Result<()> {
        self.outbox
            .inner
            .sql
            .record
            .insert_all(&mut self.tx, envelopes)
            .await
    }

    /// Rolls back: nothing written or recorded in the transaction stays.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.store_err("rollback")
    }

    /// Commits without waking the relays (nothing was recorded).
    pub(crate) async fn commit_quietly(self) -> Result<()> {
        self.tx.commit().await.store_err("commit")
    }
}

herald_core::outbox_transaction!(SqliteOutboxTx, SqliteOutbox, SqliteConnection);
