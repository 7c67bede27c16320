//! Typed integration events.

use serde::{Serialize, de::DeserializeOwned};

/// An integration event: a fact that leaves its bounded context.
///
/// A plain serde struct becomes an event with a two-line impl:
///
/// ```
/// use herald_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderCreated { order_id: u64, total_cents: i64 }
///
/// impl Event for OrderCreated {
///     const TYPE: &'static str = "ordering.order_created";
/// }
/// ```
///
/// Override [`Event::partition_key`] to keep the events of one aggregate in order
/// (events with the same key are published and handled in the order they were recorded).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable type name, `context.event_name` by convention. Never reuse a name for another
    /// meaning: consumers route on it.
    const TYPE: &'static str;

    /// Schema version of the payload; bump it on a breaking change.
    const VERSION: u32 = 1;

    /// The key that orders this event relative to others (typically the aggregate id).
    /// `None` (the default) means no ordering constraint.
    fn partition_key(&self) -> Option<String> {
        None
    }
}
