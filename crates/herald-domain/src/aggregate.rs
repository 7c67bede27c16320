//! Aggregates record the domain events their methods raise, and hand them over when saved.

use std::any::{Any, type_name};
use std::fmt;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{AnyEnvelope, DomainEnvelope, DomainEvent};

/// An aggregate root that raises domain events.
///
/// The aggregate keeps a [`DomainEvents`] field; its methods raise events into it while they
/// change state, and the code that saves the aggregate hands them to the unit of work with
/// [`Transaction::collect`](crate::Transaction::collect).
///
/// ```
/// use herald_domain::{Aggregate, DomainEvent, DomainEvents};
///
/// struct OrderPlaced { total_cents: i64 }
/// impl DomainEvent for OrderPlaced {}
///
/// struct Order { id: u64, total_cents: i64, events: DomainEvents }
///
/// impl Order {
///     fn place(id: u64, total_cents: i64) -> Order {
///         let mut order = Order { id, total_cents, events: DomainEvents::new() };
///         order.events.raise(OrderPlaced { total_cents });
///         order
///     }
/// }
///
/// impl Aggregate for Order {
///     fn aggregate_id(&self) -> String { self.id.to_string() }
///     fn domain_events(&mut self) -> &mut DomainEvents { &mut self.events }
/// }
///
/// let order = Order::place(7, 1_250);
/// assert_eq!(order.events.of::<OrderPlaced>().next().map(|e| e.total_cents), Some(1_250));
/// ```
pub trait Aggregate {
    /// The aggregate's identity as text: stamped on its domain events, and the default
    /// partition key of the integration events converted from them (so one aggregate's events
    /// are published and consumed in order).
    fn aggregate_id(&self) -> String;

    /// The events raised and not yet handed over.
    fn domain_events(&mut self) -> &mut DomainEvents;
}

/// The domain events an aggregate raised and has not handed over yet, in the order raised.
///
/// Each event gets its id (UUIDv7) and time when it is raised. The list is deliberately not
/// `Clone`: a copy of pending events could be handed over, and dispatched, twice. Aggregates
/// that need `Clone` implement it by hand and start the copy with `DomainEvents::new()`.
#[derive(Default)]
pub struct DomainEvents {
    raised: Vec<Box<dyn Raised>>,
}

impl DomainEvents {
    /// An empty list.
    pub fn new() -> Self {
        DomainEvents::default()
    }

    /// Raises `event`: records it, with a fresh id and the current time, to be dispatched when
    /// the aggregate is saved in a unit of work.
    pub fn raise<E: DomainEvent>(&mut self, event: E) {
        self.raised.push(Box::new(RaisedEvent {
            id: Uuid::now_v7(),
            occurred_at: OffsetDateTime::now_utc(),
            event,
        }));
    }

    /// How many events are pending.
    pub fn len(&self) -> usize {
        self.raised.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }

    /// The pending events of type `E`, in the order raised: what tests of an aggregate assert.
    pub fn of<E: DomainEvent>(&self) -> impl Iterator<Item = &E> {
        self.raised.iter().filter_map(|raised| {
            let any: &dyn Any = &**raised;
            any.downcast_ref::<RaisedEvent<E>>().map(|r| &r.event)
        })
    }

    /// Drops every pending event (an aggregate reloaded after a failed save, say).
    pub fn clear(&mut self) {
        self.raised.clear();
    }

    /// Takes the pending events out, leaving the list empty.
    pub(crate) fn take(&mut self) -> Vec<Box<dyn Raised>> {
        std::mem::take(&mut self.raised)
    }
}

impl fmt::Debug for DomainEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.raised.iter().map(|raised| raised.name()))
            .finish()
    }
}

/// What the unit of work adds to a raised event when it takes it over.
pub(crate) struct Stamp<'a> {
    pub(crate) aggregate_id: &'a str,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
}

/// A raised event with its type erased.
pub(crate) trait Raised: Any + Send + Sync {
    /// The event's Rust type name.
    fn name(&self) -> &'static str;
    /// The envelope the event is dispatched in.
    fn into_envelope(self: Box<Self>, stamp: &Stamp<'_>) -> Box<dyn AnyEnvelope>;
}

struct RaisedEvent<E> {
    id: Uuid,
    occurred_at: OffsetDateTime,
    event: E,
}

impl<E: DomainEvent> Raised for RaisedEvent<E> {
    fn name(&self) -> &'static str {
        type_name::<E>()
    }

    fn into_envelope(self: Box<Self>, stamp: &Stamp<'_>) -> Box<dyn AnyEnvelope> {
        Box::new(DomainEnvelope {
            id: self.id,
            occurred_at: self.occurred_at,
            aggregate_id: stamp.aggregate_id.to_owned(),
            correlation_id: stamp.correlation_id,
            causation_id: stamp.causation_id,
            event: self.event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::downcast;

    #[derive(Debug, PartialEq)]
    struct Placed(u32);
    impl DomainEvent for Placed {}

    struct Shipped;
    impl DomainEvent for Shipped {}

    #[test]
    fn raised_events_keep_their_order_identity_and_time() {
        let mut events = DomainEvents::new();
        let before = OffsetDateTime::now_utc();
        events.raise(Placed(1));
        events.raise(Shipped);
        events.raise(Placed(2));
        assert_eq!(events.len(), 3);
        assert_eq!(
            events.of::<Placed>().collect::<Vec<_>>(),
            [&Placed(1), &Placed(2)]
        );
        assert!(format!("{events:?}").contains("Shipped"));

        let correlation_id = Uuid::now_v7();
        let stamp = Stamp {
            aggregate_id: "order-9",
            correlation_id,
            causation_id: None,
        };
        let envelopes: Vec<_> = events
            .take()
            .into_iter()
            .map(|raised| raised.into_envelope(&stamp))
            .collect();
        assert!(events.is_empty());
        let first = downcast::<Placed>(&*envelopes[0]).unwrap();
        let last = downcast::<Placed>(&*envelopes[2]).unwrap();
        assert_eq!(first.event, Placed(1));
        assert_eq!(first.aggregate_id, "order-9");
        assert_eq!(first.correlation_id, correlation_id);
        assert!(first.occurred_at >= before);
        assert!(first.id < last.id, "UUIDv7 ids sort in the order raised");
    }
}
