//! A model of the PostgreSQL outbox as relays see it ([`OutboxStore`]), with the timing of a
//! real database.
//!
//! It mirrors `herald-postgres`'s `claim.rs`: a claim takes, in `seq` order, rows that are not
//! leased (or whose lease ran out), are available (their backoff passed), and whose key is not
//! blocked; a key is blocked by a row under another relay's live lease, by a row waiting for a
//! retry, and by a row of another relay whose lease ran out but which the claim cannot lock (a
//! write-back in flight). Other rows locked by a write-back in flight are skipped
//! (`FOR UPDATE SKIP LOCKED`); a relay's own leases never block its claims. Each claimed row's
//! attempts go up by one and it is leased to the claimer. Completions are fenced by the
//! claimer's id (`locked_by`); failures (retries and dead letters) and releases also by the
//! lease's validity when their statement starts (`locked_until > now()`). A write-back that
//! reaches a row locked by another one waits for it and checks its fence again.
//!
//! Since migration 5 the store keeps a lease per claim (one row of `{table}_claims` listing the
//! claim's rows and keys) rather than per row, and counts an attempt when a claim ends (failed,
//! or taken over after it ran out) rather than when it starts. A relay sees the same answers
//! from both, with one difference that only ever blocks more: a claim's keys stay blocked for
//! other relays until every row of the claim was written back, not row by row. The model keeps
//! the per-row form, whose fences the relay's rules were written against.
//!
//! Timing: every operation first waits a seeded delay (the network, the pool). A claim's
//! statement then runs at once on what is committed at that moment, and its answer arrives
//! after another delay. A write-back's statement checks its fence and locks its rows when it
//! starts, commits after a delay (whatever happened to its caller meanwhile) and answers after
//! a third. Any of them may fail before its statement (nothing happened) or lose its answer
//! after committing. Leases expire on the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::{
    ClaimRequest, ClaimedEvent, Disposition, Envelope, Failure, OutboxStore, Result, Seq, Signal,
    Uuid,
};

use super::{Sim, failure, lock};

/// How the model database misbehaves; drawn per seed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreFaults {
    /// Usual delay of one phase of an operation, in ms (lowest, highest).
    pub latency: (u64, u64),
    /// Probability that a phase is slow instead.
    pub slow: f64,
    /// Delay of a slow phase, in ms (lowest, highest).
    pub slow_ms: (u64, u64),
    /// Probability that an operation fails before its statement.
    pub fail_before: f64,
    /// Probability that an operation commits and its answer is lost.
    pub fail_after: f64,
}

impl StoreFaults {
    /// A database that is quick and never fails.
    pub fn none() -> Self {
        StoreFaults {
            latency: (1, 5),
            slow: 0.0,
            slow_ms: (0, 0),
            fail_before: 0.0,
            fail_after: 0.0,
        }
    }

    /// Faults drawn from the world's seed, slow phases lasting up to 1.5 × `lease_ms`.
    pub fn draw(sim: &Sim, lease_ms: u64) -> Self {
        let pick = |choices: &[f64]| choices[sim.between(0, choices.len() as u64 - 1) as usize];
        StoreFaults {
            latency: (1, sim.between(5, 60)),
            slow: pick(&[0.0, 0.01, 0.03, 0.08]),
            slow_ms: (100, lease_ms + lease_ms / 2),
            fail_before: pick(&[0.0, 0.0, 0.02, 0.05]),
            fail_after: pick(&[0.0, 0.0, 0.02, 0.05]),
        }
    }

    fn delay(&self, rng: &mut fastrand::Rng) -> u64 {
        if rng.f64() < self.slow {
            rng.u64(self.slow_ms.0..=self.slow_ms.1.max(self.slow_ms.0))
        } else {
            rng.u64(self.latency.0..=self.latency.1.max(self.latency.0))
        }
    }
}

/// What became of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFate {
    /// Still in the outbox.
    Pending,
    /// Published and deleted, at this ms.
    Completed {
        /// When the completion committed.
        at: u64,
    },
    /// Moved to the dead letters.
    DeadLettered {
        /// When.
        at: u64,
        /// The error given.
        error: String,
    },
}

