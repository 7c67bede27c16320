//! The claim's per-key order against write-backs in flight on other connections: an expired
//! claim that its relay is writing back right now is not taken over, and still blocks its keys.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use herald_core::{ClaimRequest, Completion, OutboxStore};
use herald_testkit::envelope;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

fn request(relay_id: Uuid, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        relay_id,
        limit: 10,
        lease,
    }
}

#[tokio::test]
async fn a_claim_locked_by_a_write_back_after_its_lease_expired_blocks_its_keys() {
    let outbox = common::outbox(Completion::Delete).await;
    let mut tx = outbox.begin().await.unwrap();
    tx.record_all(&[envelope("k", 0), envelope("k", 1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Relay A claims both rows of `k` and is slow: its lease runs out.
    let slow = Uuid::now_v7();
    let lease = Duration::from_millis(200);
    let first = outbox.claim(&request(slow, lease)).await.unwrap();
    assert_eq!(first.len(), 2);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;

    // A's write-back of k:0 is in flight: its statement holds the claim's lock.
    let claims = format!("{}.\"outbox_claims\"", outbox.config().schema.quoted());
    let mut write_back = outbox.pool().begin().await.unwrap();
    let locked = sqlx::query(AssertSqlSafe(format!(
        "SELECT id FROM {claims} WHERE relay = $1 FOR UPDATE"
    )))
    .bind(slow)
    .fetch_all(&mut *write_back)
    .await
    .unwrap();
    assert_eq!(locked.len(), 1, "one claim row per claim");

    // Relay B must not take k:1 past the row it cannot see.
    let other = Uuid::now_v7();
    let taken = outbox
        .claim(&request(other, Duration::from_secs(30)))
        .await
        .unwrap();
    let seqs: Vec<i64> = taken.iter().map(|c| c.seq).collect();
    assert!(
        seqs.is_empty(),
        "claimed {seqs:?} while k:0 (seq {}) was being written back",
        first[0].seq
    );

    // Once the write-back is over (here: it changed nothing), B takes both over, in order,
    // A's expired claim counted as their first attempt.
    write_back.rollback().await.unwrap();
    let taken = outbox
        .claim(&request(other, Duration::from_secs(30)))
        .await
        .unwrap();
    let seqs: Vec<i64> = taken.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![first[0].seq, first[1].seq]);
    assert!(taken.iter().all(|c| c.attempts == 2), "{taken:?}");

    // A's write-back after the take-over changes nothing: its claim is gone.
    assert_eq!(outbox.complete(slow, &seqs).await.unwrap(), 0);
    assert_eq!(outbox.complete(other, &seqs).await.unwrap(), 2);
}

/// The number of claim rows of `outbox`.
async fn claim_rows(outbox: &herald_postgres::PgOutbox) -> i64 {
    let claims = format!("{}.\"outbox_claims\"", outbox.config().schema.quoted());
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {claims}")))
        .fetch_one(outbox.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claim_shrinks_with_each_write_back_and_goes_with_the_last() {
    let outbox = common::outbox(Completion::Delete).await;
    let mut tx = outbox.begin().await.unwrap();
    tx.record_all(&[envelope("k", 0), envelope("j", 0), envelope("k", 1)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let a = Uuid::now_v7();
    let lease = Duration::from_secs(30);
    let claimed = outbox.claim(&request(a, lease)).await.unwrap();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.len(), 3);
    assert_eq!(claim_rows(&outbox).await, 1);

    // j:0 is published: its row goes, the claim keeps the other two.
    assert_eq!(outbox.complete(a, &[seqs[1]]).await.unwrap(), 1);
    assert_eq!(claim_rows(&outbox).await, 1);
    let b = Uuid::now_v7();
    assert!(outbox.claim(&request(b, lease)).await.unwrap().is_empty());

    // A gives k:0 and k:1 back: the claim is over, and B takes both in order, first attempts.
    outbox.release(a, &[seqs[0], seqs[2]]).await.unwrap();
    assert_eq!(claim_rows(&outbox).await, 0);
    let taken = outbox.claim(&request(b, lease)).await.unwrap();
    let got: Vec<(i64, u32)> = taken.iter().map(|c| (c.seq, c.attempts)).collect();
    assert_eq!(got, vec![(seqs[0], 1), (seqs[2], 1)]);

    // A's late write-backs change nothing of B's claim.
    assert_eq!(outbox.complete(a, &[seqs[0]]).await.unwrap(), 0);
    outbox.release(a, &[seqs[2]]).await.unwrap();
    assert_eq!(claim_rows(&outbox).await, 1);
    assert_eq!(outbox.complete(b, &[seqs[0], seqs[2]]).await.unwrap(), 2);
    assert_eq!(claim_rows(&outbox).await, 0);
    common::drop_schema(&outbox).await;
}
