//! A model of a RabbitMQ queue as a consumer sees it ([`Subscriber`]).
//!
//! Messages are delivered from the head of the queue after a seeded delay. A delivery dropped
//! unsettled goes back to the head, marked redelivered. A retry waits in the shortest fixed
//! delay queue not shorter than the delay asked for (longer delays go round the longest one
//! again), then comes back with its attempt raised *ahead of the first-time messages* (behind
//! the other returned ones), as herald-amqp's delay queues do with a message priority; a
//! deferral likewise, as the same attempt. A returned message is marked redelivered. A settlement may fail (the channel closed): the message goes back to the head,
//! and a failed retry may also have published its delayed copy (a duplicate). Publishers may
//! publish a message twice. Each delivery carries its number in the header `sim-delivery`, so
//! that handlers and layers can tell deliveries apart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::error::Message;
use herald_core::{
    Acknowledger, BoxFuture, Delivery, DeliveryStream, Envelope, Error, Result, Settlement,
    Subscriber, SubscriptionSpec, Uuid,
};
use tokio::sync::Notify;

use super::{Sim, lock};

/// The header holding a delivery's number.
pub const DELIVERY_HEADER: &str = "sim-delivery";

/// How the model queue misbehaves; drawn per seed.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFaults {
    /// Delay of a delivery or a settlement, in ms (lowest, highest).
    pub latency: (u64, u64),
    /// Probability that a settlement fails (the channel closed).
    pub settle_fail: f64,
    /// Probability that a published message is published twice.
    pub duplicate: f64,
    /// The fixed delays of the delay queues, in ms, shortest first.
    pub delay_levels: Vec<u64>,
}

impl QueueFaults {
    /// Faults drawn from the world's seed, with RabbitMQ's default delay levels divided by 10.
    pub fn draw(sim: &Sim) -> Self {
        let pick = |choices: &[f64]| choices[sim.between(0, choices.len() as u64 - 1) as usize];
        QueueFaults {
            latency: (1, sim.between(2, 20)),
            settle_fail: pick(&[0.0, 0.0, 0.02, 0.05]),
            duplicate: pick(&[0.0, 0.03, 0.1]),
            delay_levels: vec![100, 500, 3_000, 12_000, 60_000],
        }
    }

    /// How long a retry asked for `delay` really waits.
    pub fn wait(&self, delay: Duration) -> u64 {
        let asked = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        match self.delay_levels.iter().find(|level| **level >= asked) {
            Some(level) => *level,
            None => {
                let longest = self.delay_levels.last().copied().unwrap_or(asked).max(1);
                asked.div_ceil(longest).saturating_mul(longest)
            }
        }
    }
}

/// Where first-time messages' positions start: returned ones (higher priority) stay below.
const FIRST_TIME: u64 = 1 << 40;

struct Queued {
    envelope: Envelope,
    attempt: u32,
    redelivered: bool,
    /// Its place in the queue: messages given back return to it.
    position: u64,
}

/// What became of a message at the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// When a delivery of it was acknowledged (each time).
    pub acked: Vec<u64>,
    /// When a delivery of it was dead-lettered (each time), with the reason.
    pub rejected: Vec<(u64, String)>,
    /// When the consumer asked to acknowledge or dead-letter a delivery of it (each time),
    /// whether or not the broker took it: when the consumer was done with it.
    pub decided: Vec<u64>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    deliveries: u64,
    unsettled: usize,
    /// Copies on their way (a retry's delay, a duplicate publication).
    travelling: usize,
    settled: BTreeMap<Uuid, Settled>,
    labels: BTreeMap<Uuid, (String, String)>,
    /// Places handed out at the tail so far.
    positions: u64,
    /// The last position given to a message returned from a delay queue.
    returned_positions: u64,
}

impl State {
    /// Puts `queued` in its place: ahead of everything with a later position.
    fn insert(&mut self, queued: Queued) {
        let index = self
            .queue
            .iter()
            .position(|q| q.position > queued.position)
            .unwrap_or(self.queue.len());
        self.queue.insert(index, queued);
    }
}

