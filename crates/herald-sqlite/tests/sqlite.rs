//! SQLite-specific behaviour of the outbox: the write path inside the caller's transaction,
//! durability across a crash, migrations, configuration errors, wake-ups and contention.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::str::FromStr;
use std::time::Duration;

use herald_core::{ClaimRequest, Completion, Error, Metadata, OutboxAdmin, OutboxStore, Uuid};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use herald_testkit::OrderPlaced;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A fresh directory and the URL of a database file in it.
fn temp_db() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    (dir, url)
}

async fn open(url: &str) -> SqliteOutbox {
    let outbox = SqliteOutbox::connect(url, SqliteOutboxConfig::default())
        .await
        .expect("open");
    outbox.migrate().await.expect("migrate");
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_cents INTEGER)")
        .execute(outbox.pool())
        .await
        .expect("business table");
    outbox
}

fn request(limit: usize) -> ClaimRequest {
    ClaimRequest {
        relay_id: Uuid::now_v7(),
        limit,
        lease: Duration::from_secs(60),
    }
}

async fn orders(outbox: &SqliteOutbox) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(outbox.pool())
        .await
        .expect("count orders")
}

/// Places an order and records its event in one transaction; commits if `commit`.
async fn place_order(outbox: &SqliteOutbox, order: &OrderPlaced, commit: bool) -> Uuid {
    let mut tx = outbox.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
        .bind(order.order_id)
        .bind(order.total_cents)
        .execute(&mut *tx)
        .await
        .expect("business row");
    let id = tx.record(order).await.expect("record");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    id
}

#[tokio::test]
async fn rolled_back_transaction_keeps_neither_the_event_nor_the_business_row() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let order = OrderPlaced {
        order_id: 1,
        total_cents: 990,
    };
    place_order(&outbox, &order, false).await;
    assert_eq!(orders(&outbox).await, 0);
    assert!(outbox.claim(&request(10)).await.expect("claim").is_empty());
    assert_eq!(outbox.stats().await.expect("stats").pending, 0);
}

#[tokio::test]
async fn committed_transaction_keeps_the_event_and_the_business_row() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let order = OrderPlaced {
        order_id: 7,
        total_cents: 1250,
    };
    let id = place_order(&outbox, &order, true).await;
    assert_eq!(orders(&outbox).await, 1);
    let claimed = outbox.claim(&request(10)).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].envelope.id, id);
    assert_eq!(
        claimed[0].envelope.partition_key.as_deref(),
        Some("order-7")
    );
    assert_eq!(
        claimed[0].envelope.decode::<OrderPlaced>().expect("decode"),
        order
    );
}

#[tokio::test]
async fn record_with_keeps_the_metadata() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let correlation = Uuid::now_v7();
    let meta = Metadata::default()
        .with_correlation_id(correlation)
        .with_partition_key("customer-3")
        .with_header("tenant", "acme");
    let mut tx = outbox.begin().await.expect("begin");
    let order = OrderPlaced {
        order_id: 3,
        total_cents: 5,
    };
    let id = tx.record_with(&order, meta).await.expect("record");
    tx.commit().await.expect("commit");
    let claimed = outbox.claim(&request(10)).await.expect("claim");
    let envelope = &claimed[0].envelope;
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.correlation_id, correlation);
    assert_eq!(envelope.partition_key.as_deref(), Some("customer-3"));
    assert_eq!(envelope.headers["tenant"], "acme");
}

#[tokio::test]
async fn committed_event_survives_dropping_the_pool_without_closing() {
    let (_dir, url) = temp_db();
    let id = {
        let outbox = open(&url).await;
        place_order(
            &outbox,
            &OrderPlaced {
                order_id: 1,
                total_cents: 1,
            },
            true,
        )
        .await
        // Dropped here: no close, no checkpoint; the row is only in the WAL.
    };
    let reopened = open(&url).await;
    let claimed = reopened.claim(&request(10)).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|c| c.envelope.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert_eq!(orders(&reopened).await, 1);
}

const CRASH_URL: &str = "HERALD_SQLITE_CRASH_URL";

/// The child half of `committed_event_survives_the_process_being_killed`: records an event,
/// commits, prints its id and aborts the process (no destructor, no close, no checkpoint).
/// Does nothing unless started by that test.
#[tokio::test]
#[ignore = "child process of committed_event_survives_the_process_being_killed"]
async fn crash_child_commits_then_aborts() {
    let Ok(url) = std::env::var(CRASH_URL) else {
        return;
    };
    let outbox = open(&url).await;
    let id = place_order(
        &outbox,
        &OrderPlaced {
            order_id: 9,
            total_cents: 9,
        },
        true,
    )
    .await;
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "committed {id}").expect("write");
    out.flush().expect("flush");
    std::process::abort();
}

