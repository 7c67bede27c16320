//! The compatibility table: each kind of change, with its expected verdict in both directions
//! (backward: old messages, new reader; forward: new messages, old reader).
#![allow(dead_code)]

use herald_schema::json;
use schemars::{JsonSchema, schema_for};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schema_for!(T)).expect("a schema is JSON")
}

/// One row: the change, the old and new schemas, whether backward and forward break.
struct Row {
    change: &'static str,
    old: Value,
    new: Value,
    backward_breaks: bool,
    forward_breaks: bool,
}

fn row<Old: JsonSchema, New: JsonSchema>(
    change: &'static str,
    backward_breaks: bool,
    forward_breaks: bool,
) -> Row {
    Row {
        change,
        old: schema::<Old>(),
        new: schema::<New>(),
        backward_breaks,
        forward_breaks,
    }
}

mod base {
    use super::*;
    /// An order was placed.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Order {
        pub order_id: i64,
        pub customer: String,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Strict {
        pub order_id: i64,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Status {
        Open,
        Paid,
        Shipped,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithStatus {
        pub status: Status,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Payment {
        Card { last4: String },
        Cash(u32),
        Voucher,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithPayment {
        pub payment: Payment,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(tag = "kind")]
    pub enum Shipment {
        Parcel { weight: u32 },
        Pickup { store: String },
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithShipment {
        pub shipment: Shipment,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub street: String,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithAddress {
        pub address: Address,
        pub billing: Option<Address>,
        pub lines: Vec<Address>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Tree {
        pub name: String,
        pub children: Vec<Tree>,
    }
}

mod maps {
    use super::*;
    use std::collections::BTreeMap;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Counts {
        pub counts: BTreeMap<String, u32>,
        pub status: Option<super::base::Status>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct CountsAsText {
        pub counts: BTreeMap<String, String>,
        pub status: Option<super::base::Status>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct StatusRemovedInOption {
        pub counts: BTreeMap<String, u32>,
        pub status: Option<super::changed::StatusRemoved>,
    }
    /// The Rust field renamed, the wire name kept.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct RenamedInRustOnly {
        #[serde(rename = "counts")]
        pub tallies: BTreeMap<String, u32>,
        pub status: Option<super::base::Status>,
    }
}

mod changed {
    use super::*;
    /// An order was placed by a customer (documentation changed only).
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderDoc {
        /// The order.
        pub order_id: i64,
        pub customer: String,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderOptionalAdded {
        pub order_id: i64,
        pub customer: String,
        pub quantity: u32,
        pub note: Option<String>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderDefaultAdded {
        pub order_id: i64,
        pub customer: String,
        pub quantity: u32,
        #[serde(default)]
        pub gift: bool,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderRequiredAdded {
        pub order_id: i64,
        pub customer: String,
        pub quantity: u32,
        pub currency: String,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderFieldRemoved {
        pub order_id: i64,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderFieldRenamed {
        pub order_id: i64,
        pub buyer: String,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderTypeChanged {
        pub order_id: String,
        pub customer: String,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderNullable {
        pub order_id: i64,
        pub customer: Option<String>,
        pub quantity: u32,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderWidened {
        pub order_id: i64,
        pub customer: String,
        pub quantity: u64,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StrictOptionalAdded {
        pub order_id: i64,
        pub note: Option<String>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum StatusRemoved {
        Open,
        Paid,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithStatusRemoved {
        pub status: StatusRemoved,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum StatusAdded {
        Open,
        Paid,
        Shipped,
        Returned,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithStatusAdded {
        pub status: StatusAdded,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum PaymentVariantRemoved {
        Card { last4: String },
        Cash(u32),
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithPaymentVariantRemoved {
        pub payment: PaymentVariantRemoved,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum PaymentFieldAdded {
        Card { last4: String, brand: String },
        Cash(u32),
        Voucher,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithPaymentFieldAdded {
        pub payment: PaymentFieldAdded,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(tag = "kind")]
    pub enum ShipmentAdded {
        Parcel { weight: u32 },
        Pickup { store: String },
        Drone { range: u32 },
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithShipmentAdded {
        pub shipment: ShipmentAdded,
    }
    /// Renamed in Rust, the same on the wire.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct PostalAddress {
        pub street: String,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithAddressRenamedType {
        pub address: PostalAddress,
        pub billing: Option<PostalAddress>,
        pub lines: Vec<PostalAddress>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct AddressWithCity {
        pub street: String,
        pub city: String,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithAddressRequiredAdded {
        pub address: AddressWithCity,
        pub billing: Option<AddressWithCity>,
        pub lines: Vec<AddressWithCity>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct WithLinesChanged {
        pub address: super::base::Address,
        pub billing: Option<super::base::Address>,
        pub lines: Vec<String>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Tree {
        /// Documented now.
        pub name: String,
        pub children: Vec<Tree>,
    }
}

fn table() -> Vec<Row> {
    use base::*;
    use changed::*;
    vec![
        row::<Order, OrderDoc>("documentation changed", false, false),
        row::<Order, OrderOptionalAdded>("optional field added", false, false),
        row::<Order, OrderDefaultAdded>("field with a default added", false, false),
        row::<Strict, StrictOptionalAdded>(
            "optional field added, old type denies unknown fields",
            false,
            true,
        ),
        row::<Order, OrderRequiredAdded>("required field added", true, false),
        row::<Order, OrderFieldRemoved>("required field removed", false, true),
        row::<Order, OrderFieldRenamed>("field renamed", true, true),
        row::<Order, OrderTypeChanged>("type changed", true, true),
        row::<Order, OrderNullable>("field became nullable", false, true),
        row::<OrderNullable, Order>("field no longer nullable", true, false),
        row::<Order, OrderWidened>("integer widened (u32 → u64)", false, true),
        row::<WithStatus, WithStatusRemoved>("enum variant removed", true, false),
        row::<WithStatus, WithStatusAdded>("enum variant added", false, true),
        row::<WithPayment, WithPaymentVariantRemoved>(
            "unit variant removed from a mixed enum",
            true,
            false,
        ),
        row::<WithPayment, WithPaymentFieldAdded>(
            "required field added inside a variant",
            true,
            false,
        ),
        row::<WithShipment, WithShipmentAdded>("internally tagged variant added", false, true),
        row::<WithShipmentAdded, WithShipment>("internally tagged variant removed", true, false),
        row::<WithAddress, WithAddressRenamedType>(
            "nested type renamed in Rust only",
            false,
            false,
        ),
        row::<WithAddress, WithAddressRequiredAdded>(
            "required field added in a nested type ($ref, Option, Vec)",
            true,
            false,
        ),
        row::<WithAddress, WithLinesChanged>("array item type changed", true, true),
        row::<base::Tree, changed::Tree>("recursive type, documentation changed", false, false),
        row::<maps::Counts, maps::CountsAsText>("map value type changed", true, true),
        row::<maps::Counts, maps::StatusRemovedInOption>(
            "enum variant removed behind an Option",
            true,
            false,
        ),
        row::<maps::Counts, maps::RenamedInRustOnly>(
            "field renamed in Rust, wire name kept",
            false,
            false,
        ),
    ]
}

#[test]
fn every_change_gets_its_verdict_in_both_directions() {
    let mut wrong = Vec::new();
    for row in table() {
        let comparison = json::compare(&row.old, &row.new);
        let backward = !comparison.backward.is_empty();
        let forward = !comparison.forward.is_empty();
        if backward != row.backward_breaks || forward != row.forward_breaks {
            wrong.push(format!(
                "{}: expected backward {} forward {}, got backward {backward} forward {forward}: {comparison:#?}",
                row.change, row.backward_breaks, row.forward_breaks
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn an_unchanged_schema_is_compatible_both_ways() {
    for row in table() {
        for schema in [&row.old, &row.new] {
            let comparison = json::compare(schema, schema);
            assert!(!comparison.is_breaking(), "{}: {comparison:?}", row.change);
        }
    }
}

#[test]
fn the_reasons_name_the_field_and_the_change() {
    let comparison = json::compare(
        &schema::<base::Order>(),
        &schema::<changed::OrderFieldRenamed>(),
    );
    assert_eq!(comparison.backward.len(), 1, "{comparison:?}");
    assert_eq!(comparison.backward[0].path, "$.buyer");
    assert!(
        comparison.backward[0].change.contains("new required field"),
        "{comparison:?}"
    );
    assert_eq!(comparison.forward[0].path, "$.customer");
    assert!(
        comparison.forward[0]
            .change
            .contains("required field removed"),
        "{comparison:?}"
    );

    let comparison = json::compare(
        &schema::<base::WithStatus>(),
        &schema::<changed::WithStatusRemoved>(),
    );
    assert!(
        comparison.backward[0].change.contains("\"Shipped\""),
        "{comparison:?}"
    );
}
