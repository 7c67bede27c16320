//! The inbox on real PostgreSQL and SQLite: duplicates change the handler's tables once,
//! failed runs leave nothing behind, events recorded by a handler inherit correlation and
//! causation, retention prunes in bounded batches.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use herald_consumer::{Context, Handler, HandlerError, HandlerResult, Outcome, Router, TxContext};
use herald_core::{
    ClaimRequest, Envelope, Event, Inbox, Metadata, OutboxStore, TraceContext, Uuid,
};
use herald_memory::MemoryTransport;
use herald_postgres::PgOutbox;
use herald_sqlite::SqliteOutbox;
use sqlx::AssertSqlSafe;

/// A database with an `accounts` table that a transactional handler credits.
trait Bank: Inbox + OutboxStore {
    /// A router whose handler `name` is the plain `async fn` crediting deposits.
    fn router(&self, name: &str) -> Router;
    /// A router whose handler `name` credits deposits and then fails its first `fail_first`
    /// runs (after having written, so that a rollback must undo the write).
    fn failing_router(&self, name: &str, fail_first: u32) -> Router;
    /// Deposits counted and balance of `account`.
    fn account(&self, account: &str) -> impl Future<Output = (i64, i64)> + Send;
    /// Inbox records.
    fn inbox_rows(&self) -> impl Future<Output = i64> + Send;
}

async fn pg_write(d: &Deposited, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    let store = ctx.outbox().clone();
    credit_pg_account(&store, ctx.db(), d).await?;
    Ok(())
}

async fn sqlite_write(
    d: &Deposited,
    ctx: &mut TxContext<SqliteOutbox>,
) -> Result<(), HandlerError> {
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

/// The handler as a plain `async fn`.
async fn pg_credit(d: Deposited, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    pg_write(&d, ctx).await?;
    ctx.record(&Credited {
        account: d.account,
        cents: d.cents,
    })
    .await?;
    Ok(())
}

/// The handler as a plain `async fn`.
async fn sqlite_credit(
    d: Deposited,
    ctx: &mut TxContext<SqliteOutbox>,
) -> Result<(), HandlerError> {
    sqlite_write(&d, ctx).await?;
    ctx.record(&Credited {
        account: d.account,
        cents: d.cents,
    })
    .await?;
    Ok(())
}

/// The handler as a struct with state: fails its first runs after writing.
struct FailingCredit {
    failures_left: AtomicU32,
}

impl FailingCredit {
    fn new(fail_first: u32) -> Self {
        FailingCredit {
            failures_left: AtomicU32::new(fail_first),
        }
    }

    fn fail(&self) -> Result<(), HandlerError> {
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Err(HandlerError::transient("injected failure after the write"));
        }
        Ok(())
    }
}

impl Handler<Deposited, TxContext<PgOutbox>> for FailingCredit {
    async fn handle(&self, d: Deposited, ctx: &mut TxContext<PgOutbox>) -> HandlerResult {
        pg_write(&d, ctx).await?;
        ctx.record(&Credited {
            account: d.account,
            cents: d.cents,
        })
        .await?;
        self.fail()?;
        Ok(Outcome::Done)
    }
}

impl Handler<Deposited, TxContext<SqliteOutbox>> for FailingCredit {
    async fn handle(&self, d: Deposited, ctx: &mut TxContext<SqliteOutbox>) -> HandlerResult {
        sqlite_write(&d, ctx).await?;
        ctx.record(&Credited {
            account: d.account,
            cents: d.cents,
        })
        .await?;
        self.fail()?;
        Ok(Outcome::Done)
    }
}

impl Bank for PgOutbox {
    fn router(&self, name: &str) -> Router {
        Router::new().transactional(self, name, pg_credit)
    }

    fn failing_router(&self, name: &str, fail_first: u32) -> Router {
        Router::new().transactional(self, name, FailingCredit::new(fail_first))
    }

