//! The AsyncAPI document validates against the official AsyncAPI 3.0.0 JSON Schema (a fixture:
//! see `tests/fixtures/README.md`), and every `$ref` in it points inside it.
#![allow(dead_code)]

mod common;

use std::collections::BTreeMap;

use herald_core::Event;
use herald_schema::{AmqpChannels, AsyncApiConfig, Catalog, KafkaChannels, Transport};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An order was placed.
#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderPlaced {
    order_id: i64,
    /// Its lines.
    lines: Vec<Line>,
    status: Status,
    billing: Option<Address>,
    dimensions: (u32, u32),
    category: Category,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, JsonSchema)]
enum Status {
    Open,
    Paid { at: String },
}

/// Another event's type of the same name, with another shape: the two must not collide.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Address {
    street: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Category {
    name: String,
    parent: Option<Box<Category>>,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "ordering.order_placed";
}

mod cancelled {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub city: String,
        pub zip: u16,
    }
    /// An order was cancelled.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderCancelled {
        pub order_id: i64,
        pub reason: String,
        pub return_to: Address,
    }
    impl Event for OrderCancelled {
        const TYPE: &'static str = "ordering.order_cancelled";
        const VERSION: u32 = 2;
    }
}

fn catalog() -> Catalog {
    Catalog::new()
        .event::<OrderPlaced>()
        .event::<cancelled::OrderCancelled>()
        .protobuf(
            "shipping.order_shipped",
            1,
            "shipping.v1.OrderShipped",
            &common::shipping_descriptor_set(),
        )
        .expect("registered")
}

fn transports() -> Vec<Transport> {
    vec![
        Transport::Amqp(AmqpChannels {
            exchange: "herald".to_owned(),
            exchange_kind: "topic".to_owned(),
            routing_keys: BTreeMap::from([(
                "ordering.order_cancelled".to_owned(),
                "orders.cancelled".to_owned(),
            )]),
        }),
        Transport::Amqp(AmqpChannels {
            exchange: "events".to_owned(),
            exchange_kind: "headers".to_owned(),
            routing_keys: BTreeMap::new(),
        }),
        Transport::Kafka(KafkaChannels {
            topic: "herald.events".to_owned(),
            routes: BTreeMap::from([(
                "shipping.order_shipped".to_owned(),
                "shipping.events".to_owned(),
            )]),
            partitions: Some(6),
            replicas: Some(1),
        }),
        Transport::Memory,
    ]
}

fn document(transport: Transport) -> Value {
    catalog().asyncapi(&AsyncApiConfig {
        title: "ordering".to_owned(),
        version: "1.4.0".to_owned(),
        description: Some("What the ordering context publishes.".to_owned()),
        transport,
    })
}

fn validator() -> jsonschema::Validator {
    let text = include_str!("fixtures/asyncapi-3.0.0.schema.json");
    let schema: Value = serde_json::from_str(text).expect("the fixture is JSON");
    jsonschema::validator_for(&schema).expect("the AsyncAPI 3.0.0 schema compiles offline")
}

fn errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every local `$ref` of the document, and whether it resolves.
fn dangling_refs(document: &Value) -> Vec<String> {
    fn walk(root: &Value, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "$ref" {
                        let target = value.as_str().and_then(|r| r.strip_prefix('#'));
                        if target.is_none_or(|pointer| root.pointer(pointer).is_none()) {
                            out.push(value.to_string());
                        }
                    } else {
                        walk(root, value, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(root, item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(document, document, &mut out);
    out
}

#[test]
fn the_document_of_every_transport_validates_against_asyncapi_3() {
    let validator = validator();
    for transport in transports() {
        let document = document(transport.clone());
        let errors = errors(&validator, &document);
        assert!(
            errors.is_empty(),
            "{transport:?}: {errors:#?}\n{document:#}"
        );
        let dangling = dangling_refs(&document);
        assert!(dangling.is_empty(), "{transport:?}: {dangling:?}");
    }
}

#[test]
fn a_wrong_document_fails_the_validation() {
    let validator = validator();
    let good = document(transports().remove(0));

    let mut no_title = good.clone();
    no_title["info"]
        .as_object_mut()
        .expect("info")
        .remove("title");
    assert!(!errors(&validator, &no_title).is_empty());

    let mut bad_action = good.clone();
    bad_action["operations"]["send.ordering.order_placed"]["action"] = "publish".into();
    assert!(!errors(&validator, &bad_action).is_empty());

    // Deep in the document too: a binding's value, a message's unknown field.
    let mut bad_binding = good.clone();
    bad_binding["channels"]["ordering.order_placed"]["bindings"]["amqp"]["is"] = "exchange".into();
    assert!(!errors(&validator, &bad_binding).is_empty());

    let mut bad_message = good.clone();
    bad_message["components"]["messages"]["ordering.order_placed.v1"]["payloadSchema"] =
        true.into();
    assert!(!errors(&validator, &bad_message).is_empty());

    let mut bad_version = good;
    bad_version["asyncapi"] = "2.6.0".into();
    assert!(!errors(&validator, &bad_version).is_empty());
}

#[test]
fn channels_follow_the_transport_configuration() {
    let amqp = document(transports().remove(0));
    assert_eq!(
        amqp["channels"]["ordering.order_cancelled"]["address"],
        "orders.cancelled"
    );
    assert_eq!(
        amqp["channels"]["ordering.order_placed"]["bindings"]["amqp"]["exchange"]["name"],
        "herald"
    );
    let headers = &amqp["components"]["messages"]["ordering.order_cancelled.v2"]["headers"];
    assert_eq!(
        headers["properties"]["cloudEvents:eventversion"]["const"],
        2
    );
    assert_eq!(
        headers["properties"]["cloudEvents:type"]["const"],
        "ordering.order_cancelled"
    );

    let kafka = document(transports().remove(2));
    let channels = kafka["channels"].as_object().expect("channels");
    assert_eq!(
        channels.keys().collect::<Vec<_>>(),
        ["herald.events", "shipping.events"]
    );
    assert_eq!(
        channels["herald.events"]["messages"]
            .as_object()
            .expect("messages")
            .len(),
        2
    );
    let shipped = &kafka["components"]["messages"]["shipping.order_shipped.v1"];
    assert_eq!(
        shipped["payload"]["schemaFormat"],
        "application/vnd.google.protobuf;version=3"
    );
    let text = shipped["payload"]["schema"].as_str().expect("proto text");
    assert!(text.contains("string carrier = 2;"), "{text}");
    assert_eq!(
        shipped["headers"]["properties"]["ce_eventversion"]["const"],
        "1"
    );
    assert_eq!(
        shipped["headers"]["properties"]["ce_dataschema"]["const"],
        "shipping.v1.OrderShipped"
    );

    // Two events' `Address` types do not overwrite each other.
    let schemas = kafka["components"]["schemas"].as_object().expect("schemas");
    let addresses: Vec<&String> = schemas.keys().filter(|k| k.contains("Address")).collect();
    assert_eq!(addresses.len(), 2, "{addresses:?}");
}
