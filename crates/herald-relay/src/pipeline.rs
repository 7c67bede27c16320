//! Bookkeeping of the pipelined relay loop ([`Relay::run`](crate::Relay::run)).
//!
//! The loop keeps the broker busy across batch edges: while one batch is being confirmed, the
//! next one is already claimed and publishing, and a finished batch is written back while the
//! others publish. Up to [`MAX_ROUNDS`] publish calls are in flight at once (the transport
//! shares one confirm window between them), and at most [`PIPELINE_DEPTH`] batches are claimed
//! and not yet written back, so memory stays bounded.
//!
//! The [`Scheduler`] decides which event may go when; it does no I/O, so its rules are tested
//! on their own:
//!
//! - An event is handed to the publisher only once the previous event of its partition key, in
//!   its batch or an earlier one, was confirmed (one *active* event per key). Key-less events
//!   go at once.
//! - When an event of a key fails or is given back (shutdown, lease deadline), the key is
//!   *held*: its later events, in every batch already claimed and in batches claimed until the
//!   failed row's fate is written to the store, are released so they come back behind it. The
//!   store keeps the order from there (a retrying row blocks its key; a released row comes
//!   first again). A relay's own leases do not block its own claims, which is why the hold has
//!   to outlive the batch in memory until the store knows.
//! - Knowing is not enough while a claim is in flight: a claim sent before the write-back
//!   committed may have read the failed row still leased to this relay (not blocking) and
//!   picked the next row of its key. So a hold ends only once the write-back returned *and*
//!   every claim sent before that was merged (or failed). Rows of a held key that come before
//!   the held row itself (a retried row coming back) are not held back: only later ones are.
//! - An event whose publish call found the broker unreachable is released like one given back
//!   (its key held the same way): the outage is not its fault, and the relay pauses.
//! - A row claimed more than `max_attempts` times (every claim counts, and only a write-back
//!   ends one: its relays crashed on it) is dead-lettered without being published again.
//! - If a batch's fate could not be written, every key of it stays held until its lease ran out
//!   (the rows then come back, and are published again: at least once).
//! - Batches are written back in claim order, and a new claim waits while
//!   [`PIPELINE_DEPTH`] batches are unsettled: the claim of batch `n + PIPELINE_DEPTH` runs
//!   only after batch `n` was written back.

use std::collections::{HashMap, VecDeque};

use herald_core::{ClaimedEvent, Envelope, Result, Seq, Uuid};
use tokio::time::Instant;

use crate::RelayConfig;
use crate::batch::{self, Row, RowFates};

/// Most publish calls in flight at once.
pub(crate) const MAX_ROUNDS: usize = 8;

/// Most batches claimed and not yet written back. Four keep a broker whose confirmations take
/// milliseconds (Kafka's `linger.ms`) busy while claims and write-backs take their turns: B2k
/// drained ~9 % faster than with two, for ~1 MiB more (README, Performance).
pub(crate) const PIPELINE_DEPTH: usize = 4;

/// An event's place: its batch and its index in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    batch: u64,
    index: usize,
}

/// Events to publish in one call.
pub(crate) struct Round {
    pub(crate) slots: Vec<Slot>,
    pub(crate) envelopes: Vec<Envelope>,
}

/// What must be known once a batch's fate was (or could not be) written back.
#[derive(Debug)]
pub(crate) struct WriteBackTerms {
    /// Rows claimed.
    pub(crate) claimed: usize,
    /// Last moment to retry the store writes.
    pub(crate) deadline: Instant,
    /// Last moment to start writing back failures and releases: a safety margin before the
    /// lease ends (the store also refuses them once it ended).
    pub(crate) write_back_until: Instant,
    /// One entry per failed or released row with a key.
    held: Vec<(String, Seq)>,
    /// Every key of the batch.
    keys: Vec<String>,
    /// When the batch's leases have surely run out.
    lease_end: Instant,
    /// The relay id the batch was claimed under (its write-backs are fenced by it).
    pub(crate) owner: Uuid,
}

struct Batch {
    id: u64,
    owner: Uuid,
    deadline: Instant,
    write_back_until: Instant,
    lease_end: Instant,
    rows: Vec<Row>,
    envelopes: Vec<Option<Envelope>>,
    /// Rows without a fate yet.
    open: usize,
    fates: RowFates,
    /// Keys held because of this batch's rows, one entry per row (with the row's seq).
    held: Vec<(String, Seq)>,
}

