//! The broker's shared state: durable queues, their bindings, the fault hook and the counters.
//!
//! Locks are `std` mutexes held for a few pointer moves and never across an `.await`, so that
//! a delivery dropped unsettled can requeue itself synchronously from `Drop`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use herald_core::{
    DeadLetter, DeadLetterOrigin, Envelope, OffsetDateTime, Page, RawMessage, Selection,
    SubscriptionSpec,
};
use tokio::sync::{Notify, Semaphore};

use crate::MemoryConfig;

/// Decides whether a publish fails: `Some(error text)` fails it.
pub(crate) type FaultFn = dyn Fn(&Envelope) -> Option<String> + Send + Sync;

/// Everything one [`MemoryTransport`](crate::MemoryTransport) and its clones share.
pub(crate) struct Broker {
    pub(crate) config: MemoryConfig,
    /// Queues in declaration order, with what each is bound to.
    pub(crate) routes: RwLock<Vec<Route>>,
    pub(crate) fault: RwLock<Option<Arc<FaultFn>>>,
    closed: AtomicBool,
    published: AtomicU64,
}

impl Broker {
    pub(crate) fn new(config: MemoryConfig) -> Self {
        Broker {
            config,
            routes: RwLock::new(Vec::new()),
            fault: RwLock::new(None),
            closed: AtomicBool::new(false),
            published: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the broker closed and wakes every waiting stream so that it ends.
    pub(crate) fn close(&self) {
        // Under the write lock, so that a concurrent `declare` either sees the flag or has
        // registered its stream's credit before the loop below closes it.
        let routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
        for route in routes.iter() {
            route.queue.close_consumers();
        }
    }

    pub(crate) fn count_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Declares the queue `spec.name` (if new) and binds it to `spec.event_types` (bindings
    /// accumulate, as AMQP queue bindings do). With `credit`, registers a consuming stream so
    /// that [`close`](Broker::close) can end it. `None` once the broker is closed.
    pub(crate) fn declare(
        &self,
        spec: &SubscriptionSpec,
        credit: Option<&Arc<Semaphore>>,
    ) -> Option<Arc<Queue>> {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if self.is_closed() {
            return None;
        }
        let queue = match routes.iter_mut().find(|r| r.queue.name == spec.name) {
            Some(route) => {
                route.binding.extend(spec);
                Arc::clone(&route.queue)
            }
            None => {
                let queue = Arc::new(Queue::new(spec.name.clone()));
                routes.push(Route {
                    binding: Binding::of(spec),
                    queue: Arc::clone(&queue),
                });
                queue
            }
        };
        if let Some(credit) = credit {
            queue.add_consumer(Arc::downgrade(credit));
        }
        Some(queue)
    }

    /// The queue named `name`, if declared.
    pub(crate) fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        routes
            .iter()
            .find(|r| r.queue.name == name)
            .map(|r| Arc::clone(&r.queue))
    }
}

/// A queue and the event types it is bound to.
pub(crate) struct Route {
    pub(crate) binding: Binding,
    pub(crate) queue: Arc<Queue>,
}

/// Which event types a queue receives.
pub(crate) enum Binding {
    /// Every type.
    All,
    /// Only these.
    Types(HashSet<String>),
}

impl Binding {
    fn of(spec: &SubscriptionSpec) -> Self {
        if spec.event_types.is_empty() {
            Binding::All
        } else {
            Binding::Types(spec.event_types.iter().cloned().collect())
        }
    }

    fn extend(&mut self, spec: &SubscriptionSpec) {
        match self {
            Binding::All => {}
            Binding::Types(_) if spec.event_types.is_empty() => *self = Binding::All,
            Binding::Types(types) => types.extend(spec.event_types.iter().cloned()),
        }
    }

    pub(crate) fn matches(&self, event_type: &str) -> bool {
        match self {
            Binding::All => true,
            Binding::Types(types) => types.contains(event_type),
        }
    }
}

/// A message waiting in, or handed out from, a queue.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) attempt: u32,
    pub(crate) redelivered: bool,
}

impl Message {
    /// The message given back without an attempt spent (a deferral).
    pub(crate) fn deferred(self) -> Self {
        Message {
            redelivered: true,
            ..self
        }
    }

