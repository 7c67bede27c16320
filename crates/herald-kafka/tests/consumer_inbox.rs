//! The consumer with its inbox over Kafka: when a consumer dies after its inbox commits and
//! before its offsets are committed, the group delivers those messages again and the inbox
//! absorbs every one of them: each effect happens once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use herald_consumer::{Consumer, ConsumerConfig, HandlerError, Router, TxContext};
use herald_core::{Envelope, Event, Metadata, Publisher};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A deposit into an account; deposits of one account are ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Deposited {
    account: String,
    n: u64,
    cents: i64,
}

impl Event for Deposited {
    const TYPE: &'static str = "bank.deposited";

    fn partition_key(&self) -> Option<String> {
        Some(self.account.clone())
    }
}

fn deposit(account: &str, n: u64) -> Envelope {
    let event = Deposited {
        account: account.to_owned(),
        n,
        cents: 100,
    };
    Envelope::from_event(&event, Metadata::default()).unwrap()
}

async fn credit(d: Deposited, ctx: &mut TxContext<SqliteOutbox>) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO accounts (account, balance, deposits) VALUES (?, ?, 1) \
         ON CONFLICT (account) DO UPDATE \
         SET balance = balance + excluded.balance, deposits = deposits + 1",
    )
    .bind(&d.account)
    .bind(d.cents)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn sqlite_store(dir: &tempfile::TempDir) -> SqliteOutbox {
    let url = format!("sqlite://{}", dir.path().join("consumer.db").display());
    let store = SqliteOutbox::connect(&url, SqliteOutboxConfig::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::query(
        "CREATE TABLE accounts (account TEXT PRIMARY KEY, balance INTEGER NOT NULL, \
         deposits INTEGER NOT NULL)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store
}

/// Runs a consumer of `group` until every one of `n` deliveries is acknowledged, then stops it.
async fn consume(
    transport: &herald_kafka::KafkaTransport,
    group: &str,
    db: &SqliteOutbox,
    n: u64,
) -> herald_consumer::ConsumerSnapshot {
    let consumer = Consumer::new(
        transport.clone(),
        group,
        Router::new().transactional(db, "bank.credit", credit),
        ConsumerConfig::default(),
    )
    .unwrap();
    let metrics = consumer.metrics();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.snapshot().acked < n {
        assert!(Instant::now() < deadline, "{:?}", metrics.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    metrics.snapshot()
}

/// Puts `group`'s committed offsets back to the start of `topic`, as if none of its offset
/// commits had reached the broker (the group must have no member left: retried until so).
async fn forget_offsets(group: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::servers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = consumer.commit(&tpl, CommitMode::Sync) {
        assert!(Instant::now() < deadline, "cannot reset the offsets: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_before_its_offset_commit_has_every_redelivery_absorbed_by_the_inbox()
{
    let transport = common::transport().await;
    let config = transport.config().clone();
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_store(&dir).await;
    let group = common::unique("inbox");
    transport.declare_subscription(&group).await.unwrap();
    let batch: Vec<Envelope> = (0..40)
        .map(|i| deposit(&format!("account-{}", i % 8), i / 8))
        .collect();
    for result in transport.publish(&batch).await {
        result.unwrap();
    }
    let n = batch.len() as u64;
    let first = consume(&transport, &group, &db, n).await;
    assert_eq!(first.duplicates, 0, "{first:?}");

    // The inbox committed every message; the offsets "never reached the broker".
    forget_offsets(&group, &config.topic, config.partitions).await;
    let second = consume(&transport, &group, &db, n).await;
    assert_eq!(
        second.duplicates, n,
        "every redelivery absorbed: {second:?}"
    );

    let (accounts, deposits, balance): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), sum(deposits), sum(balance) FROM accounts")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        (accounts, deposits, balance),
        (8, 40, 4000),
        "each effect once"
    );
}
