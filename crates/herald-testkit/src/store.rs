//! The store conformance suite: what every [`OutboxStore`] + [`OutboxAdmin`] +
//! [`DeadLetters`] must do.
//!
//! Implement [`StoreFactory`] in the backend's integration tests and call
//! [`store_suite!`](crate::store_suite).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, DeadLetterOrigin, DeadLetters, Disposition, Envelope,
    Failure, Metadata, OutboxAdmin, OutboxStore, Page, Result, Selection, Seq, TraceContext, Uuid,
};

use crate::{TestEvent, envelope, interleaved};

/// Makes isolated stores for the suite.
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: OutboxStore + OutboxAdmin + DeadLetters + Clone;

    /// A fresh, migrated store that no other test touches (own schema, own database file).
    fn create(&self, completion: Completion) -> impl Future<Output = Self::Store> + Send;

    /// Records `envelopes` through the store's write path in one transaction of its database,
    /// which commits if `commit` and rolls back otherwise.
    fn record(
        &self,
        store: &Self::Store,
        envelopes: &[Envelope],
        commit: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Inserts, bypassing the write path (as another program might), one pending row whose
    /// envelope does not decode, of event type `bad`, partition key `bad` and payload
    /// `[0x00, 0xff]`: a negative version, say.
    fn record_undecodable(&self, store: &Self::Store) -> impl Future<Output = ()> + Send;
}

/// Expands to one `#[tokio::test]` per behaviour of the store suite, each calling the function
/// of the same name in [`herald_testkit::store`](crate::store) with `$factory`.
#[macro_export]
macro_rules! store_suite {
    ($factory:expr) => {
        $crate::store_suite!(@tests $factory;
            rollback_records_nothing,
            commit_records_every_field,
            batch_is_claimed_in_recorded_order,
            claim_respects_the_limit,
            leased_rows_go_to_another_relay_after_expiry,
            another_relays_lease_blocks_its_key_whichever_id_is_lower,
            completed_rows_leave_the_claim_path,
            per_key_order_holds_with_concurrent_claimers,
            failed_row_blocks_only_its_own_key_until_backoff,
            dead_letter_then_replay,
            undecodable_dead_letter_is_listed,
            release_does_not_count_an_attempt,
            write_backs_after_the_lease_expired_change_nothing,
            archive_is_pruned_by_retention,
            claim_is_correct_with_many_finished_rows,
            stats_report_each_state,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::$name(&$factory).await;
            }
        )*
    };
}

const LONG: Duration = Duration::from_secs(60);

fn request(relay_id: Uuid, limit: usize, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        relay_id,
        limit,
        lease,
    }
}

fn seqs(claimed: &[ClaimedEvent]) -> Vec<i64> {
    claimed.iter().map(|c| c.seq).collect()
}

fn ids(claimed: &[ClaimedEvent]) -> Vec<Uuid> {
    claimed.iter().map(|c| c.envelope.id).collect()
}

fn decode(claimed: &ClaimedEvent) -> TestEvent {
    claimed
        .envelope
        .decode::<TestEvent>()
        .expect("claimed payload decodes")
}

/// A failure that dead-letters the row at `seq` with `error`.
fn dead_letter(seq: Seq, error: &str) -> Failure {
    Failure {
        seq,
        error: error.into(),
        disposition: Disposition::DeadLetter,
    }
}

/// A failure that retries the row at `seq` after `delay`, with `error`.
fn retry(seq: Seq, error: &str, delay: Duration) -> Failure {
    Failure {
        seq,
        error: error.into(),
        disposition: Disposition::Retry { delay },
    }
}

async fn claim<S: OutboxStore>(store: &S, relay: Uuid, limit: usize) -> Vec<ClaimedEvent> {
    store
        .claim(&request(relay, limit, LONG))
        .await
        .expect("claim succeeds")
}

async fn record<F: StoreFactory>(factory: &F, store: &F::Store, envs: &[Envelope]) {
    factory
        .record(store, envs, true)
        .await
        .expect("record succeeds");
}