/// The model queue (one subscription). Cheap to clone.
#[derive(Clone)]
pub struct ModelQueue {
    sim: Sim,
    faults: QueueFaults,
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

debug_faults!(ModelQueue);

impl ModelQueue {
    /// An empty queue in `sim`'s world.
    pub fn new(sim: Sim, faults: QueueFaults) -> Self {
        ModelQueue {
            sim,
            faults,
            state: Arc::new(Mutex::new(State::default())),
            ready: Arc::new(Notify::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn label(&self, id: Uuid) -> (String, String) {
        self.state()
            .labels
            .get(&id)
            .cloned()
            .unwrap_or_else(|| ("?".into(), "?".into()))
    }

    /// Publishes `envelope` (named `label` in the trace) at the tail; with the seed's
    /// probability, a second copy follows a little later.
    pub fn publish(&self, envelope: Envelope, label: &str) {
        let key = envelope.partition_key.clone().unwrap_or_default();
        let id = envelope.id;
        self.state()
            .labels
            .insert(id, (label.to_owned(), key.clone()));
        let mut rng = self.sim.rng_for(&format!("publish {label}"));
        if rng.f64() < self.faults.duplicate {
            self.state().travelling += 1;
            let queue = self.clone();
            let copy = envelope.clone();
            let label = label.to_owned();
            self.sim.run_after(
                format!("publish {label} duplicate"),
                rng.u64(1..=2_000),
                move || {
                    queue.state().travelling -= 1;
                    queue.sim.log(
                        &[copy.partition_key.as_deref().unwrap_or_default()],
                        format!("broker: a duplicate of {label} joins the queue"),
                    );
                    queue.push_back(copy, 1, false);
                },
            );
        }
        self.push_back(envelope, 1, false);
    }

    /// Queues `envelope`: at the tail, or, `returned` from a delay queue, behind the other
    /// returned messages and ahead of every first-time one (the higher priority).
    fn push_back(&self, envelope: Envelope, attempt: u32, returned: bool) {
        {
            let mut state = self.state();
            // Positions order the queue: returned messages' below first-time ones'.
            let position = if returned {
                state.returned_positions += 1;
                state.returned_positions
            } else {
                state.positions += 1;
                FIRST_TIME.saturating_add(state.positions)
            };
            state.insert(Queued {
                envelope,
                attempt,
                redelivered: returned,
                position,
            });
        }
        self.ready.notify_waiters();
    }

    /// Gives a delivered message back: it returns to its place in the queue (as RabbitMQ
    /// requeues), ahead of everything queued after it.
    fn requeue(&self, envelope: Envelope, attempt: u32, position: u64) {
        self.state().insert(Queued {
            envelope,
            attempt,
            redelivered: true,
            position,
        });
        self.ready.notify_waiters();
    }

    /// What became of each message.
    pub fn settled(&self) -> BTreeMap<Uuid, Settled> {
        self.state().settled.clone()
    }

    /// Nothing queued, travelling or unsettled.
    pub fn is_idle(&self) -> bool {
        let state = self.state();
        state.queue.is_empty() && state.unsettled == 0 && state.travelling == 0
    }

    async fn next_delivery(&self) -> Delivery {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().queue.is_empty() {
                notified.await;
                continue;
            }
            let number = self.state().deliveries + 1;
            let mut rng = self.sim.rng_for(&format!("delivery {number}"));
            self.sim
                .sleep(
                    format!("delivery {number}"),
                    rng.u64(self.faults.latency.0..=self.faults.latency.1),
                )
                .await;
            let Some(queued) = self.state().queue.pop_front() else {
                continue;
            };
            let mut envelope = queued.envelope;
            {
                let mut state = self.state();
                state.deliveries = number;
                state.unsettled += 1;
            }
            let id = envelope.id;
            envelope
                .headers
                .insert(DELIVERY_HEADER.to_owned(), number.to_string());
            let (label, key) = self.label(id);
            let again = if queued.redelivered {
                ", redelivered"
            } else {
                ""
            };
            self.sim.log(
                &[&key],
                format!(
                    "broker delivers {label} as delivery {number} (attempt {}{again})",
                    queued.attempt
                ),
            );
            let acknowledger = ModelAck {
                queue: self.clone(),
                envelope: Some(envelope.clone()),
                attempt: queued.attempt,
                position: queued.position,
                number,
            };
            return Delivery::new(
                envelope,
                queued.attempt,
                queued.redelivered,
                Box::new(acknowledger),
            );
        }
    }
}

/// The deliveries of a [`ModelQueue`].
#[derive(Debug)]
pub struct ModelStream {
    queue: ModelQueue,
}

impl DeliveryStream for ModelStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        Some(Ok(self.queue.next_delivery().await))
    }
}

impl Subscriber for ModelQueue {
    type Stream = ModelStream;

