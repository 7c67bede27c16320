//! Retries: a few immediate ones in process, then delayed redeliveries through the transport
//! with jittered exponential backoff, then the dead letters with the reason, the attempts and
//! the last error.

use std::time::Duration;

use herald_core::Backoff;

use crate::layer::{Layer, Next};
use crate::metrics::ConsumerMetrics;
use crate::{Classifier, Context, ErrorClass, HandlerResult, Outcome};

/// How failed handler runs are retried.
///
/// A transient failure is retried at once `immediate` times, in process (a deadlock or a
/// dropped connection usually clears in milliseconds). If every run of the delivery failed, the
/// message goes back to the transport to be delivered again after a backoff delay, up to
/// `delayed` times; after that, it is dead-lettered. A permanent failure is dead-lettered at
/// once. So a message that always fails transiently is run `(1 + immediate) × (1 + delayed)`
/// times: 16 with the defaults, over about two minutes.
///
/// The defaults follow NServiceBus's (immediate retries, then delayed retries at growing
/// intervals, then the error queue): 3 immediate retries; 3 delayed redeliveries after about
/// 10 s, 30 s and 90 s (each drawn from the upper half of its interval, so that messages that
/// failed together do not come back together).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Runs retried at once after a transient failure, per delivery (default 3).
    pub immediate: u32,
    /// Redeliveries through the transport once the immediate retries are spent (default 3).
    pub delayed: u32,
    /// Delay before redelivery `n` (1-based) (default 10 s, ×3 per redelivery, at most 10 min,
    /// jittered by half).
    pub backoff: Backoff,
    /// Which errors are transient (default: [`Classifier::default`]).
    pub classifier: Classifier,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            immediate: 3,
            delayed: 3,
            backoff: Backoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(600),
                multiplier: 3.0,
                jitter: 0.5,
            },
            classifier: Classifier::default(),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: the first failure dead-letters the message.
    pub fn none() -> Self {
        RetryPolicy {
            immediate: 0,
            delayed: 0,
            ..RetryPolicy::default()
        }
    }

    /// Handler runs of a message that always fails transiently.
    pub fn max_runs(&self) -> u64 {
        (1 + u64::from(self.immediate)) * (1 + u64::from(self.delayed))
    }
}

/// The retry layer (see [`RetryPolicy`]). Turns every error into an outcome: what is outside it
/// sees [`Outcome::Done`], [`Outcome::Retry`] (a delayed redelivery) or [`Outcome::Reject`].
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    policy: RetryPolicy,
    metrics: ConsumerMetrics,
}

impl Retry {
    /// A retry layer applying `policy`, counting into `metrics`.
    pub(crate) fn new(policy: RetryPolicy, metrics: ConsumerMetrics) -> Self {
        Retry { policy, metrics }
    }

    /// A delayed redelivery if the delivery has one left, else a dead letter.
    fn redeliver_or_reject(&self, ctx: &Context, after: Option<Duration>, why: String) -> Outcome {
        let delivery = ctx.attempt();
        if delivery <= self.policy.delayed {
            let after = after.unwrap_or_else(|| self.policy.backoff.delay(delivery));
            Outcome::Retry { after, reason: why }
        } else {
            Outcome::Reject {
                reason: format!(
                    "gave up after {delivery} deliveries ({} redeliveries allowed): {why}",
                    self.policy.delayed
                ),
            }
        }
    }
}

impl Layer for Retry {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let mut retry = 0;
        loop {
            ctx.set_immediate_retry(retry);
            let error = match next.run(ctx).await {
                Ok(Outcome::Retry { after, reason }) => {
                    return Ok(self.redeliver_or_reject(ctx, Some(after), reason));
                }
                Ok(outcome) => return Ok(outcome),
                Err(error) => error,
            };
            if self.policy.classifier.classify(&error) == ErrorClass::Permanent {
                return Ok(Outcome::Reject {
                    reason: format!("permanent error: {}", error.chain()),
                });
            }
            if retry < self.policy.immediate {
                retry += 1;
                self.metrics.immediate_retry();
                tracing::debug!(
                    handler = ctx.handler(),
                    message_id = %ctx.message_id(),
                    retry,
                    error = %error.chain(),
                    "handler failed; retrying at once"
                );
                continue;
            }
            let runs = ctx
                .attempt()
                .saturating_sub(1)
                .saturating_mul(self.policy.immediate.saturating_add(1))
                .saturating_add(retry + 1);
            let why = format!("{runs} attempts, last error: {}", error.chain());
            return Ok(self.redeliver_or_reject(ctx, None, why));
        }
    }
}
