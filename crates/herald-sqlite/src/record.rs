//! The statements of the write path: one multi-row INSERT per 500 envelopes.

use std::sync::Arc;

use herald_core::{Envelope, Result};
use sqlx::{AssertSqlSafe, SqliteConnection};

use crate::config::SqliteOutboxConfig;
use crate::error::ResultExt;
use crate::row::{ENVELOPE_COLUMNS, bind_envelope, now_micros};

/// Bound parameters per recorded row: the envelope's columns, `recorded_at`, `available_at`.
const PARAMS_PER_ROW: usize = 14;

/// Rows per multi-row INSERT: 7,000 bound parameters, well under SQLite's limit (32,766).
const CHUNK_ROWS: usize = 500;

/// The statements of the write path, built once per outbox handle.
pub(crate) struct RecordSql {
    table: String,
    one: Arc<str>,
    chunk: Arc<str>,
}

impl RecordSql {
    pub(crate) fn new(config: &SqliteOutboxConfig) -> Self {
        let table = config.quoted("");
        RecordSql {
            one: insert_sql(&table, 1).into(),
            chunk: insert_sql(&table, CHUNK_ROWS).into(),
            table,
        }
    }

    /// Inserts `envelopes` on `conn`, one multi-row INSERT per 500 envelopes. Their `seq`s
    /// increase in slice order.
    pub(crate) async fn insert_all(
        &self,
        conn: &mut SqliteConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        let now = now_micros();
        for chunk in envelopes.chunks(CHUNK_ROWS) {
            let (sql, persistent) = match chunk.len() {
                1 => (self.one.clone(), true),
                CHUNK_ROWS => (self.chunk.clone(), true),
                // Odd sizes are prepared for this call only, not cached per connection.
                n => (Arc::from(insert_sql(&self.table, n)), false),
            };
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(persistent);
            for envelope in chunk {
                query = bind_envelope(query, envelope)?.bind(now).bind(now);
            }
            query.execute(&mut *conn).await.store_err("record")?;
        }
        Ok(())
    }
}

/// `INSERT INTO table (envelope columns, recorded_at, available_at) VALUES (…), …` for
/// `rows` rows.
fn insert_sql(table: &str, rows: usize) -> String {
    let one = format!("({})", vec!["?"; PARAMS_PER_ROW].join(", "));
    let values = vec![one.as_str(); rows].join(", ");
    format!("INSERT INTO {table} ({ENVELOPE_COLUMNS}, recorded_at, available_at) VALUES {values}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_has_one_placeholder_per_value() {
        let sql = insert_sql("\"t\"", 3);
        assert_eq!(sql.matches('?').count(), 3 * PARAMS_PER_ROW);
        let columns = ENVELOPE_COLUMNS.split(',').count() + 2;
        assert_eq!(columns, PARAMS_PER_ROW);
    }
}
