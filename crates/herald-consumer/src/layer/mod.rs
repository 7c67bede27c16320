//! Layers: behaviour wrapped around every handler rather than woven into it.
//!
//! Each handler registered with the [`Router`](crate::Router) runs inside a chain, outermost
//! first:
//!
//! ```text
//! measure → tracing → retry → your layers (Router::layer, in the order added) → timeout → inbox → handler
//! ```
//!
//! The router installs `measure`, `tracing`, `retry` and `timeout` around every handler itself;
//! they are not public, so none of them can be installed twice. Their settings are public:
//! [`RetryPolicy`] and `ConsumerConfig::handler_timeout` (whose error is [`TimedOut`]).
//!
//! - [`Measure`] counts each run by handler and outcome, times it and records the message's
//!   end-to-end lag, through the `metrics` facade (see [`crate::metrics`]);
//! - [`Tracing`] opens one span per message and handler, and logs the final outcome;
//! - [`Retry`] runs what is inside it again at once for transient errors, then turns the
//!   failure into a delayed redelivery or a dead letter;
//! - your layers see every run of the handler, errors included, before they are classified:
//!   a metrics layer timing runs and counting failures belongs here;
//! - [`Timeout`] bounds each run;
//! - the inbox (`crate::inbox`: not a layer but the endpoint the chain ends in, installed by
//!   `Router::transactional` and `Router::deduplicated`) opens the transaction, writes
//!   the `(message id, handler)` record and commits it with the handler's writes. Runs of a
//!   transactional handler that arrive together share one transaction and one commit (group
//!   commit, `ConsumerConfig::transaction_batch`); each runs under a savepoint, so a failed run
//!   takes only its own writes down. A run that returns done on a transaction a failed statement
//!   aborted is a failed run: nothing of it is acknowledged as done.
//!
//! A layer is a [`Layer`]: it receives the context and a [`Next`] to run the rest of the chain
//! (zero, one or several times), like axum's `from_fn` middleware.

mod measure;
mod retry;
mod timeout;
mod tracing;

use std::future::Future;
use std::sync::Arc;

use herald_core::BoxFuture;

pub(crate) use self::measure::Measure;
pub(crate) use self::retry::Retry;
pub use self::retry::RetryPolicy;
pub use self::timeout::TimedOut;
pub(crate) use self::timeout::Timeout;
pub(crate) use self::tracing::Tracing;

use crate::handler::Endpoint;
use crate::{Context, HandlerResult};

/// Behaviour around handlers: receives the context and the rest of the chain.
///
/// ```
/// use std::time::Instant;
/// use herald_consumer::{Context, HandlerResult, Layer, Next};
///
/// /// Logs how long each handler took.
/// struct Timing;
///
/// impl Layer for Timing {
///     async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
///         let started = Instant::now();
///         let result = next.run(ctx).await;
///         tracing::info!(handler = ctx.handler(), elapsed = ?started.elapsed(), "handled");
///         result
///     }
/// }
/// ```
pub trait Layer: Send + Sync + 'static {
    /// Runs around the rest of the chain; call `next.run(ctx)` to go on.
    fn call<'a>(
        &'a self,
        ctx: &'a mut Context,
        next: Next<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a;
}

/// The rest of a handler's chain, from inside a [`Layer`]. Cheap to copy: a layer may run it
/// several times (as the built-in retry layer does).
#[derive(Clone, Copy)]
pub struct Next<'a> {
    layers: &'a [Arc<dyn DynLayer>],
    endpoint: &'a dyn Endpoint,
}

impl<'a> Next<'a> {
    /// Runs the rest of the chain: the inner layers, then the handler.
    pub fn run<'b>(self, ctx: &'b mut Context) -> BoxFuture<'b, HandlerResult>
    where
        'a: 'b,
    {
        match self.layers.split_first() {
            Some((layer, inner)) => layer.call_dyn(
                ctx,
                Next {
                    layers: inner,
                    endpoint: self.endpoint,
                },
            ),
            None => self.endpoint.call(ctx),
        }
    }
}

/// [`Layer`] made object-safe.
pub(crate) trait DynLayer: Send + Sync + 'static {
    fn call_dyn<'a>(&'a self, ctx: &'a mut Context, next: Next<'a>)
    -> BoxFuture<'a, HandlerResult>;
}

impl<L: Layer> DynLayer for L {
    fn call_dyn<'a>(
        &'a self,
        ctx: &'a mut Context,
        next: Next<'a>,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.call(ctx, next))
    }
}

/// One handler wrapped in its layers.
pub(crate) struct Chain {
    layers: Vec<Arc<dyn DynLayer>>,
    endpoint: Arc<dyn Endpoint>,
}

impl Chain {
    /// `layers` outermost first around `endpoint`.
    pub(crate) fn new(layers: Vec<Arc<dyn DynLayer>>, endpoint: Arc<dyn Endpoint>) -> Self {
        Chain { layers, endpoint }
    }

    /// The handler's endpoint, under the layers.
    pub(crate) fn endpoint(&self) -> &dyn Endpoint {
        &*self.endpoint
    }

    /// Runs the whole chain.
    pub(crate) async fn run(&self, ctx: &mut Context) -> HandlerResult {
        Next {
            layers: &self.layers,
            endpoint: &*self.endpoint,
        }
        .run(ctx)
        .await
    }
}
