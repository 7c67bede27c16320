//! Per-key order when write-backs and claims overlap (issue 13, items 1 and 2): a relay's claim
//! may run while a write-back of a failed or released row is in flight, on the same relay or on
//! another one whose lease ran out. Real PostgreSQL; faults injected by wrappers and a slow
//! statement, never by a mock of the database.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_core::{
    ClaimRequest, ClaimedEvent, Envelope, Failure, OutboxStore, Result, Seq, Subscriber, Uuid,
};
use herald_memory::MemoryTransport;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::envelope;
use herald_testkit::wrap::{WrapStore, Wrapped};
use tokio_util::sync::CancellationToken;

/// A store whose claims come back late and whose write-backs of failures and releases start
/// late: a claim sent before a write-back takes its snapshot before the write-back commits,
/// and returns after the write-back returned.
#[derive(Clone)]
struct Sluggish<S> {
    inner: S,
    claim_returns_after: Duration,
    write_back_starts_after: Duration,
}

impl<S: OutboxStore> WrapStore for Sluggish<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        let claimed = self.inner.claim(request).await;
        tokio::time::sleep(self.claim_returns_after).await;
        claimed
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        tokio::time::sleep(self.write_back_starts_after).await;
        self.inner.fail(relay_id, failures).await
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        tokio::time::sleep(self.write_back_starts_after).await;
        self.inner.release(relay_id, seqs).await
    }
}

/// Makes the broker refuse the first publication of each of `ids` (a nack).
fn nack_once(transport: &MemoryTransport, ids: impl IntoIterator<Item = Uuid>) {
    let pending: Arc<Mutex<HashSet<Uuid>>> = Arc::new(Mutex::new(ids.into_iter().collect()));
    transport.fail_publishes_when(move |env| {
        pending
            .lock()
            .unwrap()
            .remove(&env.id)
            .then(|| "injected nack".to_owned())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_overlapping_a_failed_write_back_does_not_let_the_next_event_of_its_key_pass() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events: Vec<Envelope> = (0..3).map(|n| envelope("k", n)).collect();
    nack_once(&transport, [events[0].id]);
    record_pg(&store, &events).await;

    // One row per batch: the claim of batch 2 (k:1) is sent as soon as batch 1 (k:0) is in,
    // takes its snapshot while k:0 is still leased to this relay, and returns only after the
    // failure of k:0 was written back.
    let sluggish = Sluggish {
        inner: store.clone(),
        claim_returns_after: Duration::from_millis(300),
        write_back_starts_after: Duration::from_millis(100),
    };
    let config = RelayConfig {
        batch_size: 1,
        ..fast_config()
    };
    let relay = Relay::new(Wrapped(sluggish), transport.clone(), config).unwrap();
    let metrics = relay.metrics();
    let delivered = run_until_delivered(relay, &mut stream, events.len()).await;

    assert_eq!(metrics.snapshot().retried, 1, "the nack was injected");
    let order: Vec<u64> = delivered
        .iter()
        .map(|e| e.decode::<herald_testkit::TestEvent>().unwrap().n)
        .collect();
    assert_eq!(
        order,
        vec![0, 1, 2],
        "first arrivals of key k in recording order"
    );
    pg_drop(&store).await;
}

/// Makes the first failure write-back of a row slow in the database itself: the statement
/// holds the row's lock for `seconds` before it commits.
async fn slow_first_fail(store: &herald_postgres::PgOutbox, seconds: f64) {
    let schema = store.config().schema.quoted();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION {schema}.slow_fail() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
         CREATE TRIGGER slow_fail AFTER UPDATE ON {schema}.\"outbox\" FOR EACH ROW \
         WHEN (NEW.last_error IS NOT NULL AND OLD.last_error IS NULL) \
         EXECUTE FUNCTION {schema}.slow_fail();"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_written_back_as_the_lease_runs_out_does_not_let_another_relay_pass() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events: Vec<Envelope> = (0..3).map(|n| envelope("k", n)).collect();
    nack_once(&transport, [events[0].id]);
    // Relay A's failure of k:0 starts at once but holds the row until well after A's lease on
    // k:0, k:1 and k:2 ran out; meanwhile relay B claims.
    slow_first_fail(&store, 1.5).await;
    record_pg(&store, &events).await;

    let config = RelayConfig {
        lease: Duration::from_secs(1),
        publish_timeout: Duration::from_millis(500),
        ..fast_config()
    };
    let shutdown = CancellationToken::new();
    let a = Relay::new(store.clone(), transport.clone(), config.clone()).unwrap();
    let a_metrics = a.metrics();
    let mut tasks = vec![tokio::spawn({
        let shutdown = shutdown.clone();
        async move { a.run(shutdown).await }
    })];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = Relay::new(store.clone(), transport.clone(), config).unwrap();
    tasks.push(tokio::spawn({
        let shutdown = shutdown.clone();
        async move { b.run(shutdown).await }
    }));

    let delivered = collect(&mut stream, events.len(), Duration::from_secs(30)).await;
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(a_metrics.snapshot().retried, 1, "A's nack was injected");
    assert_key_order(&delivered, true);
    assert_eq!(
        delivered.iter().map(|e| e.id).collect::<HashSet<_>>().len(),
        events.len()
    );
    pg_drop(&store).await;
}

/// A store whose first claim commits but whose answer is lost (the connection dropped after
/// COMMIT): the rows are leased to the relay, which never saw them.
#[derive(Clone)]
struct LostAnswer<S> {
    inner: S,
    lose: Arc<std::sync::atomic::AtomicBool>,
}

impl<S: OutboxStore> WrapStore for LostAnswer<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        let claimed = self.inner.claim(request).await?;
        if !claimed.is_empty() && self.lose.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(herald_core::Error::store(
                "claim",
                true,
                herald_core::error::Message("connection lost after commit".into()),
            ));
        }
        Ok(claimed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_claim_whose_answer_was_lost_still_block_their_key() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events: Vec<Envelope> = (0..3).map(|n| envelope("k", n)).collect();
    record_pg(&store, &events).await;
    let lossy = LostAnswer {
        inner: store.clone(),
        lose: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let config = RelayConfig {
        batch_size: 1,
        ..fast_config()
    };
    let relay = Relay::new(Wrapped(lossy), transport.clone(), config).unwrap();
    let delivered = run_until_delivered(relay, &mut stream, events.len()).await;
    assert_key_order(&delivered, true);
    assert_eq!(delivered.len(), events.len());
    pg_drop(&store).await;
}
