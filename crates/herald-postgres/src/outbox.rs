//! The write path and the [`PgOutbox`] handle.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::error::Message;
use herald_core::redact::redact_url;
use herald_core::{Envelope, Error, Event, Headers, Metadata, Result, Signal, TraceContext};
use sqlx::postgres::{PgArguments, PgBindIterExt, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Arguments as _, Execute as _};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::admin::AdminSql;
use crate::claim::ClaimSql;
use crate::config::PgOutboxConfig;
use crate::error::{ResultExt, is_transient, scrub_all, url_secrets};
use crate::notify::Notifier;
use crate::watermark::Watermark;

/// How long [`PgOutbox::connect`] waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The envelope columns, in the order [`envelope_from_row`] and the inserts use them.
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

/// A PostgreSQL outbox: records events in the caller's transaction, and serves relays
/// ([`OutboxStore`](herald_core::OutboxStore)) and operators
/// ([`OutboxAdmin`](herald_core::OutboxAdmin)).
///
/// Cheap to clone: clones share the pool, the prepared SQL and the [`Signal`].
#[derive(Clone)]
pub struct PgOutbox {
    pub(crate) inner: Arc<Inner>,
}

/// What clones of a [`PgOutbox`] share.
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PgOutboxConfig,
    /// The connection password, when known, scrubbed from every error.
    pub(crate) secrets: Vec<String>,
    pub(crate) signal: Signal,
    pub(crate) notifier: Notifier,
    pub(crate) channel: Arc<str>,
    pub(crate) record: RecordSql,
    pub(crate) claim: ClaimSql,
    pub(crate) admin: AdminSql,
    /// Where the claim's scan starts (see [`crate::watermark`]).
    pub(crate) watermark: Watermark,
}

/// The statements of the write path.
pub(crate) struct RecordSql {
    one: Arc<str>,
    many: Arc<str>,
    /// The `INSERT … VALUES (` of [`PgOutbox::record_along`], placeholders to follow.
    along: Arc<str>,
}

/// What [`PgOutbox::record_along`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Along {
    /// The recorded event's id.
    pub id: Uuid,
    /// Rows the caller's statement affected (the event's row not counted).
    pub rows_affected: u64,
}

/// The name of the event's `WITH` clause in [`PgOutbox::record_along`].
const ALONG_CLAUSE: &str = "herald_outbox_record";

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

