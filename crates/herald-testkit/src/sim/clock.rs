//! The simulated world's clock and its randomness.
//!
//! Every model operation (a store statement committing, a broker confirm, a delivery) is a
//! named *event* on a tick: a multiple of [`GRID_MS`] on tokio's paused clock. The driver
//! ([`Sim::run_until`]) fires events one at a time, in the order of (tick, name), and before
//! each it lets every task run until nothing is left to do at that instant (a few dozen
//! yields). Timers of the code under test (poll intervals, publish timeouts, deadlines) run on
//! the same paused clock; their odd durations keep them off the grid.
//!
//! tokio's `select!` polls its branches in an unseeded random order, so the code under test
//! may start two operations in either order. The models therefore never depend on the order
//! of calls made at one instant: each operation draws from a random generator of its own,
//! seeded by the world's seed and the operation's name ([`Sim::rng_for`]), and events are
//! ordered by name, not by when they were scheduled.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use super::trace::{Trace, TraceEntry};

/// Spacing of the ticks model events may take, in milliseconds.
pub const GRID_MS: u64 = 10;

/// Yields that let every task finish what an instant gave it before the next event fires.
const SETTLE_YIELDS: usize = 32;

type Action = Box<dyn FnOnce() + Send>;

enum Event {
    /// Completes a [`Sleep`].
    Wake(u64),
    /// Changes the world (a commit, an arrival) whoever is still waiting for it.
    Run(Action),
}

#[derive(Default)]
struct Slot {
    fired: bool,
    waker: Option<Waker>,
}

struct Core {
    base: Instant,
    rng: fastrand::Rng,
    events: BTreeMap<(u64, String), Event>,
    slots: HashMap<u64, Slot>,
    next_slot: u64,
    trace: Trace,
}

struct Shared {
    seed: u64,
    core: Mutex<Core>,
    /// Rung whenever an event is scheduled, so that the driver looks again.
    changed: Notify,
}

