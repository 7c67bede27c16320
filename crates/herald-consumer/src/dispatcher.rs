//! Concurrency with per-key order: a bounded number of messages in flight, messages of one
//! partition key strictly one after another.
//!
//! Each key with work has a *lane*: the message being handled (`busy`) and, in order, the
//! messages behind it. A slot of a lane is either a delivery that is here, or a message that
//! is *away* at the broker: sent for a delayed redelivery (or deferred, below) and expected
//! back. Later messages of the key wait behind it — that is the choice this consumer makes for
//! order: a key whose message is retrying is held until that message succeeds or is
//! dead-lettered; other keys flow.
//!
//! Held deliveries stay unsettled, so they use prefetch. Past `max_held` of them, the last
//! held message of a lane is *deferred*: given back to the transport with a delay that brings
//! it back just after the away messages before it are due, and its place in the lane kept. So
//! held messages never fill the prefetch, and the away message can always be received again;
//! and the front of each lane, what runs first when its away message is back, stays here. A
//! deferral is not a failure: it is a settlement of its own ([`Settlement::Defer`]), which
//! never spends an attempt and never dead-letters the message.
//!
//! Like a retry, a deferral first holds its key in the inbox, so that a consumer that starts
//! while it is away keeps the order too. Holds keep the order in which they were taken, and a
//! message that comes back without a hold waits in the inbox for the first hold of its key: so
//! a later message's hold is never written while an earlier one has none. Every message before
//! a deferred one that waits here gets its hold first (one write each, not one per deferral),
//! in order, and it runs only once that write has ended, its hold then going with its effects;
//! a deferral's hold is written only once the holds of every message before it were, and it
//! goes to the transport only after the deferral before it did (so that, into the same delay
//! queue, it comes back after that one). A message whose hold cannot be written does not go: a
//! retry tries the hold again after a pause (its lane still busy), a deferral comes back to its
//! place in the lane, held again (so do the deferrals behind it). The consumer never gives a
//! message back to the broker unsettled but at a shutdown, when every message of the lane goes
//! back to its place in the queue, in order.
//!
//! An away message that does not come back within `redelivery_grace` of its due time (a
//! competing consumer took it) stops holding its key.
//!
//! Everything here runs on one task and owns its state; handlers run on spawned tasks that
//! report back when their delivery is settled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Delivery, Envelope, Settlement, Uuid};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::router::{Routed, Routes};
use crate::{ConsumerMetrics, Outcome, UnhandledPolicy};

/// How much later than the away message a deferred one is asked back.
const DEFER_MARGIN: Duration = Duration::from_millis(50);

/// How many key holds written the dispatcher remembers before it forgets those too old to
/// matter (it then waits for twice as many as are left).
const PRUNE_HOLDS_AT: usize = 4096;

/// How long a message whose key could not be held waits before its hold is tried again.
const HOLD_FAILED_PAUSE: Duration = Duration::from_secs(1);

/// A delivery taken from the stream, with the prefetch credit it holds until settled.
pub(crate) struct Job {
    pub(crate) delivery: Delivery,
    pub(crate) credit: OwnedSemaphorePermit,
    /// Set once this consumer wrote a key hold for the message, or is writing one, or may
    /// have: it came back from away, or it waits here and a later message of its key was
    /// deferred. It runs only once that write has ended, and its hold goes with its effects.
    pub(crate) hold: Option<HoldState>,
}

enum Slot {
    Here(Box<Job>),
    Away(Away),
}

struct Away {
    id: Uuid,
    back_at: Instant,
    give_up_at: Instant,
    hold: HoldState,
}

/// Whether an away message holds its key in the inbox: `None` while its hold is being written
/// (a deferral's, by its settling task), then whether it was. A retry goes only once its hold
/// is written; so does a message whose inbox found its key held by another one.
type HoldState = watch::Receiver<Option<bool>>;

/// A hold state known already.
fn known(held: bool) -> HoldState {
    watch::channel(Some(held)).1
}

