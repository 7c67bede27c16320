//! Converters: how a domain event becomes zero or one integration event, and the metadata the
//! integration event inherits.

use std::marker::PhantomData;

use herald_core::{Envelope, Event, Headers, Metadata, TraceContext};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Origin;
use crate::event::{AnyEnvelope, DomainEnvelope, DomainEvent, downcast};

/// An integration event produced by a converter, with the partition key or headers the
/// converter chose. A converter that only maps fields returns `Option<I>` instead.
///
/// ```
/// use herald_domain::Outgoing;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct PriceChanged { sku: String }
/// # impl herald_core::Event for PriceChanged { const TYPE: &'static str = "catalog.price_changed"; }
/// let outgoing = Outgoing::new(PriceChanged { sku: "tea-01".into() })
///     .with_partition_key("tea-01")
///     .with_header("tenant", "acme");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing<I> {
    event: I,
    partition_key: Key,
    headers: Headers,
}

/// How an integration event's partition key is chosen.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Key {
    /// [`Event::partition_key`], else the aggregate id of the domain event.
    Default,
    /// This key.
    Set(String),
    /// No key: no ordering constraint.
    Unset,
}

impl<I: Event> Outgoing<I> {
    /// `event`, keyed by [`Event::partition_key`] or else by the domain event's aggregate id.
    pub fn new(event: I) -> Self {
        Outgoing {
            event,
            partition_key: Key::Default,
            headers: Headers::new(),
        }
    }

    /// Keys the event by `key`, whatever the event type and the aggregate say.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Key::Set(key.into());
        self
    }

    /// Publishes the event without a partition key: no order with respect to other events.
    pub fn without_partition_key(mut self) -> Self {
        self.partition_key = Key::Unset;
        self
    }

    /// Adds a header (over one of the same name inherited from the unit of work's origin).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The integration event.
    pub fn event(&self) -> &I {
        &self.event
    }
}

/// What a converter may return: `Option<I>`, `Option<Outgoing<I>>` or `Outgoing<I>`, where `I`
/// is an integration event. `None` means the domain event stays inside the context.
pub trait Conversion {
    /// The integration event type.
    type Event: Event;

    /// The integration event to record, if any.
    fn into_outgoing(self) -> Option<Outgoing<Self::Event>>;
}

impl<I: Event> Conversion for Option<I> {
    type Event = I;

    fn into_outgoing(self) -> Option<Outgoing<I>> {
        self.map(Outgoing::new)
    }
}

impl<I: Event> Conversion for Option<Outgoing<I>> {
    type Event = I;

    fn into_outgoing(self) -> Option<Outgoing<I>> {
        self
    }
}

impl<I: Event> Conversion for Outgoing<I> {
    type Event = I;

    fn into_outgoing(self) -> Option<Outgoing<I>> {
        Some(self)
    }
}

/// Where an integration event comes from: what its metadata inherits.
pub(crate) struct Lineage<'a> {
    /// The unit of work's correlation id.
    pub(crate) correlation_id: Uuid,
    /// The domain event converted or handled, else the unit of work's causation id.
    pub(crate) causation_id: Option<Uuid>,
    /// The default partition key when the event type names none.
    pub(crate) aggregate_id: Option<&'a str>,
    /// The domain event's time, which a converted event keeps.
    pub(crate) occurred_at: Option<OffsetDateTime>,
    /// The trace context to propagate.
    pub(crate) trace: &'a TraceContext,
    /// Headers every integration event of the unit of work carries.
    pub(crate) headers: &'a Headers,
}

/// Encodes `event` into the envelope the outbox records (with the JSON codec).
///
/// Partition key: `key` if set, else [`Event::partition_key`], else the aggregate id.
/// Headers: the lineage's, then `headers` over them.
pub(crate) fn encode<I: Event>(
    event: &I,
    key: Key,
    headers: Headers,
    lineage: &Lineage<'_>,
) -> herald_core::Result<Envelope> {
    let partition_key = match key {
        Key::Set(key) => Some(key),
        Key::Unset => None,
        Key::Default => event
            .partition_key()
            .or_else(|| lineage.aggregate_id.map(str::to_owned)),
    };
    let mut all_headers = lineage.headers.clone();
    all_headers.extend(headers);
    let metadata = Metadata {
        correlation_id: Some(lineage.correlation_id),
        causation_id: lineage.causation_id,
        partition_key: None,
        trace: lineage.trace.clone(),
        headers: all_headers,
    };
    let mut envelope = Envelope::from_event(event, metadata)?;
    envelope.partition_key = partition_key;
    if let Some(occurred_at) = lineage.occurred_at {
        envelope.occurred_at = occurred_at;
    }
    Ok(envelope)
}