    async fn account(&self, account: &str) -> (i64, i64) {
        let row: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT deposits, balance FROM {} WHERE account = $1",
            pg_accounts(self)
        )))
        .bind(account)
        .fetch_optional(self.pool())
        .await
        .unwrap();
        row.unwrap_or((0, 0))
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.outbox_inbox",
            self.config().schema.quoted()
        )))
        .fetch_one(self.pool())
        .await
        .unwrap()
    }
}

impl Bank for SqliteOutbox {
    fn router(&self, name: &str) -> Router {
        Router::new().transactional(self, name, sqlite_credit)
    }

    fn failing_router(&self, name: &str, fail_first: u32) -> Router {
        Router::new().transactional(self, name, FailingCredit::new(fail_first))
    }

    async fn account(&self, account: &str) -> (i64, i64) {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT deposits, balance FROM accounts WHERE account = ?")
                .bind(account)
                .fetch_optional(self.pool())
                .await
                .unwrap();
        row.unwrap_or((0, 0))
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM herald_outbox_inbox")
            .fetch_one(self.pool())
            .await
            .unwrap()
    }
}

/// Events the handlers recorded, from the outbox.
async fn recorded<B: Bank>(bank: &B) -> Vec<Envelope> {
    let claimed = bank
        .claim(&ClaimRequest {
            relay_id: Uuid::now_v7(),
            limit: 1000,
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    claimed.into_iter().map(|c| c.envelope).collect()
}

async fn same_message_delivered_twice_changes_the_tables_once<B: Bank>(bank: &B) {
    let transport = MemoryTransport::new();
    let consumer = consumer(transport.clone(), bank.router("bank.credit"), config());
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);

    let first = deposit("alice", 0);
    let second = deposit("alice", 1);
    publish(&transport, &[first.clone(), first.clone(), second, first]).await;
    eventually("four deliveries settled", || async {
        metrics.snapshot().finished() == 4
    })
    .await;
    running.stop().await;

    assert_eq!(
        bank.account("alice").await,
        (2, 200),
        "two distinct deposits, once each"
    );
    assert_eq!(metrics.snapshot().duplicates, 2);
    assert_eq!(metrics.snapshot().acked, 4, "duplicates are acknowledged");
    assert_eq!(bank.inbox_rows().await, 2);
    assert_eq!(
        recorded(bank).await.len(),
        2,
        "events recorded once per message"
    );
}

async fn redelivery_after_a_lost_ack_changes_the_tables_once<B: Bank>(bank: &B) {
    let memory = MemoryTransport::new();
    let message = deposit("bob", 0);
    let transport = LosingAcks::new(memory.clone(), [message.id]);
    let consumer = consumer(transport, bank.router("bank.credit"), config());
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &memory);

    publish(&memory, std::slice::from_ref(&message)).await;
    eventually("the redelivery is acknowledged", || async {
        metrics.snapshot().acked == 2
    })
    .await;
    running.stop().await;

    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.settle_errors, 1, "the first ack was lost");
    assert_eq!(snapshot.received, 2, "so the broker delivered it again");
    assert_eq!(snapshot.duplicates, 1, "and the inbox recognised it");
    assert_eq!(bank.account("bob").await, (1, 100));
    assert_eq!(recorded(bank).await.len(), 1);
    assert_eq!(memory.depth(&queue), 0, "nothing left in the queue");
}

