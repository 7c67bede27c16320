//! A model broker for relays: a [`Publisher`] per relay (its own channel) that confirms, nacks,
//! fails or never answers each message with seeded probabilities and delays, and the record
//! of what arrived at the broker in which order. Also the relay's invariants, checked on that
//! record and on the outbox ([`ModelBroker::check`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use herald_core::error::Message;
use herald_core::{Envelope, Error, Publisher, Result, Seq};

use super::outbox::{ModelOutbox, RowFate, RowView};
use super::{Sim, Violation, lock};

/// How the model broker misbehaves; drawn per seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishFaults {
    /// Delay from publishing to arrival and from arrival to the confirm, in ms.
    pub latency: (u64, u64),
    /// Probability that a message is nacked (not enqueued: a full queue's back-pressure).
    pub nack: f64,
    /// Probability that a message fails with its channel lost (reported as unreachable, as the
    /// AMQP publisher does; it may have arrived).
    pub error: f64,
    /// Probability that a message is never answered (it may have arrived); its publish call
    /// then runs into the relay's publish timeout.
    pub lost: f64,
    /// Spans of time (ms) in which every publication fails at once as unreachable (an outage).
    pub outages: Vec<(u64, u64)>,
}

impl PublishFaults {
    /// A broker that confirms everything quickly.
    pub fn none() -> Self {
        PublishFaults {
            latency: (1, 5),
            nack: 0.0,
            error: 0.0,
            lost: 0.0,
            outages: Vec::new(),
        }
    }

    /// Faults drawn from the world's seed; outages (of up to `outage_ms`) start before
    /// `horizon_ms`.
    pub fn draw(sim: &Sim, horizon_ms: u64, outage_ms: u64) -> Self {
        let pick = |choices: &[f64]| choices[sim.between(0, choices.len() as u64 - 1) as usize];
        let mut outages = Vec::new();
        if outage_ms > 0 && sim.chance(0.2) {
            let start = sim.between(0, horizon_ms);
            outages.push((start, start + sim.between(100, outage_ms)));
        }
        PublishFaults {
            latency: (1, sim.between(3, 40)),
            nack: pick(&[0.0, 0.02, 0.05, 0.15]),
            error: pick(&[0.0, 0.0, 0.02, 0.05]),
            lost: pick(&[0.0, 0.0, 0.01, 0.03]),
            outages,
        }
    }
}

/// A message that reached the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// When, in ms.
    pub at: u64,
    /// The outbox row it came from.
    pub seq: Seq,
    /// Which relay's channel it came on.
    pub relay: String,
}

#[derive(Default)]
struct State {
    arrivals: Vec<Arrival>,
    /// Per channel, when its last message arrives (a channel is FIFO).
    channels: BTreeMap<String, u64>,
    /// Publish calls so far per channel, which name them.
    calls: BTreeMap<String, u64>,
}

/// The broker: what arrived, in order. Cheap to clone.
#[derive(Clone)]
pub struct ModelBroker {
    sim: Sim,
    outbox: ModelOutbox,
    faults: PublishFaults,
    state: Arc<Mutex<State>>,
}

debug_faults!(ModelBroker);

/// One relay's publisher (its channel to the broker).
#[derive(Clone, Debug)]
pub struct ModelPublisher {
    broker: ModelBroker,
    name: String,
}

enum Fate {
    Ack,
    Nack,
    Error,
    Permanent,
    Lost,
}

