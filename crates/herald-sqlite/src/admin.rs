//! What operators do with the outbox: counts ([`OutboxAdmin`]); dead letters listed, replayed
//! and purged ([`DeadLetters`]).

use std::collections::BTreeMap;

use herald_core::{
    DeadLetter, DeadLetterOrigin, DeadLetters, OutboxAdmin, OutboxStats, Page, RawMessage, Result,
    Selection,
};
use sqlx::Row;
use uuid::Uuid;

use crate::error::{ResultExt, corrupt};
use crate::outbox::SqliteOutbox;
use crate::row::{envelope_from_row, now_micros, query, time_column};
use crate::statements::AdminSql;

/// A `usize` as a bound SQL integer, saturated.
fn integer(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A listed dead-letter row as a [`DeadLetter`]; the envelope is `None` when the row does not
/// decode as one, and the raw columns always hold it.
fn dead_letter_from_row(row: &sqlx::sqlite::SqliteRow, table: &str) -> Result<DeadLetter> {
    let op = "list dead letters";
    let raw: String = row.try_get("raw_columns").store_err(op)?;
    let columns: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&raw).map_err(|err| corrupt(op, format!("raw columns: {err}")))?;
    let payload: Vec<u8> = row.try_get("payload").store_err(op)?;
    let raw = RawMessage::from_columns(columns, payload);
    let id = raw
        .headers
        .get("id")
        .and_then(|id| Uuid::parse_str(id).ok());
    let attempts: i64 = row.try_get("attempts").store_err(op)?;
    Ok(DeadLetter {
        id,
        envelope: envelope_from_row(row, op).ok(),
        raw,
        origin: DeadLetterOrigin::Outbox {
            table: table.to_owned(),
        },
        reason: row.try_get("last_error").store_err(op)?,
        attempts: u32::try_from(attempts)
            .map_err(|_| corrupt(op, format!("attempts {attempts}")))?,
        dead_lettered_at: Some(time_column(row, "dead_lettered_at", op)?),
    })
}

fn count(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<u64> {
    let n: i64 = row.try_get(column).store_err("read stats")?;
    u64::try_from(n).map_err(|_| corrupt("read stats", format!("{column} {n}")))
}

impl SqliteOutbox {
    fn admin_sql(&self) -> &AdminSql {
        &self.inner.sql.admin
    }
}

impl OutboxAdmin for SqliteOutbox {
    async fn stats(&self) -> Result<OutboxStats> {
        let row = query(&self.admin_sql().stats)
            .bind(now_micros())
            .fetch_one(self.pool())
            .await
            .store_err("read stats")?;
        let oldest: Option<i64> = row.try_get("oldest_pending_at").store_err("read stats")?;
        let oldest_due: Option<i64> = row.try_get("oldest_due_at").store_err("read stats")?;
        Ok(OutboxStats {
            pending: count(&row, "pending")?,
            retrying: count(&row, "retrying")?,
            in_flight: count(&row, "in_flight")?,
            dead_lettered: count(&row, "dead_lettered")?,
            archived: count(&row, "archived")?,
            oldest_pending_at: match oldest {
                Some(_) => Some(time_column(&row, "oldest_pending_at", "read stats")?),
                None => None,
            },
            oldest_due_at: match oldest_due {
                Some(_) => Some(time_column(&row, "oldest_due_at", "read stats")?),
                None => None,
            },
        })
    }
}

impl DeadLetters for SqliteOutbox {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        let rows = query(&self.admin_sql().dead_letters)
            .bind(integer(page.limit))
            .bind(integer(page.offset))
            .fetch_all(self.pool())
            .await
            .store_err("list dead letters")?;
        let table = &self.admin_sql().table;
        rows.iter()
            .map(|row| dead_letter_from_row(row, table))
            .collect()
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        let op = "replay dead letters";
        let sql = self.admin_sql();
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .store_err(op)?;
        let (insert, delete) = match which {
            Selection::One(id) => {
                let id = id.hyphenated().to_string();
                (
                    query(&sql.replay_one).bind(now_micros()).bind(id.clone()),
                    query(&sql.forget_one).bind(id),
                )
            }
            Selection::All => (
                query(&sql.replay_all).bind(now_micros()),
                query(&sql.forget_all),
            ),
        };
        let replayed = insert
            .execute(&mut *tx)
            .await
            .store_err(op)?
            .rows_affected();
        delete.execute(&mut *tx).await.store_err(op)?;
        tx.commit().await.store_err(op)?;
        if replayed > 0 {
            self.notify();
        }
        Ok(replayed)
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        let sql = self.admin_sql();
        let purge = match which {
            Selection::One(id) => query(&sql.purge_one).bind(id.hyphenated().to_string()),
            Selection::All => query(&sql.forget_all),
        };
        let done = purge
            .execute(self.pool())
            .await
            .store_err("purge dead letters")?;
        Ok(done.rows_affected())
    }
}
