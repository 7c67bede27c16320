//! The relay loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use herald_core::{ClaimRequest, ClaimedEvent, Error, OutboxStore, Publisher, Result, Uuid};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::{self, RowFates};
use crate::metrics::ErrorKind;
use crate::pipeline::{MAX_ROUNDS, PIPELINE_DEPTH, Scheduler, Slot, Ticket, WriteBackTerms};
use crate::{RelayConfig, RelayMetrics};

/// What one claim-publish-settle cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and completed.
    pub published: usize,
    /// Rows rescheduled after a failed publication.
    pub retried: usize,
    /// Rows dead-lettered.
    pub dead_lettered: usize,
    /// Rows given back unpublished.
    pub released: usize,
}

/// The outbox processor: claims recorded events, publishes them, and settles each row.
///
/// Safe to run as several instances (in one process or many) against one store: claims are
/// exclusive and leased, and per-key order holds across instances. Generic over the store and
/// the transport; it never names a backend.
pub struct Relay<S, P> {
    id: Uuid,
    store: S,
    publisher: P,
    config: RelayConfig,
    metrics: RelayMetrics,
    /// Whether a loop ([`Relay::run`] or [`Relay::relay_once`]) is running.
    running: AtomicBool,
    /// The id the next claims are made under: `id` until a claim fails (see
    /// [`Relay::claimer`]).
    claimer: Mutex<Uuid>,
}

