//! One span per message and handler, and a log line for every outcome that is not plain
//! success.

use std::time::Instant;

use tracing::{Instrument, Level};

use crate::layer::{Layer, Next};
use crate::{Context, HandlerResult, Outcome};

/// Runs the chain inside a `handle` span carrying the handler name, event type, message id,
/// correlation id, delivery attempt and the message's `traceparent`; logs duplicates and
/// successes at DEBUG, redeliveries and dead letters at WARN.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tracing;

impl Layer for Tracing {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let span = tracing::span!(
            Level::INFO,
            "handle",
            handler = ctx.handler(),
            event_type = ctx.event_type(),
            message_id = %ctx.message_id(),
            correlation_id = %ctx.correlation_id(),
            attempt = ctx.attempt(),
            traceparent = ctx.trace().traceparent.as_deref().unwrap_or(""),
        );
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
