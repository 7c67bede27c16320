//! The inbox conformance suite: what every [`Inbox`] must do.
//!
//! Implement [`InboxFactory`] in the backend's integration tests and call
//! [`inbox_suite!`](crate::inbox_suite).

use std::future::Future;
use std::time::Duration;

use herald_core::{Claim, Claimed, Inbox, OutboxTransaction, TransactionalOutbox, Uuid};

/// Makes isolated inboxes for the suite.
pub trait InboxFactory: Send + Sync + 'static {
    /// The inbox under test.
    type Store: Inbox;

    /// A fresh, migrated inbox that no other test touches (own schema, own database file).
    fn create(&self) -> impl Future<Output = Self::Store> + Send;

    /// How many inbox records `store` holds (a count of its inbox table).
    fn inbox_rows(&self, store: &Self::Store) -> impl Future<Output = i64> + Send;
}

/// Expands to one `#[tokio::test]` per behaviour of the inbox suite, each calling the function
/// of the same name in [`herald_testkit::inbox`](crate::inbox) with `$factory`.
#[macro_export]
macro_rules! inbox_suite {
    ($factory:expr) => {
        $crate::inbox_suite!(@tests $factory;
            a_claim_records_the_message_once,
            a_rolled_back_claim_leaves_no_record,
            a_pair_claimed_twice_in_one_go_is_new_once,
            a_held_key_holds_later_messages_of_its_key_only,
            the_held_message_goes_ahead_and_its_hold_goes_with_its_commit,
            a_duplicate_of_the_held_message_removes_its_hold,
            a_released_key_holds_nothing,
            a_stale_hold_stops_holding_and_is_deleted,
            holding_again_moves_the_due_time,
            a_holding_message_waits_only_for_holds_taken_before_its_own,
            retention_prunes_old_records_in_bounded_batches,
            a_duplicate_is_found_by_the_key_not_by_a_read,
            a_group_is_marked_in_one_call_and_repeats_count_once,
            a_run_rolled_back_to_its_savepoint_loses_only_its_own_writes,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::inbox::$name(&$factory).await;
            }
        )*
    };
}

const HANDLER: &str = "suite.handler";
const CONSUMER: &str = "suite.queue";
/// A stale-after long enough for no hold of a test to go stale.
const LONG: Duration = Duration::from_secs(3600);

fn keyed<'a>(message_id: Uuid, key: &'a str) -> Claim<'a> {
    Claim {
        message_id,
        handler: HANDLER,
        key: Some((CONSUMER, key)),
    }
}

/// Claims `claims` in a transaction of their own, which commits if `commit`.
async fn claim<O: Inbox>(
    store: &O,
    claims: &[Claim<'_>],
    stale_after: Duration,
    commit: bool,
) -> Vec<Claimed> {
    let mut tx = store.begin().await.expect("begin");
    let claimed = store
        .claim_all(&mut tx, claims, stale_after)
        .await
        .expect("claim");
    if commit {
        store.commit_quietly(tx).await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    claimed
}

/// Claims `claims` and releases each keyed claim's own hold in one transaction, which commits:
/// what the consumer does for a run that succeeded.
async fn claim_and_release<O: Inbox>(store: &O, claims: &[Claim<'_>]) -> Vec<Claimed> {
    let mut tx = store.begin().await.expect("begin");
    let claimed = store.claim_all(&mut tx, claims, LONG).await.expect("claim");
    let holds: Vec<(&str, &str, Uuid)> = claims
        .iter()
        .filter_map(|c| c.key.map(|(consumer, key)| (consumer, key, c.message_id)))
        .collect();
    store
        .release_keys(&mut tx, &holds)
        .await
        .expect("release keys");
    store.commit_quietly(tx).await.expect("commit");
    claimed
}

fn held_by(claimed: &[Claimed]) -> Option<Uuid> {
    match claimed.first() {
        Some(Claimed::Held { by, .. }) => Some(*by),
        _ => None,
    }
}

/// A committed claim is new once; claimed again, it is a duplicate, and the record is visible.
pub async fn a_claim_records_the_message_once<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let id = Uuid::now_v7();
    assert_eq!(
        claim(&store, &[keyed(id, "a")], LONG, true).await,
        [Claimed::New]
    );
    assert!(store.is_handled(id, HANDLER).await.expect("read"));
    assert_eq!(
        claim(&store, &[keyed(id, "a")], LONG, true).await,
        [Claimed::Duplicate]
    );
    let unkeyed = Claim {
        message_id: Uuid::now_v7(),
        handler: HANDLER,
        key: None,
    };
    assert_eq!(claim(&store, &[unkeyed], LONG, true).await, [Claimed::New]);
    assert_eq!(
        claim(&store, &[unkeyed], LONG, true).await,
        [Claimed::Duplicate]
    );
}

/// A claim whose transaction rolls back leaves nothing: the message is new again.
pub async fn a_rolled_back_claim_leaves_no_record<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let id = Uuid::now_v7();
    assert_eq!(
        claim(&store, &[keyed(id, "a")], LONG, false).await,
        [Claimed::New]
    );
    assert!(!store.is_handled(id, HANDLER).await.expect("read"));
    assert_eq!(
        claim(&store, &[keyed(id, "a")], LONG, true).await,
        [Claimed::New]
    );
}

/// Several claims in one go answer claim by claim; a pair listed twice is new once.
pub async fn a_pair_claimed_twice_in_one_go_is_new_once<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = claim(
        &store,
        &[keyed(a, "a"), keyed(b, "b"), keyed(a, "a")],
        LONG,
        true,
    )
    .await;
    assert_eq!(claimed, [Claimed::New, Claimed::New, Claimed::Duplicate]);
    assert!(store.is_handled(a, HANDLER).await.expect("read"));
    assert!(store.is_handled(b, HANDLER).await.expect("read"));
}

