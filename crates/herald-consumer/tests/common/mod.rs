//! Shared helpers of the consumer's integration tests: events, stores (a fresh PostgreSQL schema
//! or SQLite file per test), publishing, waiting, and a transport wrapper that loses acks.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{Consumer, ConsumerConfig, RetryPolicy, Router};
use herald_core::{
    Acknowledger, Backoff, BoxFuture, DeadLetter, DeadLetters, Delivery, DeliveryStream, Envelope,
    Error, Event, Metadata, Page, Publisher, Result, Settlement, Subscriber, SubscriptionSpec,
    Uuid,
};
use herald_memory::MemoryTransport;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen "soon".
pub const WAIT: Duration = Duration::from_secs(30);

/// A deposit into an account; deposits of one account are ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposited {
    pub account: String,
    pub n: u64,
    pub cents: i64,
}

impl Event for Deposited {
    const TYPE: &'static str = "bank.deposited";

    fn partition_key(&self) -> Option<String> {
        Some(self.account.clone())
    }
}

/// What a handler records from inside its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credited {
    pub account: String,
    pub cents: i64,
}

impl Event for Credited {
    const TYPE: &'static str = "bank.credited";
}

/// The `n`-th deposit into `account`, as an envelope.
pub fn deposit(account: &str, n: u64) -> Envelope {
    Envelope::from_event(
        &Deposited {
            account: account.to_owned(),
            n,
            cents: 100,
        },
        Metadata::default(),
    )
    .unwrap()
}

/// Publishes `batch` and checks the broker took every message.
pub async fn publish(transport: &MemoryTransport, batch: &[Envelope]) {
    for result in transport.publish(batch).await {
        result.unwrap();
    }
}

/// The dead letters of `queue` on `transport`, newest first.
pub async fn dead_letters(transport: &MemoryTransport, queue: &str) -> Vec<DeadLetter> {
    transport
        .dead_letter_queue(queue)
        .dead_letters(Page::ALL)
        .await
        .unwrap()
}

/// A fresh queue name.
pub fn queue() -> String {
    format!("q-{}", Uuid::now_v7().simple())
}

/// Retries fast enough for tests: `immediate` at once, then `delayed` after 20 ms each.
pub fn quick_retry(immediate: u32, delayed: u32) -> RetryPolicy {
    RetryPolicy {
        immediate,
        delayed,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(20),
            multiplier: 1.0,
            jitter: 0.0,
        },
        ..RetryPolicy::default()
    }
}

/// A consumer configuration for tests: quick retries, a short shutdown.
pub fn config() -> ConsumerConfig {
    ConsumerConfig {
        retry: quick_retry(2, 2),
        shutdown_timeout: Duration::from_secs(10),
        ..ConsumerConfig::default()
    }
}

/// A consumer running on its own task until the returned token is cancelled.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Starts `consumer` (its queue is declared first, so nothing published is unroutable).
    pub fn start<S: Subscriber>(consumer: Consumer<S>, transport: &MemoryTransport) -> Self {
        transport.declare(consumer.subscription());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { consumer.run(token).await });
        Running { shutdown, task }
    }

    /// Starts `consumer` on RabbitMQ (its queues are declared first).
    pub async fn start_on_amqp(
        consumer: Consumer<AmqpTransport>,
        transport: &AmqpTransport,
    ) -> Self {
        transport.declare(consumer.subscription()).await.unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { consumer.run(token).await });
        Running { shutdown, task }
    }

    /// Shuts the consumer down and checks it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("consumer stops")
            .expect("consumer task joins")
            .expect("consumer ran without error");
    }
}

/// A RabbitMQ transport on an exchange of the test's own (`herald-<what>-test-<uuid>`): one
/// retry delay of 100 ms, queues that expire two minutes after the test stops using them.
pub async fn amqp_transport(what: &str) -> AmqpTransport {
    AmqpTransport::connect(AmqpConfig {
        exchange: format!("herald-{what}-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_millis(100)],
        expires: Some(Duration::from_secs(120)),
        ..AmqpConfig::new(herald_testkit::env::amqp_url())
    })
    .await
    .unwrap()
}

/// Builds a consumer on `transport` for a fresh queue.
pub fn consumer<S: Subscriber>(
    transport: S,
    router: Router,
    config: ConsumerConfig,
) -> Consumer<S> {
    Consumer::new(transport, queue(), router, config).unwrap()
}

/// Waits until `condition` holds, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- stores ----------------------------------------------------------------------------------

/// The test database URL (`HERALD_TEST_DATABASE_URL`, default: the local server).
pub fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// A migrated PostgreSQL outbox (and inbox) in a schema of its own, with an `accounts` table.
pub async fn pg_store() -> PgOutbox {
    let schema = format!("herald_t_{}", Uuid::now_v7().simple());
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&database_url())
        .await
        .expect("test database reachable");
    let store = PgOutbox::new(pool, PgOutboxConfig::new(&schema, "outbox").unwrap());
    store.migrate().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".accounts (account text PRIMARY KEY, balance bigint NOT NULL, \
         deposits bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    store
}

