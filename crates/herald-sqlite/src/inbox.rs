//! [`Inbox`] for SQLite: `(message id, handler)` records in `"{table}_inbox"`, written in the
//! handler's transaction.
//!
//! A duplicate is detected by the primary key: `INSERT … ON CONFLICT DO NOTHING` inserts
//! nothing when the pair is already there. SQLite admits one writer at a time and the
//! handler's transaction holds the write lock from its start (`BEGIN IMMEDIATE`), so two
//! deliveries of one message cannot both see "new".
//!
//! Key holds ([`Inbox::hold_key`]) are rows of `"{table}_held_keys"`. A claim looks its key up
//! there before writing its record: a few statements on a local file, under the write lock the
//! transaction already holds.

use std::time::Duration;

use herald_core::{Claim, Claimed, Inbox, Result};
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

impl SqliteOutbox {
    /// Looks up the first live hold of `consumer`'s `key` by a message other than
    /// `message_id` (taken before `message_id`'s own, if it has one), deleting the stale ones
    /// first.
    async fn check_key(
        &self,
        conn: &mut SqliteConnection,
        (consumer, key): (&str, &str),
        message_id: Uuid,
        stale_after: Duration,
    ) -> Result<Option<Claimed>> {
        let holds = self.config().quoted("_held_keys");
        let id = message_id.hyphenated().to_string();
        let now = now_micros();
        let oldest = now.saturating_sub(duration_micros(stale_after));
        let stale = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {holds} WHERE consumer = ? AND partition_key = ? AND message_id <> ? \
             AND due_at < ?"
        )))
        .bind(consumer)
        .bind(key)
        .bind(&id)
        .bind(oldest)
        .execute(&mut *conn)
        .await
        .store_err("claim inbox")?;
        if stale.rows_affected() > 0 {
            tracing::warn!(
                key,
                holds = stale.rows_affected(),
                "deleted key holds long past their due time: their messages never came back (purged?); the key goes on"
            );
        }
        let held: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT h.message_id, h.due_at FROM {holds} h \
             WHERE h.consumer = ?1 AND h.partition_key = ?2 AND h.message_id <> ?3 \
               AND h.seq < coalesce((SELECT own.seq FROM {holds} own WHERE own.consumer = ?1 \
                                     AND own.partition_key = ?2 AND own.message_id = ?3), \
                                    9223372036854775807) \
             ORDER BY h.seq LIMIT 1"
        )))
        .bind(consumer)
        .bind(key)
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await
        .store_err("claim inbox")?;
        if let Some((by, due_at)) = held {
            let by = Uuid::parse_str(&by)
                .map_err(|error| herald_core::Error::store("claim inbox", false, error))?;
            let due_in = u64::try_from(due_at.saturating_sub(now)).unwrap_or(0);
            return Ok(Some(Claimed::Held {
                by,
                due_in: Duration::from_micros(due_in),
            }));
        }
        Ok(None)
    }
}

impl Inbox for SqliteOutbox {
    async fn claim_all(
        &self,
        conn: &mut SqliteConnection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> Result<Vec<Claimed>> {
        let mut answers = Vec::with_capacity(claims.len());
        for claim in claims {
            if let Some(key) = claim.key
                && let Some(held) = self
                    .check_key(conn, key, claim.message_id, stale_after)
                    .await?
            {
                answers.push(held);
                continue;
            }
            let fresh = self
                .mark_handled(conn, claim.message_id, claim.handler)
                .await?;
            answers.push(if fresh {
                Claimed::New
            } else {
                Claimed::Duplicate
            });
        }
        Ok(answers)
    }

    async fn hold_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
        back_in: Duration,
    ) -> Result<()> {
        // `seq` orders the holds as first taken (writes are serialised): holding again keeps it.
        let sql = format!(
            "INSERT INTO {holds} (consumer, partition_key, message_id, due_at, seq) \
             VALUES (?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM {holds})) \
             ON CONFLICT (consumer, partition_key, message_id) DO UPDATE SET due_at = excluded.due_at",
            holds = self.config().quoted("_held_keys")
        );
        let id = message_id.hyphenated().to_string();
        let due_at = now_micros().saturating_add(duration_micros(back_in));
        retry_busy("hold key", || async {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(consumer)
                .bind(key)
                .bind(&id)
                .bind(due_at)
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(())
    }

    async fn release_keys(
        &self,
        conn: &mut SqliteConnection,
        holds: &[(&str, &str, Uuid)],
    ) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE consumer = ? AND partition_key = ? AND message_id = ?",
            self.config().quoted("_held_keys")
        );
        for (consumer, key, message_id) in holds {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(*consumer)
                .bind(*key)
                .bind(message_id.hyphenated().to_string())
                .execute(&mut *conn)
                .await
                .store_err("release keys")?;
        }
        Ok(())
    }

    async fn release_key(&self, consumer: &str, key: &str, message_id: Uuid) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE consumer = ? AND partition_key = ? AND message_id = ?",
            self.config().quoted("_held_keys")
        );
        let id = message_id.hyphenated().to_string();
        retry_busy("release key", || async {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(consumer)
                .bind(key)
                .bind(&id)
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(())
    }

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
