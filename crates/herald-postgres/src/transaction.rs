//! [`TransactionalOutbox`] for PostgreSQL: what the consumer's inbox and the domain unit of work
//! run on.

use herald_core::{Envelope, Result, TransactionalOutbox};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::ResultExt;
use crate::outbox::PgOutbox;

impl TransactionalOutbox for PgOutbox {
    type Connection = PgConnection;
    type Transaction = Transaction<'static, Postgres>;

    async fn begin(&self) -> Result<Self::Transaction> {
        self.pool()
            .begin()
            .await
            .store_err("begin", &self.inner.secrets)
    }

    async fn commit(&self, tx: Self::Transaction) -> Result<()> {
        PgOutbox::commit(self, tx).await
    }

    async fn rollback(&self, tx: Self::Transaction) -> Result<()> {
        tx.rollback()
            .await
            .store_err("rollback", &self.inner.secrets)
    }

    async fn record_envelopes(
        &self,
        conn: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        self.record_all(conn, envelopes).await
    }
}