/// Waits until every one of `holds` is known; true if each was written. A state whose writer
/// ended without saying counts as not written: a later hold is then not written either.
async fn all_written(holds: Vec<HoldState>) -> bool {
    let mut all = true;
    for mut hold in holds {
        let waited = hold.wait_for(Option::is_some).await.map(|state| *state);
        let written = match waited {
            Ok(state) => state == Some(true),
            Err(_) => *hold.borrow() == Some(true),
        };
        all &= written;
    }
    all
}

#[derive(Default)]
struct Lane {
    /// A message of this key is waiting for a worker or being handled.
    busy: bool,
    slots: VecDeque<Slot>,
    /// Deliveries here behind an away slot (counted against `max_held`).
    held: usize,
    /// The give-up time a timer is set for, so that one is set once per away slot.
    timer: Option<Instant>,
}

impl Lane {
    fn count_held(&self) -> usize {
        let mut away = false;
        let mut held = 0;
        for slot in &self.slots {
            match slot {
                Slot::Away(_) => away = true,
                Slot::Here(_) if away => held += 1,
                Slot::Here(_) => {}
            }
        }
        held
    }
}

/// What a worker reports once its delivery is settled.
pub(crate) struct Finished {
    key: Option<String>,
    id: Uuid,
    /// Set when the message was sent for a delayed redelivery: how long it stays away.
    redeliver_after: Option<Duration>,
    /// Set when the inbox found its key held by another message (away for a delayed retry,
    /// due back in the duration): the delivery, unsettled and not handled, goes back to its
    /// lane behind that message.
    held: Option<Held>,
}

/// A delivery whose key the inbox found held by another message.
struct Held {
    by: Uuid,
    due_in: Duration,
    job: Box<Job>,
}

/// A deferral whose key hold could not be written: the job goes back to its lane.
pub(crate) struct Undeferred {
    key: String,
    job: Box<Job>,
}

/// Settings of a [`Dispatcher`].
pub(crate) struct Limits {
    pub(crate) concurrency: usize,
    pub(crate) max_held: usize,
    pub(crate) redelivery_grace: Duration,
    /// How long past its due time a key hold stops holding (see
    /// [`ConsumerConfig::hold_stale_after`](crate::ConsumerConfig)).
    pub(crate) hold_stale_after: Duration,
}

/// Lanes, the queue of runnable deliveries, and the running handlers.
pub(crate) struct Dispatcher {
    routes: Arc<Routes>,
    limits: Limits,
    metrics: ConsumerMetrics,
    /// Handed to handlers; cancelled when shutdown begins.
    cancellation: CancellationToken,
    lanes: HashMap<String, Lane>,
    ready: VecDeque<(Option<String>, Job)>,
    pub(crate) workers: JoinSet<Finished>,
    /// Deferrals being settled; each hands back its job if its key could not be held.
    pub(crate) settling: JoinSet<Option<Undeferred>>,
    /// Which key each running worker holds, for workers that end without reporting.
    running: HashMap<tokio::task::Id, Option<String>>,
    held: usize,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Messages whose key hold this consumer wrote, and when: a message deferred again soon
    /// after does not write it again (its place among the holds is kept anyway), so that held
    /// messages going round the delay queues cost no database write each time.
    holds_written: HashMap<Uuid, Instant>,
    /// Past this many entries, `holds_written` drops those too old to matter (messages this
    /// consumer gave up on or never saw again would otherwise stay in it for good).
    prune_holds_at: usize,
}

impl Dispatcher {
    pub(crate) fn new(
        routes: Arc<Routes>,
        limits: Limits,
        metrics: ConsumerMetrics,
        cancellation: CancellationToken,
    ) -> Self {
        Dispatcher {
            routes,
            limits,
            metrics,
            cancellation,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            workers: JoinSet::new(),
            settling: JoinSet::new(),
            running: HashMap::new(),
            held: 0,
            timers: BinaryHeap::new(),
            holds_written: HashMap::new(),
            prune_holds_at: PRUNE_HOLDS_AT,
        }
    }