/// A key held for one message holds every other message of that key of that consumer, and
/// writes nothing for them; other keys, other consumers and messages without a key go on.
pub async fn a_held_key_holds_later_messages_of_its_key_only<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (first, later, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(60))
        .await
        .expect("hold");
    let claimed = claim(&store, &[keyed(later, "a"), keyed(other, "b")], LONG, true).await;
    match claimed.first() {
        Some(Claimed::Held { by, due_in }) => {
            assert_eq!(*by, first);
            assert!(
                *due_in <= Duration::from_secs(60) && *due_in > Duration::from_secs(30),
                "due in about 60 s: {due_in:?}"
            );
        }
        other => panic!("the later message of the held key is held, not {other:?}"),
    }
    assert_eq!(claimed.get(1), Some(&Claimed::New), "another key goes on");
    assert!(
        !store.is_handled(later, HANDLER).await.expect("read"),
        "a held claim writes no record"
    );
    let elsewhere = Claim {
        message_id: later,
        handler: HANDLER,
        key: Some(("another.queue", "a")),
    };
    assert_eq!(
        claim(&store, &[elsewhere], LONG, false).await,
        [Claimed::New],
        "another consumer's key is not held"
    );
    let unkeyed = Claim {
        message_id: later,
        handler: HANDLER,
        key: None,
    };
    assert_eq!(claim(&store, &[unkeyed], LONG, false).await, [Claimed::New]);
}

/// The held message itself is claimed as new; its claim leaves its hold (the run may fail),
/// which goes only when released in a transaction that commits.
pub async fn the_held_message_goes_ahead_and_its_hold_goes_with_its_commit<F: InboxFactory>(
    factory: &F,
) {
    let store = factory.create().await;
    let (first, later) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(60))
        .await
        .expect("hold");
    assert_eq!(
        claim(&store, &[keyed(first, "a")], LONG, true).await,
        [Claimed::New]
    );
    assert_eq!(
        held_by(&claim(&store, &[keyed(later, "a")], LONG, false).await),
        Some(first),
        "a claim alone keeps its message's hold"
    );
    let mut tx = store.begin().await.expect("begin");
    store
        .release_keys(&mut tx, &[(CONSUMER, "a", first)])
        .await
        .expect("release keys");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        held_by(&claim(&store, &[keyed(later, "a")], LONG, false).await),
        Some(first),
        "a rolled back release keeps the hold"
    );
    let second = Uuid::now_v7();
    store
        .hold_key(CONSUMER, "b", second, Duration::from_secs(60))
        .await
        .expect("hold");
    assert_eq!(
        claim_and_release(&store, &[keyed(second, "b"), keyed(Uuid::now_v7(), "c")]).await,
        [Claimed::New, Claimed::New]
    );
    assert_eq!(
        claim(&store, &[keyed(Uuid::now_v7(), "b")], LONG, true).await,
        [Claimed::New],
        "the hold went with the held message's commit"
    );
}

/// A held message that was handled before (its retry was asked after its effects committed)
/// is a duplicate, and releasing its hold with it frees the key.
pub async fn a_duplicate_of_the_held_message_removes_its_hold<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (first, later) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        claim(&store, &[keyed(first, "a")], LONG, true).await,
        [Claimed::New]
    );
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(60))
        .await
        .expect("hold");
    assert_eq!(
        claim_and_release(&store, &[keyed(first, "a")]).await,
        [Claimed::Duplicate]
    );
    assert_eq!(
        claim(&store, &[keyed(later, "a")], LONG, true).await,
        [Claimed::New]
    );
}

