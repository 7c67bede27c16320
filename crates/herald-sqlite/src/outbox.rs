//! The outbox handle and its write path: recording events in the caller's transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::redact::redact_url;
use herald_core::{Envelope, Error, Event, Headers, Metadata, Result, Signal, TraceContext};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteOutboxConfig;
use crate::admin::AdminSql;
use crate::claim::ClaimSql;
use crate::error::{ResultExt, corrupt};

/// The envelope's columns, in the order [`bind_envelope`] binds them and [`envelope_from_row`]
/// reads them; the same in the outbox, dead-letter and archive tables.
pub(crate) const ENVELOPE_COLUMNS: &str = "id, event_type, version, occurred_at, \
    correlation_id, causation_id, partition_key, content_type, traceparent, tracestate, \
    headers, payload";

/// Bound parameters per recorded row: the envelope's columns, `recorded_at`, `available_at`.
const PARAMS_PER_ROW: usize = 14;

/// Rows per multi-row INSERT: 7,000 bound parameters, well under SQLite's limit (32,766).
const CHUNK_ROWS: usize = 500;

/// How long a connection waits for SQLite's write lock before giving up with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite outbox: records events in the caller's transactions and serves relays
/// ([`herald_core::OutboxStore`]) and operators ([`herald_core::OutboxAdmin`]).
///
/// Cheap to clone: every clone shares the pool, the prepared SQL and the wake-up signal.
#[derive(Clone)]
pub struct SqliteOutbox {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("table", &self.inner.config.table)
            .field("completion", &self.inner.config.completion)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) pool: SqlitePool,
    pub(crate) config: SqliteOutboxConfig,
    pub(crate) signal: Signal,
    pub(crate) insert_one: Arc<str>,
    pub(crate) insert_chunk: Arc<str>,
    pub(crate) claim: ClaimSql,
    pub(crate) admin: AdminSql,
}

impl SqliteOutbox {
    /// An outbox on an existing pool. Its connections should have a busy timeout (sqlx's
    /// default is 5 s) and, for concurrent readers and writers, WAL journaling
    /// ([`SqliteOutbox::connect`] sets both).
    pub fn new(pool: SqlitePool, config: SqliteOutboxConfig) -> Self {
        let table = config.quoted("");
        let inner = Inner {
            insert_one: insert_sql(&table, 1).into(),
            insert_chunk: insert_sql(&table, CHUNK_ROWS).into(),
            claim: ClaimSql::new(&config),
            admin: AdminSql::new(&config),
            signal: Signal::new(),
            pool,
            config,
        };
        SqliteOutbox {
            inner: Arc::new(inner),
        }
    }

    /// Opens (creating it if needed) the database at `url`, `sqlite://path` or a plain file
    /// path, with WAL journaling, `synchronous = NORMAL`, a 5 s busy timeout and foreign keys
    /// on. Does not migrate: call [`SqliteOutbox::migrate`].
    ///
    /// A malformed URL is [`Error::Config`]; a file that cannot be opened is [`Error::Store`].
    pub async fn connect(url: &str, config: SqliteOutboxConfig) -> Result<Self> {
        let (options, in_memory) = connect_options(url)?;
        // SQLite admits one writer at a time, and a writer that finds the file locked sleeps in
        // whole milliseconds (SQLite's busy handler) instead of being woken when the lock is
        // released. One connection makes this process's writers queue on the pool instead:
        // fair, and without those sleeps (measured with `herald demo`: p50 commit → handled
        // 27 ms with the default pool of 10, see the note of the foundation issue).
        let mut pool = SqlitePoolOptions::new().max_connections(1);
        if in_memory {
            // An in-memory database lives as long as one of its connections: keep one.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await.store_err("connect")?;
        tracing::debug!(url = %redact_url(url), table = %config.table, "opened sqlite outbox");
        Ok(Self::new(pool, config))
    }

    /// The connection pool, to begin the transactions that record events:
    /// `outbox.pool().begin_with("BEGIN IMMEDIATE")`.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &SqliteOutboxConfig {
        &self.inner.config
    }

    /// Records `event` in the caller's transaction (`&mut *tx`); returns its id. Nothing is
    /// visible to relays before the transaction commits, and nothing is kept if it rolls back.
    pub async fn record<E: Event>(&self, conn: &mut SqliteConnection, event: &E) -> Result<Uuid> {
        self.record_with(conn, event, Metadata::default()).await
    }

