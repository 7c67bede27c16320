//! The pipelined relay (`Relay::run`, unchanged) against the testkit's model outbox (snapshot
//! timing, leases, SKIP LOCKED) and model broker (nacks, errors, unanswered messages, outages),
//! with one to three relays that may crash or restart, over many seeds.
//!
//! `HERALD_SIM_SEEDS=N` (or `A..B`) runs other seeds; `HERALD_SIM_SEED=n` replays seed `n` and
//! prints its whole trace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::Backoff;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::sim::{
    self, ModelBroker, ModelOutbox, PublishFaults, SeedPlan, Sim, StoreFaults, Verdict, Violation,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Seeds run by default: 20-30 s of a debug build on a busy 2-core machine today (seeds that
/// livelock run their whole two virtual minutes; a fixed relay drains them faster).
const DEFAULT_SEEDS: u64 = 500;

const LEASE_MS: u64 = 3_000;

/// How to replay a seed.
const REPLAY: &str = "cargo test -p herald-relay --test simulation";

fn config(batch_size: usize) -> RelayConfig {
    RelayConfig {
        batch_size,
        lease: Duration::from_millis(LEASE_MS),
        // Odd values, so that the relay's own timers rarely fall on one instant (tokio picks
        // among simultaneous `select!` branches at random, unseeded).
        publish_timeout: Duration::from_millis(1_503),
        poll_interval: Duration::from_millis(1_007),
        max_attempts: 10,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            // Jitter draws from the thread's generator in the order the relay's `select!`
            // happens to handle things: without it, a seed replays exactly.
            jitter: 0.0,
        },
        store_backoff: Backoff {
            initial: Duration::from_millis(21),
            max: Duration::from_millis(509),
            multiplier: 2.0,
            jitter: 0.0,
        },
        retention: None,
    }
}

struct Running {
    name: String,
    handle: JoinHandle<()>,
    shutdown: CancellationToken,
}

/// What the relays share: the models, the settings, the relays running.
#[derive(Clone)]
struct World {
    sim: Sim,
    outbox: ModelOutbox,
    broker: ModelBroker,
    batch_size: usize,
    relays: Arc<Mutex<Vec<Running>>>,
    started: Arc<AtomicU64>,
}

impl World {
    fn relays(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.relays.lock().expect("relays")
    }

