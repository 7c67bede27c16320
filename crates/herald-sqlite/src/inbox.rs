//! [`Inbox`] for SQLite: `(message id, handler)` records in `"{table}_inbox"`, written in the
//! handler's transaction.
//!
//! A duplicate is detected by the primary key: `INSERT … ON CONFLICT DO NOTHING` inserts
//! nothing when the pair is already there. SQLite admits one writer at a time and the
//! handler's transaction holds the write lock from its start (`BEGIN IMMEDIATE`), so two
//! deliveries of one message cannot both see "new".
//!
//! Key holds ([`Inbox::hold_key`]) are rows of `"{table}_held_keys"`. A group's claims cost a
//! bounded number of statements, however many messages it holds, under the write lock the
//! transaction already holds: one lookup of the holds of all their keys, the deletion of the
//! stale ones among them (only when there are), and one multi-row insert of the records.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use herald_core::{Claim, Claimed, Inbox, Result};
use serde::Serialize;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::error::{ResultExt, corrupt, retry_busy};
use crate::outbox::SqliteOutbox;
use crate::row::{duration_micros, now_micros, query};
use crate::statements::InboxSql;
use crate::transaction::SqliteOutboxTx;

/// The savepoint of one handler run in a shared transaction, and what is done with it.
const SAVEPOINT: &str = "SAVEPOINT herald_run";
const RELEASE: &str = "RELEASE SAVEPOINT herald_run";
const RELEASE_AND_REOPEN: &str = "RELEASE SAVEPOINT herald_run; SAVEPOINT herald_run";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT herald_run";

/// `rows` as the JSON array parameter of a list statement (`json_each(?)`).
fn json_list<T: Serialize>(rows: &[T], op: &'static str) -> Result<String> {
    serde_json::to_string(rows).map_err(|err| herald_core::Error::store(op, false, err))
}

/// A hold found by [`InboxSql::holds_of_keys`].
struct Hold {
    consumer: String,
    key: String,
    message_id: String,
    due_at: i64,
    /// Its place in the key's order.
    seq: i64,
}

impl SqliteOutbox {
    fn inbox_sql(&self) -> &InboxSql {
        &self.inner.sql.inbox
    }

    /// For each of `claims` whose key is held by another message (taken before the claim's
    /// own hold, if it has one), the first of those holds in the key's order, by claim index; deletes the holds of the claimed keys more than `stale_after`
    /// past their due time first (they hold nothing).
    async fn held_keys(
        &self,
        conn: &mut SqliteConnection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> Result<BTreeMap<usize, Claimed>> {
        let op = "claim inbox";
        let keyed: Vec<(usize, &str, &str, String)> = claims
            .iter()
            .enumerate()
            .filter_map(|(n, claim)| {
                let (consumer, key) = claim.key?;
                Some((n, consumer, key, claim.message_id.hyphenated().to_string()))
            })
            .collect();
        if keyed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = query(&self.inbox_sql().holds_of_keys)
            .bind(json_list(&keyed, op)?)
            .fetch_all(&mut *conn)
            .await
            .store_err(op)?;
        let now = now_micros();
        let oldest = now.saturating_sub(duration_micros(stale_after));
        let mut stale: Vec<(String, String, String)> = Vec::new();
        let mut held: BTreeMap<usize, (i64, i64, String)> = BTreeMap::new();
        for row in &rows {
            let n: i64 = row.try_get("n").store_err(op)?;
            let n = usize::try_from(n).map_err(|_| corrupt(op, format!("claim index {n}")))?;
            let hold = Hold {
                consumer: row.try_get("consumer").store_err(op)?,
                key: row.try_get("partition_key").store_err(op)?,
                message_id: row.try_get("message_id").store_err(op)?,
                due_at: row.try_get("due_at").store_err(op)?,
                seq: row.try_get("seq").store_err(op)?,
            };
            if hold.due_at < oldest {
                stale.push((hold.consumer, hold.key, hold.message_id));
            } else if held.get(&n).is_none_or(|(seq, _, _)| hold.seq < *seq) {
                held.insert(n, (hold.seq, hold.due_at, hold.message_id));
            }
        }
        if !stale.is_empty() {
            stale.sort();
            stale.dedup();
            let deleted = query(&self.inbox_sql().delete_stale)
                .bind(json_list(&stale, op)?)
                .bind(oldest)
                .execute(&mut *conn)
                .await
                .store_err(op)?;
            tracing::warn!(
                holds = deleted.rows_affected(),
                "deleted key holds long past their due time: their messages never came back (purged?); their keys go on"
            );
        }
        held.into_iter()
            .map(|(n, (_, due_at, by))| {
                let by = Uuid::parse_str(&by)
                    .map_err(|err| corrupt(op, format!("held by {by:?}: {err}")))?;
                let due_in = u64::try_from(due_at.saturating_sub(now)).unwrap_or(0);
                Ok((
                    n,
                    Claimed::Held {
                        by,
                        due_in: Duration::from_micros(due_in),
                    },
                ))
            })
            .collect()
    }
}

impl Inbox for SqliteOutbox {
    async fn claim_all(
        &self,
        conn: &mut SqliteConnection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> Result<Vec<Claimed>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut held = self.held_keys(conn, claims, stale_after).await?;
        let free: Vec<(Uuid, &str)> = claims
            .iter()
            .enumerate()
            .filter(|(n, _)| !held.contains_key(n))
            .map(|(_, claim)| (claim.message_id, claim.handler))
            .collect();
        let mut fresh = self.mark_all_handled(conn, &free).await?.into_iter();
        claims
            .iter()
            .enumerate()
            .map(|(n, _)| match held.remove(&n) {
                Some(held) => Ok(held),
                None => match fresh.next() {
                    Some(true) => Ok(Claimed::New),
                    Some(false) => Ok(Claimed::Duplicate),
                    None => Err(herald_core::Error::store(
                        "claim inbox",
                        false,
                        herald_core::error::Message("one answer per claim expected".into()),
                    )),
                },
            })
            .collect()
    }

