//! Upgrading an outbox with relays' leases in flight: migration 5 moves the leases from the rows
//! to claims, so that a relay running the new code neither hands out a leased row again nor
//! lets another key's order slip, and attempts keep their count.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use herald_core::{ClaimRequest, OutboxStore};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_testkit::envelope;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// The migrations before version 5, as `PgOutbox::migrate` applied them.
const BEFORE_CLAIMS: [(i32, &str, &str); 4] = [
    (1, "outbox", include_str!("../migrations/0001_outbox.sql")),
    (2, "inbox", include_str!("../migrations/0002_inbox.sql")),
    (
        3,
        "inbox key holds",
        include_str!("../migrations/0003_held_keys.sql"),
    ),
    (
        4,
        "lease index by relay",
        include_str!("../migrations/0004_lease_by_relay.sql"),
    ),
];

/// An outbox at version 4 in a fresh schema.
async fn outbox_at_version_4() -> PgOutbox {
    let schema = common::fresh_schema();
    let pool = common::pool().await;
    let mut sql = format!(
        "CREATE SCHEMA \"{schema}\"; \
         CREATE TABLE \"{schema}\".\"outbox_migrations\" ( \
             version integer PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for (version, name, template) in BEFORE_CLAIMS {
        sql.push_str(
            &template
                .replace("{schema}", &schema)
                .replace("{table}", "outbox"),
        );
        sql.push_str(&format!(
            ";\nINSERT INTO \"{schema}\".\"outbox_migrations\" (version, name) \
             VALUES ({version}, '{name}');\n"
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    PgOutbox::new(pool, PgOutboxConfig::new(&schema, "outbox").unwrap())
}

fn request(relay_id: Uuid) -> ClaimRequest {
    ClaimRequest {
        relay_id,
        limit: 10,
        lease: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn leases_live_at_the_upgrade_become_claims_and_keep_their_keys_blocked() {
    let outbox = outbox_at_version_4().await;
    let table = format!("{}.\"outbox\"", outbox.config().schema.quoted());
    let mut tx = outbox.begin().await.unwrap();
    tx.record_all(&[
        envelope("a", 0),
        envelope("a", 1),
        envelope("b", 0),
        envelope("c", 0),
    ])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Version 4's state: relay `old` holds a:0 under a live lease (its first attempt); `gone`'s
    // lease on b:0 ran out (counted when it was taken); c:0 was never claimed.
    let (old, gone) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {table} SET attempts = 1, locked_by = '{old}', \
             locked_until = now() + interval '1 minute' \
         WHERE partition_key = 'a' AND seq = (SELECT min(seq) FROM {table}); \
         UPDATE {table} SET attempts = 1, locked_by = '{gone}', \
             locked_until = now() - interval '1 minute' \
         WHERE partition_key = 'b'"
    )))
    .execute(outbox.pool())
    .await
    .unwrap();

    outbox.migrate().await.unwrap();

    // Another relay gets neither a:0 (held) nor a:1 (its key is blocked); b:0 with its first
    // attempt counted, and c:0.
    let other = Uuid::now_v7();
    let taken = outbox.claim(&request(other)).await.unwrap();
    let got: Vec<(String, u32)> = taken
        .iter()
        .map(|c| (c.envelope.partition_key.clone().unwrap(), c.attempts))
        .collect();
    assert_eq!(got, vec![("b".to_owned(), 2), ("c".to_owned(), 1)]);

    // The old relay's write-back still lands: a:0 completes under its claim.
    let a0 = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "SELECT min(seq) FROM {table} WHERE partition_key = 'a'"
    )))
    .fetch_one(outbox.pool())
    .await
    .unwrap();
    assert_eq!(outbox.complete(old, &[a0]).await.unwrap(), 1);
    let next = outbox.claim(&request(other)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].envelope.partition_key.as_deref(), Some("a"));
    assert_eq!(next[0].attempts, 1);
    common::drop_schema(&outbox).await;
}