/// Drops the store's schema.
pub async fn pg_drop(store: &PgOutbox) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        store.config().schema.quoted()
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

/// The `accounts` table of a PostgreSQL store, qualified.
pub fn pg_accounts(store: &PgOutbox) -> String {
    format!("{}.accounts", store.config().schema.quoted())
}

/// Credits deposit `d` to its account in the PostgreSQL `accounts` table of `store`, on `conn`
/// (a handler's transaction).
pub async fn credit_pg_account(
    store: &PgOutbox,
    conn: &mut sqlx::PgConnection,
    d: &Deposited,
) -> std::result::Result<(), sqlx::Error> {
    let accounts = pg_accounts(store);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {accounts} AS a (account, balance, deposits) VALUES ($1, $2, 1) \
         ON CONFLICT (account) DO UPDATE \
         SET balance = a.balance + EXCLUDED.balance, deposits = a.deposits + 1"
    )))
    .bind(&d.account)
    .bind(d.cents)
    .execute(conn)
    .await?;
    Ok(())
}

/// A migrated SQLite outbox (and inbox) in a fresh file, with an `accounts` table. Keep the
/// directory alive as long as the store.
pub async fn sqlite_store() -> (SqliteOutbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
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
    (store, dir)
}

// ---- a transport that loses acks -------------------------------------------------------------

/// Wraps a transport so that the first ack of each message in `lose` is lost: the ack fails
/// and the delivery is dropped, so the broker delivers the message again — what happens when a
/// consumer crashes (or its connection drops) between committing and acknowledging. With
/// `retries_vanish`, a message sent for redelivery never comes back (as if a competing
/// consumer took it).
#[derive(Clone)]
pub struct LosingAcks {
    pub inner: MemoryTransport,
    pub lose: Arc<Mutex<HashSet<Uuid>>>,
    pub retries_vanish: bool,
}

impl LosingAcks {
    pub fn new(inner: MemoryTransport, lose: impl IntoIterator<Item = Uuid>) -> Self {
        LosingAcks {
            inner,
            lose: Arc::new(Mutex::new(lose.into_iter().collect())),
            retries_vanish: false,
        }
    }

    pub fn retries_vanish(inner: MemoryTransport) -> Self {
        LosingAcks {
            retries_vanish: true,
            ..LosingAcks::new(inner, [])
        }
    }
}

pub struct LosingStream {
    inner: herald_memory::MemoryStream,
    lose: Arc<Mutex<HashSet<Uuid>>>,
    retries_vanish: bool,
}

impl Subscriber for LosingAcks {
    type Stream = LosingStream;

    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<LosingStream> {
        Ok(LosingStream {
            inner: self.inner.subscribe(spec).await?,
            lose: self.lose.clone(),
            retries_vanish: self.retries_vanish,
        })
    }
}

impl DeliveryStream for LosingStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let delivery = match self.inner.next().await? {
            Ok(delivery) => delivery,
            Err(error) => return Some(Err(error)),
        };
        let envelope = delivery.envelope.clone();
        let (attempt, redelivered) = (delivery.attempt, delivery.redelivered);
        let ack = LosingAck {
            inner: delivery,
            lose: self.lose.clone(),
            retries_vanish: self.retries_vanish,
        };
        Some(Ok(Delivery::new(
            envelope,
            attempt,
            redelivered,
            Box::new(ack),
        )))
    }
}

struct LosingAck {
    inner: Delivery,
    lose: Arc<Mutex<HashSet<Uuid>>>,
    retries_vanish: bool,
}

impl Acknowledger for LosingAck {
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let lost = settlement == Settlement::Ack
                && self.lose.lock().unwrap().remove(&self.inner.envelope.id);
            if lost {
                drop(self.inner); // unsettled: the broker hands it out again
                return Err(Error::transport(
                    "ack",
                    true,
                    herald_core::error::Message("connection lost before the ack".into()),
                ));
            }
            if self.retries_vanish && matches!(settlement, Settlement::Retry { .. }) {
                return self.inner.ack().await; // gone elsewhere
            }
            self.inner.settle(settlement).await
        })
    }
}
