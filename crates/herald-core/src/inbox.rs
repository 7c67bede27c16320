//! The consumer's inbox: which messages each handler has already handled.
//!
//! A consumer that records `(message id, handler name)` in the same transaction as the
//! handler's own writes runs the handler's effects once per message, however often the broker
//! delivers it. The PostgreSQL and SQLite stores implement [`Inbox`] next to their outbox
//! (table `{table}_inbox`).

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::{Result, TransactionalOutbox};

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