/// An event recorded in a transaction that rolls back is never claimable.
pub async fn rollback_records_nothing<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    factory
        .record(&store, &interleaved(3, 2), false)
        .await
        .expect("record inside the transaction succeeds");
    assert!(claim(&store, Uuid::now_v7(), 100).await.is_empty());
    assert_eq!(store.stats().await.expect("stats").pending, 0);
}

/// A committed event comes back from the store with every envelope field intact.
pub async fn commit_records_every_field<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let cause = envelope("order-1", 0);
    let mut meta = Metadata::caused_by(&cause)
        .with_partition_key("order-1")
        .with_header("tenant", "acme")
        .with_header("weird name", "value with \"quotes\" and ünicode");
    meta.trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("vendor=abc".into()),
    };
    let event = TestEvent {
        key: "order-1".into(),
        n: 1,
        note: "payload".into(),
    };
    let mut env = Envelope::from_event(&event, meta).expect("encode");
    // Stores keep microseconds, like PostgreSQL's timestamptz.
    let micros = env.occurred_at.microsecond();
    env.occurred_at = env
        .occurred_at
        .replace_microsecond(micros)
        .expect("valid microsecond");
    record(factory, &store, std::slice::from_ref(&env)).await;

    let claimed = claim(&store, Uuid::now_v7(), 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].envelope, env, "every field round-trips");
    assert_eq!(decode(&claimed[0]), event);
}

/// Events recorded in one batch are claimed in the order they were given.
pub async fn batch_is_claimed_in_recorded_order<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let envs = interleaved(10, 100);
    record(factory, &store, &envs).await;
    let claimed = claim(&store, Uuid::now_v7(), 5000).await;
    assert_eq!(ids(&claimed), envs.iter().map(|e| e.id).collect::<Vec<_>>());
    let s = seqs(&claimed);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "seq increases");
}

/// A claim never returns more rows than asked for, and two claims never share a row.
pub async fn claim_respects_the_limit<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    record(factory, &store, &interleaved(20, 5)).await;
    let relay = Uuid::now_v7();
    let first = claim(&store, relay, 30).await;
    let second = claim(&store, relay, 30).await;
    assert_eq!(first.len(), 30);
    assert_eq!(second.len(), 30);
    let a: HashSet<_> = seqs(&first).into_iter().collect();
    assert!(seqs(&second).iter().all(|s| !a.contains(s)));
}

/// A relay that dies keeps its rows only until its lease expires; then another relay gets
/// them, and the dead relay's late completion is ignored.
pub async fn leased_rows_go_to_another_relay_after_expiry<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    record(factory, &store, &interleaved(2, 2)).await;
    let dead = Uuid::now_v7();
    let alive = Uuid::now_v7();
    let lease = Duration::from_millis(300);
    let first = store.claim(&request(dead, 10, lease)).await.expect("claim");
    assert_eq!(first.len(), 4);
    assert!(
        claim(&store, alive, 10).await.is_empty(),
        "leased rows are held"
    );

    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = claim(&store, alive, 10).await;
    assert_eq!(ids(&taken), ids(&first), "same rows, same order");
    assert!(taken.iter().all(|c| c.attempts == 2));

    let late = store.complete(dead, &seqs(&first)).await.expect("complete");
    assert_eq!(late, 0, "a lost lease cannot complete");
    let done = store
        .complete(alive, &seqs(&taken))
        .await
        .expect("complete");
    assert_eq!(done, 4);
}

