//! Operators' side: counts ([`OutboxAdmin`]); dead letters listed, replayed and purged
//! ([`DeadLetters`]).

use std::collections::BTreeMap;

use herald_core::{
    DeadLetter, DeadLetterOrigin, DeadLetters, OutboxAdmin, OutboxStats, Page, RawMessage, Result,
    Selection,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::row::{attempts_from_row, envelope_from_row};

/// A `count(*)` as `u64`.
fn count(row: &sqlx::postgres::PgRow, column: &str) -> std::result::Result<u64, sqlx::Error> {
    let n: i64 = row.try_get(column)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl OutboxAdmin for PgOutbox {
    async fn stats(&self) -> Result<OutboxStats> {
        let secrets = &self.inner.secrets;
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.admin.stats.clone()))
            .fetch_one(&self.inner.pool)
            .await
            .store_err("read stats", secrets)?;
        let stats = (|| {
            Ok::<_, sqlx::Error>(OutboxStats {
                pending: count(&row, "pending")?,
                retrying: count(&row, "retrying")?,
                in_flight: count(&row, "in_flight")?,
                dead_lettered: count(&row, "dead_lettered")?,
                archived: count(&row, "archived")?,
                oldest_pending_at: row.try_get("oldest_pending_at")?,
                oldest_due_at: row.try_get("oldest_due_at")?,
            })
        })();
        stats.store_err("read stats", secrets)
    }
}

/// A `usize` as a bound SQL `bigint`, saturated.
fn bigint(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The event id of a [`Selection`] (`None` for all).
fn selected(which: Selection) -> Option<Uuid> {
    match which {
        Selection::One(id) => Some(id),
        Selection::All => None,
    }
}

/// A listed dead-letter row as a [`DeadLetter`]; the envelope is `None` when the row does not
/// decode as one, and the raw columns always hold it.
fn dead_letter_from_row(
    row: &sqlx::postgres::PgRow,
    table: &str,
) -> std::result::Result<DeadLetter, sqlx::Error> {
    let Json(columns): Json<BTreeMap<String, serde_json::Value>> = row.try_get("raw_columns")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(DeadLetter {
        id: row.try_get("id")?,
        envelope: envelope_from_row(row).ok(),
        raw: RawMessage::from_columns(columns, payload),
        origin: DeadLetterOrigin::Outbox {
            table: table.to_owned(),
        },
        reason: row.try_get("last_error")?,
        attempts: attempts_from_row(row)?,
        dead_lettered_at: Some(row.try_get::<OffsetDateTime, _>("dead_lettered_at")?),
    })
}

impl DeadLetters for PgOutbox {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        let secrets = &self.inner.secrets;
        let admin = &self.inner.sql.admin;
        let rows = sqlx::query(AssertSqlSafe(admin.dead_letters.clone()))
            .bind(bigint(page.limit))
            .bind(bigint(page.offset))
            .fetch_all(&self.inner.pool)
            .await
            .store_err("list dead letters", secrets)?;
        rows.iter()
            .map(|row| dead_letter_from_row(row, &admin.table))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .store_err("list dead letters", secrets)
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        let replayed = sqlx::query(AssertSqlSafe(self.inner.sql.admin.replay.clone()))
            .bind(selected(which))
            .execute(&self.inner.pool)
            .await
            .store_err("replay dead letters", &self.inner.secrets)?
            .rows_affected();
        if replayed > 0 {
            self.notify();
        }
        Ok(replayed)
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        let purged = sqlx::query(AssertSqlSafe(self.inner.sql.admin.purge.clone()))
            .bind(selected(which))
            .execute(&self.inner.pool)
            .await
            .store_err("purge dead letters", &self.inner.secrets)?;
        Ok(purged.rows_affected())
    }
}
