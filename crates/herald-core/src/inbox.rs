//! The consumer's inbox: which messages each handler has already handled.
//!
//! A consumer that records `(message id, handler name)` in the same transaction as the
//! handler's own writes runs the handler's effects once per message, however often the broker
//! delivers it. The PostgreSQL and SQLite stores implement [`Inbox`] next to their outbox
//! (table `{table}_inbox`).
//!
//! It also keeps per-key order across consumer restarts: when a consumer sends a message of a
//! partition key for a delayed retry, it first *holds* the key ([`Inbox::hold_key`]), a durable
//! row saying "message M of key K is away until T". A later message of K finds the row in the
//! same statement that writes its inbox record ([`Inbox::claim_all`]) and is deferred instead of
//! handled, even by a consumer that started after the retry was sent (a restart, or a standby
//! taking over a single-active-consumer queue). The row goes in the transaction that commits M's
//! effects ([`Inbox::release_keys`]), or when M is dead-lettered ([`Inbox::release_key`]); a row
//! whose message never comes back stops holding its key once it is `stale_after` past its due
//! time.

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::{Result, TransactionalOutbox};

/// One handler run's claim on a message: the inbox record to write, and the key to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The message.
    pub message_id: Uuid,
    /// The handler (keys the inbox record).
    pub handler: &'a str,
    /// The consumer whose per-key order the run keeps (its subscription) and the message's
    /// partition key; `None` for a message without a key: nothing to check.
    pub key: Option<(&'a str, &'a str)>,
}

/// What became of a [`Claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The record is new: run the handler.
    New,
    /// The record was there: the message was handled before.
    Duplicate,
    /// Another message of the key is away for a delayed retry ([`Inbox::hold_key`]): nothing
    /// was written, and this message must wait behind that one.
    Held {
        /// The message the key waits for.
        by: Uuid,
        /// How long until that message is due back (zero if it is overdue).
        due_in: Duration,
    },
}