/// A key leased by one relay is blocked for every other relay, whichever of the two ids sorts
/// first (PostgreSQL reads the other relays' leases as the ids below and above the claimer's),
/// while the claimer's own leases never block it; the key flows again once the rows are done.
pub async fn another_relays_lease_blocks_its_key_whichever_id_is_lower<F: StoreFactory>(
    factory: &F,
) {
    let store = factory.create(Completion::Delete).await;
    let low = Uuid::from_u128(1 << 64);
    let high = Uuid::from_u128(u128::MAX - 1);
    for (round, (holder, other)) in [(low, high), (high, low)].into_iter().enumerate() {
        let (key, free) = (format!("held-{round}"), format!("free-{round}"));
        let (k0, k1, f0) = (envelope(&key, 0), envelope(&key, 1), envelope(&free, 0));
        record(factory, &store, &[k0.clone(), k1.clone(), f0.clone()]).await;
        let held = store.claim(&request(holder, 1, LONG)).await.expect("claim");
        assert_eq!(
            ids(&held),
            vec![k0.id],
            "round {round}: the holder takes the head"
        );
        let got = claim(&store, other, 10).await;
        assert_eq!(
            ids(&got),
            vec![f0.id],
            "round {round}: the held key waits, the other key flows"
        );
        store.complete(other, &seqs(&got)).await.expect("complete");
        let own = claim(&store, holder, 10).await;
        assert_eq!(
            ids(&own),
            vec![k1.id],
            "round {round}: own leases do not block"
        );
        store
            .complete(holder, &seqs(&held))
            .await
            .expect("complete");
        store.complete(holder, &seqs(&own)).await.expect("complete");
    }
    assert!(claim(&store, low, 10).await.is_empty(), "all done");
}

/// Completed rows are gone from the claim path.
pub async fn completed_rows_leave_the_claim_path<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    record(factory, &store, &interleaved(5, 4)).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 100).await;
    assert_eq!(
        store
            .complete(relay, &seqs(&claimed))
            .await
            .expect("complete"),
        20
    );
    assert!(
        store
            .claim(&request(Uuid::now_v7(), 100, Duration::from_millis(1)))
            .await
            .expect("claim")
            .is_empty()
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.in_flight), (0, 0));
}

/// Several relays claiming at once: every event is handed out exactly once, and the events of
/// each key in the order they were recorded.
pub async fn per_key_order_holds_with_concurrent_claimers<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let keys = 40;
    let per_key = 50;
    record(factory, &store, &interleaved(keys, per_key)).await;

    let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let store = store.clone();
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let relay = Uuid::now_v7();
            let mut empty_rounds = 0;
            while empty_rounds < 20 {
                let claimed = store
                    .claim(&request(relay, 7 + worker as usize * 11, LONG))
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                empty_rounds = 0;
                {
                    let mut log = log.lock().expect("log lock");
                    for c in &claimed {
                        let ev = decode(c);
                        log.push((ev.key, ev.n));
                    }
                }
                tokio::time::sleep(Duration::from_millis(fastrand_ms(worker))).await;
                let done = store
                    .complete(relay, &seqs(&claimed))
                    .await
                    .expect("complete");
                assert_eq!(done as usize, claimed.len());
            }
        }));
    }
    for task in tasks {
        task.await.expect("claimer task");
    }
    let log = log.lock().expect("log lock").clone();
    assert_eq!(log.len(), keys * per_key as usize, "each event once");
    let mut next: HashMap<String, u64> = HashMap::new();
    for (key, n) in log {
        let expected = next.entry(key.clone()).or_insert(0);
        assert_eq!(n, *expected, "key {key} out of order");
        *expected += 1;
    }
}

fn fastrand_ms(worker: u64) -> u64 {
    // Deterministic but uneven pauses, so claimers interleave differently.
    (worker * 7 + 3) % 11
}

