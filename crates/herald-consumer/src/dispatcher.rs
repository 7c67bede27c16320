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
//! Held deliveries stay unsettled, so they use prefetch. Past `max_held` of them, the first
//! held message of a lane is *deferred*: given back to the transport with a delay that brings
//! it back after the away messages before it, and its place in the lane kept. So held messages
//! never fill the prefetch, and the away message can always be received again. A deferral is
//! not a failure: it is a settlement of its own ([`Settlement::Defer`]), which never spends an
//! attempt and never dead-letters the message. Like a retry, it first holds its key in the
//! inbox, so that a consumer that starts while it is away keeps the order too. The first held
//! message goes, not the last: a held message given back unsettled (at a shutdown) returns to
//! the head of the queue, and no deferred message of its key may then come back ahead of it.
//! An away message that does not come back within `redelivery_grace` of its due time (a
//! competing consumer took it) stops holding its key.
//!
//! Everything here runs on one task and owns its state; handlers run on spawned tasks that
//! report back when their delivery is settled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Delivery, Settlement, Uuid};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::router::{Routed, Routes};
use crate::{ConsumerMetrics, Outcome, UnhandledPolicy};

/// How much later than the away message a deferred one is asked back.
const DEFER_MARGIN: Duration = Duration::from_millis(50);

/// How long a delivery whose key could not be held waits before it goes back to the broker.
const HOLD_FAILED_PAUSE: Duration = Duration::from_secs(1);

/// A delivery taken from the stream, with the prefetch credit it holds until settled.
pub(crate) struct Job {
    pub(crate) delivery: Delivery,
    pub(crate) credit: OwnedSemaphorePermit,
}

enum Slot {
    Here(Box<Job>),
    Away(Away),
}

struct Away {
    id: Uuid,
    back_at: Instant,
    give_up_at: Instant,
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
    /// Closed once the key hold of the lane's last deferral is written: the next deferral's
    /// hold waits for it, so that the inbox orders the holds as the lane does.
    holding: Option<oneshot::Receiver<()>>,
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

/// Settings of a [`Dispatcher`].
pub(crate) struct Limits {
    pub(crate) concurrency: usize,
    pub(crate) max_held: usize,
    pub(crate) redelivery_grace: Duration,
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
    /// Deferrals being settled.
    pub(crate) settling: JoinSet<()>,
    /// Which key each running worker holds, for workers that end without reporting.
    running: HashMap<tokio::task::Id, Option<String>>,
    held: usize,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
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
            Some(position) => lane.slots[position] = Slot::Here(Box::new(job)),
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
        while self.held > self.limits.max_held && self.defer_first_held(key) {}
    }

    /// Gives the first held delivery of `key`'s lane back to the transport, asking for it
    /// after every away message before it, and keeps its place. False if the lane holds none.
    fn defer_first_held(&mut self, key: &str) -> bool {
        let Some(lane) = self.lanes.get_mut(key) else {
            return false;
        };
        let Some(first_away) = lane.slots.iter().position(|s| matches!(s, Slot::Away(_))) else {
            return false;
        };
        let Some(index) = lane
            .slots
            .iter()
            .skip(first_away)
            .position(|s| matches!(s, Slot::Here(_)))
            .map(|offset| first_away + offset)
        else {
            return false;
        };
        let now = Instant::now();
        let last_back = lane
            .slots
            .iter()
            .take(index)
            .filter_map(|slot| match slot {
                Slot::Away(away) => Some(away.back_at),
                Slot::Here(_) => None,
            })
            .max()
            .unwrap_or(now);
        let delay = last_back
            .saturating_duration_since(now)
            .saturating_add(DEFER_MARGIN);
        let Some(Slot::Here(job)) = lane.slots.remove(index) else {
            return false;
        };
        // The transport may keep it longer than asked (a delay queue rounds up).
        let away = job.delivery.effective_delay(delay);
        lane.slots.insert(
            index,
            Slot::Away(Away {
                id: job.delivery.envelope.id,
                back_at: later(now, away),
                give_up_at: later(now, away.saturating_add(self.limits.redelivery_grace)),
            }),
        );
        lane.held -= 1;
        self.held -= 1;
        self.metrics.deferred();
        let metrics = self.metrics.clone();
        let routes = self.routes.clone();
        let cancellation = self.cancellation.clone();
        let reason = format!("waiting behind an earlier message of key `{key}`");
        let earlier = lane.holding.take();
        let (held, holding) = oneshot::channel();
        lane.holding = Some(holding);
        self.settling.spawn(async move {
            let Job { delivery, credit } = *job;
            // Held in the inbox before it goes, as a retry is: a consumer that starts while it
            // is away finds its key held and keeps later messages behind it. After the hold
            // of the key's previous deferral: holds keep the order in which they are taken.
            if let Some(earlier) = earlier {
                let _ = earlier.await;
            }
            let hold = routes.hold(&delivery.envelope, away).await;
            drop(held);
            if let Err(error) = hold {
                give_back_unheld(delivery, credit, &error, &cancellation).await;
                return;
            }
            if let Err(error) = delivery.defer(delay, reason).await {
                metrics.settle_error();
                tracing::warn!(error = %error.chain(), "deferring a delivery failed; the broker will redeliver it");
            }
            drop(credit);
        });
        true
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

/// A message about to go away (a retry, a deferral) whose key hold could not be written: it is
/// given back to the broker unsettled instead, which requeues it at the head of the queue:
/// nothing of its key passes it, and its lane waits for it. After a pause: the database is
/// likely down, and the message would only fail again at once.
async fn give_back_unheld(
    delivery: Delivery,
    credit: OwnedSemaphorePermit,
    error: &herald_core::Error,
    cancellation: &CancellationToken,
) {
    tracing::warn!(
        message_id = %delivery.envelope.id,
        error = %error.chain(),
        "holding the key of a message about to go away failed; the message is given back to the broker instead"
    );
    tokio::select! {
        () = cancellation.cancelled() => {}
        () = tokio::time::sleep(HOLD_FAILED_PAUSE) => {}
    }
    drop(delivery);
    drop(credit);
}

/// Handles one delivery and settles it.
async fn work(
    routes: Arc<Routes>,
    metrics: ConsumerMetrics,
    cancellation: CancellationToken,
    key: Option<String>,
    job: Job,
) -> Finished {
    let Job { delivery, credit } = job;
    let id = delivery.envelope.id;
    let attempt = delivery.attempt.max(1);
    let envelope = Arc::new(delivery.envelope.clone());
    let (routed, duplicates) = routes
        .route(
            envelope.clone(),
            attempt,
            delivery.redelivered,
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
            // while the message is away keeps its key's order too.
            if let Err(error) = routes.hold(&envelope, away).await {
                give_back_unheld(delivery, credit, &error, &cancellation).await;
                return Finished {
                    key,
                    id,
                    redeliver_after: Some(Duration::ZERO),
                    held: None,
                };
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
            // A message that may have been away (a delayed retry, a deferral) leaves its key's
            // hold. Asked of every dead letter: they are rare, and a hold left behind would
            // hold its key until it is stale.
            if let Err(error) = routes.release(&envelope).await {
                tracing::warn!(
                    message_id = %id,
                    error = %error.chain(),
                    "releasing the key hold of a dead-lettered message failed; its key waits until the hold is stale"
                );
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
                    job: Box::new(Job { delivery, credit }),
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