async fn events_recorded_in_a_handler_inherit_correlation_and_causation<B: Bank>(bank: &B) {
    let transport = MemoryTransport::new();
    let consumer = consumer(transport.clone(), bank.router("bank.credit"), config());
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);

    let conversation = Uuid::now_v7();
    let trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=1".into()),
    };
    let message = Envelope::from_event(
        &Deposited {
            account: "carol".into(),
            n: 0,
            cents: 250,
        },
        Metadata {
            trace: trace.clone(),
            ..Metadata::default().with_correlation_id(conversation)
        },
    )
    .unwrap();
    publish(&transport, std::slice::from_ref(&message)).await;
    eventually("handled", || async { metrics.snapshot().acked == 1 }).await;
    running.stop().await;

    let events = recorded(bank).await;
    assert_eq!(events.len(), 1);
    let credited = &events[0];
    assert_eq!(credited.event_type, Credited::TYPE);
    assert_eq!(
        credited.correlation_id, conversation,
        "inherits the correlation id"
    );
    assert_eq!(
        credited.causation_id,
        Some(message.id),
        "caused by the handled message"
    );
    assert_eq!(credited.trace, trace, "continues the trace");
    assert_ne!(credited.id, message.id);
}

async fn failing_runs_leave_nothing_behind<B: Bank>(bank: &B) {
    // The first run and both immediate retries fail; the redelivery succeeds.
    let transport = MemoryTransport::new();
    let consumer = consumer(
        transport.clone(),
        bank.failing_router("bank.credit", 3),
        config(),
    );
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);

    publish(&transport, &[deposit("dave", 0)]).await;
    eventually("handled after the failures", || async {
        metrics.snapshot().acked == 1
    })
    .await;
    running.stop().await;

    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.immediate_retries, 2);
    assert_eq!(snapshot.redeliveries, 1);
    assert_eq!(
        snapshot.duplicates, 0,
        "rolled-back runs left no inbox record"
    );
    assert_eq!(
        bank.account("dave").await,
        (1, 100),
        "rolled-back runs left no write"
    );
    assert_eq!(recorded(bank).await.len(), 1, "nor an event");
}

async fn racing_deliveries_of_one_message_run_its_effects_once<B: Bank>(bank: &B) {
    // No partition key: nothing orders the two deliveries, they run at the same time and only
    // the inbox's primary key tells them apart.
    let message = Envelope::from_event(
        &Deposited {
            account: "erin".into(),
            n: 0,
            cents: 100,
        },
        Metadata::default(),
    )
    .unwrap();
    let mut unkeyed = message.clone();
    unkeyed.partition_key = None;
    let transport = MemoryTransport::new();
    let consumer = consumer(transport.clone(), bank.router("bank.credit"), config());
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);
    publish(&transport, &[unkeyed.clone(), unkeyed.clone(), unkeyed]).await;
    eventually("three deliveries settled", || async {
        metrics.snapshot().acked == 3
    })
    .await;
    running.stop().await;
    assert_eq!(bank.account("erin").await, (1, 100));
    assert_eq!(metrics.snapshot().duplicates, 2);
}

async fn deduplicated_mode_skips_what_it_recorded<B: Bank>(bank: &B) {
    let runs = Arc::new(AtomicU32::new(0));
    struct Notify(Arc<AtomicU32>);
    impl Handler<Deposited, Context> for Notify {
        async fn handle(&self, _d: Deposited, _ctx: &mut Context) -> HandlerResult {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Done)
        }
    }
    let transport = MemoryTransport::new();
    let router = Router::new().deduplicated(bank, "bank.notify", Notify(runs.clone()));
    let consumer = consumer(transport.clone(), router, config());
    let metrics = consumer.metrics();
    let running = Running::start(consumer, &transport);
    let message = deposit("frank", 0);
    publish(&transport, &[message.clone(), message]).await;
    eventually("two deliveries settled", || async {
        metrics.snapshot().acked == 2
    })
    .await;
    running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(metrics.snapshot().duplicates, 1);
    assert_eq!(bank.inbox_rows().await, 1);
}

macro_rules! backend_tests {
    ($backend:ident, $setup:expr, $teardown:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        #[allow(unused_variables)]
                        let (bank, guard) = $setup.await;
                        super::$name(&bank).await;
                        $teardown(&bank, guard).await;
                    }
                };
            }

            case!(same_message_delivered_twice_changes_the_tables_once);
            case!(redelivery_after_a_lost_ack_changes_the_tables_once);
            case!(events_recorded_in_a_handler_inherit_correlation_and_causation);
            case!(racing_deliveries_of_one_message_run_its_effects_once);
            case!(deduplicated_mode_skips_what_it_recorded);
            case!(failing_runs_leave_nothing_behind);
        }
    };
}

