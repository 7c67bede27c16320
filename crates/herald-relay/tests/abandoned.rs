//! Per-key order when a relay gives up writing a batch's failures or releases back because its
//! lease is nearly over (found by the relay simulation, seeds 2 and 36): the rows stay leased to
//! the relay until the lease ends, and a relay's own leases do not block its own claims, so
//! nothing may let the next events of their keys go meanwhile. Real PostgreSQL; the late claim
//! answer is injected by a wrapper, never by a mock of the database.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use herald_core::{
    ClaimRequest, ClaimedEvent, DeliveryStream, Envelope, OutboxStore, Result, Subscriber,
};
use herald_memory::MemoryTransport;
use herald_postgres::PgOutbox;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::envelope;
use herald_testkit::wrap::{WrapStore, Wrapped};
use tokio_util::sync::CancellationToken;

/// A store whose first claim that takes rows answers `late` after its statement committed (a
/// slow network or pool): the rows are leased from the statement on.
#[derive(Clone)]
struct LateFirstClaim<S> {
    inner: S,
    late: Duration,
    pending: Arc<AtomicBool>,
}

impl<S> LateFirstClaim<S> {
    fn new(inner: S, late: Duration) -> Self {
        LateFirstClaim {
            inner,
            late,
            pending: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl<S: OutboxStore> WrapStore for LateFirstClaim<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        let claimed = self.inner.claim(request).await?;
        if !claimed.is_empty() && self.pending.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(self.late).await;
        }
        Ok(claimed)
    }
}

/// A 6 s lease: a claim answered later than 0.9 × lease (5.4 s) is too late to publish (past
/// 0.8 × lease) and too late to release; answered at 5.6 s, it leaves 0.4 s of lease in which
/// the relay's next claim would find the next event of the key free for itself.
fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 1,
        lease: Duration::from_secs(6),
        publish_timeout: Duration::from_millis(500),
        ..fast_config()
    }
}

const LATE: Duration = Duration::from_millis(5_600);

fn order(delivered: &[Envelope]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    delivered
        .iter()
        .filter(|e| seen.insert(e.id))
        .map(|e| e.decode::<herald_testkit::TestEvent>().unwrap().n)
        .collect()
}

/// Events k:0, k:1, k:2 recorded on a fresh PostgreSQL outbox, an audit queue of the memory
/// broker, and a relay to it whose first claim answers [`LATE`].
async fn late_relay() -> (
    PgOutbox,
    Vec<Envelope>,
    impl DeliveryStream,
    Relay<Wrapped<LateFirstClaim<PgOutbox>>, MemoryTransport>,
) {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let stream = transport.subscribe(&audit()).await.unwrap();
    let events: Vec<Envelope> = (0..3).map(|n| envelope("k", n)).collect();
    record_pg(&store, &events).await;

    let late = LateFirstClaim::new(store.clone(), LATE);
    let relay = Relay::new(Wrapped(late), transport, config()).unwrap();
    (store, events, stream, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_given_up_as_the_lease_runs_out_does_not_let_the_next_event_of_its_key_pass() {
    let (store, events, mut stream, relay) = late_relay().await;
    let metrics = relay.metrics();
    let delivered = run_until_delivered(relay, &mut stream, events.len()).await;

    let snapshot = metrics.snapshot();
    assert!(snapshot.late_claims >= 1, "the late claim was injected");
    assert!(snapshot.abandoned >= 1, "its release was given up");
    assert_eq!(
        order(&delivered),
        vec![0, 1, 2],
        "first arrivals of key k in recording order"
    );
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_once_after_a_release_given_up_does_not_let_the_next_event_of_its_key_pass() {
    let (store, events, mut stream, relay) = late_relay().await;
    let shutdown = CancellationToken::new();
    let first = relay.relay_once(&shutdown).await.unwrap();
    assert_eq!(
        (first.claimed, first.published),
        (1, 0),
        "k:0 came back too late to publish"
    );
    assert_eq!(relay.metrics().snapshot().abandoned, 1, "and to release");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut published = 0;
    while published < events.len() && tokio::time::Instant::now() < deadline {
        let report = relay.relay_once(&shutdown).await.unwrap();
        published += report.published;
        if report.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let delivered = collect(&mut stream, events.len(), Duration::from_secs(5)).await;
    assert_eq!(
        order(&delivered),
        vec![0, 1, 2],
        "first arrivals of key k in recording order"
    );
    pg_drop(&store).await;
}
