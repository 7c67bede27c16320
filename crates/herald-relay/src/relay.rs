//! The relay loop.

use herald_core::{ClaimRequest, OutboxStore, Publisher, Result, Seq, Uuid};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::{self, Outcome};
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
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` and `publisher`. Fails if `config` is inconsistent.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            id: Uuid::now_v7(),
            store,
            publisher,
            config,
            metrics: RelayMetrics::default(),
        })
    }

    /// This instance's id (the `locked_by` of its claims).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Live counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled. Store and broker failures are logged, counted and
    /// retried with backoff: the relay keeps running. On shutdown the batch in flight is
    /// finished (its current publish round) and the rest of it released.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let mut wakeups = self.store.signal().subscribe();
        let mut consecutive_errors = 0u32;
        let mut next_prune = Instant::now();
        info!(relay = %self.id, "relay started");
        while !shutdown.is_cancelled() {
            wakeups.mark_seen();
            match self.relay_once(&shutdown).await {
                Ok(report) => {
                    consecutive_errors = 0;
                    if report.claimed > 0 {
                        // There may be more: claim again right away.
                        continue;
                    }
                }
                Err(error) => {
                    consecutive_errors += 1;
                    self.metrics.store_error();
                    let delay = self.config.store_backoff.delay(consecutive_errors);
                    warn!(relay = %self.id, error = %error.chain(), retry_in = ?delay, "relay cycle failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            }
            if let Some(retention) = &self.config.retention
                && Instant::now() >= next_prune
            {
                next_prune = Instant::now() + retention.every;
                match self.store.prune(retention.keep, retention.batch).await {
                    Ok(0) => {}
                    Ok(n) => debug!(relay = %self.id, pruned = n, "pruned archived events"),
                    Err(error) => warn!(relay = %self.id, error = %error.chain(), "prune failed"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wakeups.rung() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        info!(relay = %self.id, "relay stopped");
        Ok(())
    }

    /// One cycle: claim a batch, publish it, write every row's fate back. Returns what it did;
    /// an error means the store could not be reached (the rows then come back after their lease).
    pub async fn relay_once(&self, shutdown: &CancellationToken) -> Result<BatchReport> {
        let claimed_at = Instant::now();
        let claimed = self
            .store
            .claim(&ClaimRequest {
                relay_id: self.id,
                limit: self.config.batch_size,
                lease: self.config.lease,
            })
            .await?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }
        self.metrics.batch(claimed.len());
        let count = claimed.len();
        // Leave a safety margin: never publish what another relay may already have taken over.
        let deadline = claimed_at + self.config.lease.mul_f64(0.8);
        let outcome =
            batch::publish(&self.publisher, claimed, &self.config, deadline, shutdown).await;
        let report = self.settle(count, outcome, deadline).await?;
        self.metrics.settled(&report);
        debug!(relay = %self.id, ?report, "batch settled");
        Ok(report)
    }

    /// Writes a batch's outcome back: one statement each for completions, failures and
    /// releases, each retried briefly (a completion lost here means duplicates later).
    async fn settle(
        &self,
        claimed: usize,
        outcome: Outcome,
        deadline: Instant,
    ) -> Result<BatchReport> {
        let mut report = BatchReport {
            claimed,
            published: outcome.completed.len(),
            released: outcome.released.len(),
            ..BatchReport::default()
        };
        for failure in &outcome.failures {
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
        if !outcome.completed.is_empty() {
            let done = self
                .retrying("complete", deadline, || {
                    self.store.complete(self.id, &outcome.completed)
                })
                .await?;
            if (done as usize) < outcome.completed.len() {
                warn!(
                    relay = %self.id,
                    lost = outcome.completed.len() - done as usize,
                    "lease expired before completion; those events will be published again"
                );
            }
        }
        if !outcome.failures.is_empty() {
            self.retrying("fail", deadline, || {
                self.store.fail(self.id, &outcome.failures)
            })
            .await?;
        }
        if !outcome.released.is_empty() {
            self.release(&outcome.released, deadline).await?;
        }
        Ok(report)
    }

    async fn release(&self, seqs: &[Seq], deadline: Instant) -> Result<()> {
        self.retrying("release", deadline, || self.store.release(self.id, seqs))
            .await
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
                    self.metrics.store_error();
                    warn!(relay = %self.id, error = %error.chain(), "{what} failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}
