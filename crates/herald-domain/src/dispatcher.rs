//! Dispatch: runs the converters and handlers of every pending domain event, including the
//! events handlers raise, until none is left.
//!
//! Events are dispatched first in, first out: those the work raised, in the order raised, then
//! those their handlers raised, and so on. Each event carries its *generation* (0 when the
//! work raised it, n + 1 when a handler of a generation-n event did); an event past
//! [`UnitOfWorkConfig::max_depth`](crate::UnitOfWorkConfig::max_depth) aborts the unit of work
//! with [`Error::TooDeep`]. Handlers that raise each other's events in a cycle therefore fail
//! after a bounded amount of work instead of looping forever, while a unit of work may raise
//! any number of events at a shallow depth.

use herald_core::TransactionalOutbox;

use crate::transaction::{Cause, Pending};
use crate::{Error, Result, Transaction};

impl<O: TransactionalOutbox> Transaction<O> {
    /// Dispatches pending domain events until none is left; returns how many were dispatched.
    ///
    /// For each event, its converters run first (their integration events join the ones to
    /// record), then its handlers, one after the other on this transaction. The first error
    /// stops the dispatch.
    pub(crate) async fn dispatch(&mut self) -> Result<usize> {
        let uow = self.uow.clone();
        let registry = uow.registry();
        let max_depth = uow.config().max_depth;
        let mut dispatched = 0;
        while let Some(Pending { depth, envelope }) = self.pending.pop_front() {
            if depth > max_depth {
                return Err(Error::TooDeep {
                    event: envelope.event_name(),
                    depth,
                    max_depth,
                });
            }
            dispatched += 1;
            let Some(route) = registry.get(envelope.event_type()) else {
                tracing::trace!(
                    event = envelope.event_name(),
                    "no handler or converter: the domain event stays inside"
                );
                continue;
            };
            for converter in &route.converters {
                if let Some(converted) = converter.convert(&*envelope, &self.origin)? {
                    tracing::trace!(
                        event = route.name,
                        integration_event = converter.target(),
                        id = %converted.id,
                        "converted domain event"
                    );
                    self.outgoing.push(converted);
                }
            }
            if route.handlers.is_empty() {
                continue;
            }
            self.cause = Some(Cause {
                id: envelope.id(),
                aggregate_id: envelope.aggregate_id().to_owned(),
                depth,
            });
            for handler in &route.handlers {
                if let Err(source) = handler.call(&*envelope, self).await {
                    self.cause = None;
                    return Err(Error::Handler {
                        event: route.name,
                        source,
                    });
                }
            }
            self.cause = None;
        }
        Ok(dispatched)
    }
}
