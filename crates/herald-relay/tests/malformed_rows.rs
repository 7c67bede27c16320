//! Rows that something other than Herald wrote into the outbox (another language, a manual
//! `INSERT`) with values no envelope can hold: the relay dead-letters each with the reason and
//! keeps publishing the good rows around it, on PostgreSQL and on SQLite.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use herald_core::{OutboxAdmin, OutboxStore, Subscriber, Uuid};
use herald_memory::MemoryTransport;
use herald_relay::Relay;
use herald_testkit::{envelope, interleaved};

/// Runs a relay on `store` until every one of `good` was published (it fails otherwise),
/// then stops it.
async fn publish_all<'a, St: OutboxStore + Clone>(
    store: St,
    good: impl Iterator<Item = &'a herald_core::Envelope>,
) {
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let relay = Relay::new(store, transport.clone(), fast_config()).unwrap();
    let (shutdown, running) = spawn_relay(relay);

    let expected: HashSet<Uuid> = good.map(|e| e.id).collect();
    let seen: HashSet<Uuid> = collect(&mut stream, expected.len(), Duration::from_secs(60))
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(seen, expected, "every good row published");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_postgres_rows_are_dead_lettered_with_the_reason_and_good_rows_flow() {
    let store = pg_store().await;
    let table = format!(
        "{}.{}",
        store.config().schema.quoted(),
        store.config().table.quoted()
    );
    let before = vec![envelope("k", 0)];
    record_pg(&store, &before).await;
    // A negative version, and headers that are not an object of strings, on the same key as
    // good rows before and after them.
    for (version, headers) in [(-1, "{}"), (1, r#"{"n": 1}"#), (1, "[1, 2]")] {
        let sql = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
             partition_key, content_type, headers, payload) \
             VALUES (gen_random_uuid(), 'bad', $1, now(), gen_random_uuid(), 'k', \
             'application/json', $2::jsonb, '\\x00ff'::bytea)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(version)
            .bind(headers)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let mut after = vec![envelope("k", 1)];
    after.extend(interleaved(10, 5));
    record_pg(&store, &after).await;

    publish_all(store.clone(), before.iter().chain(&after)).await;

    let reasons: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT last_error FROM {}.{} ORDER BY seq",
        store.config().schema.quoted(),
        herald_core::Identifier::parse("table", &format!("{}_dead_letters", store.config().table))
            .unwrap()
            .quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        reasons.len(),
        3,
        "each malformed row dead-lettered: {reasons:?}"
    );
    for reason in &reasons {
        assert!(reason.starts_with("malformed row: "), "{reason}");
    }
    assert!(reasons[0].contains("version"), "{}", reasons[0]);
    assert!(reasons[1].contains("headers"), "{}", reasons[1]);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight + stats.retrying, 0);
    assert_eq!(stats.dead_lettered, 3);
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sqlite_rows_are_dead_lettered_with_the_reason_and_good_rows_flow() {
    let (_dir, store) = sqlite_store().await;
    let table = store.config().table.quoted();
    let before = vec![envelope("k", 0)];
    record_sqlite(&store, &before).await;
    // An id that is not a UUID, headers that are not JSON, headers of the wrong JSON type,
    // a version that is text, a negative version.
    let rows: [(&str, &str, &str); 5] = [
        ("not-a-uuid", "1", "{}"),
        ("00000000-0000-7000-8000-000000000001", "1", "{not json"),
        ("00000000-0000-7000-8000-000000000002", "1", r#"{"n": [1]}"#),
        ("00000000-0000-7000-8000-000000000003", "'one'", "{}"),
        ("00000000-0000-7000-8000-000000000004", "-5", "{}"),
    ];
    for (id, version, headers) in rows {
        let sql = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
             partition_key, content_type, headers, payload, recorded_at, available_at) \
             VALUES ($1, 'bad', {version}, 0, $1, 'k', 'application/json', $2, x'00ff', 0, 0)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(headers)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let mut after = vec![envelope("k", 1)];
    after.extend(interleaved(10, 5));
    record_sqlite(&store, &after).await;

    publish_all(store.clone(), before.iter().chain(&after)).await;

    let dead =
        herald_core::Identifier::parse("table", &format!("{}_dead_letters", store.config().table))
            .unwrap()
            .quoted();
    let reasons: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT last_error FROM {dead} ORDER BY seq"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        reasons.len(),
        5,
        "each malformed row dead-lettered: {reasons:?}"
    );
    for reason in &reasons {
        assert!(reason.starts_with("malformed row: "), "{reason}");
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight + stats.retrying, 0);
    assert_eq!(stats.dead_lettered, 5);
}
