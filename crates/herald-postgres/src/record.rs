//! The statements of the write path: the one-row and multi-row INSERTs, and the splicing of an
//! event's INSERT into the caller's own statement as a data-modifying `WITH` clause
//! ([`PgOutboxTx::record_along`](crate::PgOutboxTx::record_along)).

use std::sync::Arc;

use herald_core::{Envelope, Error, Result};
use sqlx::postgres::{PgArguments, PgBindIterExt};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Arguments as _, AssertSqlSafe, Execute as _, PgConnection, Postgres};
use uuid::Uuid;

use crate::config::PgOutboxConfig;
use crate::error::ResultExt;
use crate::row::{ENVELOPE_COLUMNS, bind_envelope, version_column};

/// What [`PgOutboxTx::record_along`](crate::PgOutboxTx::record_along) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Along {
    /// The recorded event's id.
    pub id: Uuid,
    /// Rows the caller's statement affected (the event's row not counted).
    pub rows_affected: u64,
}

/// The statements of the write path, built once per outbox handle.
pub(crate) struct RecordSql {
    one: Arc<str>,
    many: Arc<str>,
    /// The `INSERT … VALUES (` of an event recorded along, placeholders to follow.
    along: Arc<str>,
}

/// The name of the event's `WITH` clause in a statement recorded along.
const ALONG_CLAUSE: &str = "herald_outbox_record";

impl RecordSql {
    pub(crate) fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        RecordSql {
            one: format!(
                "INSERT INTO {outbox} ({ENVELOPE_COLUMNS}) VALUES ({})",
                placeholders(1)
            )
            .into(),
            // WITH ORDINALITY + ORDER BY: identity values follow the slice order.
            many: format!(
                "INSERT INTO {outbox} ({ENVELOPE_COLUMNS}) \
                 SELECT {ENVELOPE_COLUMNS} FROM UNNEST(\
                     $1::uuid[], $2::text[], $3::int4[], $4::timestamptz[], $5::uuid[], \
                     $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::jsonb[], $12::bytea[]\
                 ) WITH ORDINALITY AS e({ENVELOPE_COLUMNS}, ord) \
                 ORDER BY ord"
            )
            .into(),
            along: format!("INSERT INTO {outbox} ({ENVELOPE_COLUMNS}) VALUES (").into(),
        }
    }

    /// Inserts `envelopes` on `conn`: nothing for none, the one-row INSERT for one, one
    /// multi-row INSERT otherwise (positions in slice order).
    pub(crate) async fn insert_all(
        &self,
        conn: &mut PgConnection,
        envelopes: &[Envelope],
        secrets: &[String],
    ) -> Result<()> {
        match envelopes {
            [] => Ok(()),
            [one] => self.insert_one(conn, one, secrets).await,
            many => self.insert_many(conn, many, secrets).await,
        }
    }

    async fn insert_one(
        &self,
        conn: &mut PgConnection,
        e: &Envelope,
        secrets: &[String],
    ) -> Result<()> {
        let mut args = PgArguments::default();
        bind_envelope(&mut args, e, version_column(e.version)?)
            .map_err(sqlx::Error::Encode)
            .store_err("record", secrets)?;
        sqlx::query_with(AssertSqlSafe(self.one.clone()), args)
            .execute(conn)
            .await
            .store_err("record", secrets)?;
        Ok(())
    }

    async fn insert_many(
        &self,
        conn: &mut PgConnection,
        envs: &[Envelope],
        secrets: &[String],
    ) -> Result<()> {
        let versions = envs
            .iter()
            .map(|e| version_column(e.version))
            .collect::<Result<Vec<i32>>>()?;
        sqlx::query(AssertSqlSafe(self.many.clone()))
            .bind(envs.iter().map(|e| e.id).bind_iter())
            .bind(envs.iter().map(|e| e.event_type.as_str()).bind_iter())
            .bind(versions)
            .bind(envs.iter().map(|e| e.occurred_at).bind_iter())
            .bind(envs.iter().map(|e| e.correlation_id).bind_iter())
            .bind(envs.iter().map(|e| e.causation_id).bind_iter())
            .bind(envs.iter().map(|e| e.partition_key.as_deref()).bind_iter())
            .bind(envs.iter().map(|e| e.content_type.as_str()).bind_iter())
            .bind(
                envs.iter()
                    .map(|e| e.trace.traceparent.as_deref())
                    .bind_iter(),
            )
            .bind(
                envs.iter()
                    .map(|e| e.trace.tracestate.as_deref())
                    .bind_iter(),
            )
            .bind(envs.iter().map(|e| Json(&e.headers)).bind_iter())
            .bind(envs.iter().map(|e| &e.payload[..]).bind_iter())
            .execute(conn)
            .await
            .store_err("record", secrets)?;
        Ok(())
    }

    /// Runs `statement` with `envelope`'s INSERT spliced in front as a `WITH` clause, its
    /// values bound after the statement's own.
    pub(crate) async fn insert_along(
        &self,
        conn: &mut PgConnection,
        mut statement: Query<'_, Postgres, PgArguments>,
        envelope: &Envelope,
        secrets: &[String],
    ) -> Result<Along> {
        let mut args = statement
            .take_arguments()
            .map_err(sqlx::Error::Encode)
            .store_err("record", secrets)?
            .unwrap_or_default();
        let first = args.len() + 1;
        let sql = along_sql(&self.along, statement.sql().as_str(), first)?;
        let version = version_column(envelope.version)?;
        bind_envelope(&mut args, envelope, version)
            .map_err(sqlx::Error::Encode)
            .store_err("record", secrets)?;
        let done = sqlx::query_with(AssertSqlSafe(sql), args)
            .execute(conn)
            .await
            .store_err("record", secrets)?;
        Ok(Along {
            id: envelope.id,
            rows_affected: done.rows_affected(),
        })
    }
}