/// A failed row waits for its backoff and holds back the later rows of its key — and nothing
/// else; after the backoff it comes back first, with its attempt count.
pub async fn failed_row_blocks_only_its_own_key_until_backoff<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let (a0, a1, b0) = (envelope("a", 0), envelope("a", 1), envelope("b", 0));
    record(factory, &store, &[a0.clone(), a1.clone(), b0.clone()]).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 10).await;
    assert_eq!(ids(&claimed), vec![a0.id, a1.id, b0.id]);

    let backoff = Duration::from_millis(400);
    store
        .fail(relay, &[retry(claimed[0].seq, "broker said no", backoff)])
        .await
        .expect("fail");
    store
        .release(relay, &[claimed[1].seq])
        .await
        .expect("release");
    store
        .complete(relay, &[claimed[2].seq])
        .await
        .expect("complete");

    assert!(claim(&store, relay, 10).await.is_empty(), "key a waits");
    let b1 = envelope("b", 1);
    record(factory, &store, std::slice::from_ref(&b1)).await;
    let other = claim(&store, relay, 10).await;
    assert_eq!(ids(&other), vec![b1.id], "other keys keep flowing");
    store
        .complete(relay, &seqs(&other))
        .await
        .expect("complete");

    tokio::time::sleep(backoff + Duration::from_millis(200)).await;
    let again = claim(&store, relay, 10).await;
    assert_eq!(
        ids(&again),
        vec![a0.id, a1.id],
        "order kept after the retry"
    );
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[1].attempts, 1);
}

/// A row given up on becomes a dead letter with its error and attempts, stops blocking its
/// key, is listed by page (newest first), and can be replayed or purged (one or all).
pub async fn dead_letter_then_replay<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let (p0, p1, q0) = (envelope("p", 0), envelope("p", 1), envelope("q", 0));
    record(factory, &store, &[p0.clone(), p1.clone(), q0.clone()]).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 10).await;
    store
        .fail(
            relay,
            &[
                dead_letter(claimed[0].seq, "poison: cannot route"),
                dead_letter(claimed[2].seq, "also poison"),
            ],
        )
        .await
        .expect("fail");
    store
        .release(relay, &[claimed[1].seq])
        .await
        .expect("release");

    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead_lettered), (1, 2));
    let dead = store
        .dead_letters(Page::first(10))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 2);
    let by_id: BTreeMap<Uuid, _> = dead
        .iter()
        .map(|d| (d.envelope.as_ref().expect("decodes").id, d))
        .collect();
    assert_eq!(by_id[&p0.id].reason, "poison: cannot route");
    assert_eq!(by_id[&p0.id].attempts, 1);
    assert_eq!(
        by_id[&p0.id].envelope.as_ref().expect("decodes").payload,
        p0.payload
    );
    assert_eq!(by_id[&p0.id].id, Some(p0.id));
    assert_eq!(
        by_id[&p0.id].raw.payload, p0.payload,
        "the raw form is kept"
    );
    assert!(by_id[&p0.id].dead_lettered_at.is_some());
    assert!(matches!(
        by_id[&p0.id].origin,
        DeadLetterOrigin::Outbox { .. }
    ));
    let first = store.dead_letters(Page::first(1)).await.expect("page 1");
    let second = store
        .dead_letters(Page::first(1).next())
        .await
        .expect("page 2");
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_ne!(first[0].id, second[0].id, "pages do not overlap");

    let next = claim(&store, relay, 10).await;
    assert_eq!(
        ids(&next),
        vec![p1.id],
        "a dead letter no longer blocks its key"
    );
    store.complete(relay, &seqs(&next)).await.expect("complete");

    assert_eq!(
        store.replay(Selection::One(p0.id)).await.expect("replay"),
        1
    );
    assert_eq!(
        store
            .replay(Selection::One(Uuid::now_v7()))
            .await
            .expect("replay"),
        0
    );
    let replayed = claim(&store, relay, 10).await;
    assert_eq!(ids(&replayed), vec![p0.id]);
    assert_eq!(replayed[0].attempts, 1, "replay starts a fresh count");
    store
        .complete(relay, &seqs(&replayed))
        .await
        .expect("complete");

    assert_eq!(store.replay(Selection::All).await.expect("replay all"), 1);
    assert_eq!(ids(&claim(&store, relay, 10).await), vec![q0.id]);
    assert_eq!(store.stats().await.expect("stats").dead_lettered, 0);

    // Purge.
    let claimed = claim(&store, relay, 10).await;
    assert!(claimed.is_empty());
    record(factory, &store, &[envelope("r", 0)]).await;
    let r = claim(&store, relay, 10).await;
    store
        .fail(relay, &[dead_letter(r[0].seq, "x")])
        .await
        .expect("fail");
    assert_eq!(store.purge(Selection::All).await.expect("purge"), 1);
    assert!(
        store
            .dead_letters(Page::first(10))
            .await
            .expect("dead letters")
            .is_empty()
    );

    // Purge one: only the selected dead letter goes.
    record(factory, &store, &[envelope("s", 0), envelope("t", 0)]).await;
    let st = claim(&store, relay, 10).await;
    let failures: Vec<Failure> = st.iter().map(|c| dead_letter(c.seq, "y")).collect();
    store.fail(relay, &failures).await.expect("fail");
    let s0 = st[0].envelope.id;
    assert_eq!(
        store
            .purge(Selection::One(Uuid::now_v7()))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(store.purge(Selection::One(s0)).await.expect("purge one"), 1);
    let left = store.dead_letters(Page::ALL).await.expect("dead letters");
    assert_eq!(
        left.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![Some(st[1].envelope.id)]
    );
}

