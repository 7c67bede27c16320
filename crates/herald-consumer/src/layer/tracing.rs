//! One span per message and handler, and a log line for every outcome that is not plain
//! success.

use std::time::Instant;

use tracing::{Instrument, Level};

use crate::layer::{Layer, Next};
use crate::{Context, HandlerResult, Outcome};

/// Runs the chain inside a `handle` span carrying the handler name, inside the delivery's
/// `process` span (which carries the message's id, type, correlation and causation ids, the
/// attempt and, with the feature `otel`, its trace); logs duplicates and successes at DEBUG,
/// redeliveries and dead letters at WARN.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tracing;

impl Layer for Tracing {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let span = tracing::span!(Level::INFO, "handle", handler = ctx.handler());
        let started = Instant::now();
        let result = next.run(ctx).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(Outcome::Done) if ctx.is_duplicate() => {
                tracing::debug!(parent: &span, ?elapsed, "duplicate skipped by the inbox");
            }
            Ok(Outcome::Done) => tracing::debug!(parent: &span, ?elapsed, "handled"),
            Ok(Outcome::Retry { after, reason }) => {
                tracing::warn!(parent: &span, ?after, %reason, "handler failed; redelivery scheduled");
            }
            Ok(Outcome::Reject { reason }) => {
                tracing::warn!(parent: &span, %reason, "message rejected; dead-lettered");
            }
            Err(error) => {
                tracing::warn!(parent: &span, error = %error.chain(), "handler failed");
            }
        }
        result
    }
}
