//! The claim's low watermark never skips a row: not one whose writer commits (or rolls back)
//! long after later events were published, not one leased by another relay or waiting for a
//! retry. Between claims the tests sleep past the maintenance interval (50 ms), so the
//! watermark tries to move on every round.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, Disposition, Event, Failure, OutboxAdmin, OutboxStore,
};
use herald_postgres::PgOutbox;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event without a partition key: no key ordering gets in the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

impl Event for Ping {
    const TYPE: &'static str = "test.ping";
}

/// Longer than the maintenance interval.
const PAUSE: Duration = Duration::from_millis(120);

/// Records `n` events in one committed transaction; returns their ids.
async fn record(outbox: &PgOutbox, n: u32) -> BTreeSet<Uuid> {
    let mut tx = outbox.begin().await.unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        ids.insert(tx.record(&Ping { n: i }).await.unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

fn request(relay_id: Uuid, limit: usize, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        relay_id,
        limit,
        lease,
    }
}

/// Claims up to 100 rows for `relay`, completes them all, returns their ids.
async fn claim_and_complete(outbox: &PgOutbox, relay: Uuid) -> BTreeSet<Uuid> {
    let claimed = outbox
        .claim(&request(relay, 100, Duration::from_secs(30)))
        .await
        .unwrap();
    complete(outbox, relay, &claimed).await;
    claimed.iter().map(|c| c.envelope.id).collect()
}

async fn complete(outbox: &PgOutbox, relay: Uuid, claimed: &[ClaimedEvent]) {
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    assert_eq!(
        outbox.complete(relay, &seqs).await.unwrap(),
        seqs.len() as u64
    );
}

/// Publishes a few rounds of later events (each claimed and completed on its own, a pause
/// between claims) while a writer transaction that recorded an earlier event stays open;
/// returns that event's id and the open transaction.
async fn rounds_behind_an_open_writer(
    outbox: &PgOutbox,
    relay: Uuid,
) -> (Uuid, herald_postgres::PgOutboxTx<'static>) {
    // Some history first, so there is something to move past.
    let first = record(outbox, 3).await;
    assert_eq!(claim_and_complete(outbox, relay).await, first);

    let mut writer = outbox.begin().await.unwrap();
    let late = writer.record(&Ping { n: 99 }).await.unwrap();
    for _ in 0..8 {
        let ids = record(outbox, 5).await;
        tokio::time::sleep(PAUSE).await;
        // A clone shares the watermark.
        assert_eq!(claim_and_complete(&outbox.clone(), relay).await, ids);
    }
    (late, writer)
}

#[tokio::test]
async fn an_event_committed_late_is_still_claimed() {
    let outbox = common::outbox(Completion::Delete).await;
    let relay = Uuid::now_v7();
    let (late, writer) = rounds_behind_an_open_writer(&outbox, relay).await;

    writer.commit().await.unwrap();
    tokio::time::sleep(PAUSE).await;
    let claimed = claim_and_complete(&outbox, relay).await;
    assert_eq!(claimed, BTreeSet::from([late]));

    // And the watermark moves on afterwards.
    for _ in 0..3 {
        let ids = record(&outbox, 2).await;
        tokio::time::sleep(PAUSE).await;
        assert_eq!(claim_and_complete(&outbox, relay).await, ids);
    }
    assert_eq!(outbox.stats().await.unwrap().pending, 0);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn an_event_rolled_back_late_loses_nothing_and_blocks_nothing() {
    let outbox = common::outbox(Completion::Archive).await;
    let relay = Uuid::now_v7();
    let (_late, writer) = rounds_behind_an_open_writer(&outbox, relay).await;

    writer.rollback().await.unwrap();
    for _ in 0..4 {
        let ids = record(&outbox, 2).await;
        tokio::time::sleep(PAUSE).await;
        assert_eq!(claim_and_complete(&outbox, relay).await, ids);
    }
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.archived, 3 + 8 * 5 + 4 * 2);
    common::drop_schema(&outbox).await;
}

#[tokio::test]
async fn leased_and_retrying_rows_below_the_watermark_come_back() {
    let outbox = common::outbox(Completion::Delete).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut expected = record(&outbox, 4).await;

    // Relay A takes the first row on a short lease and never settles it.
    let abandoned = outbox
        .claim(&request(a, 1, Duration::from_millis(400)))
        .await
        .unwrap();
    assert_eq!(abandoned.len(), 1);
    // Relay B takes the rest, fails the first of them with a backoff, completes the others.
    let mut rest = outbox
        .claim(&request(b, 100, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    let retried = rest.remove(0);
    outbox
        .fail(
            b,
            &[Failure {
                seq: retried.seq,
                error: "broker down".into(),
                disposition: Disposition::Retry {
                    delay: Duration::from_millis(400),
                },
            }],
        )
        .await
        .unwrap();
    complete(&outbox, b, &rest).await;
    let mut seen: BTreeSet<Uuid> = rest.iter().map(|c| c.envelope.id).collect();

    // Later events are published while those two wait below them; both must come back.
    let mut rounds = 0;
    while !(seen.contains(&abandoned[0].envelope.id) && seen.contains(&retried.envelope.id)) {
        rounds += 1;
        assert!(
            rounds <= 50,
            "the leased or the retrying row never came back"
        );
        expected.extend(record(&outbox, 3).await);
        tokio::time::sleep(PAUSE).await;
        seen.extend(claim_and_complete(&outbox, b).await);
    }
    // Whatever the last round recorded but did not claim yet.
    seen.extend(claim_and_complete(&outbox, b).await);
    assert_eq!(seen, expected);
    assert_eq!(outbox.stats().await.unwrap().pending, 0);
    common::drop_schema(&outbox).await;
}
