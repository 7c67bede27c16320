//! What a relay needs from an outbox store, and what operators need from it.

use std::future::Future;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Envelope, Result, Signal};

/// Position of a row in the outbox: assigned at insert, increasing, the order of publication
/// within a partition key.
pub type Seq = i64;

/// A relay's request for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Who claims (each relay instance has its own id); completions are fenced by it.
    pub relay_id: Uuid,
    /// Largest number of rows to claim.
    pub limit: usize,
    /// How long the claim holds; after that another relay may take the rows over.
    pub lease: Duration,
}

/// A row handed to a relay.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    /// The row's position.
    pub seq: Seq,
    /// How many times the row has been claimed, this claim included.
    pub attempts: u32,
    /// The event.
    pub envelope: Envelope,
}

/// What to do with a row whose publication failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Make it claimable again after `delay`.
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Move it to the dead letters.
    DeadLetter,
}

/// A failed publication reported back to the store.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The row.
    pub seq: Seq,
    /// The error text, kept with the row (and with the dead letter).
    pub error: String,
    /// Retry later or dead-letter.
    pub disposition: Disposition,
}

/// Splits the rows of a claim into events to publish, sorted by `seq`, and rows that no
/// envelope can hold (written by something else, with a negative version, headers that are
/// not an object of strings…), which become dead-letter [`Failure`]s with the reason. A store
/// dead-letters those at once instead of failing the whole claim, which would block every
/// row of the batch and bring the bad one back at each lease expiry, for ever.
pub fn split_malformed<E: std::fmt::Display>(
    rows: impl IntoIterator<Item = (Seq, std::result::Result<ClaimedEvent, E>)>,
) -> (Vec<ClaimedEvent>, Vec<Failure>) {
    let mut claimed = Vec::new();
    let mut malformed = Vec::new();
    for (seq, decoded) in rows {
        match decoded {
            Ok(event) => claimed.push(event),
            Err(error) => malformed.push(Failure {
                seq,
                error: format!("malformed row: {error}"),
                disposition: Disposition::DeadLetter,
            }),
        }
    }
    claimed.sort_by_key(|c| c.seq);
    (claimed, malformed)
}

/// An outbox a relay can drain.
///
/// Rows are claimed in `seq` order. A store must never hand out a row while an earlier row
/// with the same partition key is leased by *another* relay or waiting for a retry: that is how
/// per-key order survives several relays. A relay's own live leases do not block it (it
/// publishes its batches in order itself). Rows without a key have no such constraint.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `request.limit` rows, oldest first, skipping keys that are blocked.
    /// Each claimed row's attempt count goes up by one.
    fn claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedEvent>>> + Send;

    /// Marks rows as published (deletes or archives them) in one statement. Rows no longer
    /// claimed by `relay_id` (lease lost) are left alone. Returns how many were completed.
    fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<u64>> + Send;

    /// Records failed publications: reschedules or dead-letters each row.
    fn fail(&self, relay_id: Uuid, failures: &[Failure])
    -> impl Future<Output = Result<()>> + Send;

    /// Gives claimed rows back untouched (graceful shutdown); the claim does not count as an
    /// attempt.
    fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> impl Future<Output = Result<()>> + Send;

    /// Removes archived rows older than `older_than`, at most `limit` of them; returns how many.
    /// Stores that delete published rows return 0.
    fn prune(&self, older_than: Duration, limit: usize)
    -> impl Future<Output = Result<u64>> + Send;

    /// The doorbell that this store's writers ring after committing.
    fn signal(&self) -> Signal;
}

/// Counts of an outbox by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows waiting to be claimed (including those waiting for a retry).
    pub pending: u64,
    /// Of the pending rows, those waiting for a retry after a failure.
    pub retrying: u64,
    /// Rows claimed under a live lease.
    pub in_flight: u64,
    /// Dead letters.
    pub dead_lettered: u64,
    /// Published rows kept in the archive.
    pub archived: u64,
    /// When the oldest pending row was recorded.
    pub oldest_pending_at: Option<OffsetDateTime>,
    /// When the oldest pending row that is due (not backing off after a failure) was
    /// recorded: the age an outbox-age alert should watch, which one delayed retry does not
    /// set off.
    pub oldest_due_at: Option<OffsetDateTime>,
}

/// Operations on an outbox for operators (the `herald outbox` commands). Its dead letters are
/// listed, replayed and purged through [`DeadLetters`](crate::DeadLetters), which every store
/// implements too.
pub trait OutboxAdmin: Send + Sync + 'static {
    /// Counts by state.
    fn stats(&self) -> impl Future<Output = Result<OutboxStats>> + Send;
}

/// What happens to a row once it is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Completion {
    /// Delete it (the default: the claim path only ever sees pending work).
    #[default]
    Delete,
    /// Move it to an archive table, pruned by [`OutboxStore::prune`] after a retention period.
    Archive,
}
