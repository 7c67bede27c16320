//! Operators' side: counts, dead letters, replay and purge ([`OutboxAdmin`]).

use std::sync::Arc;

use herald_core::{DeadLetter, OutboxAdmin, OutboxStats, Replay, Result};
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

        let list = format!(
            "SELECT {ENVELOPE_COLUMNS}, attempts, last_error, dead_lettered_at \
             FROM {dead_letters} \
             ORDER BY dead_lettered_at DESC, seq DESC \
             LIMIT $1"
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
            purge: format!("DELETE FROM {dead_letters}").into(),
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

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let secrets = &self.inner.secrets;
        let rows = sqlx::query(AssertSqlSafe(self.inner.admin.dead_letters.clone()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .store_err("list dead letters", secrets)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    envelope: envelope_from_row(row)?,
                    attempts: attempts_from_row(row)?,
                    last_error: row.try_get("last_error")?,
                    dead_lettered_at: row.try_get::<OffsetDateTime, _>("dead_lettered_at")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .store_err("list dead letters", secrets)
    }

    async fn replay(&self, which: Replay) -> Result<u64> {
        let id: Option<Uuid> = match which {
            Replay::One(id) => Some(id),
            Replay::All => None,
        };
        let replayed = sqlx::query(AssertSqlSafe(self.inner.admin.replay.clone()))
            .bind(id)
            .execute(&self.inner.pool)
            .await
            .store_err("replay dead letters", &self.inner.secrets)?
            .rows_affected();
        if replayed > 0 {
            self.notify();
        }
        Ok(replayed)
    }

    async fn purge_dead_letters(&self) -> Result<u64> {
        let purged = sqlx::query(AssertSqlSafe(self.inner.admin.purge.clone()))
            .execute(&self.inner.pool)
            .await
            .store_err("purge dead letters", &self.inner.secrets)?;
        Ok(purged.rows_affected())
    }
}