#[derive(Debug, Default)]
struct KeyState {
    /// The event of the key queued for or in a publish call.
    active: Option<Slot>,
    /// Its later events, oldest first, waiting for the active one to be confirmed.
    waiting: VecDeque<Slot>,
    /// Failed or released rows of the key (their seqs) whose fate is not written yet.
    held: Vec<Seq>,
    /// Failed or released rows whose fate was written while a claim was in flight, with the
    /// ticket of the last claim sent by then: held until that claim is merged.
    fading: Vec<(Seq, u64)>,
    /// Held until then after a write-back failed.
    held_until: Option<Instant>,
}

impl KeyState {
    /// Whether the key is held for a row at `seq` (`None`: for any row).
    fn holds(&self, seq: Option<Seq>, now: Instant) -> bool {
        if self.held_until.is_some_and(|t| t > now) {
            return true;
        }
        let first = self
            .held
            .iter()
            .copied()
            .chain(self.fading.iter().map(|&(s, _)| s))
            .min();
        match (first, seq) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(first), Some(seq)) => seq > first,
        }
    }

    fn is_held(&self, now: Instant) -> bool {
        self.holds(None, now)
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.active.is_none() && self.waiting.is_empty() && !self.is_held(now)
    }
}

enum Fate {
    Completed,
    Failed(herald_core::Error),
    Released,
    /// Dead-lettered unpublished, for this reason.
    GivenUp(String),
}

/// Which event may be published when, across the batches in flight.
pub(crate) struct Scheduler {
    config: RelayConfig,
    batches: VecDeque<Batch>,
    next_id: u64,
    keys: HashMap<String, KeyState>,
    ready: VecDeque<Slot>,
    /// Batches handed out for write-back and not yet reported [`Scheduler::settled`].
    settling: usize,
    /// Tickets of the claims sent so far ([`Scheduler::claim_sent`]).
    claims_sent: u64,
    /// Every claim up to this ticket was merged or failed.
    claims_done: u64,
}

