//! The consumer: subscribes, feeds deliveries to the dispatcher, prunes the inbox, and shuts
//! down gracefully.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Backoff, DeliveryStream, Error, Result, Retention, Subscriber, SubscriptionSpec,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::dispatcher::{Dispatcher, Job, Limits};
use crate::router::{Pruner, Routes};
use crate::{ConsumerConfig, ConsumerMetrics, Router};

/// Pause between two retention statements, so that pruning a large backlog never competes
/// with handlers for long.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// Runs a [`Router`]'s handlers on the messages of one subscription.
///
/// Generic over the transport's [`Subscriber`]; it never names a backend.
pub struct Consumer<S> {
    subscriber: S,
    spec: SubscriptionSpec,
    routes: Arc<Routes>,
    pruners: Vec<Arc<dyn Pruner>>,
    config: ConsumerConfig,
    metrics: ConsumerMetrics,
}

impl<S> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("subscription", &self.spec)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Subscriber> Consumer<S> {
    /// A consumer of the durable subscription `subscription` (a queue, a durable consumer)
    /// on `subscriber`, receiving the event types `router` has handlers for. Fails with
    /// [`Error::Config`] if the configuration or the router is inconsistent (no handlers, two
    /// handlers with one name).
    pub fn new(
        subscriber: S,
        subscription: impl Into<String>,
        router: Router,
        config: ConsumerConfig,
    ) -> Result<Self> {
        config.validate()?;
        let subscription = subscription.into();
        if subscription.trim().is_empty() {
            return Err(Error::Config("subscription name must not be empty".into()));
        }
        let metrics = ConsumerMetrics::new(&subscription);
        // The transport's prefetch and cap on attempts derive from this configuration, set
        // nowhere else: a message that always fails is delivered once, then redelivered
        // `retry.delayed` times, and the transport dead-letters a retry past that.
        let spec = SubscriptionSpec {
            prefetch: config.prefetch,
            max_attempts: config.retry.delayed.saturating_add(1),
            ..SubscriptionSpec::new(subscription, router.event_types())
        };
        let (routes, pruners) =
            router.build(&spec.name, subscriber.messaging_system(), &config, &metrics)?;
        Ok(Consumer {
            subscriber,
            spec,
            routes: Arc::new(routes),
            pruners,
            config,
            metrics,
        })
    }

    /// What this consumer subscribes to.
    pub fn subscription(&self) -> &SubscriptionSpec {
        &self.spec
    }

    /// Live counters.
    pub fn metrics(&self) -> ConsumerMetrics {
        self.metrics.clone()
    }

    /// Consumes until `shutdown` is cancelled, then shuts down gracefully: takes no new
    /// message, gives back the deliveries not yet started (the transport hands them out again),
    /// and lets running handlers finish within
    /// [`shutdown_timeout`](ConsumerConfig::shutdown_timeout). Handlers still running then are
    /// dropped: their transactions roll back and their messages are redelivered. Nothing is
    /// lost, and no handler's effects are applied twice.
    ///
    /// Returns an error if the subscription cannot be opened or fails for good, or ends
    /// without `shutdown` (the transport was closed).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let stream = self.subscriber.subscribe(&self.spec).await?;
        tracing::info!(subscription = %self.spec.name, types = ?self.spec.event_types, "consumer started");
        let stop = shutdown.child_token();
        let credit = Arc::new(Semaphore::new(self.config.prefetch));
        let (sender, mut deliveries) = mpsc::channel(1);
        // Both tasks end with this call, even when it is dropped mid-way (a crash in
        // miniature: every unsettled delivery goes back to the broker).
        let puller =
            AbortOnDropHandle::new(tokio::spawn(pull(stream, credit, sender, stop.clone())));
        let retention = self
            .config
            .retention
            .clone()
            .filter(|_| !self.pruners.is_empty());
        let pruning = retention.map(|retention| {
            AbortOnDropHandle::new(tokio::spawn(prune(
                self.pruners.clone(),
                retention,
                stop.clone(),
            )))
        });