/// A row whose envelope does not decode is dead-lettered by the claim and is still listed:
/// with its raw columns and payload, and the reason it was given up on.
pub async fn undecodable_dead_letter_is_listed<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let good = envelope("k", 0);
    record(factory, &store, std::slice::from_ref(&good)).await;
    factory.record_undecodable(&store).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 10).await;
    assert_eq!(ids(&claimed), vec![good.id], "the bad row is set aside");
    store
        .complete(relay, &seqs(&claimed))
        .await
        .expect("complete");

    let dead = store
        .dead_letters(Page::first(10))
        .await
        .expect("an undecodable dead letter does not break the listing");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.starts_with("malformed row: "),
        "{}",
        dead[0].reason
    );
    assert!(dead[0].envelope.is_none(), "it does not decode");
    assert_eq!(dead[0].event_type(), Some("bad"), "{:?}", dead[0].raw);
    assert_eq!(
        dead[0].raw.headers.get("partition_key").map(String::as_str),
        Some("bad")
    );
    assert_eq!(dead[0].raw.payload.as_ref(), &[0x00, 0xff]);
    assert_eq!(dead[0].attempts, 1);
    assert!(matches!(dead[0].origin, DeadLetterOrigin::Outbox { .. }));
    let id = dead[0].id.expect("its id reads as a UUID");
    assert_eq!(store.purge(Selection::One(id)).await.expect("purge"), 1);
    assert_eq!(store.stats().await.expect("stats").dead_lettered, 0);
}

/// Rows released by a relay shutting down are claimable at once, and the claim that was given
/// back does not count as an attempt.
pub async fn release_does_not_count_an_attempt<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    record(factory, &store, &interleaved(3, 1)).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 10).await;
    store
        .release(relay, &seqs(&claimed))
        .await
        .expect("release");
    let again = claim(&store, Uuid::now_v7(), 10).await;
    assert_eq!(ids(&again), ids(&claimed));
    assert!(again.iter().all(|c| c.attempts == 1));
}

/// A relay whose lease ran out cannot fail or release its rows as if it still held them,
/// even when no other relay took them over yet: the rows stay as the expired claim left them
/// (claimable at once, the claim counted), so a retry it reschedules cannot land behind rows
/// of its key that another relay publishes meanwhile.
pub async fn write_backs_after_the_lease_expired_change_nothing<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    record(factory, &store, &interleaved(2, 1)).await;
    let slow = Uuid::now_v7();
    let lease = Duration::from_millis(300);
    let first = store.claim(&request(slow, 10, lease)).await.expect("claim");
    assert_eq!(first.len(), 2);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;

    store
        .fail(
            slow,
            &[retry(
                first[0].seq,
                "late failure",
                Duration::from_secs(3600),
            )],
        )
        .await
        .expect("a late fail is not an error");
    store
        .release(slow, &[first[1].seq])
        .await
        .expect("a late release is not an error");

    let taken = claim(&store, Uuid::now_v7(), 10).await;
    assert_eq!(
        ids(&taken),
        ids(&first),
        "neither rescheduled nor released: both claimable at once"
    );
    assert!(
        taken.iter().all(|c| c.attempts == 2),
        "the expired claim still counts"
    );
}

