//! Picking a store by URL scheme at run time.

use std::time::Duration;

use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, DeadLetter, DeadLetters, Failure, OutboxAdmin,
    OutboxStats, OutboxStore, Page, Result, Selection, Seq, Signal, Uuid,
};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};

/// Where the outbox lives and what it is called.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `postgres://…` or `sqlite://…` (or a plain file path).
    pub url: String,
    /// PostgreSQL schema.
    pub schema: String,
    /// Outbox table name.
    pub table: Option<String>,
    /// Delete or archive published rows.
    pub completion: Completion,
}

/// An outbox on whichever backend the URL names.
#[derive(Clone)]
pub enum AnyStore {
    /// PostgreSQL.
    Postgres(PgOutbox),
    /// SQLite.
    Sqlite(SqliteOutbox),
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl AnyStore {
    /// Connects (without migrating).
    pub async fn connect(options: &StoreOptions) -> Result<Self> {
        if is_postgres(&options.url) {
            let mut config = PgOutboxConfig::new(
                &options.schema,
                options.table.as_deref().unwrap_or("outbox"),
            )?;
            config.completion = options.completion;
            Ok(AnyStore::Postgres(
                PgOutbox::connect(&options.url, config).await?,
            ))
        } else {
            let mut config =
                SqliteOutboxConfig::new(options.table.as_deref().unwrap_or("herald_outbox"))?;
            config.completion = options.completion;
            Ok(AnyStore::Sqlite(
                SqliteOutbox::connect(&options.url, config).await?,
            ))
        }
    }

    /// Creates or upgrades the outbox tables.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            AnyStore::Postgres(s) => s.migrate().await,
            AnyStore::Sqlite(s) => s.migrate().await,
        }
    }

    /// Checks that the database answers (one `SELECT 1` on the store's pool).
    pub async fn ping(&self) -> Result<()> {
        let answered = match self {
            AnyStore::Postgres(s) => sqlx::query("SELECT 1").execute(s.pool()).await.map(drop),
            AnyStore::Sqlite(s) => sqlx::query("SELECT 1").execute(s.pool()).await.map(drop),
        };
        answered.map_err(|error| herald_core::Error::store("ping", true, error))
    }

    /// Backend name for messages.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Postgres(_) => "postgres",
            AnyStore::Sqlite(_) => "sqlite",
        }
    }
}

impl OutboxStore for AnyStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        match self {
            AnyStore::Postgres(s) => s.claim(request).await,
            AnyStore::Sqlite(s) => s.claim(request).await,
        }
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        match self {
            AnyStore::Postgres(s) => s.complete(relay_id, seqs).await,
            AnyStore::Sqlite(s) => s.complete(relay_id, seqs).await,
        }
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        match self {
            AnyStore::Postgres(s) => s.fail(relay_id, failures).await,
            AnyStore::Sqlite(s) => s.fail(relay_id, failures).await,
        }
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        match self {
            AnyStore::Postgres(s) => s.release(relay_id, seqs).await,
            AnyStore::Sqlite(s) => s.release(relay_id, seqs).await,
        }
    }

    async fn prune(&self, older_than: Duration, limit: usize) -> Result<u64> {
        match self {
            AnyStore::Postgres(s) => s.prune(older_than, limit).await,
            AnyStore::Sqlite(s) => s.prune(older_than, limit).await,
        }
    }

    fn signal(&self) -> Signal {
        match self {
            AnyStore::Postgres(s) => s.signal(),
            AnyStore::Sqlite(s) => s.signal(),
        }
    }
}

impl OutboxAdmin for AnyStore {
    async fn stats(&self) -> Result<OutboxStats> {
        match self {
            AnyStore::Postgres(s) => s.stats().await,
            AnyStore::Sqlite(s) => s.stats().await,
        }
    }
}

impl DeadLetters for AnyStore {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        match self {
            AnyStore::Postgres(s) => s.dead_letters(page).await,
            AnyStore::Sqlite(s) => s.dead_letters(page).await,
        }
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        match self {
            AnyStore::Postgres(s) => s.replay(which).await,
            AnyStore::Sqlite(s) => s.replay(which).await,
        }
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        match self {
            AnyStore::Postgres(s) => s.purge(which).await,
            AnyStore::Sqlite(s) => s.purge(which).await,
        }
    }
}