/// Binds an envelope's values in [`ENVELOPE_COLUMNS`] order (after any already in `args`).
fn bind_envelope(
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

impl RecordSql {
    fn new(config: &PgOutboxConfig) -> Self {
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
}

impl PgOutbox {
    /// An outbox on `pool`. Run [`migrate`](Self::migrate) once before use.
    pub fn new(pool: PgPool, config: PgOutboxConfig) -> Self {
        Self::with_secrets(pool, config, Vec::new())
    }

    fn with_secrets(pool: PgPool, config: PgOutboxConfig, secrets: Vec<String>) -> Self {
        Self::build(pool, config, secrets, Signal::new())
    }

    fn build(pool: PgPool, config: PgOutboxConfig, secrets: Vec<String>, signal: Signal) -> Self {
        let channel: Arc<str> = config.channel().into();
        PgOutbox {
            inner: Arc::new(Inner {
                notifier: Notifier::new(pool.clone(), channel.clone(), secrets.clone()),
                record: RecordSql::new(&config),
                claim: ClaimSql::new(&config),
                admin: AdminSql::new(&config),
                watermark: Watermark::new(&config),
                signal,
                channel,
                secrets,
                pool,
                config,
            }),
        }
    }

    /// A handle on the same outbox whose own statements run on `pool`, sharing this handle's
    /// in-process doorbell: a commit through either wakes relays of both.
    ///
    /// Give a relay (or a consumer's inbox) that runs in the application's process a small
    /// pool of its own: on a shared pool, a burst of writers waiting for connections queues the
    /// relay's claims and write-backs behind them, and the backlog they leave makes the next
    /// claims larger and slower still.
    pub fn with_pool(&self, pool: PgPool) -> Self {
        Self::build(
            pool,
            self.inner.config.clone(),
            self.inner.secrets.clone(),
            self.inner.signal.clone(),
        )
    }

    /// Connects to `url` (`postgres://user:password@host/db`) with a pool of default size.
    ///
    /// A malformed URL is [`Error::Config`]; a server that cannot be reached is a transient
    /// store error (`connect`). No error carries the password.
    pub async fn connect(url: &str, config: PgOutboxConfig) -> Result<Self> {
        let secrets = url_secrets(url);
        // Text that is not a URL is never echoed: it may be a key=value DSN with a password.
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(Error::Config(
                "database url is not a url (expected postgres://user@host/database)".into(),
            ));
        };
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(Error::Config(format!(
                "database url scheme {:?} is not postgres",
                scrub_all(scheme, &secrets)
            )));
        }
        let options = PgConnectOptions::from_str(url).map_err(|err| {
            Error::Config(format!(
                "invalid database url {}: {}",
                redact_url(url),
                scrub_all(&herald_core::error::error_chain(&err), &secrets)
            ))
        })?;

        // One direct attempt first: a pool retries a refused connection until its acquire
        // timeout and then reports only that it timed out.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                Error::store(
                    "connect",
                    true,
                    Message(format!(
                        "no connection to {} within {CONNECT_TIMEOUT:?}",
                        redact_url(url)
                    )),
                )
            })?
            .map_err(|err| {
                let transient = is_transient(&err);
                let text = scrub_all(&herald_core::error::error_chain(&err), &secrets);
                Error::store(
                    "connect",
                    transient,
                    Message(format!("{}: {text}", redact_url(url))),
                )
            })?;
        if let Err(err) = probe.close().await {
            tracing::debug!(error = %scrub_all(&err.to_string(), &secrets), "closing probe connection");
        }

        let pool = PgPoolOptions::new()
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self::with_secrets(pool, config, secrets))
    }

    /// The connection pool (to begin the transactions that record events).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration.
    pub fn config(&self) -> &PgOutboxConfig {
        &self.inner.config
    }

    /// The LISTEN/NOTIFY channel of this outbox.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Creates or upgrades the schema and tables. Idempotent and safe to run concurrently.
    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(&self.inner.pool, &self.inner.config, &self.inner.secrets).await
    }

    /// Records `event` in the caller's transaction (pass `&mut *tx`): one INSERT. Returns the
    /// event's id. The event is published only if the transaction commits.
    pub async fn record<E: Event>(&self, conn: &mut PgConnection, event: &E) -> Result<Uuid> {
        self.record_with(conn, event, Metadata::default()).await
    }

    /// Like [`record`](Self::record), with correlation, causation, key, trace or headers.
    pub async fn record_with<E: Event>(
        &self,
        conn: &mut PgConnection,
        event: &E,
        metadata: Metadata,
    ) -> Result<Uuid> {
        let envelope = Envelope::from_event(event, metadata)?;
        self.insert_one(conn, &envelope).await?;
        Ok(envelope.id)
    }

    /// Records `event` in the same statement as `statement`, the caller's own write (an
    /// `INSERT`, `UPDATE`, `DELETE` or `SELECT` built with [`sqlx::query`] and its binds):
    /// the event's INSERT becomes a data-modifying `WITH` clause of that statement, so the
    /// event costs no round trip of its own. The caller's placeholders (`$1`…) keep their
    /// numbers; the event's values are bound after them. A statement that already begins with
    /// `WITH` (or `WITH RECURSIVE`) gets the event's clause first in its list.
    ///
    /// PostgreSQL runs a data-modifying `WITH` clause exactly once, whether or not the
    /// statement affects a row: check [`Along::rows_affected`] and roll back if the business
    /// write did not happen. If the statement fails, neither is written (and the transaction
    /// is aborted, as with any failed statement). Commit with [`commit`](Self::commit).
    ///
    /// Measured by `herald-bench` (B1): one order INSERT + commit, the event recorded by
    /// [`record`](Self::record) costs one more round trip; recorded along, a fraction of that.
    ///
    /// Errors: a statement that begins with a comment is [`Error::Config`] (the clause must
    /// go before its first keyword); an argument that cannot be encoded, or any database
    /// error, is a store error, never with the connection's password.
    pub async fn record_along<'q, E: Event>(
        &self,
        conn: &mut PgConnection,
        statement: Query<'q, Postgres, PgArguments>,
        event: &E,
    ) -> Result<Along> {
        self.record_along_with(conn, statement, event, Metadata::default())
            .await
    }

    /// Like [`record_along`](Self::record_along), with correlation, causation, key, trace or
    /// headers.
    pub async fn record_along_with<'q, E: Event>(
        &self,
        conn: &mut PgConnection,
        mut statement: Query<'q, Postgres, PgArguments>,
        event: &E,
        metadata: Metadata,
    ) -> Result<Along> {
        let secrets = &self.inner.secrets;
        let envelope = Envelope::from_event(event, metadata)?;
        let mut args = statement
            .take_arguments()
            .map_err(sqlx::Error::Encode)
            .store_err("record", secrets)?
            .unwrap_or_default();
        let first = args.len() + 1;
        let sql = along_sql(&self.inner.record.along, statement.sql().as_str(), first)?;
        let version = version_column(envelope.version)?;
        bind_envelope(&mut args, &envelope, version)
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

    /// Records `envelopes` in the caller's transaction with one multi-row INSERT; they get
    /// increasing positions in slice order.
    pub async fn record_all(&self, conn: &mut PgConnection, envelopes: &[Envelope]) -> Result<()> {
        match envelopes {
            [] => Ok(()),
            [one] => self.insert_one(conn, one).await,
            many => self.insert_many(conn, many).await,
        }
    }

    /// Commits `tx`, then [`notify`](Self::notify)s the relays.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<()> {
        tx.commit().await.store_err("commit", &self.inner.secrets)?;
        self.notify();
        Ok(())
    }

    /// Tells relays that work was committed: rings this process's [`Signal`] at once, and has a
    /// background task send one `NOTIFY` on a pooled connection for other processes (at most
    /// one per few milliseconds, however often this is called). Call it after committing;
    /// it never touches the caller's transaction.
    pub fn notify(&self) {
        self.inner.signal.ring();
        self.inner.notifier.request();
    }

    /// Listens for other processes' notifications on this outbox's channel and rings
    /// [`signal`](herald_core::OutboxStore::signal) on each, until `shutdown` is cancelled.
    /// Reconnects with backoff after errors, and rings once after every (re)connection,
    /// since notifications may have been missed meanwhile. Holds one pooled connection.
    pub fn listen(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::notify::listen(
            self.inner.pool.clone(),
            self.inner.channel.clone(),
            self.inner.signal.clone(),
            self.inner.secrets.clone(),
            shutdown,
        ))
    }

    async fn insert_one(&self, conn: &mut PgConnection, e: &Envelope) -> Result<()> {
        let secrets = &self.inner.secrets;
        let mut args = PgArguments::default();
        bind_envelope(&mut args, e, version_column(e.version)?)
            .map_err(sqlx::Error::Encode)
            .store_err("record", secrets)?;
        sqlx::query_with(AssertSqlSafe(self.inner.record.one.clone()), args)
            .execute(conn)
            .await
            .store_err("record", secrets)?;
        Ok(())
    }

    async fn insert_many(&self, conn: &mut PgConnection, envs: &[Envelope]) -> Result<()> {
        let versions = envs
            .iter()
            .map(|e| version_column(e.version))
            .collect::<Result<Vec<i32>>>()?;
        sqlx::query(AssertSqlSafe(self.inner.record.many.clone()))
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
            .store_err("record", &self.inner.secrets)?;
        Ok(())
    }
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("schema", &self.inner.config.schema)
            .field("table", &self.inner.config.table)
            .field("completion", &self.inner.config.completion)
            .finish_non_exhaustive()
    }
}

fn version_column(version: u32) -> Result<i32> {
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