async fn pg_setup() -> (PgOutbox, ()) {
    (pg_store().await, ())
}

async fn pg_teardown(bank: &PgOutbox, (): ()) {
    pg_drop(bank).await;
}

async fn sqlite_teardown(_bank: &SqliteOutbox, _dir: tempfile::TempDir) {}

backend_tests!(postgres, pg_setup(), pg_teardown);
backend_tests!(sqlite, sqlite_store(), sqlite_teardown);

/// On PostgreSQL, a second transaction marking the same message waits for the first one and
/// then finds the record: no read-then-write race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_transaction_waits_for_the_first_and_sees_the_duplicate() {
    let store = pg_store().await;
    let id = Uuid::now_v7();
    let mut first = store.begin().await.unwrap();
    assert!(store.mark_handled(&mut first, id, "h").await.unwrap());
    let racer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut second = store.begin().await.unwrap();
            let fresh = store.mark_handled(&mut second, id, "h").await.unwrap();
            second.rollback().await.unwrap();
            fresh
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !racer.is_finished(),
        "the second insert waits for the first transaction"
    );
    store.commit_quietly(first).await.unwrap();
    let fresh = tokio::time::timeout(WAIT, racer).await.unwrap().unwrap();
    assert!(!fresh, "and then sees the duplicate");
    pg_drop(&store).await;
}

/// A handler that credits the deposit and notes its transaction's id; it rejects deposits into
/// `poison` and fails the first run of deposits into `flaky`, both after having written.
struct GroupProbe {
    flaky_failures: AtomicU32,
}

impl Handler<Deposited, TxContext<PgOutbox>> for GroupProbe {
    async fn handle(&self, d: Deposited, ctx: &mut TxContext<PgOutbox>) -> HandlerResult {
        pg_write(&d, ctx).await?;
        let txids = format!("{}.txids", ctx.outbox().config().schema.quoted());
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {txids} (account, txid) VALUES ($1, txid_current())"
        )))
        .bind(&d.account)
        .execute(ctx.db())
        .await?;
        if d.account == "poison" {
            return Ok(Outcome::reject("poison deposit"));
        }
        if d.account == "flaky" && self.flaky_failures.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Err(HandlerError::transient("flaky deposit"));
        }
        Ok(Outcome::Done)
    }
}

/// Messages handled at the same time share one transaction (group commit), and a handler that
/// fails in a group takes only its own writes down: the others commit once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commits_together_and_a_failure_in_it_loses_only_its_own_writes() {
    let store = pg_store().await;
    let schema = store.config().schema.quoted();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.txids (account text NOT NULL, txid bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let transport = MemoryTransport::new();
    let router = Router::new().transactional(
        &store,
        "bank.group",
        GroupProbe {
            flaky_failures: AtomicU32::new(1),
        },
    );
    let consumer = consumer(transport.clone(), router, config());
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);

    let mut batch: Vec<Envelope> = (0..300).map(|i| deposit(&format!("acc-{i}"), 0)).collect();
    batch.insert(100, deposit("poison", 0));
    batch.insert(200, deposit("flaky", 0));
    publish(&transport, &batch).await;
    eventually("every deposit settled", || async {
        metrics.snapshot().finished() == 302
    })
    .await;
    running.stop().await;

    for i in 0..300 {
        assert_eq!(
            store.account(&format!("acc-{i}")).await,
            (1, 100),
            "acc-{i}"
        );
    }
    assert_eq!(
        store.account("flaky").await,
        (1, 100),
        "committed once, on its retry"
    );
    assert_eq!(
        store.account("poison").await,
        (0, 0),
        "its writes rolled back"
    );
    let dead = dead_letters(&transport, &queue).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("poison deposit"),
        "{}",
        dead[0].reason
    );
    assert_eq!(store.inbox_rows().await, 301);
    let (rows, transactions): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT txid) FROM {schema}.txids"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(rows, 301, "one committed write per handled message");
    assert!(
        transactions < 150,
        "{transactions} transactions for 301 messages: runs were not grouped"
    );
    pg_drop(&store).await;
}

