//! `herald outbox dead-letters | replay | purge` on PostgreSQL (`HERALD_TEST_DATABASE_URL`),
//! with a dead letter whose envelope no longer decodes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Output;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Runs `sql` with `id` bound as `$1`, if given.
async fn execute(url: &str, sql: String, id: Option<uuid::Uuid>) {
    let mut connection = PgConnection::connect(url).await.unwrap();
    let mut query = sqlx::query(AssertSqlSafe(sql));
    if let Some(id) = id {
        query = query.bind(id);
    }
    query.execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_an_undecodable_row_on_postgres() {
    let url = herald_testkit::env::database_url();
    let schema = format!("herald_cli_{}", uuid::Uuid::now_v7().simple());
    let db = ["--database", url.as_str(), "--schema", schema.as_str()];
    let outbox = |rest: &[&str]| -> Output {
        let args: Vec<&str> = ["outbox"].iter().chain(&db).chain(rest).copied().collect();
        herald(&args)
    };
    let migrate: Vec<&str> = ["migrate"].iter().chain(&db).copied().collect();
    let out = herald(&migrate);
    assert!(out.status.success(), "{}", text(&out));

    // A row that something else wrote, dead-lettered by a relay: its version is negative.
    let id = uuid::Uuid::now_v7();
    execute(
        &url,
        format!(
            "INSERT INTO \"{schema}\".\"outbox_dead_letters\" (seq, id, event_type, version, \
             occurred_at, correlation_id, partition_key, content_type, headers, payload, \
             recorded_at, attempts, last_error) \
             VALUES (1, $1, 'bad', -1, now(), $1, 'k', 'application/json', '{{}}', \
             '\\x00ff', now(), 1, 'malformed row: version -1')"
        ),
        Some(id),
    )
    .await;

    let out = outbox(&["dead-letters"]);
    let all = text(&out);
    assert!(out.status.success(), "listing fails:\n{all}");
    assert!(all.contains(&id.to_string()), "{all}");
    assert!(all.contains("does not decode"), "{all}");
    assert!(all.contains("event_type=bad"), "{all}");
    assert!(all.contains("malformed row: version -1"), "{all}");

    let out = outbox(&["dead-letters", "--offset", "1"]);
    assert!(text(&out).contains("no dead letters"), "{}", text(&out));

    let id_text = id.to_string();
    let out = outbox(&["purge", "--dead-letters", "--id", &id_text]);
    assert!(text(&out).contains("purged 1"), "{}", text(&out));
    let out = outbox(&["dead-letters"]);
    assert!(text(&out).contains("no dead letters"), "{}", text(&out));

    execute(&url, format!("DROP SCHEMA \"{schema}\" CASCADE"), None).await;
}
