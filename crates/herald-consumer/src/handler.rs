//! Handlers: plain `async fn`s (or structs implementing [`Handler`]) taking the typed event and
//! a context; and the type-erased endpoint the router runs them through.
//!
//! A handler's context is borrowed (`&mut Context`, `&mut TxContext<O>`), so that a handler can
//! run queries on the transaction (`ctx.db()`) and the inbox layer gets the transaction back
//! to commit it. An `async fn` item, and a Rust 2024 `async` closure that captures nothing,
//! become handlers through a blanket implementation; a handler that needs state (a client, a
//! configuration) is a struct implementing [`Handler`]. `AsyncFn` itself cannot be the bound:
//! the futures of `AsyncFn` values cannot be required to be `Send` on stable Rust, and a
//! consumer runs handlers on a multi-threaded runtime.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use herald_core::{BoxFuture, Event};

use crate::{Context, HandlerError, HandlerResult, IntoOutcome, Panicked};

/// Handles events of type `E` with a context `C` ([`Context`], or
/// [`TxContext`](crate::TxContext) in transactional mode).
///
/// Implemented by every `async fn(E, &mut C) -> R` where `R` is `()`, an
/// [`Outcome`](crate::Outcome) or a `Result` of either ([`IntoOutcome`]); implement it on a
/// struct for a handler with state:
///
/// ```
/// use herald_consumer::{Context, Handler, HandlerResult, Outcome};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { total_cents: i64 }
/// # impl herald_core::Event for OrderCreated { const TYPE: &'static str = "ordering.order_created"; }
///
/// struct Audit { threshold_cents: i64 }
///
/// impl Handler<OrderCreated, Context> for Audit {
///     async fn handle(&self, order: OrderCreated, ctx: &mut Context) -> HandlerResult {
///         if order.total_cents > self.threshold_cents {
///             tracing::info!(message = %ctx.message_id(), "large order");
///         }
///         Ok(Outcome::Done)
///     }
/// }
/// ```
pub trait Handler<E, C>: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: E, ctx: &mut C) -> impl Future<Output = HandlerResult> + Send;
}

/// The blanket implementation for functions, through a helper trait that names the future's
/// lifetime (what a plain `Fn(E, &mut C) -> Fut` bound cannot).
mod function {
    use std::future::Future;

    use crate::IntoOutcome;

    /// A function `(E, &'a mut C) -> impl Future + Send + 'a`. Sealed: implemented only by
    /// the blanket impl below.
    pub trait HandlerFn<'a, E, C: 'a>: Send + Sync + 'static {
        /// What the function returns.
        type Output: IntoOutcome;
        /// Its future.
        type Future: Future<Output = Self::Output> + Send + 'a;
        /// Calls it.
        fn call(&self, event: E, ctx: &'a mut C) -> Self::Future;
    }

    impl<'a, E, C, F, Fut> HandlerFn<'a, E, C> for F
    where
        C: 'a,
        F: Fn(E, &'a mut C) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'a,
        Fut::Output: IntoOutcome,
    {
        type Output = Fut::Output;
        type Future = Fut;

        fn call(&self, event: E, ctx: &'a mut C) -> Fut {
            self(event, ctx)
        }
    }
}

impl<E, C, F> Handler<E, C> for F
where
    E: Send + 'static,
    C: Send + 'static,
    F: for<'a> function::HandlerFn<'a, E, C>,
{
    async fn handle(&self, event: E, ctx: &mut C) -> HandlerResult {
        self.call(event, ctx).await.into_outcome()
    }
}

/// A handler with its event type erased: decodes the envelope in the context and runs.
/// Innermost element of every handler's chain of layers.
pub(crate) trait Endpoint: Send + Sync + 'static {
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult>;

    /// Takes the consumer's settings, once, before the first call.
    fn configure(&self, _config: &crate::ConsumerConfig) {}

    /// Holds `key` of `consumer` in the endpoint's inbox for message `id`, away for a delayed
    /// retry and due back in `back_in` ([`herald_core::Inbox::hold_key`]); `None` for an
    /// endpoint that keeps no holds (no transactional inbox).
    fn hold<'a>(
        &'a self,
        _consumer: &'a str,
        _key: &'a str,
        _id: herald_core::Uuid,
        _back_in: std::time::Duration,
    ) -> Option<BoxFuture<'a, herald_core::Result<()>>> {
        None
    }

    /// Removes that hold ([`herald_core::Inbox::release_key`]); `None` as for
    /// [`hold`](Self::hold).
    fn release<'a>(
        &'a self,
        _consumer: &'a str,
        _key: &'a str,
        _id: herald_core::Uuid,
    ) -> Option<BoxFuture<'a, herald_core::Result<()>>> {
        None
    }
}

/// Decodes the context's envelope as `E`. The router checked decodability before any handler
/// ran, so a failure here is permanent.
pub(crate) fn decode<E: Event>(ctx: &Context) -> Result<E, HandlerError> {
    ctx.envelope()
        .decode::<E>()
        .map_err(HandlerError::permanent)
}

/// Runs a handler's future, turning a panic into a [`Panicked`] error: a handler bug costs the
/// message its retries and then a dead letter, never the consumer.
pub(crate) async fn catch_panic<F>(handler: F) -> HandlerResult
where
    F: Future<Output = HandlerResult>,
{
    let mut handler = std::pin::pin!(handler);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(HandlerError::new(Panicked::from_payload(
                payload.as_ref(),
            )))),
        }
    })
    .await
}

/// A plain handler: no inbox; effects at least once.
pub(crate) struct Plain<E, H> {
    handler: H,
    event: PhantomData<fn() -> E>,
}

impl<E, H> Plain<E, H> {
    pub(crate) fn new(handler: H) -> Arc<Self> {
        Arc::new(Plain {
            handler,
            event: PhantomData,
        })
    }
}

impl<E: Event, H: Handler<E, Context>> Endpoint for Plain<E, H> {
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let event = decode::<E>(ctx)?;
            catch_panic(self.handler.handle(event, ctx)).await
        })
    }
}
