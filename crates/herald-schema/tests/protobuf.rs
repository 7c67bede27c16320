//! Protobuf compatibility over message descriptors built here (no `protoc`), and their
//! registration in a catalog from an encoded `FileDescriptorSet`.

mod common;

use common::field;
use herald_schema::{Catalog, Format, ProtoSchema, protobuf};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, FileDescriptorSet, descriptor_proto::ReservedRange,
};

fn typed(name: &str, number: i32, kind: Type, type_name: &str) -> FieldDescriptorProto {
    FieldDescriptorProto {
        type_name: Some(format!(".{type_name}")),
        ..field(name, number, kind)
    }
}

/// `shop.v1.OrderPlaced { int64 order_id = 1; string customer = 2; Status status = 3;
/// Line lines = 4 (repeated) }` with `Line { string sku = 1; uint32 quantity = 2; }` and
/// `enum Status { OPEN = 0; PAID = 1; }`.
fn order() -> DescriptorProto {
    DescriptorProto {
        name: Some("OrderPlaced".to_owned()),
        field: vec![
            field("order_id", 1, Type::Int64),
            field("customer", 2, Type::String),
            typed("status", 3, Type::Enum, "shop.v1.Status"),
            FieldDescriptorProto {
                label: Some(Label::Repeated as i32),
                ..typed("lines", 4, Type::Message, "shop.v1.OrderPlaced.Line")
            },
        ],
        nested_type: vec![DescriptorProto {
            name: Some("Line".to_owned()),
            field: vec![
                field("sku", 1, Type::String),
                field("quantity", 2, Type::Uint32),
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn status(values: &[(&str, i32)]) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some("Status".to_owned()),
        value: values
            .iter()
            .map(|(name, number)| EnumValueDescriptorProto {
                name: Some((*name).to_owned()),
                number: Some(*number),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn set(message: DescriptorProto, status: EnumDescriptorProto) -> FileDescriptorSet {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("shop/v1/order.proto".to_owned()),
            package: Some("shop.v1".to_owned()),
            message_type: vec![message],
            enum_type: vec![status],
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        }],
    }
}

fn schema(message: DescriptorProto, values: &[(&str, i32)]) -> ProtoSchema {
    ProtoSchema::from_files("shop.v1.OrderPlaced", &set(message, status(values)))
        .expect("the message is in the set")
}

const STATUS: [(&str, i32); 2] = [("OPEN", 0), ("PAID", 1)];

fn verdict(old: &ProtoSchema, new: &ProtoSchema) -> (bool, bool) {
    let comparison = protobuf::compare(old, new);
    (
        !comparison.backward.is_empty(),
        !comparison.forward.is_empty(),
    )
}

#[test]
fn every_protobuf_change_gets_its_verdict_in_both_directions() {
    let base = schema(order(), &STATUS);
    let mut rows: Vec<(&str, ProtoSchema, (bool, bool))> = Vec::new();

    let mut m = order();
    m.field.push(field("note", 5, Type::String));
    rows.push(("new field", schema(m, &STATUS), (false, false)));

    let mut m = order();
    m.field.remove(1);
    rows.push((
        "field removed, number not reserved",
        schema(m, &STATUS),
        (true, true),
    ));

    let mut m = order();
    m.field.remove(1);
    m.reserved_range.push(ReservedRange {
        start: Some(2),
        end: Some(3),
    });
    m.reserved_name.push("customer".to_owned());
    rows.push((
        "field removed, number reserved",
        schema(m, &STATUS),
        (false, false),
    ));

    let mut m = order();
    m.field[1] = field("buyer", 2, Type::String);
    rows.push((
        "field number reused with another name",
        schema(m, &STATUS),
        (true, true),
    ));

    let mut m = order();
    m.field[1] = field("customer", 2, Type::Int64);
    rows.push(("type changed", schema(m, &STATUS), (true, true)));

    let mut m = order();
    m.nested_type[0].field[1] = field("quantity", 2, Type::String);
    rows.push((
        "type changed in a nested message",
        schema(m, &STATUS),
        (true, true),
    ));

    let mut m = order();
    m.field[0].label = Some(Label::Repeated as i32);
    rows.push(("label changed", schema(m, &STATUS), (true, true)));

    rows.push((
        "enum value removed",
        schema(order(), &[("OPEN", 0)]),
        (true, false),
    ));
    rows.push((
        "enum value added",
        schema(order(), &[("OPEN", 0), ("PAID", 1), ("SHIPPED", 2)]),
        (false, false),
    ));

    let mut wrong = Vec::new();
    for (change, new, expected) in &rows {
        let got = verdict(&base, new);
        if got != *expected {
            wrong.push(format!(
                "{change}: expected (backward, forward) = {expected:?}, got {got:?}: {:#?}",
                protobuf::compare(&base, new)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A field on a number the old message reserved breaks both ways.
    let mut old = order();
    old.reserved_range.push(ReservedRange {
        start: Some(7),
        end: Some(8),
    });
    let mut new = old.clone();
    new.field.push(field("coupon", 7, Type::String));
    assert_eq!(
        verdict(&schema(old, &STATUS), &schema(new, &STATUS)),
        (true, true)
    );
}

#[test]
fn a_descriptor_set_registers_and_snapshots_readably() {
    let bytes = set(order(), status(&STATUS)).encode_to_vec();
    let catalog = Catalog::new()
        .protobuf("shop.order_placed", 1, "shop.v1.OrderPlaced", &bytes)
        .expect("registered");
    let snapshot = catalog.get("shop.order_placed", 1).expect("registered");
    assert_eq!(snapshot.format, Format::Protobuf);
    let text = snapshot.to_pretty_json();
    for expected in [
        "\"shop.v1.OrderPlaced.Line\"",
        "\"customer\"",
        "\"OPEN\": 0",
        "\"format\": \"protobuf\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }

    let error = Catalog::new()
        .protobuf("shop.order_placed", 1, "shop.v1.Missing", &bytes)
        .expect_err("no such message");
    assert!(error.to_string().contains("shop.v1.Missing"), "{error}");
    assert!(
        Catalog::new()
            .protobuf("shop.order_placed", 1, "shop.v1.OrderPlaced", b"\xff\xff")
            .is_err()
    );
}

#[test]
fn a_protobuf_change_fails_the_catalog_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = set(order(), status(&STATUS)).encode_to_vec();
    let catalog = |bytes: &[u8]| {
        Catalog::new()
            .protobuf("shop.order_placed", 1, "shop.v1.OrderPlaced", bytes)
            .expect("registered")
    };
    catalog(&v1)
        .check_with(dir.path(), herald_schema::UpdateMode::Update)
        .expect("recorded");
    let mut m = order();
    m.field[1] = field("buyer", 2, Type::String);
    let changed = set(m, status(&STATUS)).encode_to_vec();
    let report = catalog(&changed)
        .check_with(dir.path(), herald_schema::UpdateMode::Check)
        .expect_err("breaking");
    let text = report.to_string();
    assert!(text.contains("shop.v1.OrderPlaced.customer (2)"), "{text}");
    assert!(text.contains("now named `buyer`"), "{text}");
}

/// A Protobuf event as herald-core defines one.
#[derive(Clone, PartialEq, prost::Message)]
struct OrderShipped {
    #[prost(int64, tag = "1")]
    order_id: i64,
    #[prost(string, tag = "2")]
    carrier: String,
}

impl prost::Name for OrderShipped {
    const NAME: &'static str = "OrderShipped";
    const PACKAGE: &'static str = "shipping.v1";
}

impl herald_core::Payload for OrderShipped {
    type Codec = herald_core::Protobuf;
}

impl herald_core::Event for OrderShipped {
    const TYPE: &'static str = "shipping.order_shipped";
    const VERSION: u32 = 3;
}

#[test]
fn a_protobuf_event_registers_by_its_type() {
    let bytes = common::shipping_descriptor_set();
    let catalog = Catalog::new()
        .protobuf_event::<OrderShipped>(&bytes)
        .expect("registered");
    let snapshot = catalog
        .get("shipping.order_shipped", 3)
        .expect("registered");
    assert_eq!(snapshot.schema["message"], "shipping.v1.OrderShipped");
}
