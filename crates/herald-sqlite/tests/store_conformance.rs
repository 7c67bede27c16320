//! The store conformance suite of `herald-testkit`, run against SQLite database files.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, DeadLetter, DeadLetters, Envelope, Failure,
    OutboxAdmin, OutboxStats, OutboxStore, Page, Result, Selection, Seq, Signal, Uuid,
};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use herald_testkit::store::StoreFactory;
use tempfile::TempDir;

/// Makes each store in a fresh database file in its own temp dir.
struct SqliteFactory;

/// A [`SqliteOutbox`] that owns the temp dir of its database file: the dir is removed when the
/// last clone is dropped, at the end of each test.
#[derive(Clone)]
struct TempStore {
    outbox: SqliteOutbox,
    _dir: Arc<TempDir>,
}

impl StoreFactory for SqliteFactory {
    type Store = TempStore;

    async fn create(&self, completion: Completion) -> TempStore {
        let dir = tempfile::Builder::new()
            .prefix("herald-sqlite-")
            .tempdir()
            .expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let config = SqliteOutboxConfig::default().with_completion(completion);
        let outbox = SqliteOutbox::connect(&url, config)
            .await
            .expect("open a fresh database file");
        outbox.migrate().await.expect("migrate");
        TempStore {
            outbox,
            _dir: Arc::new(dir),
        }
    }

    async fn record(&self, store: &TempStore, envelopes: &[Envelope], commit: bool) -> Result<()> {
        let outbox = &store.outbox;
        let mut tx = outbox.begin().await.expect("begin");
        tx.record_all(envelopes).await?;
        if commit {
            tx.commit().await
        } else {
            tx.rollback().await.expect("rollback");
            Ok(())
        }
    }

    async fn record_undecodable(&self, store: &TempStore) {
        let table = store.outbox.config().table.quoted();
        let sql = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
             partition_key, content_type, headers, payload, recorded_at, available_at) \
             VALUES ('00000000-0000-7000-8000-0000000000bd', 'bad', -1, 0, \
             '00000000-0000-7000-8000-0000000000bd', 'bad', 'application/json', '{{}}', \
             x'00ff', 0, 0)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(store.outbox.pool())
            .await
            .unwrap();
    }
}

impl OutboxStore for TempStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        self.outbox.claim(request).await
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        self.outbox.complete(relay_id, seqs).await
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        self.outbox.fail(relay_id, failures).await
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        self.outbox.release(relay_id, seqs).await
    }

    async fn prune(&self, older_than: Duration, limit: usize) -> Result<u64> {
        self.outbox.prune(older_than, limit).await
    }

    fn signal(&self) -> Signal {
        self.outbox.signal()
    }
}

impl OutboxAdmin for TempStore {
    async fn stats(&self) -> Result<OutboxStats> {
        self.outbox.stats().await
    }
}

impl DeadLetters for TempStore {
    async fn dead_letters(&self, page: Page) -> Result<Vec<DeadLetter>> {
        self.outbox.dead_letters(page).await
    }

    async fn replay(&self, which: Selection) -> Result<u64> {
        self.outbox.replay(which).await
    }

    async fn purge(&self, which: Selection) -> Result<u64> {
        self.outbox.purge(which).await
    }
}

herald_testkit::store_suite!(SqliteFactory);
