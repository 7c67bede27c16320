//! The shared inbox suite (`herald_testkit::inbox`) against PostgreSQL.

mod common;

use herald_core::Completion;
use herald_postgres::PgOutbox;
use herald_testkit::inbox::InboxFactory;

/// Each inbox lives in a schema of its own (`herald_t_<uuid>`) on the test database.
struct Postgres;

impl InboxFactory for Postgres {
    type Store = PgOutbox;

    async fn create(&self) -> PgOutbox {
        common::outbox(Completion::default()).await
    }

    async fn inbox_rows(&self, store: &PgOutbox) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.outbox_inbox",
            store.config().schema.quoted()
        )))
        .fetch_one(store.pool())
        .await
        .expect("count inbox rows")
    }
}

herald_testkit::inbox_suite!(Postgres);