/// A handle on the simulated world: clock, seeded randomness and trace. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.shared.seed)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A world for `seed`, its clock starting now. Call it inside the simulation's runtime
    /// (see [`run`](super::run)), whose clock is paused.
    pub fn new(seed: u64) -> Self {
        Sim {
            shared: Arc::new(Shared {
                seed,
                core: Mutex::new(Core {
                    base: Instant::now(),
                    rng: fastrand::Rng::with_seed(seed),
                    events: BTreeMap::new(),
                    slots: HashMap::new(),
                    next_slot: 0,
                    trace: Trace::default(),
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while the lock was held already fails the run; the state is still usable.
        super::lock(&self.shared.core)
    }

    /// The seed this world was made from.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Milliseconds since the world started.
    pub fn now(&self) -> u64 {
        let base = self.core().base;
        u64::try_from(Instant::now().saturating_duration_since(base).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// The instant of millisecond `ms` of the world.
    pub fn instant(&self, ms: u64) -> Instant {
        self.core().base + Duration::from_millis(ms)
    }

    /// Draws from the world's random numbers.
    pub fn rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self.core().rng)
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng(|rng| rng.f64()) < p
    }

    /// A number in `lo..=hi`.
    pub fn between(&self, lo: u64, hi: u64) -> u64 {
        self.rng(|rng| rng.u64(lo..=hi.max(lo)))
    }

    /// Adds a line to the trace. `tags` name what it concerns (partition keys), so that a
    /// failure can show one key's story.
    pub fn log(&self, tags: &[&str], text: impl Into<String>) {
        let at = self.now();
        self.core().trace.push(TraceEntry {
            at,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            text: text.into(),
        });
    }

    /// Everything logged so far.
    pub fn trace(&self) -> Trace {
        self.core().trace.clone()
    }

    /// A random generator of its own for the operation `name`: the same for the same seed
    /// and name, whatever else happened first.
    pub fn rng_for(&self, name: &str) -> fastrand::Rng {
        // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
        let mut hash: u64 =
            0xcbf2_9ce4_8422_2325 ^ self.shared.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for byte in name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        fastrand::Rng::with_seed(hash)
    }

    /// The grid tick at least `delay` ms after `from`.
    fn tick(from: u64, delay: u64) -> u64 {
        (from + delay.max(1)).div_ceil(GRID_MS) * GRID_MS
    }

    fn schedule(&self, tick: u64, name: String, event: Event) {
        {
            let mut core = self.core();
            let mut key = (tick, name.clone());
            let mut again = 1;
            while core.events.contains_key(&key) {
                again += 1;
                key.1 = format!("{name} ({again})");
            }
            core.events.insert(key, event);
        }
        self.shared.changed.notify_one();
    }

    /// Runs `action`, named `name`, at least `delay` ms after `from`, whether or not anybody
    /// still waits for it. Returns the tick.
    pub fn run_at(
        &self,
        name: impl Into<String>,
        from: u64,
        delay: u64,
        action: impl FnOnce() + Send + 'static,
    ) -> u64 {
        let tick = Self::tick(from, delay);
        self.schedule(tick, name.into(), Event::Run(Box::new(action)));
        tick
    }

    /// [`Sim::run_at`] from now.
    pub fn run_after(
        &self,
        name: impl Into<String>,
        delay: u64,
        action: impl FnOnce() + Send + 'static,
    ) -> u64 {
        self.run_at(name, self.now(), delay, action)
    }

    /// Completes at least `delay` ms after tick `from`, as the event `name`.
    pub fn sleep_from(&self, name: impl Into<String>, from: u64, delay: u64) -> Sleep {
        let id = {
            let mut core = self.core();
            let id = core.next_slot;
            core.next_slot += 1;
            core.slots.insert(id, Slot::default());
            id
        };
        self.schedule(Self::tick(from, delay), name.into(), Event::Wake(id));
        Sleep {
            sim: self.clone(),
            id,
        }
    }

    /// Completes at least `delay` ms from now, as the event `name`.
    pub fn sleep(&self, name: impl Into<String>, delay: u64) -> Sleep {
        self.sleep_from(name, self.now(), delay)
    }

    /// Lets every task do what it can at this instant.
    pub async fn settle(&self) {
        for _ in 0..SETTLE_YIELDS {
            tokio::task::yield_now().await;
        }
    }

    /// Drives the world: fires its events one at a time, in tick order, until `done` holds
    /// (true) or the clock reaches `limit` ms (false). Between events the clock runs on to the
    /// next one, firing the timers of the code under test on the way.
    pub async fn run_until(&self, mut done: impl FnMut() -> bool, limit: u64) -> bool {
        loop {
            self.settle().await;
            if done() {
                return true;
            }
            let now = self.now();
            if now >= limit {
                return false;
            }
            let next = self
                .core()
                .events
                .first_key_value()
                .map(|((tick, _), _)| *tick);
            let target = next.filter(|tick| *tick <= limit).unwrap_or(limit);
            let wake_at = self.instant(target);
            tokio::select! {
                biased;
                () = self.shared.changed.notified() => continue,
                () = tokio::time::sleep_until(wake_at) => {}
            }
            if next == Some(target) {
                self.settle().await;
                self.fire();
            }
        }
    }

    /// Fires the earliest event if it is due.
    fn fire(&self) {
        let now = self.now();
        let event = {
            let mut core = self.core();
            match core.events.first_key_value() {
                Some(((tick, _), _)) if *tick <= now => core.events.pop_first().map(|(_, e)| e),
                _ => None,
            }
        };
        match event {
            Some(Event::Wake(id)) => {
                let waker = {
                    let mut core = self.core();
                    core.slots.get_mut(&id).and_then(|slot| {
                        slot.fired = true;
                        slot.waker.take()
                    })
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Some(Event::Run(action)) => action(),
            None => {}
        }
    }
}

/// A wait for one event of the world (see [`Sim::sleep`]).
#[derive(Debug)]
#[must_use = "a sleep does nothing unless awaited"]
pub struct Sleep {
    sim: Sim,
    id: u64,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut core = self.sim.core();
        match core.slots.get_mut(&self.id) {
            Some(slot) if slot.fired => {
                core.slots.remove(&self.id);
                Poll::Ready(())
            }
            Some(slot) => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.sim.core().slots.remove(&self.id);
    }
}
