//! Operators' side: counts ([`OutboxAdmin`]); dead letters listed, replayed and purged
//! ([`DeadLetters`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_core::{
    DeadLetter, DeadLetterOrigin, DeadLetters, OutboxAdmin, OutboxStats, Page, RawMessage, Result,
    Selection,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::PgOutboxConfig;
use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::row::{ENVELOPE_COLUMNS, attempts_from_row, envelope_from_row};

/// The statements of the admin operations, built once per handle.
pub(crate) struct AdminSql {
    stats: Arc<str>,
    dead_letters: Arc<str>,
    replay: Arc<str>,
    purge: Arc<str>,
    /// The outbox table as operators name it (`schema.table`).
    table: Arc<str>,
}

impl AdminSql {
    pub(crate) fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        let dead_letters = config.qualified("_dead_letters");
        let archive = config.qualified("_archive");
        let pending = "(locked_until IS NULL OR locked_until <= now())";

        let stats = format!(
            "SELECT \
                 count(*) FILTER (WHERE {pending}) AS pending, \
                 count(*) FILTER (WHERE {pending} AND available_at > now()) AS retrying, \
                 count(*) FILTER (WHERE locked_until > now()) AS in_flight, \
                 min(recorded_at) FILTER (WHERE {pending}) AS oldest_pending_at, \
                 (SELECT count(*) FROM {dead_letters}) AS dead_lettered, \
                 (SELECT count(*) FROM {archive}) AS archived \
             FROM {outbox}"
        );

        // The row's columns as JSON too (its raw form), so that a row whose envelope no longer
        // decodes is still listed.
        let list = format!(
            "SELECT {ENVELOPE_COLUMNS}, attempts, last_error, dead_lettered_at, \
                 to_jsonb(d) - ARRAY['payload', 'attempts', 'last_error', 'dead_lettered_at'] \
                     AS raw_columns \
             FROM {dead_letters} AS d \
             ORDER BY dead_lettered_at DESC, seq DESC \
             LIMIT $1 OFFSET $2"
        );

        // New rows (new seq, so behind everything pending for their keys), in the order they
        // were first recorded; attempts and available_at take their defaults.
        let replay = format!(
            "WITH moved AS ( \
                 DELETE FROM {dead_letters} WHERE $1::uuid IS NULL OR id = $1 \
                 RETURNING seq, {ENVELOPE_COLUMNS} \
             ) \
             INSERT INTO {outbox} ({ENVELOPE_COLUMNS}) \
             SELECT {ENVELOPE_COLUMNS} FROM moved ORDER BY seq"
        );

        AdminSql {
            stats: stats.into(),
            dead_letters: list.into(),
            replay: replay.into(),
            purge: format!("DELETE FROM {dead_letters} WHERE $1::uuid IS NULL OR id = $1").into(),
            table: format!("{}.{}", config.schema, config.table).into(),
        }
    }
}

/// A `count(*)` as `u64`.
fn count(row: &sqlx::postgres::PgRow, column: &str) -> std::result::Result<u64, sqlx::Error> {
    let n: i64 = row.try_get(column)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl OutboxAdmin for PgOutbox {
    async fn stats(&self) -> Result<OutboxStats> {
        let secrets = &self.inner.secrets;
        let row = sqlx::query(AssertSqlSafe(self.inner.admin.stats.clone()))
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
    let headers = columns
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => (name, text),
            other => (name, other.to_string()),
        })
        .collect();
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(DeadLetter {
        id: row.try_get("id")?,
        envelope: envelope_from_row(row).ok(),
        raw: RawMessage {
            headers,
            payload: payload.into(),
        },
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
        let admin = &self.inner.admin;
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
        let replayed = sqlx::query(AssertSqlSafe(self.inner.admin.replay.clone()))
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
        let purged = sqlx::query(AssertSqlSafe(self.inner.admin.purge.clone()))
            .bind(selected(which))
            .execute(&self.inner.pool)
            .await
            .store_err("purge dead letters", &self.inner.secrets)?;
        Ok(purged.rows_affected())
    }
}
