//! Row mapping shared by the write path, the claims, the inbox and the operators' queries: the
//! envelope's columns, how an envelope is bound to them and read back, and SQLite's times
//! (integer unix microseconds).

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Envelope, Error, Headers, Result, TraceContext};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ResultExt, corrupt};

/// The envelope's columns, in the order [`bind_envelope`] binds them and [`envelope_from_row`]
/// reads them; the same in the outbox, dead-letter and archive tables.
pub(crate) const ENVELOPE_COLUMNS: &str = "id, event_type, version, occurred_at, \
    correlation_id, causation_id, partition_key, content_type, traceparent, tracestate, \
    headers, payload";

/// A query on SQLite with its bound arguments.
pub(crate) type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// A query of one of the outbox's prebuilt statements (cached per connection by sqlx).
pub(crate) fn query(sql: &Arc<str>) -> Query<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// Binds the envelope's columns ([`ENVELOPE_COLUMNS`]).
pub(crate) fn bind_envelope<'q>(query: Query<'q>, envelope: &Envelope) -> Result<Query<'q>> {
    let headers = serde_json::to_string(&envelope.headers)
        .map_err(|err| Error::invalid_envelope("headers", err))?;
    Ok(query
        .bind(envelope.id.hyphenated().to_string())
        .bind(envelope.event_type.clone())
        .bind(i64::from(envelope.version))
        .bind(unix_micros(envelope.occurred_at))
        .bind(envelope.correlation_id.hyphenated().to_string())
        .bind(envelope.causation_id.map(|id| id.hyphenated().to_string()))
        .bind(envelope.partition_key.clone())
        .bind(envelope.content_type.clone())
        .bind(envelope.trace.traceparent.clone())
        .bind(envelope.trace.tracestate.clone())
        .bind(headers)
        .bind(envelope.payload.to_vec()))
}

/// Reads the envelope of a row selected with [`ENVELOPE_COLUMNS`].
pub(crate) fn envelope_from_row(row: &SqliteRow, op: &'static str) -> Result<Envelope> {
    let uuid = |column: &str| -> Result<Option<Uuid>> {
        let text: Option<String> = row.try_get(column).store_err(op)?;
        text.map(|text| {
            Uuid::parse_str(&text).map_err(|err| corrupt(op, format!("{column} {text:?}: {err}")))
        })
        .transpose()
    };
    let id = uuid("id")?.ok_or_else(|| corrupt(op, "null id"))?;
    let version: i64 = row.try_get("version").store_err(op)?;
    let headers: String = row.try_get("headers").store_err(op)?;
    let payload: Vec<u8> = row.try_get("payload").store_err(op)?;
    Ok(Envelope {
        id,
        event_type: row.try_get("event_type").store_err(op)?,
        version: u32::try_from(version).map_err(|_| corrupt(op, format!("version {version}")))?,
        occurred_at: time_column(row, "occurred_at", op)?,
        correlation_id: uuid("correlation_id")?
            .ok_or_else(|| corrupt(op, "null correlation id"))?,
        causation_id: uuid("causation_id")?,
        partition_key: row.try_get("partition_key").store_err(op)?,
        content_type: row.try_get("content_type").store_err(op)?,
        trace: TraceContext {
            traceparent: row.try_get("traceparent").store_err(op)?,
            tracestate: row.try_get("tracestate").store_err(op)?,
        },
        headers: serde_json::from_str::<Headers>(&headers)
            .map_err(|err| corrupt(op, format!("headers: {err}")))?,
        payload: bytes::Bytes::from(payload),
    })
}

/// Reads an integer unix-microsecond column as a UTC time.
pub(crate) fn time_column(
    row: &SqliteRow,
    column: &str,
    op: &'static str,
) -> Result<OffsetDateTime> {
    let micros: i64 = row.try_get(column).store_err(op)?;
    from_unix_micros(micros).ok_or_else(|| corrupt(op, format!("{column} {micros}")))
}

/// `time` as unix microseconds (sub-microsecond digits dropped, as PostgreSQL does).
pub(crate) fn unix_micros(time: OffsetDateTime) -> i64 {
    let micros = time.unix_timestamp_nanos().div_euclid(1_000);
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

/// Unix microseconds as a UTC time, if in range.
pub(crate) fn from_unix_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

/// This machine's clock in unix microseconds: SQLite has no other.
pub(crate) fn now_micros() -> i64 {
    unix_micros(OffsetDateTime::now_utc())
}

/// A duration in microseconds, saturating.
pub(crate) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let t = time::macros::datetime!(2024-02-29 23:59:59.123_456_789 UTC);
        let micros = unix_micros(t);
        assert_eq!(micros % 1_000_000, 123_456);
        let back = from_unix_micros(micros).expect("in range");
        assert_eq!(
            back,
            time::macros::datetime!(2024-02-29 23:59:59.123_456 UTC)
        );
        let before_epoch = time::macros::datetime!(1969-12-31 23:59:59.5 UTC);
        assert_eq!(unix_micros(before_epoch), -500_000);
        assert_eq!(from_unix_micros(-500_000), Some(before_epoch));
    }
}