    /// Takes a delivery from the stream.
    pub(crate) fn accept(&mut self, job: Job) {
        self.metrics.received();
        let Some(key) = job.delivery.envelope.partition_key.clone() else {
            self.ready.push_back((None, job));
            self.fill();
            return;
        };
        let id = job.delivery.envelope.id;
        let lane = self.lanes.entry(key.clone()).or_default();
        let returning = lane
            .slots
            .iter()
            .position(|slot| matches!(slot, Slot::Away(away) if away.id == id));
        match returning {
            // Back from a redelivery or a deferral: it takes its old place.
            Some(position) => {
                if let Slot::Away(away) = &lane.slots[position] {
                    let now = Instant::now();
                    tracing::debug!(
                        key,
                        message_id = %id,
                        place = position,
                        late_ms = now.saturating_duration_since(away.back_at).as_millis() as u64,
                        early_ms = away.back_at.saturating_duration_since(now).as_millis() as u64,
                        "back in its place"
                    );
                }
                let mut job = job;
                if let Slot::Away(away) = &lane.slots[position] {
                    job.hold = Some(away.hold.clone());
                }
                lane.slots[position] = Slot::Here(Box::new(job));
            }
            None => lane.slots.push_back(Slot::Here(Box::new(job))),
        }
        self.advance(&key);
        self.fill();
    }

