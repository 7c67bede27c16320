//! [`TransactionalOutbox`] for SQLite: what the consumer's inbox and the domain unit of work run
//! on. Transactions take the write lock at once (`BEGIN IMMEDIATE`), so two writers never
//! deadlock upgrading a read lock.

use herald_core::{Envelope, Result, TransactionalOutbox};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::error::ResultExt;
use crate::outbox::SqliteOutbox;

impl TransactionalOutbox for SqliteOutbox {
    type Connection = SqliteConnection;
    type Transaction = Transaction<'static, Sqlite>;

    async fn begin(&self) -> Result<Self::Transaction> {
        self.pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .store_err("begin")
    }

    async fn commit(&self, tx: Self::Transaction) -> Result<()> {
        SqliteOutbox::commit(self, tx).await
    }

    async fn rollback(&self, tx: Self::Transaction) -> Result<()> {
        tx.rollback().await.store_err("rollback")
    }

    async fn record_envelopes(
        &self,
        conn: &mut SqliteConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        self.record_all(conn, envelopes).await
    }
}
