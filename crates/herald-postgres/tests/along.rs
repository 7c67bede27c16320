//! `PgOutbox::record_along`: the event rides the caller's own statement, and `with_pool`
//! handles share the outbox and its doorbell.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use herald_core::{ClaimRequest, Completion, Error, Event, Metadata, OutboxStore};
use herald_postgres::PgOutbox;
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    total_cents: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "ordering.order_placed";

    fn partition_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order_id))
    }
}

async fn outbox_with_orders() -> (PgOutbox, String) {
    let outbox = common::outbox(Completion::Delete).await;
    let orders = format!("{}.\"orders\"", outbox.config().schema.quoted());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id bigint PRIMARY KEY, total_cents bigint NOT NULL CHECK (total_cents >= 0))"
    )))
    .execute(outbox.pool())
    .await
    .unwrap();
    (outbox, orders)
}

async fn count(outbox: &PgOutbox, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(outbox.pool())
        .await
        .unwrap()
}

fn outbox_table(outbox: &PgOutbox) -> String {
    format!("{}.\"outbox\"", outbox.config().schema.quoted())
}

async fn claim_all(outbox: &PgOutbox) -> Vec<herald_core::ClaimedEvent> {
    outbox
        .claim(&ClaimRequest {
            relay_id: Uuid::now_v7(),
            limit: 100,
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_event_and_the_business_row_commit_in_one_statement_or_roll_back_together() {
    let (outbox, orders) = outbox_with_orders().await;
    let insert = format!("INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)");
    let order = OrderPlaced {
        order_id: 7,
        total_cents: 4_999,
    };

    let mut tx = outbox.pool().begin().await.unwrap();
    let along = outbox
        .record_along_with(
            &mut tx,
            sqlx::query(AssertSqlSafe(insert.clone()))
                .bind(order.order_id)
                .bind(order.total_cents),
            &order,
            Metadata::default().with_header("source", "along"),
        )
        .await
        .unwrap();
    assert_eq!(along.rows_affected, 1, "the caller's row only");
    tx.rollback().await.unwrap();
    assert_eq!(count(&outbox, &orders).await, 0);
    assert_eq!(
        count(&outbox, &outbox_table(&outbox)).await,
        0,
        "rollback drops the event"
    );

    let mut tx = outbox.pool().begin().await.unwrap();
    let along = outbox
        .record_along_with(
            &mut tx,
            sqlx::query(AssertSqlSafe(insert))
                .bind(order.order_id)
                .bind(order.total_cents),
            &order,
            Metadata::default().with_header("source", "along"),
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(count(&outbox, &orders).await, 1);
    let claimed = claim_all(&outbox).await;
    assert_eq!(claimed.len(), 1);
    let envelope = &claimed[0].envelope;
    assert_eq!(envelope.id, along.id);
    assert_eq!(envelope.event_type, OrderPlaced::TYPE);
    assert_eq!(envelope.partition_key.as_deref(), Some("order-7"));
    assert_eq!(
        envelope.headers.get("source").map(String::as_str),
        Some("along")
    );
    assert_eq!(envelope.decode::<OrderPlaced>().unwrap(), order);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn a_failing_statement_records_nothing_and_a_statement_with_its_own_with_list_works() {
    let (outbox, orders) = outbox_with_orders().await;
    // The CHECK constraint fails: the statement, event included, is undone.
    let mut tx = outbox.pool().begin().await.unwrap();
    let bad = OrderPlaced {
        order_id: 1,
        total_cents: -1,
    };
    let err = outbox
        .record_along(
            &mut tx,
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)"
            )))
            .bind(bad.order_id)
            .bind(bad.total_cents),
            &bad,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!err.is_transient());
    tx.rollback().await.unwrap();

    // Its own WITH list, a placeholder inside it and one outside; an UPDATE of no row still
    // records the event (a data-modifying WITH clause runs once): rows_affected tells.
    let mut tx = outbox.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id, total_cents) VALUES (2, 10)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let statement = format!(
        "WITH price AS (SELECT $1::bigint AS cents) \
         UPDATE {orders} SET total_cents = (SELECT cents FROM price) WHERE id = $2"
    );
    let changed = OrderPlaced {
        order_id: 2,
        total_cents: 20,
    };
    let hit = outbox
        .record_along(
            &mut tx,
            sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(20_i64)
                .bind(2_i64),
            &changed,
        )
        .await
        .unwrap();
    let miss = outbox
        .record_along(
            &mut tx,
            sqlx::query(AssertSqlSafe(statement))
                .bind(30_i64)
                .bind(99_i64),
            &changed,
        )
        .await
        .unwrap();
    assert_eq!((hit.rows_affected, miss.rows_affected), (1, 0));
    outbox.commit(tx).await.unwrap();
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT total_cents FROM {orders} WHERE id = 2"
    )))
    .fetch_one(outbox.pool())
    .await
    .unwrap();
    assert_eq!(total, 20);
    let ids: Vec<Uuid> = claim_all(&outbox)
        .await
        .iter()
        .map(|c| c.envelope.id)
        .collect();
    assert_eq!(ids, vec![hit.id, miss.id]);

    // A leading comment is refused before anything is sent.
    let mut conn = outbox.pool().acquire().await.unwrap();
    let err = outbox
        .record_along(&mut conn, sqlx::query("-- why\nSELECT 1"), &changed)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn a_handle_on_another_pool_shares_the_outbox_and_its_doorbell() {
    let outbox = common::outbox(Completion::Delete).await;
    let relay_side = outbox.with_pool(common::pool().await);
    let mut wakeups = relay_side.signal().subscribe();
    wakeups.mark_seen();

    let mut tx = outbox.pool().begin().await.unwrap();
    let id = outbox
        .record(
            &mut tx,
            &OrderPlaced {
                order_id: 1,
                total_cents: 1,
            },
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), wakeups.rung())
        .await
        .expect("a commit through one handle rings the other's doorbell");
    let claimed = claim_all(&relay_side).await;
    assert_eq!(
        claimed.iter().map(|c| c.envelope.id).collect::<Vec<_>>(),
        vec![id]
    );
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn the_relays_write_backs_leave_the_pooled_connection_committing_synchronously() {
    // One connection: the application's next transaction runs on the very connection the
    // relay's completion, failure and release statements used.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&common::database_url())
        .await
        .unwrap();
    let outbox = common::outbox(Completion::Delete)
        .await
        .with_pool(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    for order_id in 0..3 {
        outbox
            .record(
                &mut tx,
                &OrderPlaced {
                    order_id,
                    total_cents: 1,
                },
            )
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let relay = Uuid::now_v7();
    let claimed = outbox
        .claim(&ClaimRequest {
            relay_id: relay,
            limit: 10,
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let seqs: Vec<_> = claimed.iter().map(|c| c.seq).collect();
    assert_eq!(outbox.complete(relay, &seqs[..1]).await.unwrap(), 1);
    outbox
        .fail(
            relay,
            &[herald_core::Failure {
                seq: seqs[1],
                error: "nack".into(),
                disposition: herald_core::Disposition::Retry {
                    delay: Duration::from_secs(60),
                },
            }],
        )
        .await
        .unwrap();
    outbox.release(relay, &seqs[2..]).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "on");
    let left: Vec<(i64, i32, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT seq, attempts, last_error FROM {} ORDER BY seq",
        outbox_table(&outbox)
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![(seqs[1], 1, Some("nack".to_owned())), (seqs[2], 0, None)],
        "completed row gone, failed row rescheduled with its error, released row as new"
    );
    common::drop_schema(&outbox).await;
}