    async fn subscribe(&self, _spec: &SubscriptionSpec) -> Result<ModelStream> {
        Ok(ModelStream {
            queue: self.clone(),
        })
    }
}

struct ModelAck {
    queue: ModelQueue,
    /// `None` once settled.
    envelope: Option<Envelope>,
    attempt: u32,
    position: u64,
    number: u64,
}

impl Drop for ModelAck {
    fn drop(&mut self) {
        if let Some(mut envelope) = self.envelope.take() {
            envelope.headers.remove(DELIVERY_HEADER);
            // Handed back as an event of its own: a consumer drops what it holds in the order
            // of its hash maps, which is not seeded.
            let queue = self.queue.clone();
            let (number, attempt, position) = (self.number, self.attempt, self.position);
            self.queue
                .sim
                .run_after(format!("requeue delivery {number}"), 1, move || {
                    let (label, key) = queue.label(envelope.id);
                    queue.state().unsettled -= 1;
                    queue.sim.log(
                        &[&key],
                        format!(
                            "delivery {number} of {label} dropped unsettled: back to its place in the queue"
                        ),
                    );
                    queue.requeue(envelope, attempt, position);
                });
        }
    }
}

/// Whether a settlement is a deferral (the same attempt comes back) or anything else.
enum Kind {
    Defer,
    Other,
}

impl Acknowledger for ModelAck {
    fn effective_delay(&self, requested: Duration) -> Duration {
        Duration::from_millis(self.queue.faults.wait(requested))
    }

    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        // Kept whole until the settlement takes effect: dropped before that (the consumer
        // died), it gives the message back as a closed channel does.
        let mut ack = self;
        Box::pin(async move {
            let queue = ack.queue.clone();
            let (attempt, number, position) = (ack.attempt, ack.number, ack.position);
            if ack.envelope.is_none() {
                return Err(Error::transport(
                    "settle",
                    false,
                    Message("delivery already settled".into()),
                ));
            }
            if !matches!(settlement, Settlement::Retry { .. }) {
                let now = queue.sim.now();
                let id = ack.envelope.as_ref().map(|e| e.id).unwrap_or_default();
                queue
                    .state()
                    .settled
                    .entry(id)
                    .or_default()
                    .decided
                    .push(now);
            }
            let name = format!("settle delivery {number}");
            let mut rng = queue.sim.rng_for(&name);
            let faults = queue.faults.clone();
            queue
                .sim
                .sleep(name, rng.u64(faults.latency.0..=faults.latency.1))
                .await;
            let Some(mut envelope) = ack.envelope.take() else {
                return Err(Error::transport(
                    "settle",
                    false,
                    Message("delivery already settled".into()),
                ));
            };
            envelope.headers.remove(DELIVERY_HEADER);
            let id = envelope.id;
            let (label, key) = queue.label(id);
            let now = queue.sim.now();
            queue.state().unsettled -= 1;
            if rng.f64() < faults.settle_fail {
                let copied = matches!(settlement, Settlement::Retry { .. }) && rng.bool();
                if let (true, Settlement::Retry { delay, .. }) = (copied, &settlement) {
                    queue.state().travelling += 1;
                    let wait = faults.wait(*delay);
                    let (q, copy) = (queue.clone(), envelope.clone());
                    queue
                        .sim
                        .run_after(format!("retry of delivery {number}"), wait, move || {
                            q.state().travelling -= 1;
                            q.push_back(copy, attempt + 1, true);
                        });
                }
                let copied = if copied {
                    " (its delayed copy was published: a duplicate)"
                } else {
                    ""
                };
                queue.sim.log(
                    &[&key],
                    format!(
                        "settling delivery {number} of {label} ({settlement:?}) fails{copied}: back to its place in the queue"
                    ),
                );
                queue.requeue(envelope, attempt, position);
                return Err(Error::transport(
                    "settle",
                    true,
                    Message("simulated: channel closed".into()),
                ));
            }
            let settlement_kind = if matches!(settlement, Settlement::Defer { .. }) {
                Kind::Defer
            } else {
                Kind::Other
            };
            match settlement {
                Settlement::Ack => {
                    queue.state().settled.entry(id).or_default().acked.push(now);
                    queue.sim.log(
                        &[&key],
                        format!("broker: delivery {number} of {label} acked"),
                    );
                }
                Settlement::Retry { delay, reason } | Settlement::Defer { delay, reason } => {
                    // A deferral comes back as the same attempt; a retry as the next one.
                    let (next, what) = if matches!(settlement_kind, Kind::Defer) {
                        (attempt, "deferred")
                    } else {
                        (attempt + 1, "retried")
                    };
                    let wait = faults.wait(delay);
                    queue.state().travelling += 1;
                    let q = queue.clone();
                    queue
                        .sim
                        .run_after(format!("{what} delivery {number}"), wait, move || {
                            q.state().travelling -= 1;
                            q.push_back(envelope, next, true);
                        });
                    queue.sim.log(
                        &[&key],
                        format!(
                            "broker: delivery {number} of {label} {what}: asked {} ms, waits {wait} ms in a delay queue, then joins the tail ({reason})",
                            delay.as_millis()
                        ),
                    );
                }
                Settlement::Reject { reason } => {
                    queue
                        .state()
                        .settled
                        .entry(id)
                        .or_default()
                        .rejected
                        .push((now, reason.clone()));
                    queue.sim.log(
                        &[&key],
                        format!("broker: delivery {number} of {label} dead-lettered: {reason}"),
                    );
                }
            }
            Ok(())
        })
    }
}
