//! The integration events the ordering context publishes (the contract between the contexts).

use herald_core::{Event, Uuid};
use herald_schema::Catalog;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The demo's events, with their schemas: `tests/schema.rs` checks them against the
/// snapshots committed in `schemas/` (record a change with `HERALD_SCHEMA_UPDATE=1 cargo test
/// -p herald-cli --test schema`), and `herald schema asyncapi` prints their AsyncAPI document.
pub fn catalog() -> Catalog {
    Catalog::new()
        .event::<OrderCreated>()
        .event::<OrderCancelled>()
}

/// An order was placed and its stock must be reserved.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// The order.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Order total in cents.
    pub total_cents: i64,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "ordering.order_created";

    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

/// An order was cancelled and its reservation must be released.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
}

impl Event for OrderCancelled {
    const TYPE: &'static str = "ordering.order_cancelled";

    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

/// The products the inventory context stocks.
pub const SKUS: [&str; 8] = [
    "SKU-APPLE",
    "SKU-BREAD",
    "SKU-CHEESE",
    "SKU-DATES",
    "SKU-EGGS",
    "SKU-FLOUR",
    "SKU-GRAPES",
    "SKU-HONEY",
];

/// A product the inventory context no longer knows: its order becomes a poison message.
pub const RETIRED_SKU: &str = "SKU-RETIRED";

#[cfg(test)]
mod tests {
    /// The demo's events against their committed snapshots (`crates/herald-cli/schemas/`):
    /// a change to them fails here until it is recorded (and a breaking one until it becomes a
    /// new version).
    #[test]
    fn demo_event_schemas_match_their_snapshots() {
        super::catalog().check("schemas").unwrap();
    }
}
