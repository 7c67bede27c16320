//! Domain event handlers: async functions run inside the unit of work's transaction.

use std::future::Future;
use std::marker::PhantomData;

use herald_core::{BoxError, BoxFuture, TransactionalOutbox};

use crate::Transaction;
use crate::event::{AnyEnvelope, DomainEnvelope, DomainEvent, downcast};

/// Handles one type of domain event inside the unit of work's transaction, before commit.
///
/// Its writes (on [`Transaction::conn`]) commit or roll back with the rest of the unit of
/// work, and it may raise further domain events ([`Transaction::raise`],
/// [`Transaction::collect`]) or record integration events ([`Transaction::record`]). Returning
/// an error aborts the whole unit of work.
///
/// Every `async fn` (or non-capturing async closure) of the shape
/// `async fn(&DomainEnvelope<E>, &mut Transaction<O>) -> Result<(), Err>` is a handler; a
/// handler that needs state (a clock, a configuration, a client) is a struct implementing this
/// trait:
///
/// ```
/// use herald_core::{BoxError, TransactionalOutbox};
/// use herald_domain::{DomainEnvelope, DomainEvent, DomainHandler, Transaction};
///
/// struct OrderPlaced { total_cents: i64 }
/// impl DomainEvent for OrderPlaced {}
///
/// struct FlagLargeOrders { threshold_cents: i64 }
///
/// impl<O: TransactionalOutbox> DomainHandler<OrderPlaced, O> for FlagLargeOrders {
///     async fn handle(
///         &self,
///         event: &DomainEnvelope<OrderPlaced>,
///         tx: &mut Transaction<O>,
///     ) -> Result<(), BoxError> {
///         if event.total_cents > self.threshold_cents {
///             // … write a review task on `tx.conn()` …
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait DomainHandler<E: DomainEvent, O: TransactionalOutbox>: Send + Sync + 'static {
    /// Handles `event` in `tx`.
    fn handle(
        &self,
        event: &DomainEnvelope<E>,
        tx: &mut Transaction<O>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The shape of a handler function: `Fn(&'a DomainEnvelope<E>, &'a mut Transaction<O>)`
/// returning a `Send` future of `Result<(), Err>`.
///
/// It exists because a plain `Fn` bound cannot say that the returned future borrows the
/// arguments; it is implemented for every such function, never by hand.
pub trait DomainHandlerFn<'a, E: 'a, O: TransactionalOutbox>:
    Fn(&'a DomainEnvelope<E>, &'a mut Transaction<O>) -> Self::Future
{
    /// The future the function returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'a;
    /// The function's error.
    type Error: Into<BoxError>;
}

impl<'a, E: 'a, O, F, Fut, Err> DomainHandlerFn<'a, E, O> for F
where
    O: TransactionalOutbox,
    F: Fn(&'a DomainEnvelope<E>, &'a mut Transaction<O>) -> Fut,
    Fut: Future<Output = Result<(), Err>> + Send + 'a,
    Err: Into<BoxError>,
{
    type Future = Fut;
    type Error = Err;
}

impl<E, O, F> DomainHandler<E, O> for F
where
    E: DomainEvent,
    O: TransactionalOutbox,
    F: for<'a> DomainHandlerFn<'a, E, O> + Send + Sync + 'static,
{
    async fn handle(
        &self,
        event: &DomainEnvelope<E>,
        tx: &mut Transaction<O>,
    ) -> Result<(), BoxError> {
        self(event, tx).await.map_err(Into::into)
    }
}

/// A handler with its event type erased, as the registry stores it.
pub(crate) trait ErasedHandler<O: TransactionalOutbox>: Send + Sync {
    fn call<'a>(
        &'a self,
        event: &'a dyn AnyEnvelope,
        tx: &'a mut Transaction<O>,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// A typed handler behind [`ErasedHandler`].
pub(crate) struct Typed<E, H> {
    handler: H,
    event: PhantomData<fn(&E)>,
}

impl<E, H> Typed<E, H> {
    pub(crate) fn new(handler: H) -> Self {
        Typed {
            handler,
            event: PhantomData,
        }
    }
}

impl<E, O, H> ErasedHandler<O> for Typed<E, H>
where
    E: DomainEvent,
    O: TransactionalOutbox,
    H: DomainHandler<E, O>,
{
    fn call<'a>(
        &'a self,
        event: &'a dyn AnyEnvelope,
        tx: &'a mut Transaction<O>,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            // The registry routes by the event's `TypeId`, so this never misses.
            let event = downcast::<E>(event).ok_or("domain event routed to the wrong handler")?;
            self.handler.handle(event, tx).await
        })
    }
}