    /// Moves the lane of `key` forward: hands its next delivery to the ready queue if nothing
    /// of the key is busy, drops away slots past their grace, keeps the held count, and defers
    /// the lane's first held deliveries while more than `max_held` are held.
    fn advance(&mut self, key: &str) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        let now = Instant::now();
        while !lane.busy {
            match lane.slots.front() {
                None => break,
                Some(Slot::Here(_)) => {
                    if let Some(Slot::Here(job)) = lane.slots.pop_front() {
                        lane.busy = true;
                        self.ready.push_back((Some(key.to_owned()), *job));
                    }
                }
                Some(Slot::Away(away)) if away.give_up_at <= now => {
                    tracing::warn!(
                        key,
                        message_id = %away.id,
                        "a message sent for redelivery did not come back in time; later messages of its key go ahead"
                    );
                    lane.slots.pop_front();
                }
                Some(Slot::Away(away)) => {
                    if lane.timer != Some(away.give_up_at) {
                        lane.timer = Some(away.give_up_at);
                        self.timers.push(Reverse((away.give_up_at, key.to_owned())));
                    }
                    break;
                }
            }
        }
        let held = lane.count_held();
        self.held = self.held - lane.held + held;
        lane.held = held;
        if !lane.busy && lane.slots.is_empty() {
            self.lanes.remove(key);
            return;
        }
        while self.held > self.limits.max_held && self.defer_last_held(key) {}
    }

    /// Gives the last held delivery of `key`'s lane back to the transport, asking for it
    /// just after the away messages before it, and keeps its place. Every message before it
    /// that waits here without a key hold gets one first, in order: the deferred message's
    /// hold must never be written while an earlier one of its key has none. False if the lane
    /// holds none, or one it cannot defer (see [`all_written`]).
    fn defer_last_held(&mut self, key: &str) -> bool {
        let Some(lane) = self.lanes.get_mut(key) else {
            return false;
        };
        let Some(first_away) = lane.slots.iter().position(|s| matches!(s, Slot::Away(_))) else {
            return false;
        };
        let Some(index) = lane
            .slots
            .iter()
            .rposition(|s| matches!(s, Slot::Here(_)))
            .filter(|index| *index > first_away)
        else {
            return false;
        };
        let now = Instant::now();
        let stale = self.limits.hold_stale_after / 4;
        let fresh = |id: &Uuid| {
            self.holds_written
                .get(id)
                .is_some_and(|at| now.saturating_duration_since(*at) < stale)
        };
        // The holds of the messages before it: those of the away ones, and those the ones
        // waiting here have or are getting; the ones here without a (recent) hold get one,
        // in order, before this one's.
        let mut earlier: Vec<HoldState> = Vec::new();
        let mut to_hold: Vec<(Envelope, watch::Sender<Option<bool>>)> = Vec::new();
        for slot in lane.slots.iter().take(index) {
            match slot {
                Slot::Away(away) => earlier.push(away.hold.clone()),
                Slot::Here(job) => match &job.hold {
                    Some(hold)
                        if *hold.borrow() != Some(false) && fresh(&job.delivery.envelope.id) =>
                    {
                        earlier.push(hold.clone());
                    }
                    // Being written by an earlier deferral: that one writes it.
                    Some(hold) if hold.borrow().is_none() => earlier.push(hold.clone()),
                    _ => {}
                },
            }
        }
        if earlier.iter().any(|hold| *hold.borrow() == Some(false)) {
            // An earlier message of the key is away without a hold (given back to the broker
            // unsettled, back soon): this one stays held, in prefetch, rather than go away.
            return false;
        }
        for slot in lane.slots.iter_mut().take(index) {
            if let Slot::Here(job) = slot {
                let id = job.delivery.envelope.id;
                let pending = job
                    .hold
                    .as_ref()
                    .is_some_and(|hold| hold.borrow().is_none());
                let held = job
                    .hold
                    .as_ref()
                    .is_some_and(|hold| *hold.borrow() == Some(true));
                if pending || (held && fresh(&id)) {
                    continue;
                }
                let (sender, receiver) = watch::channel(None);
                job.hold = Some(receiver);
                to_hold.push((job.delivery.envelope.clone(), sender));
            }
        }
        let aways_before = || {
            lane.slots.iter().take(index).filter_map(|slot| match slot {
                Slot::Away(away) => Some(away),
                Slot::Here(_) => None,
            })
        };
        // Back just after the away messages before it, by when they are due back: the time
        // the transport really keeps them (a delay queue rounds up). Going into the same delay
        // queue after the one before it, it comes back after that one; into a shorter one, it
        // is asked DEFER_MARGIN later still — unless that margin would put it into a longer
        // queue: each deferral of a lane would then come back one more delay queue later than
        // the one before it, adding up along the lane. One overdue before it is waited for as
        // long again as it is late, within its grace: held messages do not circle the delay
        // queues quickly while it may not come.
        let after = aways_before().map(|away| away.back_at).max().unwrap_or(now);
        let overdue = aways_before()
            .next()
            .filter(|first| first.back_at < now)
            .map(|first| (now - first.back_at).min(first.give_up_at.saturating_duration_since(now)))
            .unwrap_or_default();
        let base = after.saturating_duration_since(now).max(overdue);
        let padded = base.saturating_add(DEFER_MARGIN);
        let Some(Slot::Here(job)) = lane.slots.remove(index) else {
            return false;
        };
        let delay = if base.is_zero()
            || job.delivery.effective_delay(padded) == job.delivery.effective_delay(base)
        {
            padded
        } else {
            base
        };
        // The transport may keep it longer than asked (a delay queue rounds up).
        let away = job.delivery.effective_delay(delay);
        let (hold_state, hold) = watch::channel(None);
        let id = job.delivery.envelope.id;
        // Written by this consumer lately: still there, in its place (a hold goes only with
        // its message's effects, at its dead-lettering, or once stale).
        let write_hold = !fresh(&id)
            || job
                .hold
                .as_ref()
                .is_some_and(|hold| *hold.borrow() == Some(false));
        for (envelope, _) in &to_hold {
            self.holds_written.insert(envelope.id, now);
        }
        if write_hold {
            self.holds_written.insert(id, now);
        }
        if self.holds_written.len() > self.prune_holds_at {
            self.holds_written
                .retain(|_, at| now.saturating_duration_since(*at) < stale);
            self.prune_holds_at = PRUNE_HOLDS_AT.max(2 * self.holds_written.len());
        }
        // A hold being written for it (by an earlier deferral) is waited for with the others.
        if let Some(own) = job.hold.as_ref().filter(|hold| hold.borrow().is_none()) {
            earlier.push(own.clone());
        }
        lane.slots.insert(
            index,
            Slot::Away(Away {
                id: job.delivery.envelope.id,
                back_at: later(now, away),
                give_up_at: later(now, away.saturating_add(self.limits.redelivery_grace)),
                hold,
            }),
        );
        lane.held -= 1;
        self.held -= 1;
        self.metrics.deferred();
        tracing::debug!(
            key,
            message_id = %job.delivery.envelope.id,
            place = index,
            ?delay,
            ?away,
            held = self.held,
            holds_first = to_hold.len(),
            "deferred behind an earlier message of its key"
        );
        let metrics = self.metrics.clone();
        let routes = self.routes.clone();
        let cancellation = self.cancellation.clone();
        let reason = format!("waiting behind an earlier message of key `{key}`");
        let key = key.to_owned();
        self.settling.spawn(async move {
            let Job {
                delivery, credit, ..
            } = *job;
            // Held in the inbox before it goes, as a retry is: a consumer that starts while it
            // is away finds its key held and keeps later messages behind it. After the holds
            // of the messages before it (holds keep the order in which they are taken), and
            // only if each of those was written: an earlier message without a hold would wait
            // for this one's. The messages before it that wait here get theirs first, for the
            // same reason: at a crash they go back to the queue. If one was not written, or
            // this one cannot be, it stays: back in its lane, after a pause.
            let mut hold = if all_written(earlier).await {
                Ok(())
            } else {
                Err("an earlier message of its key could not hold it".to_owned())
            };
            for (envelope, written) in to_hold {
                if hold.is_ok() {
                    hold = routes
                        .hold(&envelope, away)
                        .await
                        .map_err(|error| error.chain().to_string());
                }
                written.send_replace(Some(hold.is_ok()));
            }
            if hold.is_ok() && write_hold {
                hold = routes
                    .hold(&delivery.envelope, away)
                    .await
                    .map_err(|error| error.chain().to_string());
            }
            if let Err(cause) = hold {
                hold_state.send_replace(Some(false));
                tracing::warn!(
                    message_id = %delivery.envelope.id,
                    error = cause,
                    "holding the key of a message about to be deferred failed; it stays, held behind the earlier message of its key"
                );
                pause_after_failed_hold(&cancellation).await;
                return Some(Undeferred {
                    key,
                    job: Box::new(Job {
                        delivery,
                        credit,
                        hold: Some(known(false)),
                    }),
                });
            }
            // Said once it is sent: the deferrals of a lane behind it, which wait for this, then
            // go into a delay queue after it, and one going into the same queue comes back
            // after it. (Its hold is written either way.)
            if let Err(error) = delivery.defer(delay, reason).await {
                metrics.settle_error();
                tracing::warn!(error = %error.chain(), "deferring a delivery failed; the broker will redeliver it");
            }
            hold_state.send_replace(Some(true));
            drop(credit);
            None
        });
        true
    }

    /// A deferral ended: if its key could not be held, its job takes its place in the lane
    /// again (or the front, if the lane gave up on it meanwhile).
    pub(crate) fn settled(&mut self, settled: Result<Option<Undeferred>, tokio::task::JoinError>) {
        let Ok(Some(Undeferred { key, job })) = settled else {
            return;
        };
        let id = job.delivery.envelope.id;
        self.holds_written.remove(&id);
        let lane = self.lanes.entry(key.clone()).or_default();
        match lane
            .slots
            .iter()
            .position(|slot| matches!(slot, Slot::Away(away) if away.id == id))
        {
            Some(position) => lane.slots[position] = Slot::Here(job),
            None => lane.slots.push_front(Slot::Here(job)),
        }
        self.advance(&key);
        self.fill();
    }

    /// Starts handlers for ready deliveries while there are free slots.
    pub(crate) fn fill(&mut self) {
        while self.workers.len() < self.limits.concurrency {
            let Some((key, job)) = self.ready.pop_front() else {
                return;
            };
            let routes = self.routes.clone();
            let metrics = self.metrics.clone();
            let cancellation = self.cancellation.clone();
            let task_key = key.clone();
            let handle = self
                .workers
                .spawn(async move { work(routes, metrics, cancellation, task_key, job).await });
            self.running.insert(handle.id(), key);
        }
    }

    /// A worker ended: reported its result, or panicked or was aborted.
    pub(crate) fn joined(
        &mut self,
        joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) {
        let (key, finished) = match joined {
            Ok((id, finished)) => {
                self.running.remove(&id);
                (finished.key.clone(), Some(finished))
            }
            Err(error) => {
                tracing::error!(%error, "a message handling task failed; the broker redelivers its message");
                (self.running.remove(&error.id()).flatten(), None)
            }
        };
        match &finished {
            // Handled or dead-lettered: its hold, if it had one, went with it.
            Some(Finished {
                id,
                redeliver_after: None,
                held: None,
                ..
            }) => {
                self.holds_written.remove(id);
            }
            // Away for a retry: its hold was written before it went.
            Some(Finished {
                id,
                redeliver_after: Some(_),
                ..
            }) => {
                self.holds_written.insert(*id, Instant::now());
            }
            _ => {}
        }
        if let Some(key) = key {
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.busy = false;
                let grace = self.limits.redelivery_grace;
                let away = |id, after: Duration| {
                    let now = Instant::now();
                    Slot::Away(Away {
                        id,
                        back_at: later(now, after),
                        give_up_at: later(now, after.saturating_add(grace)),
                        hold: known(true),
                    })
                };
                match finished {
                    Some(Finished {
                        held: Some(Held { by, due_in, job }),
                        ..
                    }) => {
                        // Back in its place, behind the message holding the key: where the
                        // lane has that one already (back, or away), or away until its due
                        // time.
                        lane.slots.push_front(Slot::Here(job));
                        let first = lane
                            .slots
                            .iter()
                            .position(|slot| match slot {
                                Slot::Here(job) => job.delivery.envelope.id == by,
                                Slot::Away(away) => away.id == by,
                            })
                            .and_then(|position| lane.slots.remove(position))
                            .unwrap_or_else(|| away(by, due_in));
                        lane.slots.push_front(first);
                    }
                    Some(Finished {
                        id,
                        redeliver_after: Some(after),
                        ..
                    }) => lane.slots.push_front(away(id, after)),
                    _ => {}
                }
            }
            self.advance(&key);
        }
        self.fill();
    }

    /// When the next away slot at the front of a lane runs out of grace.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Advances the lanes whose timers are due.
    pub(crate) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek()
            && *at <= now
        {
            if let Some(Reverse((_, key))) = self.timers.pop() {
                self.advance(&key);
            }
        }
        self.fill();
    }

    /// Drops every delivery not being handled: the transport hands them out again.
    pub(crate) fn release_waiting(&mut self) -> usize {
        let waiting = self.ready.len()
            + self
                .lanes
                .values()
                .flat_map(|lane| lane.slots.iter())
                .filter(|slot| matches!(slot, Slot::Here(_)))
                .count();
        self.ready.clear();
        self.lanes.clear();
        self.timers.clear();
        self.held = 0;
        waiting
    }
}

