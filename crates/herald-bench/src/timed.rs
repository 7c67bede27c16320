//! A publisher that times the one it wraps, for the relay child's counters
//! (`HERALD_BENCH_RELAY_COUNTERS`): how many publish calls, how large, how long each took, and
//! for how much of the drain at least one call was in flight (the rest of the time the relay
//! waited on its store).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald_core::{Envelope, Publisher, Result};

/// Wraps a [`Publisher`], timing its calls. Clones share the figures.
#[derive(Clone)]
pub struct Timed<P> {
    inner: P,
    figures: Arc<Mutex<Figures>>,
}

/// What a [`Timed`] publisher measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// Publish calls finished.
    pub calls: u64,
    /// Envelopes in those calls.
    pub envelopes: u64,
    /// The calls' durations, summed.
    pub in_calls: Duration,
    /// Wall time with at least one call in flight.
    pub busy: Duration,
    /// Most calls in flight at once.
    pub most_at_once: usize,
    active: usize,
    busy_since: Option<Instant>,
}

impl<P: Publisher> Timed<P> {
    /// Times `inner`.
    pub fn new(inner: P) -> Self {
        Timed {
            inner,
            figures: Arc::default(),
        }
    }

    /// The figures so far.
    pub fn figures(&self) -> Figures {
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Figures)) {
        f(&mut self.figures.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl<P: Publisher> Publisher for Timed<P> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Result<()>> {
        let started = Instant::now();
        self.update(|f| {
            f.active += 1;
            f.most_at_once = f.most_at_once.max(f.active);
            f.busy_since.get_or_insert(started);
        });
        let results = self.inner.publish(batch).await;
        let now = Instant::now();
        self.update(|f| {
            f.calls += 1;
            f.envelopes += batch.len() as u64;
            f.in_calls += now - started;
            f.active -= 1;
            if f.active == 0
                && let Some(since) = f.busy_since.take()
            {
                f.busy += now - since;
            }
        });
        results
    }

    fn messaging_system(&self) -> &'static str {
        self.inner.messaging_system()
    }

    fn destination<'a>(&'a self, envelope: &'a Envelope) -> &'a str {
        self.inner.destination(envelope)
    }
}