/// A row as the invariants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    /// Its position.
    pub seq: Seq,
    /// Its partition key.
    pub key: Option<String>,
    /// Its position among the rows of its key, from 0.
    pub n: u64,
    /// Claims so far, minus releases.
    pub attempts: u32,
    /// Whether the model makes every publication of it fail for good.
    pub poison: bool,
    /// What became of it.
    pub fate: RowFate,
}

impl RowView {
    /// `key#n/sSEQ`, how traces name a row.
    pub fn label(&self) -> String {
        format!(
            "{}#{}/s{}",
            self.key.as_deref().unwrap_or("-"),
            self.n,
            self.seq
        )
    }
}

struct Row {
    view: RowView,
    envelope: Envelope,
    locked_by: Option<Uuid>,
    locked_until: u64,
    available_at: u64,
    /// The write-back whose statement holds the row's lock.
    write_lock: Option<String>,
}

#[derive(Default)]
struct State {
    rows: Vec<Row>,
    relays: Vec<(Uuid, String)>,
    ids: HashMap<Uuid, Seq>,
    /// Operations so far per relay and kind, which name them.
    ops: BTreeMap<String, u64>,
}

impl State {
    /// The name of `relay`. An id nobody named is a new id of the relay whose task is running
    /// (a relay claims under a new id after a failed claim): named after that relay, by how
    /// many ids it had (`relay2/2`), which does not depend on the order tasks run in.
    fn who(&mut self, relay: Uuid) -> String {
        if let Some((_, name)) = self.relays.iter().find(|(id, _)| *id == relay) {
            return name.clone();
        }
        let Ok(base) = RELAY.try_with(String::clone) else {
            return "relay?".to_owned();
        };
        let prefix = format!("{base}/");
        let earlier = self
            .relays
            .iter()
            .filter(|(_, name)| name.starts_with(&prefix))
            .count();
        let name = format!("{base}/{}", earlier + 2);
        self.relays.push((relay, name.clone()));
        name
    }

    fn row_mut(&mut self, seq: Seq) -> Option<&mut Row> {
        let index = usize::try_from(seq).ok()?.checked_sub(1)?;
        self.rows.get_mut(index)
    }

    fn row(&self, seq: Seq) -> Option<&Row> {
        let index = usize::try_from(seq).ok()?.checked_sub(1)?;
        self.rows.get(index)
    }

    fn labels(&self, seqs: impl IntoIterator<Item = Seq>) -> String {
        let labels: Vec<String> = seqs
            .into_iter()
            .filter_map(|seq| self.row(seq).map(|r| r.view.label()))
            .collect();
        format!("[{}]", labels.join(", "))
    }

    fn tags(&self, seqs: impl IntoIterator<Item = Seq>) -> Vec<String> {
        let mut tags: Vec<String> = seqs
            .into_iter()
            .filter_map(|seq| self.row(seq).and_then(|r| r.view.key.clone()))
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// Whether a write-back of `relay` that started at `started` touches row `seq`: pending,
    /// leased by `relay` and, under [`Fence::LiveLease`], with that lease still running then.
    fn fenced(&self, relay: Uuid, seq: Seq, fence: Fence, started: u64) -> bool {
        self.row(seq).is_some_and(|r| {
            r.view.fate == RowFate::Pending
                && r.locked_by == Some(relay)
                && (fence == Fence::Holder || r.locked_until > started)
        })
    }
}

/// What a write-back is fenced by, as in `herald-postgres`'s `claim.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// The lease's holder only (`locked_by = relay`): completions.
    Holder,
    /// The holder and the lease's validity when the statement started
    /// (`locked_until > now()`): failures and releases.
    LiveLease,
}

tokio::task_local! {
    /// The name of the relay whose loop runs in this task (see [`ModelOutbox::run_as`]).
    static RELAY: String;
}

/// The model outbox. Cheap to clone; clones share the rows.
#[derive(Clone)]
pub struct ModelOutbox {
    sim: Sim,
    faults: StoreFaults,
    state: Arc<Mutex<State>>,
    signal: Signal,
}

debug_faults!(ModelOutbox);

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