    /// Starts one more relay.
    fn start_relay(&self) {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("relay{number}");
        let publisher = self.broker.publisher(name.clone());
        let relay = Relay::new(self.outbox.clone(), publisher, config(self.batch_size))
            .expect("valid relay settings");
        self.outbox.name_relay(relay.id(), name.clone());
        self.sim.log(&[], format!("{name} starts"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let sim = self.sim.clone();
        let stopped = name.clone();
        let handle = tokio::spawn(async move {
            // Named in the model's trace, and so are the new ids it claims under.
            let result = ModelOutbox::run_as(stopped.clone(), relay.run(token)).await;
            sim.log(&[], format!("{stopped} stops: {result:?}"));
        });
        self.relays().push(Running {
            name,
            handle,
            shutdown,
        });
    }

    /// Kills (`crash`) or stops the `index`-th running relay, and starts another.
    fn replace_relay(&self, index: usize, crash: bool) {
        let mut relays = self.relays();
        let live: Vec<usize> = (0..relays.len())
            .filter(|&i| !relays[i].handle.is_finished() && !relays[i].shutdown.is_cancelled())
            .collect();
        let Some(&at) = live.get(index % live.len().max(1)) else {
            return;
        };
        let running = &mut relays[at];
        if crash {
            running.handle.abort();
            self.sim
                .log(&[], format!("{} is killed (kill -9)", running.name));
        } else {
            running.shutdown.cancel();
            self.sim
                .log(&[], format!("{} is asked to stop", running.name));
        }
        drop(relays);
        self.start_relay();
    }
}

/// One seed's world; `faulty: false` keeps its shape (keys, events, relays, batch size) but
/// takes every fault away, which no invariant may then fail (the models raise no false alarm).
async fn scenario(sim: Sim, faulty: bool) -> Verdict {
    let keys = sim.between(1, 4);
    let events = sim.between(6, 48);
    let gap = sim.between(5, 120);
    let horizon = events * gap;
    let mut store_faults = StoreFaults::draw(&sim, LEASE_MS);
    let mut publish_faults = PublishFaults::draw(&sim, horizon, 12_000);
    if !faulty {
        store_faults = StoreFaults::none();
        publish_faults = PublishFaults::none();
    }
    let relay_count = sim.between(1, 3) as usize;
    let batch_size = [1, 2, 3, 5, 8][sim.between(0, 4) as usize];
    let setup = format!(
        "{events} events over {keys} keys, {relay_count} relay(s), batch {batch_size}, store {store_faults:?}, broker {publish_faults:?}"
    );
    let outbox = ModelOutbox::new(sim.clone(), store_faults);
    let broker = ModelBroker::new(sim.clone(), outbox.clone(), publish_faults);
    let world = World {
        sim: sim.clone(),
        outbox: outbox.clone(),
        broker: broker.clone(),
        batch_size,
        relays: Arc::new(Mutex::new(Vec::new())),
        started: Arc::new(AtomicU64::new(0)),
    };

    // One writer per key (a single one, in fact): the recording order is the order per key.
    let recorded = Arc::new(AtomicU64::new(0));
    let mut at = 0;
    for _ in 0..events {
        at += sim.between(0, 2 * gap);
        let key = if sim.chance(0.1) {
            None
        } else {
            Some(format!("k{}", sim.between(0, keys - 1)))
        };
        let poison = faulty && sim.chance(0.03);
        let (outbox, recorded) = (outbox.clone(), recorded.clone());
        sim.run_after(format!("writer {at}"), at, move || {
            outbox.record(key.as_deref(), poison);
            recorded.fetch_add(1, Ordering::Relaxed);
        });
    }
    for _ in 0..relay_count {
        world.start_relay();
    }
    // Relays killed or stopped (and replaced) while the events flow.
    for _ in 0..sim.between(0, 2) {
        if !faulty || !sim.chance(0.4) {
            continue;
        }
        let (when, which, crash) = (
            sim.between(0, at + LEASE_MS),
            sim.between(0, 2) as usize,
            sim.chance(0.6),
        );
        let world = world.clone();
        sim.run_after(format!("replace {when}"), when, move || {
            world.replace_relay(which, crash)
        });
    }

    // Virtual time: the worst worlds (one key, batch 1, slow store phases of seconds, lost
    // answers and nacks) make steady progress but need up to ~170 s; a stuck relay never drains.
    let limit = at + 300_000;
    let drained = sim
        .run_until(
            || recorded.load(Ordering::Relaxed) == events && outbox.is_drained(),
            limit,
        )
        .await;
    let mut violations = Vec::new();
    if !drained {
        sim.log(&[], "the run did not drain in time");
    }
    for running in world.relays().iter() {
        running.shutdown.cancel();
    }
    let stopped = sim
        .run_until(
            || world.relays().iter().all(|r| r.handle.is_finished()),
            sim.now() + 60_000,
        )
        .await;
    if !stopped {
        violations.push(Violation {
            invariant: "shutdown",
            key: None,
            detail: "a relay did not stop within 60 s of its shutdown".into(),
        });
    }
    violations.extend(broker.check());
    Verdict {
        seed: sim.seed(),
        violations,
        trace: sim.trace(),
        setup,
    }
}

fn one(seed: u64) -> Verdict {
    sim::run(seed, |sim| scenario(sim, true))
}

#[test]
fn without_faults_the_relay_simulation_finds_nothing() {
    SeedPlan::from_env(100).check("relay simulation without faults", REPLAY, |seed| {
        sim::run(seed, |sim| scenario(sim, false))
    });
}

#[test]
fn the_pipelined_relay_keeps_per_key_order_and_loses_nothing_under_seeded_faults() {
    SeedPlan::from_env(DEFAULT_SEEDS).check("relay simulation", REPLAY, one);
}

#[test]
fn a_relay_simulation_seed_replays_exactly() {
    Verdict::assert_seeds_replay(one);
}
