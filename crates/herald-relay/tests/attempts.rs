//! Rows and relays that would loop forever (issue 13, item 9): a row that crashes the relay
//! process at every claim, claims too slow for the lease, and one `Relay` run twice at once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use herald_core::{
    ClaimRequest, ClaimedEvent, DeadLetters, Error, OutboxStore, Page, Result, Subscriber, Uuid,
};
use herald_memory::MemoryTransport;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::wrap::{WrapStore, Wrapped};
use herald_testkit::{envelope, interleaved};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_claimed_max_attempts_times_without_a_result_is_dead_lettered_not_published() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let crasher = envelope("k", 0);
    let behind = envelope("k", 1);
    record_pg(&store, std::slice::from_ref(&crasher)).await;
    let config = fast_config();
    // Each claim stands for a relay process that took the row and crashed publishing it: the
    // lease runs out, nothing is written back.
    let lease = Duration::from_millis(50);
    for _ in 0..config.max_attempts {
        let claimed = store
            .claim(&ClaimRequest {
                relay_id: Uuid::now_v7(),
                limit: 10,
                lease,
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        tokio::time::sleep(lease * 2).await;
    }
    record_pg(&store, std::slice::from_ref(&behind)).await;

    let relay = Relay::new(store.clone(), transport.clone(), config).unwrap();
    let first = relay.relay_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        (first.dead_lettered, first.published),
        (1, 0),
        "the crash-looping row is given up on, unpublished"
    );
    let dead = store.dead_letters(Page::first(10)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.as_ref().unwrap().id, crasher.id);
    assert!(dead[0].reason.contains("claimed"), "{}", dead[0].reason);
    // The key is not blocked for ever: the next event goes.
    let second = relay.relay_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(second.published, 1);
    let delivered = collect(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, behind.id);
    pg_drop(&store).await;
}

/// A store whose claims take 20 ms per row asked for (a slow database).
#[derive(Clone)]
struct SlowClaims<S>(S);

impl<S: OutboxStore> WrapStore for SlowClaims<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.0
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        let claimed = self.0.claim(request).await;
        let per_row = Duration::from_millis(20);
        tokio::time::sleep(per_row * u32::try_from(request.limit).unwrap_or(u32::MAX)).await;
        claimed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_too_slow_for_the_lease_are_noticed_and_the_batch_shrinks_until_events_flow() {
    let store = pg_store().await;
    let transport = MemoryTransport::new();
    let mut stream = transport.subscribe(&audit()).await.unwrap();
    let events = interleaved(10, 3);
    record_pg(&store, &events).await;
    // A claim of 100 rows takes 2 s, past 0.8 × lease − publish timeout (0.6 s): every such
    // batch would be given back unpublished, for ever.
    let config = RelayConfig {
        batch_size: 100,
        ..fast_config()
    };
    let relay = Relay::new(
        Wrapped(SlowClaims(store.clone())),
        transport.clone(),
        config,
    )
    .unwrap();
    let metrics = relay.metrics();
    let delivered = run_until_delivered(relay, &mut stream, events.len()).await;
    assert_eq!(delivered.len(), events.len(), "every event published");
    assert_key_order(&delivered, false);
    assert!(
        metrics.snapshot().late_claims > 0,
        "the slow claims were counted"
    );
    pg_drop(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_one_relay_twice_at_once_is_refused() {
    let (_dir, store) = sqlite_store().await;
    let relay = std::sync::Arc::new(
        Relay::new(store.clone(), MemoryTransport::new(), fast_config()).unwrap(),
    );
    let shutdown = CancellationToken::new();
    let first = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = CancellationToken::new();
    stopped.cancel();
    let second = relay.run(stopped.clone()).await;
    assert!(
        matches!(second, Err(Error::Config(_))),
        "two loops under one relay id would split keys between them: {second:?}"
    );
    assert!(matches!(
        relay.relay_once(&stopped).await,
        Err(Error::Config(_))
    ));
    shutdown.cancel();
    first.await.unwrap().unwrap();
    // Once the first loop stopped, the relay may run again.
    relay.run(stopped).await.unwrap();
}