impl ModelBroker {
    /// A broker for the events of `outbox`.
    pub fn new(sim: Sim, outbox: ModelOutbox, faults: PublishFaults) -> Self {
        ModelBroker {
            sim,
            outbox,
            faults,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A publisher for the relay named `name` in the trace.
    pub fn publisher(&self, name: impl Into<String>) -> ModelPublisher {
        ModelPublisher {
            broker: self.clone(),
            name: name.into(),
        }
    }

    /// Everything that arrived, in order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state().arrivals.clone()
    }

    /// The relay's invariants, once the run has drained:
    ///
    /// - `order`: per key, the first arrivals at the broker follow the recording order;
    /// - `loss`: every event that is not poison was completed, and arrived before;
    /// - `dead-letter`: only poison events were dead-lettered;
    /// - `drain`: nothing is left pending.
    pub fn check(&self) -> Vec<Violation> {
        let rows = self.outbox.rows();
        let arrivals = self.arrivals();
        let mut violations = Vec::new();
        let mut first: BTreeMap<Seq, u64> = BTreeMap::new();
        for arrival in &arrivals {
            first.entry(arrival.seq).or_insert(arrival.at);
        }
        let row = |seq: Seq| -> Option<&RowView> { rows.get(usize::try_from(seq - 1).ok()?) };

        // Order: walk the first arrivals of each key in time; each must come after every
        // earlier-recorded event of the key that arrived at all.
        let mut by_key: BTreeMap<String, Vec<(u64, Seq)>> = BTreeMap::new();
        for (&seq, &at) in &first {
            if let Some(key) = row(seq).and_then(|r| r.key.clone()) {
                by_key.entry(key).or_default().push((at, seq));
            }
        }
        for (key, mut firsts) in by_key {
            firsts.sort();
            // The highest seq that arrived so far, and when.
            let mut latest: Option<(u64, Seq)> = None;
            for (at, seq) in firsts {
                if let Some((was_at, was)) = latest
                    && was > seq
                {
                    violations.push(Violation {
                        invariant: "order",
                        key: Some(key.clone()),
                        detail: format!(
                            "{} first arrived at {was_at} ms, before {} (recorded earlier), which first arrived at {at} ms",
                            row(was).map(RowView::label).unwrap_or_default(),
                            row(seq).map(RowView::label).unwrap_or_default(),
                        ),
                    });
                    break;
                }
                if latest.is_none_or(|(_, was)| seq > was) {
                    latest = Some((at, seq));
                }
            }
        }

        for row in &rows {
            match &row.fate {
                RowFate::Pending => violations.push(Violation {
                    invariant: "drain",
                    key: row.key.clone(),
                    detail: format!(
                        "{} still pending after the run (attempts {})",
                        row.label(),
                        row.attempts
                    ),
                }),
                RowFate::Completed { at } => match first.get(&row.seq) {
                    Some(arrived) if arrived <= at => {}
                    _ => violations.push(Violation {
                        invariant: "loss",
                        key: row.key.clone(),
                        detail: format!(
                            "{} completed at {at} ms without having reached the broker",
                            row.label()
                        ),
                    }),
                },
                RowFate::DeadLettered { at, error } if !row.poison => violations.push(Violation {
                    invariant: "dead-letter",
                    key: row.key.clone(),
                    detail: format!(
                        "{} (not poison) dead-lettered at {at} ms after {} attempts: {error}",
                        row.label(),
                        row.attempts
                    ),
                }),
                RowFate::DeadLettered { .. } => {}
            }
        }
        violations
    }

    fn outage(&self, now: u64) -> bool {
        self.faults
            .outages
            .iter()
            .any(|(start, end)| (*start..*end).contains(&now))
    }

    async fn publish_on(&self, channel: &str, batch: &[Envelope]) -> Vec<Result<()>> {
        let now = self.sim.now();
        let call = {
            let mut state = self.state();
            let count = state.calls.entry(channel.to_owned()).or_default();
            *count += 1;
            format!("{channel} publish#{count}")
        };
        let mut rng = self.sim.rng_for(&call);
        let outage = self.outage(now);
        let mut results = Vec::with_capacity(batch.len());
        let mut answer_at = now;
        let mut hangs = false;
        let mut parts = Vec::with_capacity(batch.len());
        let mut tags: Vec<String> = Vec::new();
        for envelope in batch {
            let view = self
                .outbox
                .seq_of(envelope.id)
                .and_then(|seq| self.outbox.row(seq));
            let Some(view) = view else {
                results.push(Err(Error::transport(
                    "publish",
                    false,
                    Message("simulated: unknown envelope".into()),
                )));
                continue;
            };
            if let Some(key) = &view.key {
                tags.push(key.clone());
            }
            let faults = &self.faults;
            let fate = if outage {
                Fate::Error
            } else if view.poison {
                Fate::Permanent
            } else {
                let draw = rng.f64();
                if draw < faults.nack {
                    Fate::Nack
                } else if draw < faults.nack + faults.error {
                    Fate::Error
                } else if draw < faults.nack + faults.error + faults.lost {
                    Fate::Lost
                } else {
                    Fate::Ack
                }
            };
            let arrives = match fate {
                Fate::Ack => true,
                Fate::Nack | Fate::Permanent => false,
                Fate::Error => !outage && rng.bool(),
                Fate::Lost => rng.bool(),
            };
            let sent_at = if arrives {
                let latency = rng.u64(faults.latency.0..=faults.latency.1);
                let after = {
                    let state = self.state();
                    state.channels.get(channel).copied().unwrap_or(0).max(now)
                };
                let broker = self.clone();
                let seq = view.seq;
                let label = view.label();
                let name = channel.to_owned();
                let key = view.key.clone();
                let event = format!("{call} {label} arrival");
                let at = self.sim.run_at(event, after, latency.max(1), move || {
                    let at = broker.sim.now();
                    broker.state().arrivals.push(Arrival {
                        at,
                        seq,
                        relay: name.clone(),
                    });
                    let tags: Vec<&str> = key.as_deref().into_iter().collect();
                    broker
                        .sim
                        .log(&tags, format!("broker: {label} arrives from {name}"));
                });
                self.state().channels.insert(channel.to_owned(), at);
                at
            } else {
                now
            };
            let answer = sent_at + rng.u64(faults.latency.0..=faults.latency.1);
            answer_at = answer_at.max(answer);
            let (result, word) = match fate {
                Fate::Ack => (Ok(()), "ack"),
                Fate::Nack => (Err(transient("nacked by the broker")), "nack"),
                // What the AMQP publisher reports for a broker it cannot reach or a channel
                // lost mid-call: not the message's fault.
                Fate::Error if outage => (Err(unreachable("broker unreachable")), "unreachable"),
                Fate::Error => (Err(unreachable("channel lost")), "channel lost"),
                Fate::Permanent => (
                    Err(Error::transport(
                        "publish",
                        false,
                        Message("simulated: message refused for good".into()),
                    )),
                    "refused for good",
                ),
                Fate::Lost => {
                    hangs = true;
                    (Err(transient("no answer")), "never answered")
                }
            };
            let arrives = if arrives { "" } else { ", does not arrive" };
            parts.push(format!("{} {word}{arrives}", view.label()));
            results.push(result);
        }
        tags.sort();
        tags.dedup();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let outage = if outage { " (broker outage)" } else { "" };
        self.sim
            .log(&tags, format!("{call}{outage}: {}", parts.join(", ")));
        if hangs {
            return std::future::pending().await;
        }
        self.sim
            .sleep_from(format!("{call} answer"), answer_at, 1)
            .await;
        self.sim.log(&tags, format!("{call} answered"));
        results
    }
}

fn transient(what: &str) -> Error {
    Error::transport("publish", true, Message(format!("simulated: {what}")))
}

fn unreachable(what: &str) -> Error {
    Error::unreachable("publish", Message(format!("simulated: {what}")))
}

impl Publisher for ModelPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        self.broker.publish_on(&self.name, batch).await
    }
}