/// A released hold (the message was dead-lettered) holds nothing; releasing again is no error.
pub async fn a_released_key_holds_nothing<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (first, later) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(60))
        .await
        .expect("hold");
    store
        .release_key(CONSUMER, "a", first)
        .await
        .expect("release");
    store
        .release_key(CONSUMER, "a", first)
        .await
        .expect("release again");
    assert_eq!(
        claim(&store, &[keyed(later, "a")], LONG, true).await,
        [Claimed::New]
    );
}

/// A hold more than `stale_after` past its due time holds nothing (its message never came
/// back), and is deleted: it holds nothing later either, whatever `stale_after` then is.
pub async fn a_stale_hold_stops_holding_and_is_deleted<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (first, later, last) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", first, Duration::ZERO)
        .await
        .expect("hold");
    tokio::time::sleep(Duration::from_millis(300)).await;
    match claim(&store, &[keyed(later, "a")], LONG, false)
        .await
        .first()
    {
        Some(Claimed::Held { by, due_in }) => {
            assert_eq!(*by, first);
            assert_eq!(*due_in, Duration::ZERO, "overdue");
        }
        other => panic!("an overdue hold still holds within stale_after, not {other:?}"),
    }
    assert_eq!(
        claim(
            &store,
            &[keyed(later, "a")],
            Duration::from_millis(100),
            true
        )
        .await,
        [Claimed::New]
    );
    assert_eq!(
        claim(&store, &[keyed(last, "a")], LONG, true).await,
        [Claimed::New],
        "the stale hold was deleted"
    );
}

/// Holding a key again for the same message moves its due time (a second delayed retry).
pub async fn holding_again_moves_the_due_time<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (first, later) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(10))
        .await
        .expect("hold");
    store
        .hold_key(CONSUMER, "a", first, Duration::from_secs(600))
        .await
        .expect("hold again");
    match claim(&store, &[keyed(later, "a")], LONG, false)
        .await
        .first()
    {
        Some(Claimed::Held { by, due_in }) => {
            assert_eq!(*by, first);
            assert!(*due_in > Duration::from_secs(500), "moved: {due_in:?}");
        }
        other => panic!("held, not {other:?}"),
    }
}

/// Holds keep the order in which they were first taken (the key's order): a message holding
/// its key itself (a deferral behind a retry, say) waits for the earlier holds only, never for
/// a later one, even once the earlier one is held again with a later due time; a message with
/// no hold waits for the first of them.
pub async fn a_holding_message_waits_only_for_holds_taken_before_its_own<F: InboxFactory>(
    factory: &F,
) {
    let store = factory.create().await;
    let (retried, deferred, new) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store
        .hold_key(CONSUMER, "a", retried, Duration::from_secs(2))
        .await
        .expect("hold");
    store
        .hold_key(CONSUMER, "a", deferred, Duration::from_secs(3))
        .await
        .expect("hold");
    // Retried again: due after the deferred one now, still first in the key's order.
    store
        .hold_key(CONSUMER, "a", retried, Duration::from_secs(60))
        .await
        .expect("hold again");
    assert_eq!(
        claim(&store, &[keyed(retried, "a")], LONG, false).await,
        [Claimed::New],
        "the first holder is held by nothing"
    );
    assert_eq!(
        held_by(&claim(&store, &[keyed(deferred, "a")], LONG, false).await),
        Some(retried),
        "the later holder waits for the earlier one"
    );
    assert_eq!(
        held_by(&claim(&store, &[keyed(new, "a")], LONG, false).await),
        Some(retried),
        "a message without a hold waits for the first hold"
    );
}

/// Retention deletes records older than asked, at most `limit` per statement.
pub async fn retention_prunes_old_records_in_bounded_batches<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let mut tx = store.begin().await.expect("inbox");
    for _ in 0..5 {
        assert!(
            store
                .mark_handled(&mut tx, Uuid::now_v7(), "h")
                .await
                .expect("inbox")
        );
    }
    store.commit_quietly(tx).await.expect("inbox");
    tokio::time::sleep(Duration::from_millis(5)).await;

    assert_eq!(
        store
            .prune_inbox(Duration::from_secs(3600), 10)
            .await
            .expect("inbox"),
        0,
        "too young"
    );
    assert_eq!(
        store.prune_inbox(Duration::ZERO, 2).await.expect("inbox"),
        2
    );
    assert_eq!(
        store.prune_inbox(Duration::ZERO, 2).await.expect("inbox"),
        2
    );
    assert_eq!(
        store.prune_inbox(Duration::ZERO, 2).await.expect("inbox"),
        1
    );
    assert_eq!(
        store.prune_inbox(Duration::ZERO, 2).await.expect("inbox"),
        0
    );
    assert_eq!(factory.inbox_rows(&store).await, 0);
}