/// Marks a relay as running until dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`. Fails if `config` is inconsistent.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        let id = Uuid::now_v7();
        Ok(Relay {
            id,
            store,
            publisher,
            config,
            metrics: RelayMetrics::default(),
            running: AtomicBool::new(false),
            claimer: Mutex::new(id),
        })
    }

    /// The id to claim under. A claim that failed may still have committed (the connection
    /// dropped after COMMIT): its rows are leased to that id, which never saw them, and a
    /// relay's own leases do not block its own claims, so its next claims could take later
    /// rows of their keys. After a failed claim the relay therefore claims under a new id:
    /// to the store, those lost leases are another relay's, blocking their keys until they
    /// run out. The same holds for failed or released rows whose fate was not written back
    /// (given up as the lease ran out, or the write-back failed): they stay leased to the id
    /// they were claimed under until the lease ends. Batches claimed earlier are written back
    /// under the id they were claimed with.
    fn claimer(&self) -> Uuid {
        match self.claimer.lock() {
            Ok(id) => *id,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// After a failed claim or a failure or release left unwritten: claim under a new id from
    /// now on (see [`Relay::claimer`]). `why` says which, for the log.
    fn renew_claimer(&self, why: &str) {
        let id = Uuid::now_v7();
        match self.claimer.lock() {
            Ok(mut claimer) => *claimer = id,
            Err(poisoned) => *poisoned.into_inner() = id,
        }
        info!(relay = %self.id, claimer = %id, "{why}: claiming under a new id");
    }

    /// Claims the right to run a loop: two loops under one relay id would each take the other's
    /// leases for their own and split the events of a key between them.
    fn enter(&self) -> Result<Running<'_>> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| {
                Error::Config(format!(
                    "relay {} is already running: each loop needs a relay of its own",
                    self.id
                ))
            })?;
        Ok(Running(&self.running))
    }

    /// This instance's id (the `locked_by` of its claims, until a claim fails: it then claims
    /// under a new id, so that rows a lost claim answer leased still block their keys).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Live counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled. Store and broker failures are logged, counted and
    /// retried with backoff: the relay keeps running. A broker that cannot be reached
    /// ([`Error::is_unreachable`]) spends no attempt of the events it hit: they are given back
    /// and the relay pauses publishing and claiming with `store_backoff`. On shutdown the publish calls in flight
    /// are finished and every other claimed row is released.
    ///
    /// Unlike [`Relay::relay_once`], this loop is pipelined so the broker's confirm window
    /// stays full: the next batch is claimed and published while the previous one is still
    /// being confirmed, finished batches are written back while others publish, and several
    /// publish calls may be in flight at once. Per-key order holds across batches: an event
    /// goes out only after the previous event of its key was confirmed (see the `pipeline`
    /// module for the rules).
    ///
    /// One relay runs one loop at a time: calling `run` (or `relay_once`) while it runs is an
    /// error ([`Error::Config`]); make another `Relay` (it gets its own id) for another loop.
    ///
    /// A claim that comes back too late to publish anything under its lease (a slow store)
    /// is counted (`late_claims`), logged, and makes the following claims smaller until they
    /// come back in time; the batch size then grows back.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let _running = self.enter()?;
        // Rows asked for per claim: shrinks after a late claim, grows back after quick ones.
        let mut limit = self.config.batch_size;
        let mut wakeups = self.store.signal().subscribe();
        let mut scheduler = Scheduler::new(&self.config);
        let mut rounds: Vec<Pending<'_, Confirmed>> = Vec::new();
        let mut claiming: Option<Pending<'_, Claimed>> = None;
        let mut settling: Option<Pending<'_, (WriteBackTerms, Result<BatchReport>)>> = None;
        let mut stopping = false;
        // Whether to look for work now, rather than on a wake-up or the poll interval.
        let mut want_claim = true;
        let mut next_poll = Instant::now();
        let mut store_errors = 0u32;
        let mut claim_after = Instant::now();
        let mut next_prune = Instant::now();
        // Publish calls in a row that found the broker unreachable, and when to publish again.
        let mut outages = 0u32;
        let mut publish_after = Instant::now();
        info!(relay = %self.id, "relay started");
        loop {
            // While the broker is unreachable, what is ready is given back rather than sent.
            let paused = Instant::now() < publish_after;
            while rounds.len() < MAX_ROUNDS {
                let Some(round) = scheduler.take_round(Instant::now(), stopping || paused) else {
                    break;
                };
                rounds.push(Box::pin(async move {
                    let results = batch::confirm_round(
                        &self.publisher,
                        &round.envelopes,
                        &self.config,
                        &self.metrics,
                    )
                    .await;
                    (round.slots, results)
                }));
            }
            if settling.is_none()
                && let Some((fates, terms)) = scheduler.pop_settleable()
            {
                settling = Some(Box::pin(async move {
                    let report = self.settle(&terms, fates).await;
                    (terms, report)
                }));
            }
            if stopping
                && rounds.is_empty()
                && claiming.is_none()
                && settling.is_none()
                && scheduler.is_empty()
            {
                break;
            }
            let now = Instant::now();
            if !stopping
                && want_claim
                && claiming.is_none()
                && scheduler.unsettled() < PIPELINE_DEPTH
                && now >= claim_after
            {
                wakeups.mark_seen();
                let ticket = scheduler.claim_sent();
                // The id is taken now, not when the claim is first polled: a write-back polled
                // first in the same turn may renew it, and the order of the two must not depend
                // on which `select!` happens to poll first (the scheduler's holds cover a claim
                // sent under the old id either way).
                let owner = self.claimer();
                claiming = Some(Box::pin(
                    async move { (ticket, self.claim(owner, limit).await) },
                ));
            }
            let backing_off = !stopping && want_claim && claiming.is_none() && claim_after > now;
            // The store's operations are polled first. Claims are what a drain waits for (one
            // in flight, serialized per outbox), and everything here runs on this one task: a
            // publish call's first poll encodes and hands its whole round to the transport,
            // which would otherwise push a returned claim's turn (and the next claim) back by
            // that long whenever the random order put it first.
            tokio::select! {
                biased;
                (ticket, (claimed_at, owner, result)) = poll_slot(&mut claiming) => {
                    claiming = None;
                    match result {
                        Ok(claimed) if claimed.is_empty() => {
                            scheduler.claim_failed(ticket);
                            store_errors = 0;
                            want_claim = false;
                            next_poll = Instant::now() + self.config.poll_interval;
                            // Only when nothing else is in flight: the other operations are
                            // not polled meanwhile, and one may hold the store's only
                            // connection (SQLite).
                            if settling.is_none() && rounds.is_empty() && scheduler.unsettled() == 0 {
                                self.prune_if_due(&mut next_prune).await;
                            }
                        }
                        Ok(claimed) => {
                            store_errors = 0;
                            limit = self.adapt_limit(limit, claimed_at.elapsed());
                            self.metrics.batch(claimed.len());
                            scheduler.add_batch(ticket, owner, claimed, claimed_at, Instant::now());
                        }
                        Err(error) => {
                            scheduler.claim_failed(ticket);
                            self.renew_claimer("a claim failed");
                            store_errors += 1;
                            self.metrics.store_error(ErrorKind::Claim);
                            let delay = self.config.store_backoff.delay(store_errors);
                            warn!(relay = %self.id, error = %error.chain(), retry_in = ?delay, "claim failed");
                            claim_after = Instant::now() + delay;
                        }
                    }
                }
                (terms, result) = poll_slot(&mut settling) => {
                    settling = None;
                    match result {
                        Ok(report) => {
                            store_errors = 0;
                            self.metrics.settled(&report);
                            debug!(relay = %self.id, ?report, "batch settled");
                            scheduler.settled(terms, true);
                        }
                        Err(error) => {
                            // The rows come back after their lease (published rows are
                            // published again: at least once).
                            store_errors += 1;
                            self.metrics.store_error(ErrorKind::WriteBack);
                            self.metrics.unsettled(terms.claimed);
                            let delay = self.config.store_backoff.delay(store_errors);
                            warn!(relay = %self.id, error = %error.chain(), retry_in = ?delay, "could not write a batch back");
                            claim_after = Instant::now() + delay;
                            scheduler.settled(terms, false);
                        }
                    }
                    // What was settled may have made rows claimable again.
                    want_claim = true;
                }
                (slots, results) = next_done(&mut rounds), if !rounds.is_empty() => {
                    if let Some(error) = results.iter().find_map(|r| r.as_ref().err().filter(|e| e.is_unreachable())) {
                        // Not the events' fault: they are given back without an attempt, and
                        // the relay stops publishing and claiming for a while.
                        outages += 1;
                        self.metrics.unreachable();
                        let delay = self.config.store_backoff.delay(outages);
                        warn!(relay = %self.id, error = %error.chain(), retry_in = ?delay, "broker unreachable; events given back");
                        publish_after = Instant::now() + delay;
                        claim_after = claim_after.max(publish_after);
                    } else if results.iter().any(Result::is_ok) {
                        outages = 0;
                    }
                    scheduler.round_done(slots, results);
                }
                () = shutdown.cancelled(), if !stopping => stopping = true,
                () = wakeups.rung(), if !want_claim => want_claim = true,
                () = tokio::time::sleep_until(next_poll), if !want_claim => want_claim = true,
                () = tokio::time::sleep_until(claim_after), if backing_off => {}
            }
        }
        info!(relay = %self.id, "relay stopped");
        Ok(())
    }

    /// Claims up to `limit` rows under the id `owner`.
    async fn claim(&self, owner: Uuid, limit: usize) -> (Instant, Uuid, Result<Vec<ClaimedEvent>>) {
        let claimed_at = Instant::now();
        let result = self
            .store
            .claim(&ClaimRequest {
                relay_id: owner,
                limit,
                lease: self.config.lease,
            })
            .await;
        (claimed_at, owner, result)
    }

    /// The time a claim may take and still leave time to publish under its lease: the
    /// scheduler publishes nothing later than `0.8 × lease − publish timeout` after the claim
    /// was sent.
    fn claim_budget(&self) -> std::time::Duration {
        self.config
            .lease
            .mul_f64(0.8)
            .saturating_sub(self.config.publish_timeout)
    }

    /// Whether a claim that took `took` came back too late to publish anything; counted and
    /// logged if so.
    fn late(&self, took: std::time::Duration, limit: usize) -> bool {
        let budget = self.claim_budget();
        if took <= budget {
            return false;
        }
        self.metrics.late_claim();
        warn!(
            relay = %self.id,
            ?took,
            ?budget,
            limit,
            "claim too slow for the lease: its rows are given back unpublished"
        );
        true
    }

    /// The next claim's limit after a claim of `limit` rows that took `took`: halved after a
    /// late claim, grown back by a quarter after one that took less than half the budget.
    fn adapt_limit(&self, limit: usize, took: std::time::Duration) -> usize {
        if self.late(took, limit) {
            return (limit / 2).max(1);
        }
        if took < self.claim_budget() / 2 {
            return (limit + limit.div_ceil(4)).min(self.config.batch_size);
        }
        limit
    }

    async fn prune_if_due(&self, next_prune: &mut Instant) {
        let Some(retention) = &self.config.retention else {
            return;
        };
        if Instant::now() < *next_prune {
            return;
        }
        *next_prune = Instant::now() + retention.every;
        match self.store.prune(retention.keep, retention.batch).await {
            Ok(0) => {}
            Ok(n) => debug!(relay = %self.id, pruned = n, "pruned archived events"),
            Err(error) => warn!(relay = %self.id, error = %error.chain(), "prune failed"),
        }
    }

    /// One cycle: claim a batch, publish it, write every row's fate back. Returns what it did;
    /// an error means the store could not be reached (the rows then come back after their lease).
    pub async fn relay_once(&self, shutdown: &CancellationToken) -> Result<BatchReport> {
        let _running = self.enter()?;
        let (claimed_at, owner, claimed) = self.claim(self.claimer(), self.config.batch_size).await;
        let claimed = claimed.inspect_err(|_| self.renew_claimer("a claim failed"))?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }
        self.late(claimed_at.elapsed(), self.config.batch_size);
        self.metrics.batch(claimed.len());
        let count = claimed.len();
        // One pass of the pipelined loop's scheduler, one publish call at a time: each call
        // holds the next event of every key whose previous event was confirmed.
        let mut scheduler = Scheduler::new(&self.config);
        let ticket = scheduler.claim_sent();
        scheduler.add_batch(ticket, owner, claimed, claimed_at, Instant::now());
        let mut unreachable = false;
        while let Some(round) =
            scheduler.take_round(Instant::now(), shutdown.is_cancelled() || unreachable)
        {
            let results = batch::confirm_round(
                &self.publisher,
                &round.envelopes,
                &self.config,
                &self.metrics,
            )
            .await;
            if results
                .iter()
                .any(|r| r.as_ref().is_err_and(Error::is_unreachable))
            {
                // The rest is given back: no attempt spent on an outage.
                unreachable = true;
                self.metrics.unreachable();
            }
            scheduler.round_done(round.slots, results);
        }
        // With no call in flight every row has its fate: the batch is settleable.
        let Some((fates, terms)) = scheduler.pop_settleable() else {
            warn!(relay = %self.id, "batch left without a fate; its rows come back after their lease");
            self.metrics.unsettled(count);
            return Ok(BatchReport {
                claimed: count,
                ..BatchReport::default()
            });
        };
        let report = self
            .settle(&terms, fates)
            .await
            .inspect_err(|_| self.metrics.unsettled(count))?;
        self.metrics.settled(&report);
        debug!(relay = %self.id, ?report, "batch settled");
        Ok(report)
    }

    /// Writes a batch's fates back: one statement each for completions, failures and
    /// releases, each retried briefly (a completion lost here means duplicates later).
    /// Failures and releases are not written once the lease is nearly over: another relay may
    /// soon take the rows over, and a retry scheduled behind its back could put the failed row
    /// after later rows of its key. They are left to come back after the lease instead (the
    /// claim counted as an attempt).
    ///
    /// Failed or released rows whose fate is not written (given up, or a write-back failed)
    /// stay leased to the batch's id until the lease ends, and that id's leases would not block
    /// its own next claims: the relay then claims under a new id (see [`Relay::claimer`]), so
    /// that those rows block their keys, for this loop as for any other relay, until they come
    /// back.
    async fn settle(&self, terms: &WriteBackTerms, fates: RowFates) -> Result<BatchReport> {
        let unsettled = !fates.failures.is_empty() || !fates.released.is_empty();
        let result = self.write_back(terms, fates).await;
        let written = match &result {
            Ok((_, written)) => *written,
            Err(_) => false,
        };
        if unsettled && !written && terms.owner == self.claimer() {
            self.renew_claimer("failed or released rows were not written back");
        }
        result.map(|(report, _)| report)
    }

    /// [`Relay::settle`]'s statements. Also says whether every failure and release was written.
    async fn write_back(
        &self,
        terms: &WriteBackTerms,
        fates: RowFates,
    ) -> Result<(BatchReport, bool)> {
        let deadline = terms.deadline;
        let mut report = BatchReport {
            claimed: terms.claimed,
            published: fates.completed.len(),
            released: fates.released.len(),
            ..BatchReport::default()
        };
        for failure in &fates.failures {
            match failure.disposition {
                herald_core::Disposition::DeadLetter => {
                    report.dead_lettered += 1;
                    warn!(relay = %self.id, seq = failure.seq, error = %failure.error, "event dead-lettered");
                }
                herald_core::Disposition::Retry { delay } => {
                    report.retried += 1;
                    debug!(relay = %self.id, seq = failure.seq, error = %failure.error, retry_in = ?delay, "publish failed");
                }
            }
        }
        if !fates.completed.is_empty() {
            let done = self
                .retrying("complete", deadline, || {
                    self.store.complete(terms.owner, &fates.completed)
                })
                .await?;
            if (done as usize) < fates.completed.len() {
                warn!(
                    relay = %self.id,
                    lost = fates.completed.len() - done as usize,
                    "lease expired before completion; those events will be published again"
                );
            }
        }
        let mut written = true;
        if !fates.failures.is_empty() {
            if self.in_time(terms, fates.failures.len()) {
                self.retrying("fail", deadline, || {
                    self.store.fail(terms.owner, &fates.failures)
                })
                .await?;
            } else {
                written = false;
            }
        }
        if !fates.released.is_empty() {
            if self.in_time(terms, fates.released.len()) {
                let (owner, seqs) = (terms.owner, &fates.released);
                self.retrying("release", deadline, || self.store.release(owner, seqs))
                    .await?;
            } else {
                written = false;
            }
        }
        Ok((report, written))
    }

    /// Whether `rows` failed or released rows of `terms` may still be written back.
    fn in_time(&self, terms: &WriteBackTerms, rows: usize) -> bool {
        if Instant::now() < terms.write_back_until {
            return true;
        }
        self.metrics.abandoned(rows);
        warn!(
            relay = %self.id,
            rows,
            "lease nearly over: rows left to come back after it instead of written back"
        );
        false
    }

    async fn retrying<T, F, Fut>(&self, what: &str, deadline: Instant, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() && attempt < 5 => {
                    let delay = self.config.store_backoff.delay(attempt);
                    if Instant::now() + delay >= deadline {
                        return Err(error);
                    }
                    self.metrics.store_error(ErrorKind::StoreRetry);
                    warn!(relay = %self.id, error = %error.chain(), "{what} failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A store or publish operation in flight inside [`Relay::run`].
type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A publish call's events and their results.
type Confirmed = (Vec<Slot>, Vec<Result<()>>);

/// A claim's ticket, when it was sent, the id it claimed under, and what it returned.
type Claimed = (Ticket, (Instant, Uuid, Result<Vec<ClaimedEvent>>));

/// The first of `futures` to finish (removed from the list); pending while the list is empty.
async fn next_done<T>(futures: &mut Vec<Pending<'_, T>>) -> T {
    std::future::poll_fn(|cx| {
        for i in 0..futures.len() {
            if let Poll::Ready(value) = futures[i].as_mut().poll(cx) {
                drop(futures.swap_remove(i));
                return Poll::Ready(value);
            }
        }
        Poll::Pending
    })
    .await
}

/// The output of the operation in `slot`; pending forever if there is none.
async fn poll_slot<T>(slot: &mut Option<Pending<'_, T>>) -> T {
    match slot {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}
