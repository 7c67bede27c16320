//! Typed integration events.

use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{Codec, Json};

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
///
/// The payload's format comes from [`Payload`]: JSON for a serde type, with nothing to write;
/// Protobuf for a prost message that says so in one line (see [`Payload`]).
pub trait Event: Payload + Send + Sync + 'static {
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

/// How an event's value is written into a payload: its [`Codec`].
///
/// Every serde type (`Serialize + DeserializeOwned`) has this already, with the [`Json`]
/// codec, so a serde event needs nothing more than its `impl Event`. A prost message (feature
/// `protobuf`) opts into the Protobuf codec with one line, and then is an event like any
/// other: recorded, relayed, routed and upcast the same way, its payload `application/protobuf`
/// with the message's full name as the envelope's `dataschema`.
///
#[cfg_attr(feature = "protobuf", doc = "```")]
#[cfg_attr(not(feature = "protobuf"), doc = "```text")]
/// use herald_core::{Event, Payload, Protobuf};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct OrderShipped {
///     #[prost(int64, tag = "1")]
///     order_id: i64,
///     #[prost(string, tag = "2")]
///     carrier: String,
/// }
///
/// impl prost::Name for OrderShipped {
///     const NAME: &'static str = "OrderShipped";
///     const PACKAGE: &'static str = "shipping.v1";
/// }
///
/// impl Payload for OrderShipped { type Codec = Protobuf; }
///
/// impl Event for OrderShipped {
///     const TYPE: &'static str = "shipping.order_shipped";
/// }
/// ```
///
/// Why a trait of its own with a blanket impl, rather than a codec parameter on [`Event`] or
/// a wrapper type: the dozens of `impl Event` of serde types keep compiling unchanged, a
/// Protobuf event is its own prost type (no `Proto<T>` to unwrap in every handler), and the
/// format is a property of the type, so a handler cannot ask for another format than the one
/// its producer wrote. The downstream `impl Payload for OrderShipped` is allowed next to the
/// blanket impl because `OrderShipped` is the implementer's own type and does not implement
/// `Serialize`: a type that derives both serde and prost is a JSON event (the compiler
/// reports the conflicting impl), and can be sent as Protobuf through a prost type of its own.
pub trait Payload: Sized {
    /// The codec that writes and reads this type's payloads.
    type Codec: Codec<Self> + Default;
}

impl<T: Serialize + DeserializeOwned> Payload for T {
    type Codec = Json;
}