/// A database that remembers which messages each handler has handled.
///
/// An extra ability of a [`TransactionalOutbox`]: the inbox record is written on the same
/// connection, in the same transaction, as the handler's effects.
pub trait Inbox: TransactionalOutbox {
    /// Records, in the transaction behind `conn`, that `handler` handled `message_id`.
    ///
    /// Returns `true` if the record is new and `false` if it already existed: the message is a
    /// duplicate. The duplicate is detected by the table's primary key (`INSERT … ON CONFLICT
    /// DO NOTHING`), never by a read before the write, so of two transactions racing to handle
    /// the same message the second waits for the first and, once that one commits, finds its
    /// record. The record disappears with the transaction if it rolls back.
    fn mark_handled(
        &self,
        conn: &mut Self::Connection,
        message_id: Uuid,
        handler: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Records, in the transaction behind `conn`, that each `(message id, handler)` pair was
    /// handled; returns, pair by pair, whether the record is new (as
    /// [`mark_handled`](Self::mark_handled) does for one pair). A pair repeated in `records` is
    /// new at most once. Backends override it to write every record in one statement (what the
    /// consumer's group commit uses); the default marks one pair after the other.
    fn mark_all_handled(
        &self,
        conn: &mut Self::Connection,
        records: &[(Uuid, &str)],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send {
        async move {
            let mut fresh = Vec::with_capacity(records.len());
            for &(message_id, handler) in records {
                fresh.push(self.mark_handled(conn, message_id, handler).await?);
            }
            Ok(fresh)
        }
    }

    /// Claims, in the transaction behind `conn`, each of `claims` in one go: a claim whose key
    /// is held for another message ([`hold_key`](Self::hold_key), a hold at most `stale_after`
    /// past its due time) is [`Claimed::Held`] by the earliest such hold and writes nothing —
    /// except that a message holding its key itself is held only by holds taken before its
    /// own (holds are ordered as they were first taken, which is the key's order); any other writes its inbox
    /// record as [`mark_all_handled`](Self::mark_all_handled) does (new or duplicate). The
    /// hold of a claim's own message stays: a run that fails must leave it (its message may be
    /// behind later ones of its key in the queue); [`release_keys`](Self::release_keys) removes
    /// it with the effects of a run that succeeds. Holds more than `stale_after` past their due
    /// time are deleted (their messages were lost, e.g. purged by an operator) and hold
    /// nothing. Answers claim by claim.
    ///
    /// Backends fold the key check into the statement that writes the records: it costs the
    /// hot path no extra round trip.
    fn claim_all(
        &self,
        conn: &mut Self::Connection,
        claims: &[Claim<'_>],
        stale_after: Duration,
    ) -> impl Future<Output = Result<Vec<Claimed>>> + Send;

    /// Holds `key` of `consumer` for `message_id`, which is away (a delayed retry, or deferred
    /// behind an earlier message of its key) and due back in `back_in`: until the message's effects commit (or it is released), other
    /// messages of the key claim [`Claimed::Held`]. Writes and commits in a transaction of its
    /// own (before the consumer sends the retry); holding again moves the due time and keeps the
    /// hold's place in the key's order.
    fn hold_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
        back_in: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes, in the transaction behind `conn`, the hold of each `(consumer, key, message)`
    /// of `holds`, if there is one: their runs succeeded, and the holds go when their effects
    /// commit. The consumer calls it only for messages that may hold their key (delivered
    /// before), so a first delivery costs nothing.
    fn release_keys(
        &self,
        conn: &mut Self::Connection,
        holds: &[(&str, &str, Uuid)],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes the hold of `message_id` on `key` of `consumer`, if there is one (the message
    /// was dead-lettered), in a transaction of its own.
    fn release_key(
        &self,
        consumer: &str,
        key: &str,
        message_id: Uuid,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes, in the transaction behind `conn`, the records of `records` written earlier in
    /// the same transaction: the runs they stood for were undone (rolled back to their
    /// savepoint), and their messages must find no record when they come back.
    fn unmark_handled(
        &self,
        conn: &mut Self::Connection,
        records: &[(Uuid, &str)],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Opens the savepoint of one handler run in the transaction behind `conn`: what is written
    /// after it can be undone alone with [`rollback_to_savepoint`](Self::rollback_to_savepoint).
    /// The consumer's group commit runs each handler of a shared transaction under one, so that
    /// one run's failure never takes the others' writes down.
    fn savepoint(&self, conn: &mut Self::Connection) -> impl Future<Output = Result<()>> + Send;

    /// Keeps what was written since the savepoint opened last and, if `reopen`, opens the next
    /// one (in the same round trip where the backend can).
    ///
    /// Fails if the transaction can no longer commit: on PostgreSQL, any failed statement
    /// aborts the whole transaction, even one whose error the handler caught, and a `COMMIT`
    /// then silently rolls back. Roll back to the savepoint then: the transaction is usable
    /// again, without the run's writes.
    fn release_savepoint(
        &self,
        conn: &mut Self::Connection,
        reopen: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Undoes what was written since the savepoint opened last; the savepoint stays open, and
    /// the transaction is usable again even after a failed statement.
    fn rollback_to_savepoint(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Fails if the transaction behind `conn` can no longer commit (see
    /// [`release_savepoint`](Self::release_savepoint)): PostgreSQL answers the `COMMIT` of an
    /// aborted transaction with a rollback and no error, so a caller that lets other code use
    /// the transaction checks before committing, lest it report effects that were never written.
    fn ensure_committable(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Commits a transaction in which no event was recorded, without waking the relays (what
    /// [`OutboxTransaction::commit`](crate::OutboxTransaction::commit) does after every
    /// commit): a handler that only wrote business rows and its inbox record has nothing for
    /// them.
    fn commit_quietly(&self, tx: Self::Transaction) -> impl Future<Output = Result<()>> + Send;

    /// Whether a committed record says that `handler` handled `message_id`. For handlers whose
    /// effects live outside this database, which can only check before they run and record
    /// after (at-least-once effects).
    fn is_handled(
        &self,
        message_id: Uuid,
        handler: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes records older than `older_than`, at most `limit` of them in one statement, and
    /// returns how many. Retention calls it in a loop, off the hot path.
    fn prune_inbox(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send;
}
