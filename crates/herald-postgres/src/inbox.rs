//! [`Inbox`] for PostgreSQL: `(message id, handler)` records in `"{schema}"."{table}_inbox"`,
//! written in the handler's transaction.
//!
//! A duplicate is detected by the primary key: `INSERT … ON CONFLICT DO NOTHING` inserts
//! nothing when the pair is already there, and while another open transaction holds the same
//! pair it waits for that transaction to end, so two deliveries of one message racing each other
//! cannot both see "new".
//!
//! Key holds ([`Inbox::hold_key`]) are rows of `"{schema}"."{table}_held_keys"`; the statement
//! that writes a group's inbox records also looks their keys up there, deletes the holds of the
//! claiming messages and the stale ones: one round trip, as before.

use std::collections::HashSet;
use std::time::Duration;

use herald_core::{Claim, Claimed, Inbox, Result};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::statements::InboxSql;
use crate::transaction::PgOutboxTx;

/// Longest retention accepted (longer ones are capped): keeps the interval arithmetic in range.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The savepoint of one handler run in a shared transaction, and what is done with it.
const SAVEPOINT: &str = "SAVEPOINT herald_run";
const RELEASE: &str = "RELEASE SAVEPOINT herald_run";
const RELEASE_AND_REOPEN: &str = "RELEASE SAVEPOINT herald_run; SAVEPOINT herald_run";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT herald_run";

/// A duration as whole microseconds for `$n::float8 * interval '1 microsecond'`, capped.
fn micros(duration: Duration) -> f64 {
    duration.min(MAX_RETENTION).as_micros() as f64
}

/// One row of the claim statement's answer.
type ClaimRow = (i64, Option<Uuid>, Option<f64>, bool, i64);

impl PgOutbox {
    fn inbox_sql(&self) -> &InboxSql {
        &self.inner.sql.inbox
    }
}

impl Inbox for PgOutbox {
    async fn claim_all(
        &self,
        conn: &mut PgConnection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> Result<Vec<Claimed>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = claims.iter().map(|c| c.message_id).collect();
        let handlers: Vec<&str> = claims.iter().map(|c| c.handler).collect();
        let consumers: Vec<Option<&str>> = claims
            .iter()
            .map(|c| c.key.map(|(consumer, _)| consumer))
            .collect();
        let keys: Vec<Option<&str>> = claims.iter().map(|c| c.key.map(|(_, key)| key)).collect();
        let rows: Vec<ClaimRow> = sqlx::query_as(AssertSqlSafe(self.inbox_sql().claim.clone()))
            .bind(ids)
            .bind(handlers)
            .bind(consumers)
            .bind(keys)
            .bind(micros(stale_after))
            .fetch_all(conn)
            .await
            .store_err("claim inbox", &self.inner.secrets)?;
        if let Some(&(_, _, _, _, stale)) = rows.first()
            && stale > 0
        {
            tracing::warn!(
                holds = stale,
                "deleted key holds long past their due time: their messages never came back (purged?); their keys go on"
            );
        }
        if rows.len() != claims.len() {
            return Err(herald_core::Error::store(
                "claim inbox",
                false,
                herald_core::error::Message("one answer per claim expected".into()),
            ));
        }
        // A pair listed twice was inserted once: only its first occurrence is new.
        let mut seen: HashSet<(Uuid, &str)> = HashSet::new();
        Ok(rows
            .into_iter()
            .zip(claims)
            .map(|((_, held_by, due_in, inserted, _), claim)| match held_by {
                Some(by) => Claimed::Held {
                    by,
                    due_in: Duration::try_from_secs_f64(due_in.unwrap_or(0.0))
                        .unwrap_or(Duration::ZERO),
                },
                None if inserted && seen.insert((claim.message_id, claim.handler)) => Claimed::New,
                None => Claimed::Duplicate,
            })
            .collect())
    }

    async fn hold_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
        back_in: Duration,
    ) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.inbox_sql().hold_key.clone()))
            .bind(consumer)
            .bind(key)
            .bind(message_id)
            .bind(micros(back_in))
            .execute(self.pool())
            .await
            .store_err("hold key", &self.inner.secrets)?;
        Ok(())
    }

    async fn release_keys(
        &self,
        conn: &mut PgConnection,
        holds: &[(&str, &str, Uuid)],
    ) -> Result<()> {
        if holds.is_empty() {
            return Ok(());
        }
        let consumers: Vec<&str> = holds.iter().map(|h| h.0).collect();
        let keys: Vec<&str> = holds.iter().map(|h| h.1).collect();
        let ids: Vec<Uuid> = holds.iter().map(|h| h.2).collect();
        sqlx::query(AssertSqlSafe(self.inbox_sql().release_keys.clone()))
            .bind(consumers)
            .bind(keys)
            .bind(ids)
            .execute(conn)
            .await
            .store_err("release keys", &self.inner.secrets)?;
        Ok(())
    }

    async fn release_key(&self, consumer: &str, key: &str, message_id: Uuid) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.inbox_sql().release_key.clone()))
            .bind(consumer)
            .bind(key)
            .bind(message_id)
            .execute(self.pool())
            .await
            .store_err("release key", &self.inner.secrets)?;
        Ok(())
    }

    async fn mark_handled(
        &self,
        conn: &mut PgConnection,
        message_id: Uuid,
        handler: &str,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(self.inbox_sql().mark.clone()))
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
        let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
        let handlers: Vec<&str> = records.iter().map(|(_, h)| *h).collect();
        let inserted: Vec<(Uuid, String)> =
            sqlx::query_as(AssertSqlSafe(self.inbox_sql().mark_all.clone()))
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
        let ids: Vec<Uuid> = records.iter().map(|(id, _)| *id).collect();
        let handlers: Vec<&str> = records.iter().map(|(_, h)| *h).collect();
        sqlx::query(AssertSqlSafe(self.inbox_sql().unmark.clone()))
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
        sqlx::query_scalar(AssertSqlSafe(self.inbox_sql().is_handled.clone()))
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
        let micros = i64::try_from(older_than.min(MAX_RETENTION).as_micros()).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(self.inbox_sql().prune.clone()))
            .bind(micros)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(self.pool())
            .await
            .store_err("prune inbox", &self.inner.secrets)?;
        Ok(done.rows_affected())
    }
}
