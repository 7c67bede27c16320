//! What a schema change does to the readers on each side of a rolling deployment.
//!
//! * **backward** compatible: a consumer upgraded first (reading with the *new* schema) reads
//!   the messages written with the *old* one (those still in the outbox, on the broker, in a
//!   dead-letter queue, or from producers not yet upgraded).
//! * **forward** compatible: a producer upgraded first (writing with the *new* schema) is read
//!   by consumers still on the *old* one.
//!
//! A change that breaks either direction needs a new `VERSION` (and an upcaster on the
//! consumer's side), not an edit of the existing one.

use serde::Serialize;

use crate::snapshot::{Format, Snapshot};

/// One reason a direction breaks: where, and what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// Where in the payload: `$` is the payload itself, `$.customer` a field, `$.lines[]` the
    /// items of an array, `$.status{"Open"}` one variant of a union; for Protobuf
    /// `shop.Order.customer (3)`.
    pub path: String,
    /// What changed, and why the reader of that direction fails.
    pub change: String,
}

/// The verdict on one change of one (type, version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Why a consumer upgraded first cannot read old messages (empty: it can).
    pub backward: Vec<Incompatibility>,
    /// Why old consumers cannot read what an upgraded producer writes (empty: they can).
    pub forward: Vec<Incompatibility>,
}

impl Comparison {
    /// Whether either direction breaks.
    pub fn is_breaking(&self) -> bool {
        !self.backward.is_empty() || !self.forward.is_empty()
    }
}

/// The two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Old messages, new reader.
    Backward,
    /// New messages, old reader.
    Forward,
}

impl Direction {
    /// Picks the phrase of this direction.
    pub(crate) fn say<'a>(self, backward: &'a str, forward: &'a str) -> &'a str {
        match self {
            Direction::Backward => backward,
            Direction::Forward => forward,
        }
    }
}

/// Compares two snapshots of one (type, version): `old` was recorded, `new` is what the code
/// has now. A change of format (JSON Schema ↔ Protobuf) breaks both directions.
pub fn compare(old: &Snapshot, new: &Snapshot) -> Comparison {
    match (old.format, new.format) {
        (Format::JsonSchema, Format::JsonSchema) => crate::json::compare(&old.schema, &new.schema),
        (Format::Protobuf, Format::Protobuf) => {
            match (
                serde_json::from_value(old.schema.clone()),
                serde_json::from_value(new.schema.clone()),
            ) {
                (Ok(old), Ok(new)) => crate::protobuf::compare(&old, &new),
                (Err(error), _) | (_, Err(error)) => both(
                    "$",
                    &format!("the Protobuf snapshot cannot be read: {error}"),
                ),
            }
        }
        (old, new) => both(
            "$",
            &format!("the payload format changed from {old:?} to {new:?}"),
        ),
    }
}

fn both(path: &str, change: &str) -> Comparison {
    let reason = Incompatibility {
        path: path.to_owned(),
        change: change.to_owned(),
    };
    Comparison {
        backward: vec![reason.clone()],
        forward: vec![reason],
    }
}
