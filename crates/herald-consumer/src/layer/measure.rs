//! Each handler run counted by outcome and timed, and the lag of handled messages.

use std::time::Instant;

use crate::layer::{Layer, Next};
use crate::metrics::{ConsumerMetrics, RunOutcome};
use crate::{Context, HandlerResult, Outcome};

/// Outermost around every handler: records into the consumer's metrics what became of each
/// run (`herald_consumer_handled_total` by handler and outcome), how long it took, immediate
/// retries included (`herald_consumer_handling_duration_seconds`), and, for a run that handled
/// the message, its end-to-end lag (`herald_consumer_lag_seconds`).
#[derive(Debug, Clone)]
pub(crate) struct Measure {
    metrics: ConsumerMetrics,
}

impl Measure {
    /// A layer recording into `metrics`.
    pub(crate) fn new(metrics: ConsumerMetrics) -> Self {
        Measure { metrics }
    }
}

impl Layer for Measure {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let started = Instant::now();
        let result = next.run(ctx).await;
        let outcome = match &result {
            Ok(Outcome::Done) if ctx.is_duplicate() => RunOutcome::Duplicate,
            Ok(Outcome::Done) => RunOutcome::Done,
            Ok(Outcome::Retry { .. }) => RunOutcome::Retry,
            Ok(Outcome::Reject { .. }) => RunOutcome::DeadLetter,
            Err(_) => RunOutcome::Error,
        };
        // A run that found its key held did not run the handler: it waits, and is counted
        // when it runs.
        if ctx.held().is_none() {
            self.metrics.handled(
                &ctx.handler_name(),
                outcome,
                started.elapsed(),
                ctx.occurred_at(),
            );
        }
        result
    }
}
