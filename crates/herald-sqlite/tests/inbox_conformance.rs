//! The inbox conformance suite of `herald-testkit`, run against SQLite database files.

use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use herald_testkit::inbox::InboxFactory;
use tempfile::TempDir;

/// Makes each test's inbox in a fresh database file, in a temp dir that lives as long as the
/// factory: the test.
struct SqliteFactory {
    dir: TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-sqlite-inbox-")
            .tempdir()
            .expect("temp dir");
        SqliteFactory { dir }
    }
}

impl InboxFactory for SqliteFactory {
    type Store = SqliteOutbox;

    async fn create(&self) -> SqliteOutbox {
        let url = format!("sqlite://{}", self.dir.path().join("inbox.db").display());
        let outbox = SqliteOutbox::connect(&url, SqliteOutboxConfig::default())
            .await
            .expect("open a fresh database file");
        outbox.migrate().await.expect("migrate");
        outbox
    }

    async fn inbox_rows(&self, store: &SqliteOutbox) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM herald_outbox_inbox")
            .fetch_one(store.pool())
            .await
            .expect("count inbox rows")
    }
}

herald_testkit::inbox_suite!(SqliteFactory::new());
