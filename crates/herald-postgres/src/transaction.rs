//! The write path as a type: [`PgOutboxTx`], a transaction that records events and whose
//! [`commit`](PgOutboxTx::commit) wakes the relays.

use herald_core::{Envelope, Event, Metadata, Result};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::record::Along;

/// An open PostgreSQL transaction that records outbox events, from [`PgOutbox::begin`] or
/// [`PgOutbox::adopt`].
///
/// It dereferences to the connection, so the application's own queries run on it as on a sqlx
/// transaction (`query.execute(&mut *tx)`). Events recorded in it ([`record`](Self::record),
/// [`record_along`](Self::record_along) …) are published if and only if it commits.
/// [`commit`](Self::commit) also wakes the relays; dropping it without committing rolls it
/// back, as sqlx does.
///
/// `'c` is the lifetime of the connection: `'static` for a transaction begun on the pool, that
/// of the borrow for one adopted from `conn.begin()` on a borrowed connection.
#[must_use = "a transaction rolls back unless committed"]
pub struct PgOutboxTx<'c> {
    tx: Transaction<'c, Postgres>,
    outbox: PgOutbox,
}

impl PgOutbox {
    /// Begins a transaction on the pool, to record events in.
    ///
    /// A server that cannot be reached is a transient store error (`begin`).
    pub async fn begin(&self) -> Result<PgOutboxTx<'static>> {
        let tx = self
            .inner
            .pool
            .begin()
            .await
            .store_err("begin", &self.inner.secrets)?;
        Ok(self.adopt(tx))
    }

    /// Records events in a transaction the application already holds (one begun by a web
    /// framework's middleware, say, or on a connection of its own): the returned
    /// [`PgOutboxTx`] owns it from now on, and its [`commit`](PgOutboxTx::commit) wakes the
    /// relays. The transaction must be on this outbox's database.
    pub fn adopt<'c>(&self, tx: Transaction<'c, Postgres>) -> PgOutboxTx<'c> {
        PgOutboxTx {
            tx,
            outbox: self.clone(),
        }
    }
}

impl<'c> PgOutboxTx<'c> {
    /// Records already-encoded `envelopes` with one multi-row INSERT; they get increasing
    /// positions in slice order.
    pub async fn record_all(&mut self, envelopes: &[Envelope]) -> Result<()> {
        let inner = &self.outbox.inner;
        inner
            .sql
            .record
            .insert_all(&mut self.tx, envelopes, &inner.secrets)
            .await
    }

    /// Records `event` in the same statement as `statement`, the caller's own write (an
    /// `INSERT`, `UPDATE`, `DELETE` or `SELECT` built with [`sqlx::query()`] and its binds):
    /// the event's INSERT becomes a data-modifying `WITH` clause of that statement, so the
    /// event costs no round trip of its own. The caller's placeholders (`$1`…) keep their
    /// numbers; the event's values are bound after them. A statement that already begins with
    /// `WITH` (or `WITH RECURSIVE`) gets the event's clause first in its list.
    ///
    /// PostgreSQL runs a data-modifying `WITH` clause exactly once, whether or not the
    /// statement affects a row: check [`Along::rows_affected`] and roll back if the business
    /// write did not happen. If the statement fails, neither is written (and the transaction
    /// is aborted, as with any failed statement).
    ///
    /// Measured by `herald-bench` (B1): one order INSERT + commit, the event recorded by
    /// [`record`](Self::record) costs one more round trip; recorded along, a fraction of that.
    ///
    /// Errors: a statement that begins with a comment is [`herald_core::Error::Config`] (the
    /// clause must go before its first keyword); an argument that cannot be encoded, or any
    /// database error, is a store error, never with the connection's password.
    pub async fn record_along<'q, E: Event>(
        &mut self,
        statement: Query<'q, Postgres, PgArguments>,
        event: &E,
    ) -> Result<Along> {
        self.record_along_with(statement, event, Metadata::default())
            .await
    }

    /// Like [`record_along`](Self::record_along), with correlation, causation, key, trace or
    /// headers.
    pub async fn record_along_with<'q, E: Event>(
        &mut self,
        statement: Query<'q, Postgres, PgArguments>,
        event: &E,
        metadata: Metadata,
    ) -> Result<Along> {
        let envelope = Envelope::from_event(event, metadata)?;
        let inner = &self.outbox.inner;
        inner
            .sql
            .record
            .insert_along(&mut self.tx, statement, &envelope, &inner.secrets)
            .await
    }

    /// Rolls back: nothing written or recorded in the transaction stays.
    pub async fn rollback(self) -> Result<()> {
        self.tx
            .rollback()
            .await
            .store_err("rollback", &self.outbox.inner.secrets)
    }

    /// Commits without waking the relays (nothing was recorded).
    pub(crate) async fn commit_quietly(self) -> Result<()> {
        self.tx
            .commit()
            .await
            .store_err("commit", &self.outbox.inner.secrets)
    }
}

herald_core::outbox_transaction!(PgOutboxTx, PgOutbox, PgConnection);