    /// Records `event` with `metadata` (correlation, causation, partition key, trace,
    /// headers) in the caller's transaction; returns its id.
    pub async fn record_with<E: Event>(
        &self,
        conn: &mut SqliteConnection,
        event: &E,
        metadata: Metadata,
    ) -> Result<Uuid> {
        let envelope = Envelope::from_event(event, metadata)?;
        self.record_all(conn, std::slice::from_ref(&envelope))
            .await?;
        Ok(envelope.id)
    }

    /// Records already-encoded envelopes in the caller's transaction, with one multi-row
    /// INSERT per 500 envelopes. Their `seq`s increase in slice order.
    pub async fn record_all(
        &self,
        conn: &mut SqliteConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        let now = now_micros();
        for chunk in envelopes.chunks(CHUNK_ROWS) {
            let (sql, persistent) = match chunk.len() {
                1 => (self.inner.insert_one.clone(), true),
                CHUNK_ROWS => (self.inner.insert_chunk.clone(), true),
                // Odd sizes are prepared for this call only, not cached per connection.
                n => (Arc::from(insert_sql(&self.config().quoted(""), n)), false),
            };
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(persistent);
            for envelope in chunk {
                query = bind_envelope(query, envelope)?.bind(now).bind(now);
            }
            query.execute(&mut *conn).await.store_err("record")?;
        }
        Ok(())
    }

    /// Commits `tx` and rings this outbox's [`Signal`], so that relays in this process start
    /// at once (relays in other processes find the rows at their next poll).
    pub async fn commit(&self, tx: sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<()> {
        tx.commit().await.store_err("commit")?;
        self.notify();
        Ok(())
    }
}

/// Connection options for `url`, and whether the database lives in memory.
fn connect_options(url: &str) -> Result<(SqliteConnectOptions, bool)> {
    let redacted = redact_url(url);
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"));
    let options = match path {
        Some(path) if path.is_empty() || path.starts_with('?') => {
            return Err(Error::Config(format!(
                "sqlite url {redacted:?} names no database file"
            )));
        }
        Some(_) => SqliteConnectOptions::from_str(url)
            .map_err(|err| Error::Config(format!("invalid sqlite url {redacted:?}: {err}")))?,
        None if url.contains("://") => {
            return Err(Error::Config(format!(
                "{redacted:?} is not a sqlite url (expected sqlite://path or a file path)"
            )));
        }
        None if url.is_empty() => {
            return Err(Error::Config("empty sqlite database path".to_owned()));
        }
        None => SqliteConnectOptions::new().filename(url),
    };
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    Ok((options, in_memory))
}

/// `INSERT INTO table (envelope columns, recorded_at, available_at) VALUES (…), …` for
/// `rows` rows.
fn insert_sql(table: &str, rows: usize) -> String {
    let one = format!("({})", vec!["?"; PARAMS_PER_ROW].join(", "));
    let values = vec![one.as_str(); rows].join(", ");
    format!("INSERT INTO {table} ({ENVELOPE_COLUMNS}, recorded_at, available_at) VALUES {values}")
}

/// A query on SQLite with its bound arguments.
pub(crate) type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// A query of one of the outbox's prebuilt statements (cached per connection by sqlx).
pub(crate) fn query(sql: &Arc<str>) -> Query<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// Binds the envelope's columns ([`ENVELOPE_COLUMNS`]).
fn bind_envelope<'q>(query: Query<'q>, envelope: &Envelope) -> Result<Query<'q>> {
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

    #[test]
    fn insert_has_one_placeholder_per_value() {
        let sql = insert_sql("\"t\"", 3);
        assert_eq!(sql.matches('?').count(), 3 * PARAMS_PER_ROW);
        let columns = ENVELOPE_COLUMNS.split(',').count() + 2;
        assert_eq!(columns, PARAMS_PER_ROW);
    }

    #[test]
    fn urls_and_paths_are_accepted_or_refused_with_a_config_error() {
        assert!(connect_options("sqlite://herald.db").is_ok());
        assert!(connect_options("sqlite:herald.db?mode=rwc").is_ok());
        assert!(connect_options("/tmp/herald.db").is_ok());
        assert!(connect_options("sqlite::memory:").is_ok_and(|(_, mem)| mem));
        for bad in [
            "",
            "sqlite://",
            "postgres://u:secret@h/db",
            "sqlite://x.db?mode=bogus",
        ] {
            match connect_options(bad) {
                Err(Error::Config(text)) => assert!(!text.contains("secret"), "{text}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