/// A claim's place in the order claims were sent (see [`Scheduler::claim_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl Scheduler {
    pub(crate) fn new(config: &RelayConfig) -> Self {
        Scheduler {
            config: config.clone(),
            batches: VecDeque::new(),
            next_id: 0,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            settling: 0,
            claims_sent: 0,
            claims_done: 0,
        }
    }

    /// A claim is about to be sent; its result goes to [`Scheduler::add_batch`] (or, if it
    /// failed, to [`Scheduler::claim_failed`]) with this ticket.
    pub(crate) fn claim_sent(&mut self) -> Ticket {
        self.claims_sent += 1;
        Ticket(self.claims_sent)
    }

    /// The claim of `ticket` failed or picked nothing.
    pub(crate) fn claim_failed(&mut self, ticket: Ticket) {
        self.claim_done(ticket);
    }

    /// Every claim up to `ticket` is merged: holds waiting for it end.
    fn claim_done(&mut self, ticket: Ticket) {
        self.claims_done = self.claims_done.max(ticket.0);
        let done = self.claims_done;
        for state in self.keys.values_mut() {
            state.fading.retain(|&(_, t)| t > done);
        }
        let now = Instant::now();
        self.keys.retain(|_, state| !state.is_idle(now));
    }

    /// Batches claimed whose fate is not written back yet (being written included).
    pub(crate) fn unsettled(&self) -> usize {
        self.batches.len() + self.settling
    }

    /// No batch left to publish or to hand out for write-back.
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Takes in a claimed batch (sorted by seq) from the claim of `ticket`. `claimed_at` is
    /// when the claim was sent, `returned_at` when it came back (the store's lease started in
    /// between).
    pub(crate) fn add_batch(
        &mut self,
        ticket: Ticket,
        owner: Uuid,
        claimed: Vec<ClaimedEvent>,
        claimed_at: Instant,
        returned_at: Instant,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let lease = self.config.lease;
        let mut rows = Vec::with_capacity(claimed.len());
        let mut envelopes = Vec::with_capacity(claimed.len());
        for c in claimed {
            rows.push(Row {
                seq: c.seq,
                attempts: c.attempts,
                key: c.envelope.partition_key.clone(),
            });
            envelopes.push(Some(c.envelope));
        }
        let count = rows.len();
        let keys: Vec<(Option<String>, Seq, u32)> = rows
            .iter()
            .map(|r| (r.key.clone(), r.seq, r.attempts))
            .collect();
        self.batches.push_back(Batch {
            id,
            owner,
            // Never publish what another relay may already have taken over.
            deadline: claimed_at + lease.mul_f64(0.8),
            // The store's lease started after `claimed_at`: this leaves a tenth of it.
            write_back_until: claimed_at + lease.mul_f64(0.9),
            // A margin past the store's own lease end, which lies between the two instants.
            lease_end: returned_at + lease + lease / 10,
            rows,
            envelopes,
            open: count,
            fates: RowFates::default(),
            held: Vec::new(),
        });
        let now = Instant::now();
        let max_attempts = self.config.max_attempts;
        for (index, (key, seq, attempts)) in keys.into_iter().enumerate() {
            let slot = Slot { batch: id, index };
            if attempts > max_attempts {
                // Every claim counts as an attempt, and only a write-back can end one: a row
                // claimed this often without a result took its relays down (or was never
                // answered for). It is given up on rather than published once more.
                self.decide(
                    slot,
                    Fate::GivenUp(format!(
                        "claimed {attempts} times (max attempts {max_attempts}) without a \
                         result: the relays holding it stopped or crashed before writing it back"
                    )),
                );
                continue;
            }
            let Some(key) = key else {
                self.ready.push_back(slot);
                continue;
            };
            let state = self.keys.entry(key).or_default();
            if state.holds(Some(seq), now) {
                self.decide(slot, Fate::Released);
            } else if state.active.is_some() {
                state.waiting.push_back(slot);
            } else {
                state.active = Some(slot);
                self.ready.push_back(slot);
            }
        }
        // Only now: the batch may hold rows that a write-back finished meanwhile was holding.
        self.claim_done(ticket);
    }

    /// The next publish call: every event that may go now. Events that must not go any more
    /// (`stopping`, or their lease deadline too close) are released instead.
    pub(crate) fn take_round(&mut self, now: Instant, stopping: bool) -> Option<Round> {
        let mut round = Round {
            slots: Vec::new(),
            envelopes: Vec::new(),
        };
        while let Some(slot) = self.ready.pop_front() {
            let timeout = self.config.publish_timeout;
            let Some(batch) = self.batch_mut(slot.batch) else {
                continue;
            };
            if stopping || now + timeout > batch.deadline {
                self.decide(slot, Fate::Released);
                continue;
            }
            match batch.envelopes.get_mut(slot.index).and_then(Option::take) {
                Some(envelope) => {
                    round.slots.push(slot);
                    round.envelopes.push(envelope);
                }
                None => self.decide(slot, Fate::Released),
            }
        }
        (!round.slots.is_empty()).then_some(round)
    }

    /// Takes in the results of a publish call (one per slot, in order). An event that failed
    /// because the broker was unreachable is given back (no attempt spent), like one that
    /// could not go; any other failure counts against it.
    pub(crate) fn round_done(&mut self, slots: Vec<Slot>, results: Vec<Result<()>>) {
        for (slot, result) in slots.into_iter().zip(results) {
            let fate = match result {
                Ok(()) => Fate::Completed,
                Err(error) if error.is_unreachable() => Fate::Released,
                Err(error) => Fate::Failed(error),
            };
            self.decide(slot, fate);
        }
    }

    /// The oldest batch, if every row of it has its fate: what to write back, and what to tell
    /// [`Scheduler::settled`] afterwards.
    pub(crate) fn pop_settleable(&mut self) -> Option<(RowFates, WriteBackTerms)> {
        if self.batches.front()?.open > 0 {
            return None;
        }
        let batch = self.batches.pop_front()?;
        self.settling += 1;
        let terms = WriteBackTerms {
            claimed: batch.rows.len(),
            deadline: batch.deadline,
            write_back_until: batch.write_back_until,
            held: batch.held,
            keys: batch.rows.into_iter().filter_map(|r| r.key).collect(),
            lease_end: batch.lease_end,
            owner: batch.owner,
        };
        Some((batch.fates, terms))
    }

    /// A batch's fate was written back (`written`) or could not be.
    pub(crate) fn settled(&mut self, terms: WriteBackTerms, written: bool) {
        self.settling = self.settling.saturating_sub(1);
        // A claim sent before now may have read these rows as they were before the write-back.
        let in_flight = (self.claims_sent > self.claims_done).then_some(self.claims_sent);
        for (key, seq) in &terms.held {
            if let Some(state) = self.keys.get_mut(key) {
                if let Some(i) = state.held.iter().position(|s| s == seq) {
                    state.held.swap_remove(i);
                }
                if let Some(ticket) = in_flight {
                    state.fading.push((*seq, ticket));
                }
            }
        }
        if !written {
            // The store still holds these rows under our lease, and our own leases do not block
            // our own claims: keep their keys to ourselves until the rows come back.
            for key in terms.keys {
                let state = self.keys.entry(key).or_default();
                state.held_until = Some(
                    state
                        .held_until
                        .map_or(terms.lease_end, |t| t.max(terms.lease_end)),
                );
            }
        }
        let now = Instant::now();
        self.keys.retain(|_, state| !state.is_idle(now));
    }

    fn batch_mut(&mut self, id: u64) -> Option<&mut Batch> {
        self.batches.iter_mut().find(|b| b.id == id)
    }

    /// Records a row's fate and lets the next event of its key go (or holds the key).
    fn decide(&mut self, slot: Slot, fate: Fate) {
        let config = &self.config;
        let Some(batch) = self.batches.iter_mut().find(|b| b.id == slot.batch) else {
            return;
        };
        let Some(row) = batch.rows.get(slot.index) else {
            return;
        };
        let seq = row.seq;
        let key = row.key.clone();
        let good = matches!(fate, Fate::Completed);
        match fate {
            Fate::Completed => batch.fates.completed.push(seq),
            Fate::Failed(error) => batch
                .fates
                .failures
                .push(batch::failure(row, &error, config)),
            Fate::Released => batch.fates.released.push(seq),
            Fate::GivenUp(error) => batch.fates.failures.push(herald_core::Failure {
                seq,
                error,
                disposition: herald_core::Disposition::DeadLetter,
            }),
        }
        batch.open = batch.open.saturating_sub(1);
        let Some(key) = key else { return };
        if !good {
            batch.held.push((key.clone(), seq));
        }
        let state = self.keys.entry(key).or_default();
        if state.active == Some(slot) {
            state.active = None;
        }
        if good {
            if state.active.is_none()
                && let Some(next) = state.waiting.pop_front()
            {
                state.active = Some(next);
                self.ready.push_back(next);
            }
            return;
        }
        // Nothing more of this key goes out until the store knows this row's fate.
        state.held.push(seq);
        for later in std::mem::take(&mut state.waiting) {
            self.decide(later, Fate::Released);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn claimed(seq: Seq, key: Option<&str>) -> ClaimedEvent {
        ClaimedEvent {
            seq,
            attempts: 1,
            envelope: Envelope {
                id: herald_core::Uuid::now_v7(),
                event_type: "t".into(),
                version: 1,
                occurred_at: herald_core::OffsetDateTime::now_utc(),
                correlation_id: herald_core::Uuid::now_v7(),
                causation_id: None,
                partition_key: key.map(str::to_owned),
                content_type: "application/json".into(),
                trace: Default::default(),
                headers: Default::default(),
                payload: herald_core::Bytes::from_static(b"{}"),
            },
        }
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(&RelayConfig::default())
    }

    fn add(s: &mut Scheduler, rows: &[(Seq, Option<&str>)]) {
        let now = Instant::now();
        let ticket = s.claim_sent();
        let rows = rows.iter().map(|&(q, k)| claimed(q, k)).collect();
        s.add_batch(ticket, Uuid::nil(), rows, now, now);
    }

    /// The seqs of the next round (empty if nothing may go).
    fn round(s: &mut Scheduler) -> (Vec<Slot>, Vec<Seq>) {
        let Some(round) = s.take_round(Instant::now(), false) else {
            return (Vec::new(), Vec::new());
        };
        let seqs = round.slots.iter().map(|slot| seq_of(s, *slot)).collect();
        (round.slots, seqs)
    }

    fn seq_of(s: &Scheduler, slot: Slot) -> Seq {
        let batch = s.batches.iter().find(|b| b.id == slot.batch).unwrap();
        batch.rows[slot.index].seq
    }

    fn confirm(s: &mut Scheduler, slots: Vec<Slot>, failing: &[Seq]) {
        let results = slots
            .iter()
            .map(|slot| {
                if failing.contains(&seq_of(s, *slot)) {
                    Err(herald_core::Error::transport(
                        "publish",
                        true,
                        herald_core::error::Message("nack".into()),
                    ))
                } else {
                    Ok(())
                }
            })
            .collect();
        s.round_done(slots, results);
    }

    fn settle(s: &mut Scheduler, written: bool) -> RowFates {
        let (fates, terms) = s.pop_settleable().unwrap();
        s.settled(terms, written);
        fates
    }

    fn sorted(mut seqs: Vec<Seq>) -> Vec<Seq> {
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn a_batch_claimed_ahead_publishes_at_once_except_behind_its_keys_in_flight() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a")), (2, Some("b"))]);
        let (first, seqs) = round(&mut s);
        assert_eq!(seqs, vec![1, 2]);
        // Claimed while the first round is unconfirmed: `a` must wait for seq 1.
        add(&mut s, &[(3, Some("a")), (4, Some("c")), (5, None)]);
        let (second, seqs) = round(&mut s);
        assert_eq!(seqs, vec![4, 5]);
        assert!(round(&mut s).1.is_empty(), "seq 3 waits for seq 1");
        confirm(&mut s, second, &[]);
        assert!(round(&mut s).1.is_empty());
        confirm(&mut s, first, &[]);
        let (third, seqs) = round(&mut s);
        assert_eq!(seqs, vec![3]);
        confirm(&mut s, third, &[]);
        assert_eq!(sorted(settle(&mut s, true).completed), vec![1, 2]);
        assert_eq!(sorted(settle(&mut s, true).completed), vec![3, 4, 5]);
        assert!(s.is_empty() && s.keys.is_empty());
    }

    #[test]
    fn a_failure_releases_the_key_in_every_claimed_batch_until_its_fate_is_written() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a")), (2, Some("a")), (3, None)]);
        add(&mut s, &[(4, Some("a")), (5, Some("b"))]);
        let (slots, seqs) = round(&mut s);
        assert_eq!(seqs, vec![1, 3, 5]);
        confirm(&mut s, slots, &[1, 3]);
        assert!(
            round(&mut s).1.is_empty(),
            "nothing of `a` goes after its failure"
        );

        let (first, terms) = s.pop_settleable().unwrap();
        assert_eq!(first.failures.len(), 2);
        assert_eq!(first.released, vec![2]);
        // A third batch claimed before the failure is written: `a` is still held.
        add(&mut s, &[(6, Some("a")), (7, None)]);
        s.settled(terms, true);
        let (slots, seqs) = round(&mut s);
        assert_eq!(seqs, vec![7]);
        confirm(&mut s, slots, &[]);
        let second = settle(&mut s, true);
        assert_eq!((second.completed, second.released), (vec![5], vec![4]));
        // Still held: seq 6's release is not written yet.
        add(&mut s, &[(8, Some("a"))]);
        assert!(round(&mut s).1.is_empty());
        let third = s.pop_settleable().unwrap();
        assert_eq!(third.0.released, vec![6]);
        s.settled(third.1, true);
        let fourth = settle(&mut s, true);
        assert_eq!(fourth.released, vec![8]);
        // Every held row written back: the store keeps the order from here.
        add(&mut s, &[(9, Some("a"))]);
        assert_eq!(round(&mut s).1, vec![9]);
    }

    #[test]
    fn a_batch_counts_as_unsettled_until_its_write_back_is_reported() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a"))]);
        add(&mut s, &[(2, Some("b"))]);
        assert_eq!(s.unsettled(), 2);
        let (slots, _) = round(&mut s);
        confirm(&mut s, slots, &[]);
        let (_, terms) = s.pop_settleable().unwrap();
        let (_, second) = s.pop_settleable().unwrap();
        assert_eq!(s.unsettled(), 2, "both are being written back");
        s.settled(terms, true);
        assert_eq!(s.unsettled(), 1, "room for the next claim only now");
        s.settled(second, true);
        assert_eq!(s.unsettled(), 0);
    }

    #[test]
    fn a_claim_sent_before_a_failure_was_written_back_cannot_release_its_key() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a"))]);
        let (slots, _) = round(&mut s);
        confirm(&mut s, slots, &[1]);
        // Claim sent while seq 1 is leased to us: its snapshot may not show the failure.
        let in_flight = s.claim_sent();
        let (_, terms) = s.pop_settleable().unwrap();
        s.settled(terms, true);
        // The failure is written, but the claim in flight read the row before that.
        let now = Instant::now();
        s.add_batch(
            in_flight,
            Uuid::nil(),
            vec![claimed(2, Some("a"))],
            now,
            now,
        );
        assert!(
            round(&mut s).1.is_empty(),
            "seq 2 must wait for seq 1's retry"
        );
        assert_eq!(s.batches[0].fates.released, vec![2]);
        let (_, release) = s.pop_settleable().unwrap();
        // A claim sent while the release of seq 2 is written: seq 1 (retried) may go, not 3.
        let in_flight = s.claim_sent();
        s.settled(release, true);
        s.add_batch(
            in_flight,
            Uuid::nil(),
            vec![claimed(1, Some("a")), claimed(3, Some("a"))],
            now,
            now,
        );
        let (slots, seqs) = round(&mut s);
        assert_eq!(seqs, vec![1]);
        assert_eq!(s.batches[0].fates.released, vec![3]);
        confirm(&mut s, slots, &[]);
        // A claim sent after every write-back returned is trusted again.
        settle(&mut s, true);
        add(&mut s, &[(3, Some("a"))]);
        assert_eq!(round(&mut s).1, vec![3]);
    }

    #[test]
    fn key_less_failures_hold_nothing() {
        let mut s = scheduler();
        add(&mut s, &[(1, None), (2, None)]);
        let (slots, _) = round(&mut s);
        confirm(&mut s, slots, &[1]);
        let fates = settle(&mut s, true);
        assert_eq!((fates.failures.len(), fates.completed), (1, vec![2]));
        assert!(s.keys.is_empty());
    }

    #[test]
    fn rows_too_close_to_their_lease_deadline_are_released_and_hold_their_key() {
        let mut s = scheduler();
        let long_ago = Instant::now() - Duration::from_secs(25);
        let ticket = s.claim_sent();
        s.add_batch(
            ticket,
            Uuid::nil(),
            vec![claimed(1, Some("a")), claimed(2, Some("a"))],
            long_ago,
            long_ago,
        );
        add(&mut s, &[(3, Some("a")), (4, Some("b"))]);
        assert_eq!(
            round(&mut s).1,
            vec![4],
            "the old batch is past 0.8 × lease"
        );
        let old = settle(&mut s, true);
        assert_eq!(sorted(old.released), vec![1, 2]);
        assert!(old.completed.is_empty());
        let young = s.pop_settleable();
        assert!(young.is_none(), "seq 4 is unconfirmed");
        assert_eq!(s.batches[0].fates.released, vec![3], "behind seq 1");
    }

    #[test]
    fn stopping_releases_everything_not_yet_handed_to_the_publisher() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a")), (2, Some("a")), (3, Some("b"))]);
        let (slots, _) = round(&mut s);
        add(&mut s, &[(4, Some("c"))]);
        let round = s.take_round(Instant::now(), true);
        assert!(round.is_none());
        // The round in flight finishes; what would follow it is released.
        confirm(&mut s, slots, &[]);
        assert!(s.take_round(Instant::now(), true).is_none());
        let first = settle(&mut s, true);
        assert_eq!(
            (sorted(first.completed), first.released),
            (vec![1, 3], vec![2])
        );
        assert_eq!(settle(&mut s, true).released, vec![4]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_batch_that_could_not_be_written_back_holds_its_keys_until_its_lease_ends() {
        let mut s = scheduler();
        add(&mut s, &[(1, Some("a")), (2, Some("b"))]);
        let (slots, _) = round(&mut s);
        confirm(&mut s, slots, &[]);
        settle(&mut s, false);
        // Our own leases on seqs 1 and 2 would not keep the store from handing us seq 3.
        add(&mut s, &[(3, Some("a")), (4, Some("c"))]);
        assert_eq!(round(&mut s).1, vec![4]);
        assert_eq!(s.batches[0].fates.released, vec![3]);
    }
}
