//! The [`PgOutbox`] handle: its pool, configuration and prepared statements, shared by the
//! write path ([`crate::PgOutboxTx`]), the relays' claims and the operators' queries.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::error::Message;
use herald_core::redact::redact_url;
use herald_core::{Error, Result, Signal};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::PgOutboxConfig;
use crate::error::{ResultExt, is_transient, scrub_all, url_secrets};
use crate::notifier::Notifier;
use crate::statements::Statements;
use crate::watermark::Watermark;

/// How long [`PgOutbox::connect`] waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL outbox: records events in transactions it opens ([`begin`](Self::begin)) or
/// adopts ([`adopt`](Self::adopt)), and serves relays ([`OutboxStore`](herald_core::OutboxStore))
/// and operators ([`OutboxAdmin`](herald_core::OutboxAdmin)).
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
    /// Every statement, built once from `config`.
    pub(crate) sql: Statements,
    /// Where the claim's scan starts (see [`crate::watermark`]).
    pub(crate) watermark: Watermark,
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
                sql: Statements::new(&config),
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

    /// A handle on the same outbox with a pool of its own of at most `max_connections`
    /// connections to the same database (same options, same scrubbed password), sharing this
    /// handle's doorbell: [`with_pool`](Self::with_pool) without opening the pool yourself.
    /// Connections are opened on first use.
    pub fn with_pool_size(&self, max_connections: u32) -> Self {
        let options = (*self.inner.pool.connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        self.with_pool(pool)
    }

    /// Opens up to `connections` pooled connections now (no more than the pool's maximum), so
    /// that a relay's first claims and write-backs do not wait for them. Opening a connection
    /// costs sqlx tens of milliseconds with `scram-sha-256` authentication (the key derivation
    /// runs in the client: ~90 ms on the 2-core benchmark machine), and a relay opens one for
    /// its claims, one for its write-backs and one for the watermark's maintenance as its
    /// pipeline fills; they stay open while used (sqlx closes them after ten idle minutes).
    ///
    /// A server that cannot be reached is a transient store error (`connect`).
    pub async fn warm_up(&self, connections: u32) -> Result<()> {
        let pool = &self.inner.pool;
        let wanted = connections.min(pool.options().get_max_connections());
        // Opened side by side, and all held until the last is open: a connection released
        // early would be handed to the next acquire instead of a new one being opened.
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..wanted {
            let pool = pool.clone();
            opening.spawn(async move { pool.acquire().await });
        }
        let mut opened = Vec::with_capacity(opening.len());
        while let Some(joined) = opening.join_next().await {
            match joined {
                Ok(conn) => opened.push(conn.store_err("connect", &self.inner.secrets)?),
                Err(err) => {
                    return Err(Error::store("connect", true, Message(err.to_string())));
                }
            }
        }
        Ok(())
    }

    /// Connects to `url` (`postgres://user:password@host/db`) with a pool of default size.
    ///
    /// A malformed URL is [`Error::Config`]; a server that cannot be reached is a transient
    /// store error (`connect`). No error carries the password.
    ///
    /// Its connections run with `jit = off`: Herald's statements are short, and a claim
    /// planned from statistics taken mid-drain can cost more to compile than to run. (A pool
    /// of your own given to [`new`](Self::new) or [`with_pool`](Self::with_pool) for a relay
    /// should do the same: `PgConnectOptions::options([("jit", "off")])`.)
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
        // Herald's statements are short: JIT compilation never pays for itself on them, and a
        // planner misled by statistics taken mid-drain (leases counted that are long gone) has
        // been seen to compile every claim, about 370 ms each, cutting a relay's drain rate
        // to a third.
        let options = options.options([("jit", "off")]);

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

    /// The connection pool, for the application's other queries (events are recorded in
    /// transactions from [`begin`](Self::begin) or [`adopt`](Self::adopt)).
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