#[tokio::test]
async fn committed_event_survives_the_process_being_killed() {
    let (_dir, url) = temp_db();
    let output = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash_child_commits_then_aborts",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_URL, &url)
        .output()
        .await
        .expect("run the child");
    assert!(!output.status.success(), "the child aborts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("committed "))
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
        .unwrap_or_else(|| panic!("the child committed before aborting: {stdout}"));

    let reopened = open(&url).await;
    let claimed = reopened.claim(&request(10)).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|c| c.envelope.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert_eq!(orders(&reopened).await, 1);
}

#[tokio::test]
async fn migrating_again_changes_nothing() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    place_order(
        &outbox,
        &OrderPlaced {
            order_id: 1,
            total_cents: 1,
        },
        true,
    )
    .await;
    outbox.migrate().await.expect("second migrate");
    let other = SqliteOutbox::connect(&url, SqliteOutboxConfig::default())
        .await
        .expect("second handle");
    other.migrate().await.expect("migrate from another handle");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM herald_outbox_migrations")
        .fetch_one(outbox.pool())
        .await
        .expect("ledger");
    assert_eq!(applied, 3, "each migration applied once");
    assert_eq!(other.stats().await.expect("stats").pending, 1);
}

#[tokio::test]
async fn concurrent_migrations_take_turns() {
    let (_dir, url) = temp_db();
    let handles: Vec<SqliteOutbox> = open_handles(&url, 4).await;
    let tasks: Vec<_> = handles
        .into_iter()
        .map(|outbox| tokio::spawn(async move { outbox.migrate().await }))
        .collect();
    for task in tasks {
        task.await.expect("task").expect("migrate");
    }
}

async fn open_handles(url: &str, n: usize) -> Vec<SqliteOutbox> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            SqliteOutbox::connect(url, SqliteOutboxConfig::default())
                .await
                .expect("open"),
        );
    }
    out
}

