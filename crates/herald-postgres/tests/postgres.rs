//! PostgreSQL-specific behaviour: the write path in the caller's transaction (and in the
//! caller's statement), migrations, configuration and connection errors, cross-process
//! wake-ups, handles on other pools.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use herald_core::error::error_chain;
use herald_core::{ClaimRequest, Completion, Error, Event, Metadata, OutboxAdmin, OutboxStore};
use herald_postgres::{PgOutbox, PgOutboxConfig, PgOutboxTx};
use herald_testkit::OrderPlaced;
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// An outbox plus a business table `orders` in the same schema.
async fn outbox_with_orders() -> (PgOutbox, String) {
    let outbox = common::outbox(Completion::Delete).await;
    let orders = format!("{}.\"orders\"", outbox.config().schema.quoted());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id bigint PRIMARY KEY, total_cents bigint NOT NULL CHECK (total_cents >= 0))"
    )))
    .execute(outbox.pool())
    .await
    .expect("create orders");
    (outbox, orders)
}

async fn place_order(outbox: &PgOutbox, orders: &str, order: &OrderPlaced, commit: bool) -> Uuid {
    let mut tx = outbox.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)"
    )))
    .bind(order.order_id)
    .bind(order.total_cents)
    .execute(&mut *tx)
    .await
    .expect("insert order");
    let id = tx
        .record_with(order, Metadata::default().with_header("source", "test"))
        .await
        .expect("record");
    if commit {
        tx.commit().await.expect("commit");
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
    assert_eq!(
        versions,
        vec![1, 2, 3, 4, 5, 6],
        "each migration applied once"
    );
    // Version 6: a claim's arrays are stored out of line uncompressed (`e`), not compressed.
    let storage: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, a.attstorage::text FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'events_claims' AND a.attname IN ('seqs', 'keys') \
         ORDER BY a.attname",
    )
    .bind(a.config().schema.as_str())
    .fetch_all(a.pool())
    .await
    .expect("claims columns");
    assert_eq!(
        storage,
        vec![
            ("keys".to_owned(), "e".to_owned()),
            ("seqs".to_owned(), "e".to_owned())
        ]
    );
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
    // JIT off on its connections, and on a sized pool's: a claim planned from stale
    // statistics once spent ~370 ms compiling each time.
    for handle in [outbox.clone(), outbox.with_pool_size(1)] {
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(handle.pool())
            .await
            .expect("show jit");
        assert_eq!(jit, "off");
    }
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
    let listener = relay
        .watch_commits(shutdown.clone())
        .await
        .expect("watch commits");
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

    let mut tx = writer.begin().await.expect("begin");
    tx.record(&OrderPlaced {
        order_id: 3,
        total_cents: 1,
    })
    .await
    .expect("record");
    tx.commit().await.expect("commit, then notify");
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
    let mut tx = outbox.begin().await.expect("begin");
    tx.record(&OrderPlaced {
        order_id: 4,
        total_cents: 1,
    })
    .await
    .expect("record");
    tx.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
        .await
        .expect("rung at once");
    common::drop_schema(&outbox).await;
}

// record_along: the event rides the caller's own statement; with_pool handles share the
// outbox and its doorbell; the relay's write-backs do not change the connection's settings.

async fn count(outbox: &PgOutbox, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(outbox.pool())
        .await
        .unwrap()
}

fn outbox_table(outbox: &PgOutbox) -> String {
    format!("{}.\"outbox\"", outbox.config().schema.quoted())
}

/// Begins a transaction and inserts `order` with `insert`, the event recorded along.
async fn place_along(
    outbox: &PgOutbox,
    insert: &str,
    order: &OrderPlaced,
) -> (PgOutboxTx<'static>, herald_postgres::Along) {
    let mut tx = outbox.begin().await.unwrap();
    let along = tx
        .record_along_with(
            sqlx::query(AssertSqlSafe(insert.to_owned()))
                .bind(order.order_id)
                .bind(order.total_cents),
            order,
            Metadata::default().with_header("source", "along"),
        )
        .await
        .unwrap();
    (tx, along)
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

    let (tx, along) = place_along(&outbox, &insert, &order).await;
    assert_eq!(along.rows_affected, 1, "the caller's row only");
    tx.rollback().await.unwrap();
    assert_eq!(count(&outbox, &orders).await, 0);
    assert_eq!(
        count(&outbox, &outbox_table(&outbox)).await,
        0,
        "rollback drops the event"
    );

    let (tx, along) = place_along(&outbox, &insert, &order).await;
    tx.commit().await.unwrap();
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
    let mut tx = outbox.begin().await.unwrap();
    let bad = OrderPlaced {
        order_id: 1,
        total_cents: -1,
    };
    let err = tx
        .record_along(
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
    let mut tx = outbox.begin().await.unwrap();
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
    let hit = tx
        .record_along(
            sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(20_i64)
                .bind(2_i64),
            &changed,
        )
        .await
        .unwrap();
    let miss = tx
        .record_along(
            sqlx::query(AssertSqlSafe(statement))
                .bind(30_i64)
                .bind(99_i64),
            &changed,
        )
        .await
        .unwrap();
    assert_eq!((hit.rows_affected, miss.rows_affected), (1, 0));
    tx.commit().await.unwrap();
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
    let mut tx = outbox.begin().await.unwrap();
    let err = tx
        .record_along(sqlx::query("-- why\nSELECT 1"), &changed)
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

    let mut tx = outbox.begin().await.unwrap();
    let id = tx
        .record(&OrderPlaced {
            order_id: 1,
            total_cents: 1,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
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
    let mut tx = outbox.begin().await.unwrap();
    for order_id in 0..3 {
        tx.record(&OrderPlaced {
            order_id,
            total_cents: 1,
        })
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

// The write path as a type: dropping rolls back, a transaction the application holds is
// adopted (on a borrowed connection too), and its commit wakes the relays.

#[tokio::test]
async fn a_dropped_transaction_records_nothing() {
    let (outbox, orders) = outbox_with_orders().await;
    {
        let mut tx = outbox.begin().await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {orders} (id, total_cents) VALUES (1, 1)"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.record(&OrderPlaced {
            order_id: 1,
            total_cents: 1,
        })
        .await
        .unwrap();
    }
    assert_eq!(count_orders(&outbox, &orders).await, 0);
    assert_eq!(count(&outbox, &outbox_table(&outbox)).await, 0);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn an_adopted_transaction_on_a_borrowed_connection_records_and_its_commit_rings() {
    let (outbox, orders) = outbox_with_orders().await;
    let mut wakeups = outbox.signal().subscribe();
    wakeups.mark_seen();

    let mut conn = outbox.pool().acquire().await.unwrap();
    let order = OrderPlaced {
        order_id: 5,
        total_cents: 10,
    };
    let mut tx = outbox.adopt(sqlx::Connection::begin(&mut *conn).await.unwrap());
    let along = tx
        .record_along(
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)"
            )))
            .bind(order.order_id)
            .bind(order.total_cents),
            &order,
        )
        .await
        .unwrap();
    let second = tx.record(&order).await.unwrap();
    tx.commit().await.unwrap();
    drop(conn);

    tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
        .await
        .expect("the commit rings the doorbell");
    assert_eq!(count_orders(&outbox, &orders).await, 1);
    let ids: Vec<Uuid> = claim_all(&outbox)
        .await
        .iter()
        .map(|c| c.envelope.id)
        .collect();
    assert_eq!(ids, vec![along.id, second]);
    common::drop_schema(&outbox).await;
}