/// A handler that credits the deposit, then notes the account in `seen` and takes a unique
/// violation there to mean "already done": it catches the error and returns done. On
/// PostgreSQL the failed INSERT has aborted its transaction, so its credit cannot commit.
struct SwallowsUniqueViolation;

impl Handler<Deposited, TxContext<PgOutbox>> for SwallowsUniqueViolation {
    async fn handle(&self, d: Deposited, ctx: &mut TxContext<PgOutbox>) -> HandlerResult {
        pg_write(&d, ctx).await?;
        let seen = format!("{}.seen", ctx.outbox().config().schema.quoted());
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {seen} (account) VALUES ($1)"
        )))
        .bind(&d.account)
        .execute(ctx.db())
        .await;
        match inserted {
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(Outcome::Done),
            other => other.map(|_| Outcome::Done).map_err(HandlerError::from),
        }
    }
}

/// Runs 200 deposits, then one into `swallower` (whose `seen` row exists already), through
/// [`SwallowsUniqueViolation`] with `transaction_batch`, and checks that every other deposit
/// committed with its inbox record, and that the swallower was not acknowledged as done
/// without its effect: it ends in the dead letters, written nowhere.
async fn a_swallowed_database_error_loses_no_other_effect_and_is_not_acked(batch: usize) {
    let store = pg_store().await;
    let schema = store.config().schema.quoted();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.seen (account text PRIMARY KEY); \
         INSERT INTO {schema}.seen VALUES ('swallower')"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let transport = MemoryTransport::new();
    let router = Router::new().transactional(&store, "bank.swallow", SwallowsUniqueViolation);
    let consumer = consumer(
        transport.clone(),
        router,
        herald_consumer::ConsumerConfig {
            transaction_batch: batch,
            ..config()
        },
    );
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);

    let mut deposits: Vec<Envelope> = (0..200).map(|i| deposit(&format!("acc-{i}"), 0)).collect();
    // Last, so that it ends its group: the runs before it share its aborted transaction.
    deposits.push(deposit("swallower", 0));
    publish(&transport, &deposits).await;
    eventually("every deposit settled", || async {
        metrics.snapshot().finished() == 201
    })
    .await;
    running.stop().await;

    for i in 0..200 {
        assert_eq!(
            store.account(&format!("acc-{i}")).await,
            (1, 100),
            "acc-{i}: its effect committed"
        );
    }
    assert_eq!(
        store.inbox_rows().await,
        200,
        "one inbox record per committed message, none for the swallower"
    );
    assert_eq!(store.account("swallower").await, (0, 0));
    let snapshot = metrics.snapshot();
    assert_eq!(
        snapshot.acked, 200,
        "the swallower is not acknowledged as done"
    );
    let dead = dead_letters(&transport, &queue).await;
    assert_eq!(dead.len(), 1, "the swallower is dead-lettered");
    assert!(
        dead[0].reason.contains("cannot commit"),
        "the reason says why: {}",
        dead[0].reason
    );
    pg_drop(&store).await;
}

/// Group commit: one handler that swallows a database error in a group of many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swallowed_database_error_in_a_group_loses_no_other_effect_and_is_not_acked() {
    a_swallowed_database_error_loses_no_other_effect_and_is_not_acked(32).await;
}

/// A transaction per message: the swallower alone is not acknowledged as done either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swallowed_database_error_alone_is_not_acked() {
    a_swallowed_database_error_loses_no_other_effect_and_is_not_acked(1).await;
}