/// A duplicate is found by the `(message, handler)` key in the same transaction too; a
/// rolled-back record is gone.
pub async fn a_duplicate_is_found_by_the_key_not_by_a_read<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let id = Uuid::now_v7();
    let mut first = store.begin().await.expect("inbox");
    assert!(
        store
            .mark_handled(&mut first, id, "h")
            .await
            .expect("inbox")
    );
    assert!(
        !store
            .mark_handled(&mut first, id, "h")
            .await
            .expect("inbox")
    );
    assert!(
        store
            .mark_handled(&mut first, id, "other")
            .await
            .expect("inbox"),
        "records are per handler"
    );
    store.commit_quietly(first).await.expect("inbox");
    assert!(store.is_handled(id, "h").await.expect("inbox"));

    let mut rolled_back = store.begin().await.expect("inbox");
    let other = Uuid::now_v7();
    assert!(
        store
            .mark_handled(&mut rolled_back, other, "h")
            .await
            .expect("inbox")
    );
    rolled_back.rollback().await.expect("inbox");
    assert!(
        !store.is_handled(other, "h").await.expect("inbox"),
        "gone with its transaction"
    );
}

/// A group's records are written in one call; a pair repeated, or already there, is not new.
pub async fn a_group_is_marked_in_one_call_and_repeats_count_once<F: InboxFactory>(factory: &F) {
    let store = factory.create().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = store.begin().await.expect("inbox");
    assert!(
        store
            .mark_handled(&mut tx, b, "other")
            .await
            .expect("inbox")
    );
    let fresh = store
        .mark_all_handled(&mut tx, &[(a, "h"), (b, "h"), (a, "h"), (b, "other")])
        .await
        .expect("inbox");
    assert_eq!(fresh, vec![true, true, false, false]);
    store.commit_quietly(tx).await.expect("inbox");
    let mut again = store.begin().await.expect("inbox");
    let fresh = store
        .mark_all_handled(&mut again, &[(b, "h"), (a, "h")])
        .await
        .expect("inbox");
    assert_eq!(
        fresh,
        vec![false, false],
        "committed records are duplicates"
    );
    again.rollback().await.expect("inbox");
    assert_eq!(factory.inbox_rows(&store).await, 3);
}

/// A run rolled back to its savepoint loses only its own writes; its record can be removed.
pub async fn a_run_rolled_back_to_its_savepoint_loses_only_its_own_writes<F: InboxFactory>(
    factory: &F,
) {
    let store = factory.create().await;
    let (kept, undone, later) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut tx = store.begin().await.expect("inbox");
    let fresh = store
        .mark_all_handled(&mut tx, &[(kept, "h"), (undone, "h"), (later, "h")])
        .await
        .expect("inbox");
    assert_eq!(fresh, vec![true, true, true]);
    store.savepoint(&mut tx).await.expect("inbox");
    store
        .mark_handled(&mut tx, kept, "kept-write")
        .await
        .expect("inbox");
    store.release_savepoint(&mut tx, true).await.expect("inbox");
    store
        .mark_handled(&mut tx, undone, "undone-write")
        .await
        .expect("inbox");
    store.rollback_to_savepoint(&mut tx).await.expect("inbox");
    store
        .mark_handled(&mut tx, later, "later-write")
        .await
        .expect("inbox");
    store
        .release_savepoint(&mut tx, false)
        .await
        .expect("inbox");
    store
        .unmark_handled(&mut tx, &[(undone, "h")])
        .await
        .expect("inbox");
    store.ensure_committable(&mut tx).await.expect("inbox");
    store.commit_quietly(tx).await.expect("inbox");
    assert!(store.is_handled(kept, "kept-write").await.expect("inbox"));
    assert!(store.is_handled(later, "later-write").await.expect("inbox"));
    assert!(
        !store
            .is_handled(undone, "undone-write")
            .await
            .expect("inbox")
    );
    assert!(
        !store.is_handled(undone, "h").await.expect("inbox"),
        "unmarked"
    );
    assert!(store.is_handled(kept, "h").await.expect("inbox"));
    assert_eq!(factory.inbox_rows(&store).await, 4);
}