impl ModelOutbox {
    /// An empty outbox in `sim`'s world.
    pub fn new(sim: Sim, faults: StoreFaults) -> Self {
        ModelOutbox {
            sim,
            faults,
            state: Arc::new(Mutex::new(State::default())),
            signal: Signal::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Names a relay in the trace.
    pub fn name_relay(&self, relay: Uuid, name: impl Into<String>) {
        self.state().relays.push((relay, name.into()));
    }

    /// Runs `relay_loop` as the loop of the relay named `name`: the ids it claims under that
    /// were never named (a relay takes a new one after a failed claim) are named after it.
    pub async fn run_as<F: std::future::Future>(
        name: impl Into<String>,
        relay_loop: F,
    ) -> F::Output {
        RELAY.scope(name.into(), relay_loop).await
    }

    /// Records the next event of `key` (committed at once) and rings the doorbell. A `poison`
    /// event is refused for good by the model broker. Returns its seq.
    pub fn record(&self, key: Option<&str>, poison: bool) -> Seq {
        let now = self.sim.now();
        let (view, tag) = {
            let mut state = self.state();
            let n = state
                .rows
                .iter()
                .filter(|r| r.view.key.as_deref() == key)
                .count() as u64;
            let mut envelope = crate::envelope(key.unwrap_or("-"), n);
            envelope.partition_key = key.map(str::to_owned);
            let seq = state.rows.len() as Seq + 1;
            state.ids.insert(envelope.id, seq);
            let view = RowView {
                seq,
                key: key.map(str::to_owned),
                n,
                attempts: 0,
                poison,
                fate: RowFate::Pending,
            };
            state.rows.push(Row {
                view: view.clone(),
                envelope,
                locked_by: None,
                locked_until: 0,
                available_at: now,
                write_lock: None,
            });
            (view, key.map(str::to_owned))
        };
        let tags: Vec<&str> = tag.as_deref().into_iter().collect();
        let poison = if poison { " (poison)" } else { "" };
        self.sim
            .log(&tags, format!("writer records {}{poison}", view.label()));
        self.signal.ring();
        view.seq
    }

    /// The seq of the row holding the event `id`.
    pub fn seq_of(&self, id: Uuid) -> Option<Seq> {
        self.state().ids.get(&id).copied()
    }

    /// Every row as it is now.
    pub fn rows(&self) -> Vec<RowView> {
        self.state().rows.iter().map(|r| r.view.clone()).collect()
    }

    /// One row as it is now.
    pub fn row(&self, seq: Seq) -> Option<RowView> {
        self.state().row(seq).map(|r| r.view.clone())
    }

    /// Whether no row is pending any more.
    pub fn is_drained(&self) -> bool {
        self.state()
            .rows
            .iter()
            .all(|r| r.view.fate != RowFate::Pending)
    }

    /// Names the next operation `kind` of `relay` (`relay1 claim#4`): names do not depend on
    /// the order in which one relay starts operations of different kinds at one instant.
    fn op_name(&self, relay: Uuid, kind: &str) -> String {
        let mut state = self.state();
        let who = state.who(relay);
        let count = state.ops.entry(format!("{who} {kind}")).or_default();
        *count += 1;
        format!("{who} {kind}#{count}")
    }

    /// The statement of a claim, run on what is committed now.
    fn claim_statement(&self, request: &ClaimRequest, op: &str) -> Vec<ClaimedEvent> {
        let now = self.sim.now();
        let relay = request.relay_id;
        let mut state = self.state();
        // `stale`: another relay's expired leases on keyed rows. `seized`: those the claim
        // could lock; one that it could not (a write-back in flight) blocks its key.
        let mut unseized = BTreeSet::new();
        let mut blocked = BTreeSet::new();
        for r in state
            .rows
            .iter()
            .filter(|r| r.view.fate == RowFate::Pending)
        {
            let Some(key) = &r.view.key else { continue };
            let other = r.locked_by.is_some_and(|by| by != relay);
            let stale = other && r.locked_until <= now;
            if stale && r.write_lock.is_some() {
                unseized.insert(r.view.seq);
                blocked.insert(key.clone());
            }
            if (other && r.locked_until > now) || (r.view.attempts > 0 && r.available_at > now) {
                blocked.insert(key.clone());
            }
        }
        let mut taken = Vec::new();
        let mut skipped = Vec::new();
        for row in &state.rows {
            if taken.len() >= request.limit {
                break;
            }
            let free = row.view.fate == RowFate::Pending
                && row.locked_until <= now
                && row.available_at <= now
                && row.view.key.as_ref().is_none_or(|k| !blocked.contains(k));
            if !free {
                continue;
            }
            if row.write_lock.is_some() {
                skipped.push(row.view.seq);
            } else {
                taken.push(row.view.seq);
            }
        }
        let lease_end = now + ms(request.lease);
        let mut claimed = Vec::with_capacity(taken.len());
        for &seq in &taken {
            if let Some(row) = state.row_mut(seq) {
                row.view.attempts += 1;
                row.locked_by = Some(relay);
                row.locked_until = lease_end;
                claimed.push(ClaimedEvent {
                    seq,
                    attempts: row.view.attempts,
                    envelope: row.envelope.clone(),
                });
            }
        }
        let mut text = format!(
            "{op} statement takes {} (leased until {lease_end})",
            state.labels(taken.iter().copied())
        );
        if !skipped.is_empty() {
            text.push_str(&format!(
                "; skips locked {}",
                state.labels(skipped.iter().copied())
            ));
        }
        if !unseized.is_empty() {
            text.push_str(&format!(
                "; cannot lock stale {}",
                state.labels(unseized.iter().copied())
            ));
        }
        if !blocked.is_empty() {
            text.push_str(&format!("; blocked keys {blocked:?}"));
        }
        let tags = state.tags(taken.iter().chain(&skipped).chain(&unseized).copied());
        drop(state);
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        self.sim.log(&tags, text);
        claimed
    }

    /// Runs a fenced write-back: waits, starts the statement (fence checked, rows locked),
    /// commits `apply` later, answers later still. Returns the rows it touched.
    async fn write_back(
        &self,
        operation: &'static str,
        relay: Uuid,
        seqs: Vec<Seq>,
        fence: Fence,
        detail: String,
        apply: impl FnOnce(&mut Row, u64, u64) + Send + Clone + 'static,
    ) -> Result<Vec<Seq>> {
        let op = self.op_name(relay, operation);
        let mut rng = self.sim.rng_for(&op);
        self.sim
            .sleep(format!("{op} sent"), self.faults.delay(&mut rng))
            .await;
        let (tags, labels) = {
            let state = self.state();
            (
                state.tags(seqs.iter().copied()),
                state.labels(seqs.iter().copied()),
            )
        };
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        if rng.f64() < self.faults.fail_before {
            self.sim.log(
                &tag_refs,
                format!("{op} {labels} fails before its statement"),
            );
            return Err(failure(operation, "connection lost before the statement"));
        }
        // `now()`: the statement's transaction began here, whatever it waits for later.
        let started = self.sim.now();
        let (matched, fenced_out) = loop {
            // A row locked by another write-back in flight is waited for, and its fence checked
            // again on what that one committed. The rows are locked together once none is
            // locked any more, so that a caller that goes away while waiting leaves no lock.
            let busy = {
                let mut state = self.state();
                let (matched, fenced_out): (Vec<Seq>, Vec<Seq>) = seqs
                    .iter()
                    .partition(|&&seq| state.fenced(relay, seq, fence, started));
                let busy: Vec<Seq> = matched
                    .iter()
                    .copied()
                    .filter(|&seq| state.row(seq).is_some_and(|r| r.write_lock.is_some()))
                    .collect();
                if busy.is_empty() {
                    for &seq in &matched {
                        if let Some(row) = state.row_mut(seq) {
                            row.write_lock = Some(op.clone());
                        }
                    }
                    Ok((matched, fenced_out))
                } else {
                    Err(state.labels(busy))
                }
            };
            let labels = match busy {
                Ok(done) => break done,
                Err(labels) => labels,
            };
            self.sim.log(
                &tag_refs,
                format!("{op} statement waits for the lock of {labels}"),
            );
            self.sim
                .sleep(format!("{op} lock wait"), super::GRID_MS)
                .await;
        };
        {
            let state = self.state();
            let mut text = format!(
                "{op} statement locks {}{detail}",
                state.labels(matched.iter().copied())
            );
            if !fenced_out.is_empty() {
                let why = match fence {
                    Fence::Holder => "not ours any more",
                    Fence::LiveLease => "not ours any more, or our lease ran out",
                };
                text.push_str(&format!(
                    "; fenced out ({why}) {}",
                    state.labels(fenced_out.iter().copied())
                ));
            }
            drop(state);
            self.sim.log(&tag_refs, text);
        }
        let commit = {
            let model = self.clone();
            let matched = matched.clone();
            let tags = tags.clone();
            let op = op.clone();
            move || {
                let now = model.sim.now();
                let labels = {
                    let mut state = model.state();
                    for &seq in &matched {
                        if let Some(row) = state.row_mut(seq) {
                            row.write_lock = None;
                            apply.clone()(row, started, now);
                        }
                    }
                    state.labels(matched.iter().copied())
                };
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                model.sim.log(&tags, format!("{op} commits {labels}"));
            }
        };
        let committed_at =
            self.sim
                .run_after(format!("{op} commit"), self.faults.delay(&mut rng), commit);
        self.sim
            .sleep_from(
                format!("{op} answer"),
                committed_at,
                self.faults.delay(&mut rng),
            )
            .await;
        if rng.f64() < self.faults.fail_after {
            self.sim
                .log(&tag_refs, format!("{op} committed, but its answer is lost"));
            return Err(failure(operation, "connection lost after the commit"));
        }
        self.sim.log(&tag_refs, format!("{op} answers"));
        Ok(matched)
    }
}

impl OutboxStore for ModelOutbox {
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let op = self.op_name(request.relay_id, "claim");
        let mut rng = self.sim.rng_for(&op);
        self.sim
            .sleep(format!("{op} sent"), self.faults.delay(&mut rng))
            .await;
        if rng.f64() < self.faults.fail_before {
            self.sim
                .log(&[], format!("{op} fails before its statement"));
            return Err(failure("claim", "connection lost before the statement"));
        }
        let claimed = self.claim_statement(request, &op);
        let seqs: Vec<Seq> = claimed.iter().map(|c| c.seq).collect();
        let (tags, labels) = {
            let state = self.state();
            (state.tags(seqs.iter().copied()), state.labels(seqs))
        };
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        self.sim
            .sleep(format!("{op} answer"), self.faults.delay(&mut rng))
            .await;
        if rng.f64() < self.faults.fail_after {
            self.sim.log(
                &tags,
                format!("{op} committed {labels}, but its answer is lost"),
            );
            return Err(failure("claim", "connection lost after the commit"));
        }
        self.sim.log(&tags, format!("{op} answers {labels}"));
        Ok(claimed)
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let done = self
            .write_back(
                "complete",
                relay_id,
                seqs.to_vec(),
                Fence::Holder,
                String::new(),
                |row, _started, now| row.view.fate = RowFate::Completed { at: now },
            )
            .await?;
        Ok(done.len() as u64)
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let plans: HashMap<Seq, (Disposition, String)> = failures
            .iter()
            .map(|f| (f.seq, (f.disposition.clone(), f.error.clone())))
            .collect();
        let detail = {
            let state = self.state();
            let parts: Vec<String> = failures
                .iter()
                .filter_map(|f| {
                    let row = state.row(f.seq)?;
                    Some(match &f.disposition {
                        Disposition::Retry { delay } => {
                            format!("{} retry in {} ms", row.view.label(), ms(*delay))
                        }
                        Disposition::DeadLetter => format!("{} dead letter", row.view.label()),
                    })
                })
                .collect();
            format!(" ({})", parts.join(", "))
        };
        let plans = Arc::new(plans);
        self.write_back(
            "fail",
            relay_id,
            failures.iter().map(|f| f.seq).collect(),
            Fence::LiveLease,
            detail,
            move |row, started, now| {
                let Some((disposition, error)) = plans.get(&row.view.seq) else {
                    return;
                };
                match disposition {
                    Disposition::Retry { delay } => {
                        row.locked_by = None;
                        row.locked_until = 0;
                        row.available_at = started + ms(*delay);
                    }
                    Disposition::DeadLetter => {
                        row.view.fate = RowFate::DeadLettered {
                            at: now,
                            error: error.clone(),
                        };
                    }
                }
            },
        )
        .await?;
        Ok(())
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.write_back(
            "release",
            relay_id,
            seqs.to_vec(),
            Fence::LiveLease,
            String::new(),
            |row, _started, _now| {
                row.locked_by = None;
                row.locked_until = 0;
                row.view.attempts = row.view.attempts.saturating_sub(1);
            },
        )
        .await?;
        Ok(())
    }

    async fn prune(&self, _older_than: Duration, _limit: usize) -> Result<u64> {
        Ok(0)
    }

    fn signal(&self) -> Signal {
        self.signal.clone()
    }
}