/// `statement` with the event's INSERT (`insert`, then placeholders `$first`…`$first+11`) as
/// a data-modifying `WITH` clause in front.
fn along_sql(insert: &str, statement: &str, first: usize) -> Result<String> {
    let body = statement.trim_start();
    if body.starts_with("--") || body.starts_with("/*") {
        return Err(Error::Config(
            "record_along: the statement must begin with its first keyword, not a comment".into(),
        ));
    }
    let clause = format!("{ALONG_CLAUSE} AS ({insert}{}))", placeholders(first));
    let (word, rest) = split_word(body);
    if !word.eq_ignore_ascii_case("with") {
        return Ok(format!("WITH {clause} {body}"));
    }
    let (second, after) = split_word(rest);
    Ok(if second.eq_ignore_ascii_case("recursive") {
        format!("WITH RECURSIVE {clause}, {after}")
    } else {
        format!("WITH {clause}, {rest}")
    })
}

/// `$first, …` : one placeholder per envelope column.
fn placeholders(first: usize) -> String {
    let count = ENVELOPE_COLUMNS.split(", ").count();
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The leading word of `text` (letters only) and what follows it, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = "INSERT INTO o (c) VALUES (";

    fn clause(first: usize) -> String {
        let placeholders: Vec<String> = (first..first + 12).map(|n| format!("${n}")).collect();
        format!("{ALONG_CLAUSE} AS ({INSERT}{}))", placeholders.join(", "))
    }

    #[test]
    fn the_event_clause_goes_in_front_of_a_plain_statement_numbered_after_its_binds() {
        let sql = along_sql(INSERT, "  INSERT INTO orders (a, b) VALUES ($1, $2)", 3).unwrap();
        assert_eq!(
            sql,
            format!(
                "WITH {} INSERT INTO orders (a, b) VALUES ($1, $2)",
                clause(3)
            )
        );
        assert!(sql.contains("$14)") && !sql.contains("$15"));
    }

    #[test]
    fn a_statement_with_its_own_with_list_gets_the_clause_first_in_it() {
        let sql = along_sql(INSERT, "with x AS (SELECT $1) UPDATE t SET a = 1", 2).unwrap();
        assert_eq!(
            sql,
            format!("WITH {}, x AS (SELECT $1) UPDATE t SET a = 1", clause(2))
        );
        let sql = along_sql(
            INSERT,
            "WITH RECURSIVE r(n) AS (SELECT 1) SELECT * FROM r",
            1,
        )
        .unwrap();
        assert_eq!(
            sql,
            format!(
                "WITH RECURSIVE {}, r(n) AS (SELECT 1) SELECT * FROM r",
                clause(1)
            )
        );
        // A word that merely begins with "with" is not the keyword.
        let sql = along_sql(INSERT, "withdraw_all()", 1).unwrap();
        assert!(sql.ends_with(") withdraw_all()"));
    }

    #[test]
    fn the_one_row_insert_has_one_placeholder_per_column() {
        let config = PgOutboxConfig::default();
        let sql = RecordSql::new(&config);
        assert!(
            sql.one
                .ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
        );
        assert_eq!(ENVELOPE_COLUMNS.split(", ").count(), 12);
    }

    #[test]
    fn a_statement_that_begins_with_a_comment_is_a_configuration_error() {
        for statement in ["-- note\nINSERT INTO t VALUES (1)", "/* x */ DELETE FROM t"] {
            let err = along_sql(INSERT, statement, 1).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }
}
