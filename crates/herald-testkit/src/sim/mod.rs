//! Deterministic, seeded simulations of the relay and the consumer against models of the
//! store, the broker and the inbox.
//!
//! The real `herald_relay::Relay` and `herald_consumer::Consumer` run unchanged, through the
//! public traits, against models written here:
//!
//! - [`ModelOutbox`]: an [`OutboxStore`](herald_core::OutboxStore) with PostgreSQL's claim
//!   semantics (leases, a relay's own leases not blocking its claims, `SKIP LOCKED`, blocked
//!   keys, backoff, attempts, dead letters) and *snapshot* timing: a claim sees what was
//!   committed when its statement started and its answer arrives later; a write-back locks its
//!   rows when its statement starts and commits later; leases expire on the clock;
//! - [`ModelBroker`]: a [`Publisher`](herald_core::Publisher) per relay that confirms, nacks,
//!   fails or never answers each message, recording the broker-side arrival order;
//! - [`ModelQueue`]: a [`Subscriber`](herald_core::Subscriber) with RabbitMQ's habits
//!   (redelivery of unsettled messages at the head of the queue, retries that wait in the next
//!   fixed delay queue and then join the tail, duplicates, failing settlements);
//! - [`ModelInbox`]: an [`Inbox`](herald_core::Inbox) with PostgreSQL's transaction semantics
//!   (a failed statement aborts the transaction, whose `COMMIT` then rolls back).
//!
//! Everything runs on a current-thread runtime with tokio's clock paused, and every random
//! choice of the models comes from the seed: a seed replays exactly (each test checks that on a
//! few seeds). Two sources of randomness in the code under test are not the seed's: tokio's
//! `select!` polls its branches in an unseeded order, which the models make harmless (see
//! `clock`), and `Backoff` jitter draws from the thread's generator in whatever order tasks
//! happen to run, so the simulations configure their backoffs without jitter.
//! [`run`] runs one seed; [`SeedPlan`] reads which seeds to run from the environment.

/// `Debug` for a model of the world: its name and its faults (its state would drown the
/// message of a failed assertion).
macro_rules! debug_faults {
    ($model:ident) => {
        impl std::fmt::Debug for $model {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($model))
                    .field("faults", &self.faults)
                    .finish_non_exhaustive()
            }
        }
    };
}

mod broker;
mod clock;
mod inbox;
mod outbox;
mod queue;
mod trace;

use std::future::Future;
use std::time::{Duration, Instant as WallInstant};

pub use broker::{Arrival, ModelBroker, ModelPublisher, PublishFaults};
pub use clock::{GRID_MS, Sim, Sleep};
pub use inbox::{InboxFaults, ModelConnection, ModelInbox, ModelTransaction};
pub use outbox::{ModelOutbox, RowFate, RowView, StoreFaults};
pub use queue::{DELIVERY_HEADER, ModelQueue, ModelStream, QueueFaults, Settled};
pub use trace::{Trace, TraceEntry, Verdict, Violation};

/// Runs one seed: a fresh current-thread runtime with the clock paused, the thread's
/// `fastrand` generator (what `Backoff` jitter uses) seeded from `seed`, and `scenario` given
/// the world.
pub fn run<F, Fut, T>(seed: u64, scenario: F) -> T
where
    F: FnOnce(Sim) -> Fut,
    Fut: Future<Output = T>,
{
    fastrand::seed(seed ^ 0x5eed_5eed_5eed_5eed);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("simulation runtime: {error}"),
    };
    runtime.block_on(async move { scenario(Sim::new(seed)).await })
}

/// Which seeds to run: `HERALD_SIM_SEED=n` replays seed `n` and prints its whole trace;
/// `HERALD_SIM_SEEDS=N` runs seeds `0..N`, and `HERALD_SIM_SEEDS=A..B` seeds `A..B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPlan {
    /// The seeds.
    pub seeds: std::ops::Range<u64>,
    /// Seeds run after those of the range, where they are not in it: seeds that once broke an
    /// invariant beyond the default range, kept as regression tests (see
    /// [`with_regressions`](Self::with_regressions)).
    pub regressions: Vec<u64>,
    /// Whether to print every trace (one seed replayed).
    pub verbose: bool,
}