        let mut dispatcher = Dispatcher::new(
            self.routes.clone(),
            Limits {
                concurrency: self.config.concurrency,
                max_held: self.config.max_held,
                redelivery_grace: self.config.redelivery_grace,
                hold_stale_after: self.config.hold_stale_after(),
            },
            self.metrics.clone(),
            stop.clone(),
        );
        let ended: Result<()> = loop {
            let timer = dispatcher.next_timer();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(joined) = dispatcher.workers.join_next_with_id() => dispatcher.joined(joined),
                Some(settled) = dispatcher.settling.join_next() => dispatcher.settled(settled),
                received = deliveries.recv() => match received {
                    Some(Ok(job)) => dispatcher.accept(job),
                    Some(Err(error)) => break Err(error),
                    None if shutdown.is_cancelled() => break Ok(()),
                    None => break Err(Error::transport(
                        "consume",
                        true,
                        herald_core::error::Message(format!(
                            "subscription `{}` ended (the transport was closed)",
                            self.spec.name
                        )),
                    )),
                },
                () = sleep_until(timer) => dispatcher.expire(),
            }
        };

        // Shutdown: stop taking messages, tell handlers, give back what has not started.
        stop.cancel();
        drop(deliveries);
        let _ = puller.await;
        let released = dispatcher.release_waiting();
        let running = dispatcher.workers.len();
        tracing::info!(subscription = %self.spec.name, running, released, "consumer stopping");
        let deadline = Instant::now() + self.config.shutdown_timeout;
        while !dispatcher.workers.is_empty() {
            tokio::select! {
                Some(joined) = dispatcher.workers.join_next_with_id() => dispatcher.joined(joined),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        subscription = %self.spec.name,
                        running = dispatcher.workers.len(),
                        "handlers still running at the shutdown deadline; dropping them (their messages are redelivered)"
                    );
                    dispatcher.workers.abort_all();
                    while dispatcher.workers.join_next().await.is_some() {}
                }
            }
        }
        while dispatcher.settling.join_next().await.is_some() {}
        if let Some(pruning) = pruning {
            let _ = pruning.await;
        }
        tracing::info!(subscription = %self.spec.name, "consumer stopped");
        ended
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Takes deliveries from the stream, each with a unit of `credit`, until `stop`. Transient
/// stream errors are logged and retried with backoff; a permanent one ends the consumer.
async fn pull<D: DeliveryStream>(
    mut stream: D,
    credit: Arc<Semaphore>,
    deliveries: mpsc::Sender<Result<Job>>,
    stop: CancellationToken,
) {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        multiplier: 2.0,
        jitter: 0.5,
    };
    let mut errors = 0u32;
    loop {
        let credit = tokio::select! {
            () = stop.cancelled() => return,
            permit = credit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let job = match next {
            None => return,
            Some(Ok(delivery)) => {
                errors = 0;
                Ok(Job {
                    delivery,
                    credit,
                    hold: None,
                })
            }
            Some(Err(error)) if error.is_transient() => {
                errors = errors.saturating_add(1);
                let delay = backoff.delay(errors);
                tracing::warn!(error = %error.chain(), retry_in = ?delay, "receiving failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
            Some(Err(error)) => Err(error),
        };
        let fatal = job.is_err();
        if deliveries.send(job).await.is_err() || fatal {
            return;
        }
    }
}

/// Removes old inbox records every `retention.every`, in statements of at most
/// `retention.batch` rows, until `stop`.
async fn prune(pruners: Vec<Arc<dyn Pruner>>, retention: Retention, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(retention.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for pruner in &pruners {
            loop {
                match pruner.prune(retention.keep, retention.batch).await {
                    Ok(n) if n as usize >= retention.batch => {
                        tracing::debug!(pruned = n, "pruned inbox records; more to go");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(PRUNE_PAUSE) => {}
                        }
                    }
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(pruned = n, "pruned inbox records");
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error.chain(), "pruning the inbox failed");
                        break;
                    }
                }
            }
        }
    }
}
