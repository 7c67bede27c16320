//! Descriptors the tests build by hand (there is no `protoc` here).

#![allow(dead_code)]

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// An optional scalar field `name = number` of type `kind`.
pub fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        r#type: Some(kind as i32),
        label: Some(Label::Optional as i32),
        ..Default::default()
    }
}

/// The encoded `FileDescriptorSet` of `shipping.proto`: `package shipping.v1; message
/// OrderShipped { int64 order_id = 1; string carrier = 2; }`.
pub fn shipping_descriptor_set() -> Vec<u8> {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("shipping.proto".to_owned()),
            package: Some("shipping.v1".to_owned()),
            message_type: vec![DescriptorProto {
                name: Some("OrderShipped".to_owned()),
                field: vec![
                    field("order_id", 1, Type::Int64),
                    field("carrier", 2, Type::String),
                ],
                ..Default::default()
            }],
            syntax: Some("proto3".to_owned()),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}
