//! PostgreSQL-specific behaviour: the write path in the caller's transaction, migrations,
//! configuration and connection errors, and cross-process wake-ups.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use herald_core::error::error_chain;
use herald_core::{ClaimRequest, Completion, Error, Event, Metadata, OutboxAdmin, OutboxStore};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;
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

/// An outbox plus a business table `orders` in the same schema.
async fn outbox_with_orders() -> (PgOutbox, String) {
    let outbox = common::outbox(Completion::Delete).await;
    let orders = format!("{}.\"orders\"", outbox.config().schema.quoted());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id bigint PRIMARY KEY, total_cents bigint NOT NULL)"
    )))
    .execute(outbox.pool())
    .await
    .expect("create orders");
    (outbox, orders)
}

async fn place_order(outbox: &PgOutbox, orders: &str, order: &OrderPlaced, commit: bool) -> Uuid {
    let mut tx = outbox.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)"
    )))
    .bind(order.order_id)
    .bind(order.total_cents)
    .execute(&mut *tx)
    .await
    .expect("insert order");
    let id = outbox
        .record_with(
            &mut tx,
            order,
            Metadata::default().with_header("source", "test"),
        )
        .await
        .expect("record");
    if commit {
        outbox.commit(tx).await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    id
}

async fn count_orders(outbox: &PgOutbox, orders: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {orders}")))
        .fetch_one(outbox.pool())
        .await
        .expect("count orders")
}

#[tokio::test]
async fn rolled_back_transaction_drops_the_business_row_and_the_event() {
    let (outbox, orders) = outbox_with_orders().await;
    let order = OrderPlaced {
        order_id: 1,
        total_cents: 1999,
    };
    place_order(&outbox, &orders, &order, false).await;

    assert_eq!(count_orders(&outbox, &orders).await, 0);
    assert_eq!(outbox.stats().await.expect("stats").pending, 0);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn committed_transaction_keeps_the_business_row_and_the_event() {
    let (outbox, orders) = outbox_with_orders().await;
    let order = OrderPlaced {
        order_id: 2,
        total_cents: 500,
    };
    let id = place_order(&outbox, &orders, &order, true).await;

    assert_eq!(count_orders(&outbox, &orders).await, 1);
    let claimed = outbox
        .claim(&ClaimRequest {
            relay_id: Uuid::now_v7(),
            limit: 10,
            lease: Duration::from_secs(30),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let envelope = &claimed[0].envelope;
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.partition_key.as_deref(), Some("order-2"));
    assert_eq!(envelope.headers["source"], "test");
    assert_eq!(envelope.decode::<OrderPlaced>().expect("decode"), order);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() {
    let pool = common::pool().await;
    let config = PgOutboxConfig::new(&common::fresh_schema(), "events").expect("valid names");
    let a = PgOutbox::new(pool.clone(), config.clone());
    let b = PgOutbox::new(pool, config);

    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let a = a.clone();
            async move { a.migrate().await }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { b.migrate().await }
        }),
    );
    ra.expect("task a").expect("concurrent migrate a");
    rb.expect("task b").expect("concurrent migrate b");
    a.migrate().await.expect("migrate again");

    let history = format!("{}.\"events_migrations\"", a.config().schema.quoted());
    let versions: Vec<i32> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {history}")))
            .fetch_all(a.pool())
            .await
            .expect("history");
    assert_eq!(versions, vec![1, 2], "each migration applied once");
    assert_eq!(a.stats().await.expect("stats").pending, 0);
    common::drop_schema(&a).await;
}

#[tokio::test]
async fn invalid_schema_or_table_name_is_a_config_error() {
    for (schema, table) in [("x; drop table y", "outbox"), ("herald", "x; drop table y")] {
        let err = PgOutboxConfig::new(schema, table).expect_err("refused");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
}

#[tokio::test]
async fn malformed_url_is_a_config_error_without_the_password() {
    for url in [
        "postgres://app:s3cretpw@db:notaport/x",
        "not a url s3cretpw",
        "mysql://app:s3cretpw@db/x",
    ] {
        let err = PgOutbox::connect(url, PgOutboxConfig::default())
            .await
            .expect_err("malformed url");
        assert!(matches!(err, Error::Config(_)), "{url}: {err:?}");
        assert!(!error_chain(&err).contains("s3cretpw"), "{err}");
        assert!(!format!("{err:?}").contains("s3cretpw"), "{err:?}");
    }
}

#[tokio::test]
async fn unreachable_server_is_a_transient_error_without_the_password() {
    let err = PgOutbox::connect(
        "postgres://app:s3cretpw@127.0.0.1:1/x",
        PgOutboxConfig::default(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            err,
            Error::Store {
                operation: "connect",
                transient: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    let chain = error_chain(&err);
    assert!(
        chain.starts_with("outbox store failed to connect"),
        "{chain}"
    );
    assert!(!chain.contains("s3cretpw"), "{chain}");
    assert!(!format!("{err:?}").contains("s3cretpw"), "{err:?}");
}

#[tokio::test]
async fn connect_reaches_the_test_database() {
    let schema = common::fresh_schema();
    let config = PgOutboxConfig::new(&schema, "outbox").expect("valid names");
    let outbox = PgOutbox::connect(&common::database_url(), config)
        .await
        .expect("connect");
    outbox.migrate().await.expect("migrate");
    assert_eq!(outbox.stats().await.expect("stats").pending, 0);
    common::drop_schema(&outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_from_one_handle_wakes_a_listening_handle() {
    // Two handles with pools of their own, as two processes would have.
    let writer = common::outbox(Completion::Delete).await;
    let relay = PgOutbox::new(common::pool().await, writer.config().clone());
    assert_eq!(writer.channel(), relay.channel());

    let mut wakeups = relay.signal().subscribe();
    let shutdown = CancellationToken::new();
    let listener = relay.listen(shutdown.clone());
    // The listener rings once when it starts listening (it may have missed notifications).
    tokio::time::timeout(Duration::from_secs(5), wakeups.rung())
        .await
        .expect("listener connected");
    wakeups.mark_seen();

    // Nothing rings on its own.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), wakeups.rung())
            .await
            .is_err()
    );

    let mut tx = writer.pool().begin().await.expect("begin");
    writer
        .record(
            &mut tx,
            &OrderPlaced {
                order_id: 3,
                total_cents: 1,
            },
        )
        .await
        .expect("record");
    writer.commit(tx).await.expect("commit, then notify");
    tokio::time::timeout(Duration::from_secs(1), wakeups.rung())
        .await
        .expect("the notification rings the other handle's signal");

    // A burst of notify() calls is throttled but still delivered.
    wakeups.mark_seen();
    for _ in 0..100 {
        writer.notify();
    }
    tokio::time::timeout(Duration::from_secs(1), wakeups.rung())
        .await
        .expect("a burst rings too");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("listener stops on shutdown")
        .expect("listener task");
    common::drop_schema(&writer).await;
}

#[tokio::test]
async fn commit_rings_the_in_process_signal() {
    let outbox = common::outbox(Completion::Delete).await;
    let mut wakeups = outbox.signal().subscribe();
    let mut tx = outbox.pool().begin().await.expect("begin");
    outbox
        .record(
            &mut tx,
            &OrderPlaced {
                order_id: 4,
                total_cents: 1,
            },
        )
        .await
        .expect("record");
    outbox.commit(tx).await.expect("commit");
    tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
        .await
        .expect("rung at once");
    common::drop_schema(&outbox).await;
}