/// `by` after `now`, saturated at a point far in the future: a delay as long as a handler
/// may ask for (`Duration::MAX`) must not overflow the clock.
fn later(now: Instant, by: Duration) -> Instant {
    /// Far enough for any wait, near enough for every platform's clock.
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(by.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Waits after a key hold could not be written (the database is likely down: trying again at
/// once would only fail again). False if the consumer is shutting down meanwhile.
async fn pause_after_failed_hold(cancellation: &CancellationToken) -> bool {
    tokio::select! {
        () = cancellation.cancelled() => false,
        () = tokio::time::sleep(HOLD_FAILED_PAUSE) => true,
    }
}

/// Runs `write` (a key hold's write or release) until it succeeds, pausing after each
/// failure; false if the consumer began shutting down first.
async fn until_written<F, W>(
    cancellation: &CancellationToken,
    id: Uuid,
    what: &str,
    mut write: W,
) -> bool
where
    W: FnMut() -> F,
    F: std::future::Future<Output = herald_core::Result<()>>,
{
    while let Err(error) = write().await {
        tracing::warn!(message_id = %id, error = %error.chain(), "{what} failed; trying again");
        if !pause_after_failed_hold(cancellation).await {
            return false;
        }
    }
    true
}

/// A delivery dropped unsettled at a shutdown: the broker hands it out again.
fn given_back(
    key: Option<String>,
    id: Uuid,
    delivery: Delivery,
    credit: OwnedSemaphorePermit,
) -> Finished {
    drop(delivery);
    drop(credit);
    Finished {
        key,
        id,
        redeliver_after: None,
        held: None,
    }
}

/// Handles one delivery and settles it, inside the delivery's process span
/// ([`Routes::process_span`]).
async fn work(
    routes: Arc<Routes>,
    metrics: ConsumerMetrics,
    cancellation: CancellationToken,
    key: Option<String>,
    job: Job,
) -> Finished {
    let span = routes.process_span(&job.delivery.envelope, job.delivery.attempt.max(1));
    handle(routes, metrics, cancellation, key, job)
        .instrument(span)
        .await
}

async fn handle(
    routes: Arc<Routes>,
    metrics: ConsumerMetrics,
    cancellation: CancellationToken,
    key: Option<String>,
    job: Job,
) -> Finished {
    let Job {
        delivery,
        credit,
        hold,
    } = job;
    let id = delivery.envelope.id;
    let attempt = delivery.attempt.max(1);
    let envelope = Arc::new(delivery.envelope.clone());
    // A hold being written for it (a later message of its key was deferred) is waited for:
    // written after the run, it would outlive the message and hold the key until stale.
    let holding = hold.is_some();
    if let Some(mut written) = hold.clone() {
        let _ = written.wait_for(Option::is_some).await;
    }
    let (routed, duplicates) = routes
        .route(
            envelope.clone(),
            attempt,
            delivery.redelivered,
            holding,
            &cancellation,
        )
        .await;
    for _ in 0..duplicates {
        metrics.duplicate();
    }
    let (settlement, redeliver_after) = match routed {
        Routed::Handled(Outcome::Done) => {
            metrics.acked();
            (Settlement::Ack, None)
        }
        Routed::Handled(Outcome::Retry { after, reason }) => {
            // The lane holds the key for as long as the transport really keeps the message
            // away (a delay queue may round the delay up), not only for what was asked.
            let away = delivery.effective_delay(after);
            // Before the retry is sent, the key's hold is committed: a consumer that starts
            // while the message is away keeps its key's order too. Until it is, the message
            // stays here and its lane busy; at a shutdown it goes back to its place in the
            // queue unsettled, and the rest of its lane behind it.
            let held = until_written(
                &cancellation,
                id,
                "holding the key of a message about to be retried",
                || routes.hold(&envelope, away),
            );
            if !held.await {
                return given_back(key, id, delivery, credit);
            }
            metrics.redelivery();
            (
                Settlement::Retry {
                    delay: after,
                    reason,
                },
                Some(away),
            )
        }
        Routed::Handled(Outcome::Reject { reason }) => {
            // A message that may have been away (a delayed retry, a deferral) or held here
            // behind another leaves its key's hold before it is dead-lettered: a hold left
            // behind would hold its key until it is stale, and the holds of the messages after
            // it would then go stale together, their order lost. Asked of every dead letter
            // (they are rare); until it is done, the message stays and its lane waits, as a
            // retry's hold does.
            let released = until_written(
                &cancellation,
                id,
                "releasing the key hold of a message about to be dead-lettered",
                || routes.release(&envelope),
            );
            if !released.await {
                return given_back(key, id, delivery, credit);
            }
            metrics.dead_lettered();
            (Settlement::Reject { reason }, None)
        }
        Routed::Held { by, due_in } => {
            // Not handled and not settled: its lane keeps it behind the holding message.
            tracing::debug!(message_id = %id, held_by = %by, ?due_in, "key held by a message away for a delayed retry; waiting behind it");
            return Finished {
                key,
                id,
                redeliver_after: None,
                held: Some(Held {
                    by,
                    due_in,
                    job: Box::new(Job {
                        delivery,
                        credit,
                        hold,
                    }),
                }),
            };
        }
        Routed::Unhandled {
            reason,
            policy: UnhandledPolicy::DeadLetter,
        } => {
            tracing::warn!(message_id = %id, %reason, "no handler can take this message; dead-lettered");
            metrics.dead_lettered();
            (Settlement::Reject { reason }, None)
        }
        Routed::Unhandled {
            reason,
            policy: UnhandledPolicy::Acknowledge,
        } => {
            tracing::warn!(message_id = %id, %reason, "no handler can take this message; acknowledged");
            metrics.unhandled();
            (Settlement::Ack, None)
        }
    };
    if let Err(error) = delivery.settle(settlement).await {
        metrics.settle_error();
        tracing::warn!(message_id = %id, error = %error.chain(), "settling a delivery failed; the broker will redeliver it");
    }
    drop(credit);
    Finished {
        key,
        id,
        redeliver_after,
        held: None,
    }
}
