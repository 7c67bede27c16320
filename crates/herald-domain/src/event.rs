//! Domain events, and the envelope each one is dispatched in.

use std::any::{Any, TypeId, type_name};
use std::fmt;
use std::ops::Deref;

use time::OffsetDateTime;
use uuid::Uuid;

/// A domain event: a fact that happened inside the bounded context, raised by an aggregate
/// and handled in the same process and transaction.
///
/// Domain events are plain Rust values. They are never serialized and never leave the
/// context as they are, so they may carry whatever the domain finds convenient (value objects,
/// internal ids, amounts before rounding). The ones other contexts must hear about leave
/// through a converter (see [`Registry::convert`](crate::Registry::convert)), which maps them
/// onto a published contract, a [`herald_core::Event`].
///
/// ```
/// use herald_domain::DomainEvent;
///
/// struct OrderPlaced { order_id: u64, total_cents: i64 }
///
/// impl DomainEvent for OrderPlaced {}
/// ```
pub trait DomainEvent: Any + Send + Sync {}

/// A dispatched domain event with its identity: what handlers and converters receive.
///
/// Dereferences to the event, so `event.order_id` reads the field of the event inside.
#[derive(Clone, PartialEq)]
pub struct DomainEnvelope<E> {
    /// Unique id (UUIDv7), given when the event was raised. The integration events converted
    /// from this one carry it as their causation id.
    pub id: Uuid,
    /// When the event was raised (UTC). Converted integration events carry the same time.
    pub occurred_at: OffsetDateTime,
    /// The aggregate that raised the event; the default partition key of converted events.
    pub aggregate_id: String,
    /// The unit of work's correlation id.
    pub correlation_id: Uuid,
    /// What caused this event: the domain event whose handler raised it, or else the unit of
    /// work's causation id (typically the command or message being handled).
    pub causation_id: Option<Uuid>,
    /// The event.
    pub event: E,
}

impl<E> DomainEnvelope<E> {
    /// An envelope for `event` raised now by `aggregate_id`, with fresh ids and no cause: for
    /// calling a handler or a converter directly in a unit test.
    pub fn new(aggregate_id: impl Into<String>, event: E) -> Self {
        DomainEnvelope {
            id: Uuid::now_v7(),
            occurred_at: OffsetDateTime::now_utc(),
            aggregate_id: aggregate_id.into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            event,
        }
    }

    /// The event's Rust type name, as logs and errors show it.
    pub fn name(&self) -> &'static str {
        type_name::<E>()
    }
}

impl<E> Deref for DomainEnvelope<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.event
    }
}

impl<E: fmt::Debug> fmt::Debug for DomainEnvelope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainEnvelope")
            .field("id", &self.id)
            .field("occurred_at", &self.occurred_at)
            .field("aggregate_id", &self.aggregate_id)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("event", &self.event)
            .finish()
    }
}

/// A domain envelope with its event type erased, as the unit of work queues it. The dispatcher
/// routes it by [`AnyEnvelope::event_type`] and handlers downcast it back.
pub(crate) trait AnyEnvelope: Any + Send + Sync {
    /// `TypeId` of the event inside (not of the envelope).
    fn event_type(&self) -> TypeId;
    /// Rust type name of the event inside.
    fn event_name(&self) -> &'static str;
    /// The envelope's id.
    fn id(&self) -> Uuid;
    /// The aggregate that raised the event.
    fn aggregate_id(&self) -> &str;
}

impl<E: DomainEvent> AnyEnvelope for DomainEnvelope<E> {
    fn event_type(&self) -> TypeId {
        TypeId::of::<E>()
    }

    fn event_name(&self) -> &'static str {
        type_name::<E>()
    }

    fn id(&self) -> Uuid {
        self.id
    }

    fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
}

/// The typed envelope behind an erased one, if it holds an `E`.
pub(crate) fn downcast<E: DomainEvent>(envelope: &dyn AnyEnvelope) -> Option<&DomainEnvelope<E>> {
    let any: &dyn Any = envelope;
    any.downcast_ref::<DomainEnvelope<E>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Placed(u32);
    impl DomainEvent for Placed {}

    struct Other;
    impl DomainEvent for Other {}

    #[test]
    fn erased_envelopes_route_by_event_type_and_downcast_back() {
        let envelope = DomainEnvelope::new("order-1", Placed(7));
        let erased: Box<dyn AnyEnvelope> = Box::new(envelope.clone());
        assert_eq!(erased.event_type(), TypeId::of::<Placed>());
        assert!(erased.event_name().ends_with("Placed"));
        assert_eq!(erased.aggregate_id(), "order-1");
        assert_eq!(downcast::<Placed>(&*erased), Some(&envelope));
        assert!(downcast::<Other>(&*erased).is_none());
        assert_eq!(envelope.0, 7, "derefs to the event");
        assert_eq!(envelope.id.get_version_num(), 7);
    }
}
