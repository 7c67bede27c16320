//! Row mapping shared by the write path, the claims and the operators' queries: the envelope's
//! columns, how an envelope is bound to them and how a row is read back.

use bytes::Bytes;
use herald_core::{Envelope, Error, Headers, Result, TraceContext};
use sqlx::Arguments as _;
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::types::Json;

/// The envelope columns, in the order [`envelope_from_row`], [`bind_envelope`] and the inserts
/// use them; the same in the outbox, dead-letter and archive tables.
pub(crate) const ENVELOPE_COLUMNS: &str = "id, event_type, version, occurred_at, \
     correlation_id, causation_id, partition_key, content_type, traceparent, tracestate, \
     headers, payload";

/// [`ENVELOPE_COLUMNS`] qualified with a table alias (`o.id, o.event_type, …`).
pub(crate) fn envelope_columns(alias: &str) -> String {
    ENVELOPE_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds an envelope's values in [`ENVELOPE_COLUMNS`] order (after any already in `args`).
pub(crate) fn bind_envelope(
    args: &mut PgArguments,
    e: &Envelope,
    version: i32,
) -> std::result::Result<(), sqlx::error::BoxDynError> {
    args.add(e.id)?;
    args.add(e.event_type.as_str())?;
    args.add(version)?;
    args.add(e.occurred_at)?;
    args.add(e.correlation_id)?;
    args.add(e.causation_id)?;
    args.add(e.partition_key.as_deref())?;
    args.add(e.content_type.as_str())?;
    args.add(e.trace.traceparent.as_deref())?;
    args.add(e.trace.tracestate.as_deref())?;
    args.add(Json(&e.headers))?;
    args.add(&e.payload[..])?;
    Ok(())
}

/// An envelope's version as the `integer` column holds it.
pub(crate) fn version_column(version: u32) -> Result<i32> {
    i32::try_from(version)
        .map_err(|_| Error::invalid_envelope("version", format!("{version} is too large")))
}

/// Reads the [`ENVELOPE_COLUMNS`] of a row.
pub(crate) fn envelope_from_row(row: &PgRow) -> std::result::Result<Envelope, sqlx::Error> {
    let version: i32 = row.try_get("version")?;
    let Json(headers): Json<Headers> = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(Envelope {
        id: row.try_get("id")?,
        event_type: row.try_get("event_type")?,
        version: u32::try_from(version).map_err(|err| sqlx::Error::ColumnDecode {
            index: "version".into(),
            source: Box::new(err),
        })?,
        occurred_at: row.try_get("occurred_at")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        partition_key: row.try_get("partition_key")?,
        content_type: row.try_get("content_type")?,
        trace: TraceContext {
            traceparent: row.try_get("traceparent")?,
            tracestate: row.try_get("tracestate")?,
        },
        headers,
        payload: Bytes::from(payload),
    })
}

/// Reads an `integer` count column as `u32`, clamping negative values to 0.
pub(crate) fn attempts_from_row(row: &PgRow) -> std::result::Result<u32, sqlx::Error> {
    let attempts: i32 = row.try_get("attempts")?;
    Ok(u32::try_from(attempts).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_twelve_envelope_columns_and_an_alias_qualifies_each() {
        assert_eq!(ENVELOPE_COLUMNS.split(", ").count(), 12);
        let qualified = envelope_columns("o");
        assert!(qualified.starts_with("o.id, o.event_type, "));
        assert!(qualified.ends_with("o.headers, o.payload"));
    }

    #[test]
    fn a_version_beyond_the_integer_column_is_an_invalid_envelope() {
        assert_eq!(version_column(7).ok(), Some(7));
        assert!(version_column(u32::MAX).is_err());
    }
}