#[test]
fn invalid_table_name_is_a_config_error() {
    assert!(matches!(
        SqliteOutboxConfig::new("x; drop table y"),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn malformed_url_is_a_config_error() {
    for url in [
        "sqlite://app.db?mode=bogus",
        "postgres://app:secret@db/app",
        "sqlite://",
        "",
    ] {
        match SqliteOutbox::connect(url, SqliteOutboxConfig::default()).await {
            Err(Error::Config(text)) => assert!(!text.contains("secret"), "{text}"),
            other => panic!("{url:?} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn database_in_a_missing_directory_is_a_store_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir
        .path()
        .join("no")
        .join("such")
        .join("dir")
        .join("app.db");
    for url in [
        path.display().to_string(),
        format!("sqlite://{}", path.display()),
    ] {
        match SqliteOutbox::connect(&url, SqliteOutboxConfig::default()).await {
            Err(err @ Error::Store { .. }) => assert!(!err.is_transient(), "{err:?}"),
            other => panic!("{url:?} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn commit_wakes_relays_of_this_process() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let mut wakeups = outbox.signal().subscribe();
    place_order(
        &outbox,
        &OrderPlaced {
            order_id: 1,
            total_cents: 1,
        },
        true,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(1), wakeups.rung())
        .await
        .expect("the commit rang the signal");
}

#[tokio::test]
async fn watcher_sees_commits_made_through_another_connection() {
    let (_dir, url) = temp_db();
    let relay_side = open(&url).await;
    let shutdown = CancellationToken::new();
    let watcher = relay_side
        .watch_commits(shutdown.clone())
        .await
        .expect("watch");
    // Another handle, as another process would have: it cannot ring relay_side's signal.
    let writer_side = open(&url).await;
    let mut wakeups = relay_side.signal().subscribe();
    tokio::time::sleep(Duration::from_millis(50)).await;
    wakeups.mark_seen();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
            .await
            .is_err(),
        "no ring while nothing is committed"
    );

    place_order(
        &writer_side,
        &OrderPlaced {
            order_id: 2,
            total_cents: 2,
        },
        true,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(2), wakeups.rung())
        .await
        .expect("the watcher saw the commit");

    shutdown.cancel();
    watcher.await.expect("watcher stops");
}

#[tokio::test]
async fn large_batches_are_recorded_in_order_across_chunks() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let envelopes = herald_testkit::interleaved(7, 181); // 1,267 rows: 2 full chunks + 267
    let mut tx = outbox.begin().await.expect("begin");
    tx.record_all(&envelopes).await.expect("record");
    tx.commit().await.expect("commit");
    let claimed = outbox.claim(&request(5000)).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|c| c.envelope.id).collect::<Vec<_>>(),
        envelopes.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(claimed.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn recording_an_id_twice_is_a_permanent_error() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let envelope = herald_testkit::envelope("k", 0);
    let mut tx = outbox.begin().await.expect("begin");
    tx.record_all(std::slice::from_ref(&envelope))
        .await
        .expect("first");
    let err = tx
        .record_all(std::slice::from_ref(&envelope))
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(err, Error::Store { .. }) && !err.is_transient(),
        "{err:?}"
    );
}

#[tokio::test]
async fn contention_beyond_the_busy_timeout_is_a_transient_error() {
    let (_dir, url) = temp_db();
    open(&url).await; // migrated
    let options = SqliteConnectOptions::from_str(&url)
        .expect("url")
        .busy_timeout(Duration::from_millis(100));
    let pool = SqlitePoolOptions::new()
        .connect_with(options.clone())
        .await
        .expect("pool");
    let outbox = SqliteOutbox::new(pool, SqliteOutboxConfig::default());
    place_order(
        &open(&url).await,
        &OrderPlaced {
            order_id: 1,
            total_cents: 1,
        },
        true,
    )
    .await;

    // Another writer holds SQLite's write lock.
    let mut locker = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("locker");
    let held = locker.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    let err = outbox.claim(&request(10)).await.expect_err("busy");
    assert!(
        matches!(err, Error::Store { .. }) && err.is_transient(),
        "{err:?}"
    );
    held.rollback().await.expect("unlock");

    assert_eq!(outbox.claim(&request(10)).await.expect("claim").len(), 1);
}

#[tokio::test]
async fn outboxes_in_one_file_are_independent() {
    let (_dir, url) = temp_db();
    let config = |name: &str| {
        SqliteOutboxConfig::new(name)
            .expect("valid")
            .with_completion(Completion::Archive)
    };
    let a = SqliteOutbox::connect(&url, config("billing_outbox"))
        .await
        .expect("a");
    let b = SqliteOutbox::connect(&url, config("shipping_outbox"))
        .await
        .expect("b");
    a.migrate().await.expect("migrate a");
    b.migrate().await.expect("migrate b");
    let mut tx = a.begin().await.expect("begin");
    tx.record_all(&herald_testkit::interleaved(2, 2))
        .await
        .expect("record");
    tx.commit().await.expect("commit");
    assert_eq!(a.stats().await.expect("stats").pending, 4);
    assert_eq!(b.stats().await.expect("stats").pending, 0);
    assert!(b.claim(&request(10)).await.expect("claim").is_empty());
}

// The write path as a type: `begin` takes the write lock, dropping rolls back, a transaction
// the application holds is adopted, and commit rings the doorbell.

#[tokio::test]
async fn begin_takes_the_write_lock_at_once() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let tx = outbox.begin().await.expect("begin");

    // Another writer cannot take the lock while the transaction is open, though it has not
    // written yet: a deferred BEGIN would hold no lock until its first write.
    let options = SqliteConnectOptions::from_str(&url)
        .expect("url")
        .busy_timeout(Duration::from_millis(50));
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("other");
    let err = other
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect_err("the write lock is held");
    assert!(err.to_string().contains("locked"), "{err}");

    tx.rollback().await.expect("rollback");
    other
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect("free once rolled back")
        .rollback()
        .await
        .expect("rollback");
}

#[tokio::test]
async fn a_dropped_transaction_records_nothing() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    {
        let mut tx = outbox.begin().await.expect("begin");
        sqlx::query("INSERT INTO orders (id, total_cents) VALUES (1, 1)")
            .execute(&mut *tx)
            .await
            .expect("business row");
        tx.record(&OrderPlaced {
            order_id: 1,
            total_cents: 1,
        })
        .await
        .expect("record");
    }
    assert_eq!(orders(&outbox).await, 0);
    assert_eq!(outbox.stats().await.expect("stats").pending, 0);
    assert!(outbox.claim(&request(10)).await.expect("claim").is_empty());
}

#[tokio::test]
async fn an_adopted_transaction_on_a_borrowed_connection_records_and_its_commit_rings() {
    let (_dir, url) = temp_db();
    let outbox = open(&url).await;
    let mut wakeups = outbox.signal().subscribe();
    wakeups.mark_seen();

    let mut conn = outbox.pool().acquire().await.expect("connection");
    let mut tx = outbox.adopt(conn.begin_with("BEGIN IMMEDIATE").await.expect("begin"));
    let id = tx
        .record(&OrderPlaced {
            order_id: 7,
            total_cents: 1,
        })
        .await
        .expect("record");
    tx.commit().await.expect("commit");
    drop(conn);

    tokio::time::timeout(Duration::from_millis(100), wakeups.rung())
        .await
        .expect("the commit rings the doorbell");
    let claimed = outbox.claim(&request(10)).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|c| c.envelope.id).collect::<Vec<_>>(),
        vec![id]
    );
}
