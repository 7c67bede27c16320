//! [`Inbox`] for SQLite: `(message id, handler)` records in `"{table}_inbox"`, written in the
//! handler's transaction.
//!
//! A duplicate is detected by the primary key: `INSERT … ON CONFLICT DO NOTHING` inserts
//! nothing when the pair is already there. SQLite admits one writer at a time and the
//! handler's transaction holds the write lock from its start (`BEGIN IMMEDIATE`), so two
//! deliveries of one message cannot both see "new".

use std::time::Duration;

use herald_core::{Inbox, Result};
use sqlx::{AssertSqlSafe, SqliteConnection};
use uuid::Uuid;

use crate::error::{ResultExt, retry_busy};
use crate::outbox::SqliteOutbox;
use crate::row::{duration_micros, now_micros};
use crate::transaction::SqliteOutboxTx;

/// The savepoint of one handler run in a shared transaction, and what is done with it.
const SAVEPOINT: &str = "SAVEPOINT herald_run";
const RELEASE: &str = "RELEASE SAVEPOINT herald_run";
const RELEASE_AND_REOPEN: &str = "RELEASE SAVEPOINT herald_run; SAVEPOINT herald_run";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT herald_run";

impl Inbox for SqliteOutbox {
    async fn mark_handled(
        &self,
        conn: &mut SqliteConnection,
        message_id: Uuid,
        handler: &str,
    ) -> Result<bool> {
        let sql = format!(
            "INSERT INTO {} (message_id, handler, handled_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
            self.config().quoted("_inbox")
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(message_id.hyphenated().to_string())
            .bind(handler)
            .bind(now_micros())
            .execute(conn)
            .await
            .store_err("mark inbox")?;
        Ok(done.rows_affected() == 1)
    }

    async fn unmark_handled(
        &self,
        conn: &mut SqliteConnection,
        records: &[(Uuid, &str)],
    ) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE message_id = ? AND handler = ?",
            self.config().quoted("_inbox")
        );
        for (message_id, handler) in records {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(message_id.hyphenated().to_string())
                .bind(*handler)
                .execute(&mut *conn)
                .await
                .store_err("unmark inbox")?;
        }
        Ok(())
    }

    async fn savepoint(&self, conn: &mut SqliteConnection) -> Result<()> {
        sqlx::raw_sql(SAVEPOINT)
            .execute(conn)
            .await
            .store_err("savepoint")?;
        Ok(())
    }

    async fn release_savepoint(&self, conn: &mut SqliteConnection, reopen: bool) -> Result<()> {
        let sql = if reopen { RELEASE_AND_REOPEN } else { RELEASE };
        sqlx::raw_sql(sql)
            .execute(conn)
            .await
            .store_err("release savepoint")?;
        Ok(())
    }

    async fn rollback_to_savepoint(&self, conn: &mut SqliteConnection) -> Result<()> {
        sqlx::raw_sql(ROLLBACK_TO)
            .execute(conn)
            .await
            .store_err("roll back to savepoint")?;
        Ok(())
    }

    async fn ensure_committable(&self, _conn: &mut SqliteConnection) -> Result<()> {
        // A failed statement undoes only itself in SQLite; the errors that end the whole
        // transaction (disk full, I/O) make the COMMIT fail loudly ("no transaction is active").
        Ok(())
    }

    async fn commit_quietly(&self, tx: SqliteOutboxTx<'static>) -> Result<()> {
        tx.commit_quietly().await
    }

    async fn is_handled(&self, message_id: Uuid, handler: &str) -> Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE message_id = ? AND handler = ?)",
            self.config().quoted("_inbox")
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(message_id.hyphenated().to_string())
            .bind(handler)
            .fetch_one(self.pool())
            .await
            .store_err("read inbox")
    }

    async fn prune_inbox(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let inbox = self.config().quoted("_inbox");
        // The inner SELECT walks the `handled_at` index from the oldest row and stops after
        // `limit`: one bounded statement, however large the table.
        let sql = format!(
            "DELETE FROM {inbox} WHERE (message_id, handler) IN ( \
                 SELECT message_id, handler FROM {inbox} WHERE handled_at < ?1 \
                 ORDER BY handled_at LIMIT ?2)"
        );
        let before = now_micros().saturating_sub(duration_micros(older_than));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let done = retry_busy("prune inbox", || async {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(before)
                .bind(limit)
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(done.rows_affected())
    }
}
