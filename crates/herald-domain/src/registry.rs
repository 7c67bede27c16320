//! The registry: which handlers and converters run for which domain event type.

use std::any::{TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use herald_core::TransactionalOutbox;

use crate::converter::{Conversion, ErasedConverter, TypedConverter};
use crate::event::{DomainEnvelope, DomainEvent};
use crate::handler::{DomainHandler, ErasedHandler, Typed};

/// Handlers and converters, registered per domain event type.
///
/// Built once at start-up and handed to [`UnitOfWork::new`](crate::UnitOfWork::new); `O` is
/// the outbox whose transactions the handlers run in.
///
/// For each dispatched domain event, its converters run first, in registration order (so the
/// fact leaves the context in the order it happened), then its handlers, in registration order.
/// A domain event with neither is simply dropped: it stays inside the context.
pub struct Registry<O: TransactionalOutbox> {
    routes: HashMap<TypeId, Route<O>>,
}

/// What runs for one domain event type.
pub(crate) struct Route<O: TransactionalOutbox> {
    pub(crate) name: &'static str,
    pub(crate) converters: Vec<Arc<dyn ErasedConverter>>,
    pub(crate) handlers: Vec<Arc<dyn ErasedHandler<O>>>,
}

impl<O: TransactionalOutbox> Registry<O> {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            routes: HashMap::new(),
        }
    }

    /// Runs `handler` for every domain event of type `E`, inside the unit of work's
    /// transaction, before commit. Several handlers may handle one type.
    ///
    /// `handler` is an `async fn(&DomainEnvelope<E>, &mut Transaction<O>) -> Result<(), Err>`
    /// or a [`DomainHandler`] implementation.
    pub fn on<E, H>(mut self, handler: H) -> Self
    where
        E: DomainEvent,
        H: DomainHandler<E, O>,
    {
        self.route::<E>()
            .handlers
            .push(Arc::new(Typed::<E, H>::new(handler)));
        self
    }

    /// Converts every domain event of type `E` with `converter`, and records what it returns
    /// in the outbox in the same transaction: registering it is all it takes. Several
    /// converters may convert one type, each recording its own integration event.
    ///
    /// `converter` maps `&DomainEnvelope<E>` to `Option<I>` (`None`: the event stays inside),
    /// `Option<Outgoing<I>>` or `Outgoing<I>`, where `I` is a [`herald_core::Event`]. The
    /// integration event gets the domain event's id as causation id, its correlation id, its
    /// time, and, unless the converter or `I::partition_key` choose another, its aggregate id
    /// as partition key.
    pub fn convert<E, F, R>(mut self, converter: F) -> Self
    where
        E: DomainEvent,
        F: Fn(&DomainEnvelope<E>) -> R + Send + Sync + 'static,
        R: Conversion + 'static,
    {
        self.route::<E>()
            .converters
            .push(Arc::new(TypedConverter::<E, F>::new(converter)));
        self
    }

    /// Adds every handler and converter of `other` after those already registered (one
    /// registry per module, merged at start-up).
    pub fn merge(mut self, other: Registry<O>) -> Self {
        for (type_id, route) in other.routes {
            match self.routes.get_mut(&type_id) {
                Some(mine) => {
                    mine.converters.extend(route.converters);
                    mine.handlers.extend(route.handlers);
                }
                None => {
                    self.routes.insert(type_id, route);
                }
            }
        }
        self
    }

    /// Whether anything is registered for domain events of type `E`.
    pub fn handles<E: DomainEvent>(&self) -> bool {
        self.routes.contains_key(&TypeId::of::<E>())
    }

    /// What runs for the domain event type `type_id`, if anything.
    pub(crate) fn get(&self, type_id: TypeId) -> Option<&Route<O>> {
        self.routes.get(&type_id)
    }

    fn route<E: DomainEvent>(&mut self) -> &mut Route<O> {
        self.routes
            .entry(TypeId::of::<E>())
            .or_insert_with(|| Route {
                name: type_name::<E>(),
                converters: Vec::new(),
                handlers: Vec::new(),
            })
    }
}

impl<O: TransactionalOutbox> Default for Registry<O> {
    fn default() -> Self {
        Registry::new()
    }
}

impl<O: TransactionalOutbox> Clone for Registry<O> {
    fn clone(&self) -> Self {
        let routes = self
            .routes
            .iter()
            .map(|(type_id, route)| {
                let route = Route {
                    name: route.name,
                    converters: route.converters.clone(),
                    handlers: route.handlers.clone(),
                };
                (*type_id, route)
            })
            .collect();
        Registry { routes }
    }
}

impl<O: TransactionalOutbox> fmt::Debug for Registry<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut routes: Vec<_> = self.routes.values().collect();
        routes.sort_by_key(|route| route.name);
        let mut map = f.debug_map();
        for route in routes {
            let targets: Vec<_> = route.converters.iter().map(|c| c.target()).collect();
            map.entry(
                &route.name,
                &format_args!(
                    "handlers: {}, converts to: {targets:?}",
                    route.handlers.len()
                ),
            );
        }
        map.finish()
    }
}