/// In archive mode, completed rows go to the archive, which retention prunes.
pub async fn archive_is_pruned_by_retention<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Archive).await;
    record(factory, &store, &interleaved(4, 5)).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 100).await;
    store
        .complete(relay, &seqs(&claimed))
        .await
        .expect("complete");
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.archived), (0, 20));
    assert!(claim(&store, relay, 100).await.is_empty());

    assert_eq!(
        store
            .prune(Duration::from_secs(3600), 100)
            .await
            .expect("prune"),
        0,
        "nothing older than an hour"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store
            .prune(Duration::from_millis(1), 15)
            .await
            .expect("prune"),
        15,
        "bounded batch"
    );
    assert_eq!(
        store
            .prune(Duration::from_millis(1), 100)
            .await
            .expect("prune"),
        5
    );
    assert_eq!(store.stats().await.expect("stats").archived, 0);
}

/// With thousands of finished rows behind it, a claim still returns exactly the pending rows,
/// in order.
pub async fn claim_is_correct_with_many_finished_rows<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Archive).await;
    let relay = Uuid::now_v7();
    for _ in 0..5 {
        record(factory, &store, &interleaved(100, 10)).await;
        loop {
            let claimed = claim(&store, relay, 500).await;
            if claimed.is_empty() {
                break;
            }
            store
                .complete(relay, &seqs(&claimed))
                .await
                .expect("complete");
        }
    }
    assert_eq!(store.stats().await.expect("stats").archived, 5000);
    let fresh = interleaved(3, 3);
    record(factory, &store, &fresh).await;
    let claimed = claim(&store, relay, 100).await;
    assert_eq!(
        ids(&claimed),
        fresh.iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

/// Stats count pending, retrying, in-flight and dead-lettered rows, the oldest pending row and
/// the oldest due one (a row backing off is pending, not due).
pub async fn stats_report_each_state<F: StoreFactory>(factory: &F) {
    let store = factory.create(Completion::Delete).await;
    let empty = store.stats().await.expect("stats");
    assert_eq!(empty.pending, 0);
    assert!(empty.oldest_pending_at.is_none());
    assert!(empty.oldest_due_at.is_none());

    record(factory, &store, &interleaved(4, 1)).await;
    let relay = Uuid::now_v7();
    let claimed = claim(&store, relay, 3).await;
    store
        .fail(
            relay,
            &[
                retry(claimed[0].seq, "later", Duration::from_secs(60)),
                dead_letter(claimed[1].seq, "never"),
            ],
        )
        .await
        .expect("fail");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.pending, 2, "one untouched, one retrying");
    assert_eq!(stats.retrying, 1);
    assert_eq!(stats.in_flight, 1);
    assert_eq!(stats.dead_lettered, 1);
    let oldest = stats.oldest_pending_at.expect("oldest pending");
    let age = herald_core::OffsetDateTime::now_utc() - oldest;
    assert!(age.whole_seconds() < 60, "recorded just now, got age {age}");
    assert!(stats.oldest_due_at.is_some(), "the untouched row is due");

    // Only the retrying row is left pending: it is backing off, not due.
    let last = claim(&store, Uuid::now_v7(), 10).await;
    assert_eq!(last.len(), 1, "the untouched row");
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.retrying), (1, 1));
    assert!(stats.oldest_pending_at.is_some());
    assert!(
        stats.oldest_due_at.is_none(),
        "a row backing off is not due: {:?}",
        stats.oldest_due_at
    );
}
