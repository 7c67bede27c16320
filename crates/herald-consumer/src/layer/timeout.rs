//! A deadline for each handler run.

use std::time::Duration;

use crate::layer::{Layer, Next};
use crate::{Context, HandlerError, HandlerResult};

/// The error of a handler run that exceeded its deadline (transient: the run is retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handler timed out after {limit:?}")]
pub struct TimedOut {
    /// The deadline it exceeded.
    pub limit: Duration,
}

/// Stops a handler run after `limit`. The run's future is dropped, which rolls back its
/// transaction; the retry layer around it then retries the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A deadline of `limit` per run.
    pub(crate) fn new(limit: Duration) -> Self {
        Timeout { limit }
    }
}

impl Layer for Timeout {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        match tokio::time::timeout(self.limit, next.run(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::transient(TimedOut { limit: self.limit })),
        }
    }
}