    async fn hold_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
        back_in: Duration,
    ) -> Result<()> {
        let id = message_id.hyphenated().to_string();
        let due_at = now_micros().saturating_add(duration_micros(back_in));
        retry_busy("hold key", || async {
            query(&self.inbox_sql().hold_key)
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
        if holds.is_empty() {
            return Ok(());
        }
        let holds: Vec<(&str, &str, String)> = holds
            .iter()
            .map(|&(consumer, key, id)| (consumer, key, id.hyphenated().to_string()))
            .collect();
        query(&self.inbox_sql().release_keys)
            .bind(json_list(&holds, "release keys")?)
            .execute(conn)
            .await
            .store_err("release keys")?;
        Ok(())
    }

    async fn release_key(&self, consumer: &str, key: &str, message_id: Uuid) -> Result<()> {
        let id = message_id.hyphenated().to_string();
        retry_busy("release key", || async {
            query(&self.inbox_sql().release_key)
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
        let done = query(&self.inbox_sql().mark)
            .bind(message_id.hyphenated().to_string())
            .bind(handler)
            .bind(now_micros())
            .execute(conn)
            .await
            .store_err("mark inbox")?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_all_handled(
        &self,
        conn: &mut SqliteConnection,
        records: &[(Uuid, &str)],
    ) -> Result<Vec<bool>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let op = "mark inbox";
        let rows: Vec<(String, &str)> = records
            .iter()
            .map(|&(id, handler)| (id.hyphenated().to_string(), handler))
            .collect();
        let inserted: Vec<(String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(self.inbox_sql().mark_all.clone()))
                .bind(json_list(&rows, op)?)
                .bind(now_micros())
                .fetch_all(conn)
                .await
                .store_err(op)?;
        let mut new: HashSet<(String, String)> = inserted.into_iter().collect();
        // A pair listed twice was inserted once: only its first occurrence is new.
        Ok(rows
            .into_iter()
            .map(|(id, handler)| new.remove(&(id, handler.to_owned())))
            .collect())
    }

    async fn unmark_handled(
        &self,
        conn: &mut SqliteConnection,
        records: &[(Uuid, &str)],
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, &str)> = records
            .iter()
            .map(|&(id, handler)| (id.hyphenated().to_string(), handler))
            .collect();
        query(&self.inbox_sql().unmark)
            .bind(json_list(&rows, "unmark inbox")?)
            .execute(conn)
            .await
            .store_err("unmark inbox")?;
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
        sqlx::query_scalar(sqlx::AssertSqlSafe(self.inbox_sql().is_handled.clone()))
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
        let before = now_micros().saturating_sub(duration_micros(older_than));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let done = retry_busy("prune inbox", || async {
            query(&self.inbox_sql().prune)
                .bind(before)
                .bind(limit)
                .execute(self.pool())
                .await
        })
        .await?;
        Ok(done.rows_affected())
    }
}