    /// The next delivery of the same message.
    pub(crate) fn again(self) -> Self {
        Message {
            envelope: self.envelope,
            attempt: self.attempt.saturating_add(1),
            redelivered: true,
        }
    }
}

/// A durable queue: ready messages in order, counts of those handed out or waiting out a
/// retry delay, and its dead letters.
pub(crate) struct Queue {
    pub(crate) name: String,
    state: Mutex<QueueState>,
    /// Rung whenever a message becomes ready or the broker closes.
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Message>,
    unacked: usize,
    delayed: usize,
    /// Oldest first.
    dead: VecDeque<DeadLetter>,
    /// The prefetch credit of each stream consuming this queue, closed on shutdown.
    consumers: Vec<Weak<Semaphore>>,
}

impl Queue {
    fn new(name: String) -> Self {
        Queue {
            name,
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What streams wait on for ready messages.
    pub(crate) fn ready_signal(&self) -> &Notify {
        &self.ready
    }

    /// Appends freshly published messages, in order.
    pub(crate) fn publish(&self, envelopes: impl IntoIterator<Item = Arc<Envelope>>) {
        self.state()
            .ready
            .extend(envelopes.into_iter().map(|envelope| Message {
                envelope,
                attempt: 1,
                redelivered: false,
            }));
        self.ready.notify_waiters();
    }

    /// Hands out the oldest ready message, counting it as unacked.
    pub(crate) fn take(&self) -> Option<Message> {
        let mut state = self.state();
        let message = state.ready.pop_front()?;
        state.unacked += 1;
        Some(message)
    }

    /// An unacked message is done.
    pub(crate) fn ack(&self) {
        let mut state = self.state();
        state.unacked = state.unacked.saturating_sub(1);
    }

    /// An unacked message goes back to the front (its consumer went away).
    pub(crate) fn requeue_front(&self, message: Message) {
        let mut state = self.state();
        state.unacked = state.unacked.saturating_sub(1);
        state.ready.push_front(message);
        drop(state);
        self.ready.notify_waiters();
    }

    /// An unacked message goes to the back at once (a retry without delay).
    pub(crate) fn requeue_back(&self, message: Message) {
        let mut state = self.state();
        state.unacked = state.unacked.saturating_sub(1);
        state.ready.push_back(message);
        drop(state);
        self.ready.notify_waiters();
    }

    /// An unacked message starts waiting out a retry delay.
    pub(crate) fn start_delay(&self) {
        let mut state = self.state();
        state.unacked = state.unacked.saturating_sub(1);
        state.delayed += 1;
    }

    /// A delayed message is ready again, at the back.
    pub(crate) fn end_delay(&self, message: Message) {
        let mut state = self.state();
        state.delayed = state.delayed.saturating_sub(1);
        state.ready.push_back(message);
        drop(state);
        self.ready.notify_waiters();
    }

    /// An unacked message moves to the dead letters.
    pub(crate) fn dead_letter(&self, message: Message, reason: String) {
        let mut state = self.state();
        state.unacked = state.unacked.saturating_sub(1);
        let envelope = Envelope::clone(&message.envelope);
        state.dead.push_back(DeadLetter {
            id: Some(envelope.id),
            raw: RawMessage {
                headers: envelope.headers.clone(),
                payload: envelope.payload.clone(),
            },
            envelope: Some(envelope),
            origin: DeadLetterOrigin::Queue {
                name: self.name.clone(),
            },
            reason,
            attempts: message.attempt,
            dead_lettered_at: Some(OffsetDateTime::now_utc()),
        });
    }

    /// Ready, unacked and delayed messages.
    pub(crate) fn depth(&self) -> usize {
        let state = self.state();
        state.ready.len() + state.unacked + state.delayed
    }

    /// A page of the dead letters, oldest first.
    pub(crate) fn dead_letters(&self, page: Page) -> Vec<DeadLetter> {
        self.state()
            .dead
            .iter()
            .skip(page.offset)
            .take(page.limit)
            .cloned()
            .collect()
    }

    /// Takes the selected dead letters out, oldest first.
    fn take_dead(&self, which: Selection) -> Vec<DeadLetter> {
        let mut state = self.state();
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.dead)
            .into_iter()
            .partition(|dead| match which {
                Selection::All => true,
                Selection::One(id) => dead.id == Some(id),
            });
        state.dead = kept.into();
        taken
    }

    /// Puts the selected dead letters back at the end of the queue as first deliveries;
    /// returns how many.
    pub(crate) fn replay_dead(&self, which: Selection) -> u64 {
        let replayed: Vec<Arc<Envelope>> = self
            .take_dead(which)
            .into_iter()
            .filter_map(|dead| dead.envelope.map(Arc::new))
            .collect();
        let n = replayed.len() as u64;
        if n > 0 {
            self.publish(replayed);
        }
        n
    }

    /// Deletes the selected dead letters; returns how many.
    pub(crate) fn purge_dead(&self, which: Selection) -> u64 {
        self.take_dead(which).len() as u64
    }

    fn add_consumer(&self, credit: Weak<Semaphore>) {
        let mut state = self.state();
        state.consumers.retain(|c| c.strong_count() > 0);
        state.consumers.push(credit);
    }

    /// Ends every stream of this queue: closes their credit and wakes their waits.
    fn close_consumers(&self) {
        let consumers = std::mem::take(&mut self.state().consumers);
        for credit in consumers.iter().filter_map(Weak::upgrade) {
            credit.close();
        }
        self.ready.notify_waiters();
    }
}
