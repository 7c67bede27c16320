//! The shared store suite (`herald_testkit::store`) against PostgreSQL.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use herald_core::{Completion, Envelope, Result};
use herald_postgres::PgOutbox;
use herald_testkit::store::StoreFactory;

/// Each store lives in a schema of its own (`herald_t_<uuid>`) on the test database.
struct Postgres;

impl StoreFactory for Postgres {
    type Store = PgOutbox;

    async fn create(&self, completion: Completion) -> PgOutbox {
        common::outbox(completion).await
    }

    async fn record(&self, store: &PgOutbox, envelopes: &[Envelope], commit: bool) -> Result<()> {
        let mut tx = store.begin().await?;
        tx.record_all(envelopes).await?;
        if commit {
            tx.commit().await
        } else {
            tx.rollback().await
        }
    }

    async fn record_undecodable(&self, store: &PgOutbox) {
        let table = format!(
            "{}.{}",
            store.config().schema.quoted(),
            store.config().table.quoted()
        );
        let sql = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
             partition_key, content_type, headers, payload) \
             VALUES (gen_random_uuid(), 'bad', -1, now(), gen_random_uuid(), 'bad', \
             'application/json', '{{}}'::jsonb, '\\x00ff'::bytea)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

herald_testkit::store_suite!(Postgres);
