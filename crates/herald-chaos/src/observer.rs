//! The broker-side witness: a queue of its own bound like the consumers' queue, read by the
//! orchestrator, which notes the first arrival of every event. RabbitMQ hands a queue's
//! messages to its one consumer in the order they were enqueued, so first arrivals are the
//! order the relays published in, whatever the consumers did afterwards.
//!
//! On Kafka the witness is a consumer group of its own reading the run's topic: a key's
//! events sit in one partition, which the group reads in order, so its first arrivals are
//! the order each key's events were written to the topic in.
//!
//! Under back-pressure the witness's queue is bounded (`max-length` with `reject-publish`,
//! set as a policy) and drained slowly, so the broker nacks the relays' publishes while it is
//! full: a relay must then publish again without letting a later event of the key through.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{DeliveryStream as _, Subscriber, SubscriptionSpec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::Step;

/// One event as the witness first saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The message id.
    pub id: Uuid,
    /// Its partition key.
    pub key: String,
    /// Its position within the key (recording order).
    pub n: i64,
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<Uuid>,
    first: Vec<Arrival>,
    deliveries: u64,
}

/// How the witness drains its queue.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Most messages per second (`None`: as fast as they come).
    pub rate: Option<f64>,
    /// Deliveries held unacknowledged.
    pub prefetch: usize,
}

/// A running witness; stops when dropped.
pub struct Observer {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Observer {
    /// Subscribes to `queue` (declared by the caller) and records first arrivals until dropped.
    pub fn start<T: Subscriber>(transport: T, queue: String, drain: Drain) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let spec = SubscriptionSpec {
            prefetch: drain.prefetch,
            ..SubscriptionSpec::new(queue, vec![<Step as herald_core::Event>::TYPE.to_owned()])
        };
        tokio::spawn(watch(transport, spec, drain, seen.clone(), stop.clone()));
        Self { seen, stop }
    }

    /// Distinct events seen so far.
    pub fn distinct(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.ids.len())
    }

    /// Every delivery so far, repeats included.
    pub fn deliveries(&self) -> u64 {
        self.seen.lock().map_or(0, |s| s.deliveries)
    }

    /// First arrivals, in arrival order.
    pub fn first_arrivals(&self) -> Vec<Arrival> {
        self.seen
            .lock()
            .map_or_else(|_| Vec::new(), |s| s.first.clone())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn watch<T: Subscriber>(
    transport: T,
    spec: SubscriptionSpec,
    drain: Drain,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut taken = 0u64;
    'subscribe: while !stop.is_cancelled() {
        let mut stream = tokio::select! {
            () = stop.cancelled() => return,
            stream = transport.subscribe(&spec) => match stream {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "observer: subscribe failed");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'subscribe;
                }
            },
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = stream.next() => next,
            };
            let delivery = match next {
                None => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'subscribe;
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "observer: delivery failed");
                    continue;
                }
                Some(Ok(delivery)) => delivery,
            };
            if let Ok(step) = delivery.envelope.decode::<Step>()
                && let Ok(mut seen) = seen.lock()
            {
                seen.deliveries += 1;
                if seen.ids.insert(delivery.envelope.id) {
                    seen.first.push(Arrival {
                        id: delivery.envelope.id,
                        key: step.key,
                        n: step.n,
                    });
                }
            }
            if let Some(rate) = drain.rate {
                taken += 1;
                let due = started + Duration::from_secs_f64(taken as f64 / rate.max(0.1));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            // A lost ack only brings the message back: a repeat, not a first arrival.
            if let Err(err) = delivery.ack().await {
                tracing::debug!(error = %err, "observer: ack failed");
            }
        }
    }
}

/// Two events of a key in the wrong order: `late` (recorded after `early`) came first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inversion {
    /// The key.
    pub key: String,
    /// The event that came too soon: its position and id.
    pub late: (i64, Uuid),
    /// The earlier event of its key that had not come yet: its position and id.
    pub early: (i64, Option<Uuid>),
}

/// The first arrivals held against recording order: every event that arrived before an earlier
/// event of its key had arrived, with the earliest such event it overtook. `ids` maps
/// `(key, n)` to the recorded event's id, to name the overtaken event.
pub fn inversions(arrivals: &[Arrival], ids: &HashMap<(String, i64), Uuid>) -> Vec<Inversion> {
    // Per key: the lowest position not arrived yet, and those above it that did.
    let mut keys: HashMap<&str, (i64, BTreeSet<i64>)> = HashMap::new();
    let mut found = Vec::new();
    for arrival in arrivals {
        let (next, ahead) = keys.entry(&arrival.key).or_default();
        if arrival.n > *next {
            found.push(Inversion {
                key: arrival.key.clone(),
                late: (arrival.n, arrival.id),
                early: (*next, ids.get(&(arrival.key.clone(), *next)).copied()),
            });
            ahead.insert(arrival.n);
        } else if arrival.n == *next {
            *next += 1;
            while ahead.remove(next) {
                *next += 1;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(key: &str, n: i64) -> Arrival {
        Arrival {
            id: Uuid::now_v7(),
            key: key.to_owned(),
            n,
        }
    }

    #[test]
    fn in_order_arrivals_of_interleaved_keys_are_no_inversion() {
        let arrivals = [
            arrival("a", 0),
            arrival("b", 0),
            arrival("a", 1),
            arrival("b", 1),
            arrival("a", 2),
        ];
        assert!(inversions(&arrivals, &HashMap::new()).is_empty());
    }

    #[test]
    fn an_event_overtaking_an_earlier_one_of_its_key_is_named_with_it() {
        let arrivals = [
            arrival("a", 0),
            arrival("a", 2),
            arrival("a", 3),
            arrival("a", 1),
            arrival("a", 4),
        ];
        let overtaken = Uuid::now_v7();
        let ids = HashMap::from([(("a".to_owned(), 1), overtaken)]);
        let found = inversions(&arrivals, &ids);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].late.0, 2);
        assert_eq!(found[0].early, (1, Some(overtaken)));
        assert_eq!(found[1].late.0, 3);
    }
}