impl SeedPlan {
    /// The plan the environment asks for, else seeds `0..default`.
    pub fn from_env(default: u64) -> Self {
        if let Some(seed) = std::env::var("HERALD_SIM_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return SeedPlan {
                seeds: seed..seed + 1,
                regressions: Vec::new(),
                verbose: true,
            };
        }
        let seeds = std::env::var("HERALD_SIM_SEEDS")
            .ok()
            .and_then(|s| parse_range(&s))
            .unwrap_or(0..default);
        SeedPlan {
            seeds,
            regressions: Vec::new(),
            verbose: false,
        }
    }

    /// Also runs `seeds` (found to break an invariant once, by a longer run) unless one seed is
    /// replayed: a default run then keeps checking each of them.
    pub fn with_regressions(mut self, seeds: &[u64]) -> Self {
        if !self.verbose {
            self.regressions = seeds
                .iter()
                .copied()
                .filter(|seed| !self.seeds.contains(seed))
                .collect();
        }
        self
    }

    /// Runs `one` for every seed and reports: the failing seeds with their violations, the
    /// first one's trace, and how long it took. Panics (failing the test) if any seed failed.
    pub fn check(&self, what: &str, test: &str, one: impl Fn(u64) -> Verdict) {
        let started = WallInstant::now();
        let mut failed: Vec<Verdict> = Vec::new();
        let mut by_invariant: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut slowest = (Duration::ZERO, 0);
        for seed in self.seeds.clone().chain(self.regressions.iter().copied()) {
            let began = WallInstant::now();
            let verdict = one(seed);
            slowest = slowest.max((began.elapsed(), seed));
            if self.verbose {
                println!("{}", verdict.report(true));
            }
            if !verdict.passed() {
                let mut seen = Vec::new();
                for violation in &verdict.violations {
                    if !seen.contains(&violation.invariant) {
                        seen.push(violation.invariant);
                        *by_invariant.entry(violation.invariant).or_default() += 1;
                    }
                }
                failed.push(verdict);
            }
        }
        let elapsed: Duration = started.elapsed();
        let count = self.seeds.end.saturating_sub(self.seeds.start) + self.regressions.len() as u64;
        let regressions = if self.regressions.is_empty() {
            String::new()
        } else {
            format!(" and {} regression seeds", self.regressions.len())
        };
        println!(
            "{what}: {count} seeds ({}..{}{regressions}) in {:.1} s (slowest: seed {}, {:.2} s), {} failed",
            self.seeds.start,
            self.seeds.end,
            elapsed.as_secs_f64(),
            slowest.1,
            slowest.0.as_secs_f64(),
            failed.len()
        );
        if failed.is_empty() {
            return;
        }
        let mut message = format!(
            "{what}: {} of {count} seeds broke an invariant (seeds with a violation, per invariant: {by_invariant:?})\n",
            failed.len()
        );
        for verdict in failed.iter().take(20) {
            let first = verdict
                .violations
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            message.push_str(&format!("  seed {}: {first}\n", verdict.seed));
        }
        if let Some(first) = failed.first() {
            message.push_str(&format!(
                "\nreplay with: HERALD_SIM_SEED={} {test}\n\n{}",
                first.seed,
                first.report(false)
            ));
        }
        panic!("{message}");
    }
}

/// Locks a model's state: a panic elsewhere (a failed assertion) must not hide it.
fn lock<T>(state: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A simulated store failure of `operation`: transient, as a lost connection or a deadlock is.
fn failure(operation: &'static str, what: &str) -> herald_core::Error {
    herald_core::Error::store(
        operation,
        true,
        herald_core::error::Message(format!("simulated: {what}")),
    )
}

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let text = text.trim();
    match text.split_once("..") {
        Some((a, b)) => Some(a.trim().parse().ok()?..b.trim().parse().ok()?),
        None => Some(0..text.parse().ok()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse() {
        assert_eq!(parse_range("50"), Some(0..50));
        assert_eq!(parse_range("10..20"), Some(10..20));
        assert_eq!(parse_range("x"), None);
    }

    #[test]
    fn events_fire_in_order_of_tick_and_name() {
        let order = run(7, |sim| async move {
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            for (i, delay) in [30u64, 10, 10, 25].into_iter().enumerate() {
                let log = log.clone();
                let sim2 = sim.clone();
                sim.run_after(format!("event {}", 9 - i), delay, move || {
                    log.lock().expect("log").push((i, sim2.now()));
                });
            }
            assert!(!sim.run_until(|| false, 1_000).await);
            log.lock().expect("log").clone()
        });
        assert_eq!(order, vec![(2, 10), (1, 10), (3, 30), (0, 30)]);
    }
}