/// The envelope of a converted domain event: causation = the domain event's id, correlation
/// inherited, partition key defaulting to the aggregate id, same time.
pub(crate) fn convert<E: DomainEvent, I: Event>(
    domain: &DomainEnvelope<E>,
    outgoing: Outgoing<I>,
    origin: &Origin,
) -> herald_core::Result<Envelope> {
    let lineage = Lineage {
        correlation_id: domain.correlation_id,
        causation_id: Some(domain.id),
        aggregate_id: Some(&domain.aggregate_id),
        occurred_at: Some(domain.occurred_at),
        trace: &origin.trace,
        headers: &origin.headers,
    };
    encode(
        &outgoing.event,
        outgoing.partition_key,
        outgoing.headers,
        &lineage,
    )
}

/// A converter with its event types erased, as the registry stores it.
pub(crate) trait ErasedConverter: Send + Sync {
    /// The integration event's `TYPE`, for logs.
    fn target(&self) -> &'static str;
    /// The envelope to record for `event`, if the converter produces one.
    fn convert(
        &self,
        event: &dyn AnyEnvelope,
        origin: &Origin,
    ) -> herald_core::Result<Option<Envelope>>;
}

/// A typed converter function behind [`ErasedConverter`].
pub(crate) struct TypedConverter<E, F> {
    function: F,
    event: PhantomData<fn(&E)>,
}

impl<E, F> TypedConverter<E, F> {
    pub(crate) fn new(function: F) -> Self {
        TypedConverter {
            function,
            event: PhantomData,
        }
    }
}

impl<E, F, R> ErasedConverter for TypedConverter<E, F>
where
    E: DomainEvent,
    F: Fn(&DomainEnvelope<E>) -> R + Send + Sync,
    R: Conversion,
{
    fn target(&self) -> &'static str {
        <R::Event as Event>::TYPE
    }

    fn convert(
        &self,
        event: &dyn AnyEnvelope,
        origin: &Origin,
    ) -> herald_core::Result<Option<Envelope>> {
        // The registry routes by the event's `TypeId`, so this never misses.
        let Some(domain) = downcast::<E>(event) else {
            return Ok(None);
        };
        (self.function)(domain)
            .into_outgoing()
            .map(|outgoing| convert(domain, outgoing, origin))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    struct Placed {
        order_id: u32,
    }
    impl DomainEvent for Placed {}

    #[derive(Serialize, Deserialize)]
    struct Published {
        order_id: u32,
    }
    impl Event for Published {
        const TYPE: &'static str = "ordering.published";
    }

    #[derive(Serialize, Deserialize)]
    struct Keyed;
    impl Event for Keyed {
        const TYPE: &'static str = "ordering.keyed";
        fn partition_key(&self) -> Option<String> {
            Some("by-event-type".into())
        }
    }

    fn origin() -> Origin {
        Origin::new()
            .with_causation_id(Uuid::now_v7())
            .with_header("tenant", "acme")
            .with_header("region", "eu")
    }

    #[test]
    fn converted_event_inherits_correlation_and_is_caused_by_the_domain_event() {
        let domain = DomainEnvelope::new("order-7", Placed { order_id: 7 });
        let origin = origin();
        let outgoing = Outgoing::new(Published {
            order_id: domain.order_id,
        })
        .with_header("region", "us");
        let envelope = convert(&domain, outgoing, &origin).unwrap();
        assert_eq!(envelope.correlation_id, domain.correlation_id);
        assert_eq!(envelope.causation_id, Some(domain.id));
        assert_eq!(envelope.partition_key.as_deref(), Some("order-7"));
        assert_eq!(envelope.occurred_at, domain.occurred_at);
        assert_eq!(envelope.event_type, "ordering.published");
        assert_eq!(envelope.headers["tenant"], "acme");
        assert_eq!(
            envelope.headers["region"], "us",
            "the converter's header wins"
        );
        assert_ne!(envelope.id, domain.id);
    }

    #[test]
    fn partition_key_is_the_converters_then_the_event_types_then_the_aggregate_id() {
        let domain = DomainEnvelope::new("order-7", Placed { order_id: 7 });
        let origin = origin();
        let key = |outgoing| convert(&domain, outgoing, &origin).unwrap().partition_key;
        assert_eq!(key(Outgoing::new(Keyed)).as_deref(), Some("by-event-type"));
        assert_eq!(
            key(Outgoing::new(Keyed).with_partition_key("chosen")).as_deref(),
            Some("chosen")
        );
        assert_eq!(key(Outgoing::new(Keyed).without_partition_key()), None);
    }

    #[test]
    fn a_converter_returning_none_produces_nothing() {
        let converter = TypedConverter::new(|event: &DomainEnvelope<Placed>| {
            event.order_id.is_multiple_of(2).then(|| Published {
                order_id: event.order_id,
            })
        });
        let origin = origin();
        let odd = DomainEnvelope::new("order-7", Placed { order_id: 7 });
        let even = DomainEnvelope::new("order-8", Placed { order_id: 8 });
        assert!(converter.convert(&odd, &origin).unwrap().is_none());
        assert!(converter.convert(&even, &origin).unwrap().is_some());
        assert_eq!(converter.target(), "ordering.published");
    }
}
