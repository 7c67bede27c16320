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
}

herald_testkit::store_suite!(Postgres);
