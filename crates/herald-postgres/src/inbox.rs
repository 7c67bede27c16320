//! [`Inbox`] for PostgreSQL: `(message id, handler)` records in `"{schema}"."{table}_inbox"`,
//! written in the handler's transaction.
//!
//! A duplicate is detected by the primary key: `INSERT … ON CONFLICT DO NOTHING` inserts
//! nothing when the pair is already there, and while another open transaction holds the same
//! pair it waits for that transaction to end, so two deliveries of one message racing each other
//! cannot both see "new".

use std::collections::HashSet;
use std::time::Duration;

use herald_core::{Inbox, Result};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::transaction::PgOutboxTx;

/// Longest retention accepted (longer ones are capped): keeps the interval arithmetic in range.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The savepoint of one handler run in a shared transaction, and what is done with it.
const SAVEPOINT: &str = "SAVEPOINT herald_run";
const RELEASE: &str = "RELEASE SAVEPOINT herald_run";
const RELEASE_AND_REOPEN: &str = "RELEASE SAVEPOINT herald_run; SAVEPOINT herald_run";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT herald_run";

impl Inbox for PgOutbox {
    async fn mark_handled(
        &self,
        conn: &mut PgConnection,
        message_id: Uuid,
        handler: &str,
    ) -> Result<bool> {
        let sql = format!(
            "INSERT INTO {} (message_id, handler) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.config().qualified("_inbox")
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(message_id)
            .bind(handler)
            .execute(conn)
            .await
            .store_err("mark inbox", &self.inner.secrets)?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_all_handled(
        &self,
        conn: &mut PgConnection,
        records: &[(Uuid, &str)],
    ) -> Result<Vec<bool>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "INSERT INTO {} (message_id, handler) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[]) \
             ON CONFLICT DO NOTHING \
             RETURNING message_id, handler",
            self.config().qualified("_inbox")
        );
        let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
        let handlers: Vec<&str> = records.iter().map(|(_, h)| *h).collect();
        let inserted: Vec<(Uuid, String)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(ids)
            .bind(handlers)
            .fetch_all(conn)
            .await
            .store_err("mark inbox", &self.inner.secrets)?;
        let mut new: HashSet<(Uuid, String)> = inserted.into_iter().collect();
        // A pair listed twice was inserted once: only its first occurrence is new.
        Ok(records
            .iter()
            .map(|(id, handler)| new.remove(&(*id, (*handler).to_owned())))
            .collect())
    }

    async fn unmark_handled(
        &self,
        conn: &mut PgConnection,
        records: &[(Uuid, &str)],
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM {} WHERE (message_id, handler) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
            self.config().qualified("_inbox")
        );
        let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
        let handlers: Vec<&str> = records.iter().map(|(_, h)| *h).collect();
        sqlx::query(AssertSqlSafe(sql))
            .bind(ids)
            .bind(handlers)
            .execute(conn)
            .await
            .store_err("unmark inbox", &self.inner.secrets)?;
        Ok(())
    }

    async fn savepoint(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::raw_sql(SAVEPOINT)
            .execute(conn)
            .await
            .store_err("savepoint", &self.inner.secrets)?;
        Ok(())
    }

    async fn release_savepoint(&self, conn: &mut PgConnection, reopen: bool) -> Result<()> {
        // One simple query: in an aborted transaction `RELEASE` fails (SQLSTATE 25P02) and the
        // `SAVEPOINT` after it is not run.
        let sql = if reopen { RELEASE_AND_REOPEN } else { RELEASE };
        sqlx::raw_sql(sql)
            .execute(conn)
            .await
            .store_err("release savepoint", &self.inner.secrets)?;
        Ok(())
    }

    async fn rollback_to_savepoint(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::raw_sql(ROLLBACK_TO)
            .execute(conn)
            .await
            .store_err("roll back to savepoint", &self.inner.secrets)?;
        Ok(())
    }

    async fn ensure_committable(&self, conn: &mut PgConnection) -> Result<()> {
        // Any statement fails in an aborted transaction (SQLSTATE 25P02), this cheapest one too.
        sqlx::raw_sql("SELECT 1")
            .execute(conn)
            .await
            .store_err("check transaction", &self.inner.secrets)?;
        Ok(())
    }

    async fn commit_quietly(&self, tx: PgOutboxTx<'static>) -> Result<()> {
        tx.commit_quietly().await
    }

    async fn is_handled(&self, message_id: Uuid, handler: &str) -> Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE message_id = $1 AND handler = $2)",
            self.config().qualified("_inbox")
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(message_id)
            .bind(handler)
            .fetch_one(self.pool())
            .await
            .store_err("read inbox", &self.inner.secrets)
    }

    async fn prune_inbox(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let inbox = self.config().qualified("_inbox");
        // The inner SELECT walks the `handled_at` index from the oldest row and stops after
        // `limit`: one bounded statement, however large the table.
        let sql = format!(
            "DELETE FROM {inbox} WHERE (message_id, handler) IN ( \
                 SELECT message_id, handler FROM {inbox} \
                 WHERE handled_at < now() - $1::float8 * interval '1 microsecond' \
                 ORDER BY handled_at \
                 LIMIT $2 \
             )"
        );
        let micros = i64::try_from(older_than.min(MAX_RETENTION).as_micros()).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(micros)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(self.pool())
            .await
            .store_err("prune inbox", &self.inner.secrets)?;
        Ok(done.rows_affected())
    }
}
