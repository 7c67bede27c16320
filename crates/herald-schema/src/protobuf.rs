//! Protobuf messages in snapshots, and the compatibility of two of them.
//!
//! A [`ProtoSchema`] is read from a `FileDescriptorSet` (what `prost-build` or `protoc
//! --descriptor_set_out` write): the event's message and every message and enum it uses,
//! by full name, each with its fields (name, number, type, label) and its reserved numbers
//! and names. The wire format identifies a field by its number only, so the rules are about
//! numbers:
//!
//! * a field number reused with another name or another type (or another message or enum
//!   type, or another label): breaks **both** directions;
//! * a field removed whose number is not reserved: breaks **both** directions (nothing stops
//!   the number from coming back with another meaning; reserve it: `reserved 3;`);
//! * a field removed whose number is reserved: compatible (a `required` one breaks forward);
//! * a new field on a number or name that the old message reserved: breaks both;
//! * a new field: compatible (a proto2 `required` one breaks backward);
//! * a field renamed on the same number and type: breaks both (the JSON mapping and the
//!   generated code's names change; reserve the old name);
//! * an enum value removed: breaks backward (old messages may carry it); an enum value number
//!   reused with another name: breaks both; an enum value added: compatible (proto3 enums are
//!   open: old readers keep the unknown number).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use serde::{Deserialize, Serialize};

use crate::compat::{Comparison, Direction, Incompatibility};
use crate::error::{Error, Result};

/// A Protobuf message as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoSchema {
    /// The event's message, by full name (`shop.v1.OrderPlaced`).
    pub message: String,
    /// That message and every message it uses, by full name.
    pub messages: BTreeMap<String, ProtoMessage>,
    /// Every enum those messages use, by full name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub enums: BTreeMap<String, ProtoEnum>,
}

/// One message's fields and reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoMessage {
    /// The fields, by number.
    pub fields: Vec<ProtoField>,
    /// Reserved field numbers, as inclusive ranges `[first, last]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_numbers: Vec<[i32; 2]>,
    /// Reserved field names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_names: Vec<String>,
}

/// One field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoField {
    /// Its number (the only thing on the wire).
    pub number: i32,
    /// Its name.
    pub name: String,
    /// Its type: `string`, `int64`, … or `message`/`enum` with [`type_name`](Self::type_name).
    #[serde(rename = "type")]
    pub kind: String,
    /// The full name of its message or enum type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// `optional` (proto3's implicit presence too), `required` or `repeated`.
    pub label: String,
}

/// One enum's values and reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoEnum {
    /// Value name → number.
    pub values: BTreeMap<String, i32>,
    /// Reserved numbers, as inclusive ranges `[first, last]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_numbers: Vec<[i32; 2]>,
    /// Reserved names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_names: Vec<String>,
}

impl ProtoSchema {
    /// Reads message `message` (full name, without a leading dot) and what it uses from an
    /// encoded `FileDescriptorSet`.
    pub fn from_descriptor_set(message: &str, descriptor_set: &[u8]) -> Result<Self> {
        let set = FileDescriptorSet::decode(descriptor_set).map_err(|e| Error::Descriptor {
            message: message.to_owned(),
            reason: format!("not a FileDescriptorSet: {e}"),
        })?;
        Self::from_files(message, &set)
    }

    /// Reads message `message` (full name) and what it uses from a decoded descriptor set.
    pub fn from_files(message: &str, set: &FileDescriptorSet) -> Result<Self> {
        let mut all_messages = BTreeMap::new();
        let mut all_enums = BTreeMap::new();
        for file in &set.file {
            let package = file.package();
            for m in &file.message_type {
                index_message(package, m, &mut all_messages, &mut all_enums);
            }
            for e in &file.enum_type {
                all_enums.insert(join(package, e.name()), e);
            }
        }
        let root = message.trim_start_matches('.').to_owned();
        if !all_messages.contains_key(&root) {
            return Err(Error::Descriptor {
                message: root,
                reason: "no such message in the descriptor set".to_owned(),
            });
        }
        let mut schema = ProtoSchema {
            message: root.clone(),
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        let mut pending = vec![root];
        while let Some(name) = pending.pop() {
            if schema.messages.contains_key(&name) {
                continue;
            }
            let Some(descriptor) = all_messages.get(&name) else {
                return Err(Error::Descriptor {
                    message: schema.message.clone(),
                    reason: format!("uses `{name}`, which the descriptor set lacks"),
                });
            };
            let converted = convert_message(descriptor);
            for field in &converted.fields {
                let Some(type_name) = &field.type_name else {
                    continue;
                };
                if field.kind == "enum" {
                    if let Some(e) = all_enums.get(type_name) {
                        schema.enums.insert(type_name.clone(), convert_enum(e));
                    }
                } else {
                    pending.push(type_name.clone());
                }
            }
            schema.messages.insert(name, converted);
        }
        Ok(schema)
    }

    /// A `.proto`-like text of the message and what it uses, for documents (AsyncAPI).
    pub fn to_proto_text(&self) -> String {
        let mut text = String::new();
        for (name, message) in &self.messages {
            text.push_str(&format!("message {name} {{\n"));
            for field in &message.fields {
                let label = match field.label.as_str() {
                    "optional" => "",
                    other => other,
                };
                let kind = field.type_name.as_deref().unwrap_or(&field.kind);
                let sep = if label.is_empty() { "" } else { " " };
                text.push_str(&format!(
                    "  {label}{sep}{kind} {} = {};\n",
                    field.name, field.number
                ));
            }
            for [first, last] in &message.reserved_numbers {
                if first == last {
                    text.push_str(&format!("  reserved {first};\n"));
                } else {
                    text.push_str(&format!("  reserved {first} to {last};\n"));
                }
            }
            for reserved in &message.reserved_names {
                text.push_str(&format!("  reserved \"{reserved}\";\n"));
            }
            text.push_str("}\n");
        }
        for (name, e) in &self.enums {
            text.push_str(&format!("enum {name} {{\n"));
            let mut values: Vec<(&String, &i32)> = e.values.iter().collect();
            values.sort_by_key(|(_, number)| **number);
            for (value, number) in values {
                text.push_str(&format!("  {value} = {number};\n"));
            }
            text.push_str("}\n");
        }
        text
    }
}

fn join(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

fn index_message<'d>(
    scope: &str,
    message: &'d DescriptorProto,
    messages: &mut BTreeMap<String, &'d DescriptorProto>,
    enums: &mut BTreeMap<String, &'d EnumDescriptorProto>,
) {
    let name = join(scope, message.name());
    for nested in &message.nested_type {
        index_message(&name, nested, messages, enums);
    }
    for e in &message.enum_type {
        enums.insert(join(&name, e.name()), e);
    }
    messages.insert(name, message);
}

fn convert_message(message: &DescriptorProto) -> ProtoMessage {
    let mut fields: Vec<ProtoField> = message
        .field
        .iter()
        .map(|field| {
            let kind = match field.r#type() {
                Type::Double => "double",
                Type::Float => "float",
                Type::Int64 => "int64",
                Type::Uint64 => "uint64",
                Type::Int32 => "int32",
                Type::Fixed64 => "fixed64",
                Type::Fixed32 => "fixed32",
                Type::Bool => "bool",
                Type::String => "string",
                Type::Group => "group",
                Type::Message => "message",
                Type::Bytes => "bytes",
                Type::Uint32 => "uint32",
                Type::Enum => "enum",
                Type::Sfixed32 => "sfixed32",
                Type::Sfixed64 => "sfixed64",
                Type::Sint32 => "sint32",
                Type::Sint64 => "sint64",
            };
            let label = match field.label() {
                Label::Optional => "optional",
                Label::Required => "required",
                Label::Repeated => "repeated",
            };
            ProtoField {
                number: field.number(),
                name: field.name().to_owned(),
                kind: kind.to_owned(),
                type_name: field
                    .type_name
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .map(|t| t.trim_start_matches('.').to_owned()),
                label: label.to_owned(),
            }
        })
        .collect();
    fields.sort_by_key(|f| f.number);
    ProtoMessage {
        fields,
        // Descriptor ranges end exclusively.
        reserved_numbers: message
            .reserved_range
            .iter()
            .map(|r| [r.start(), r.end() - 1])
            .collect(),
        reserved_names: message.reserved_name.clone(),
    }
}

fn convert_enum(e: &EnumDescriptorProto) -> ProtoEnum {
    ProtoEnum {
        values: e
            .value
            .iter()
            .map(|v| (v.name().to_owned(), v.number()))
            .collect(),
        // Enum ranges end inclusively.
        reserved_numbers: e
            .reserved_range
            .iter()
            .map(|r| [r.start(), r.end()])
            .collect(),
        reserved_names: e.reserved_name.clone(),
    }
}

fn reserved(ranges: &[[i32; 2]], number: i32) -> bool {
    ranges
        .iter()
        .any(|[first, last]| (*first..=*last).contains(&number))
}

/// Compares the old and the new message of one (type, version).
pub fn compare(old: &ProtoSchema, new: &ProtoSchema) -> Comparison {
    // Messages are matched by full name, the event's own message by its place.
    let mut pairs: Vec<(&str, &ProtoMessage, &ProtoMessage)> = Vec::new();
    if let (Some(o), Some(n)) = (
        old.messages.get(&old.message),
        new.messages.get(&new.message),
    ) {
        pairs.push((&new.message, o, n));
    }
    for (name, o) in &old.messages {
        if *name == old.message {
            continue;
        }
        if let Some(n) = new.messages.get(name) {
            pairs.push((name, o, n));
        }
    }
    let mut reasons: Vec<(Option<Direction>, String, String)> = Vec::new();
    for (name, o, n) in pairs {
        message_changes(name, o, n, &mut reasons);
    }
    for (name, o) in &old.enums {
        if let Some(n) = new.enums.get(name) {
            enum_changes(name, o, n, &mut reasons);
        }
    }
    let mut comparison = Comparison::default();
    for (direction, path, change) in reasons {
        let reason = Incompatibility { path, change };
        match direction {
            Some(Direction::Backward) => comparison.backward.push(reason),
            Some(Direction::Forward) => comparison.forward.push(reason),
            None => {
                comparison.backward.push(reason.clone());
                comparison.forward.push(reason);
            }
        }
    }
    comparison
}

type Found = Vec<(Option<Direction>, String, String)>;

fn message_changes(name: &str, old: &ProtoMessage, new: &ProtoMessage, out: &mut Found) {
    let by_number = |m: &ProtoMessage| -> BTreeMap<i32, ProtoField> {
        m.fields.iter().map(|f| (f.number, f.clone())).collect()
    };
    let (old_fields, new_fields) = (by_number(old), by_number(new));
    for (number, o) in &old_fields {
        let path = format!("{name}.{} ({number})", o.name);
        match new_fields.get(number) {
            Some(n) => {
                if n.name != o.name {
                    out.push((
                        None,
                        path.clone(),
                        format!(
                            "field number {number} now named `{}` (reuse or rename; reserve the old name and number instead)",
                            n.name
                        ),
                    ));
                }
                let old_type = o.type_name.as_deref().unwrap_or(&o.kind);
                let new_type = n.type_name.as_deref().unwrap_or(&n.kind);
                if old_type != new_type {
                    out.push((
                        None,
                        path.clone(),
                        format!("type changed from {old_type} to {new_type}"),
                    ));
                }
                if n.label != o.label {
                    out.push((
                        None,
                        path,
                        format!("label changed from {} to {}", o.label, n.label),
                    ));
                }
            }
            None if reserved(&new.reserved_numbers, *number) => {
                if o.label == "required" {
                    out.push((
                        Some(Direction::Forward),
                        path,
                        "required field removed (old readers require it)".to_owned(),
                    ));
                }
            }
            None => out.push((
                None,
                path,
                format!("field removed without reserving its number (add `reserved {number};`)"),
            )),
        }
    }
    let old_names: BTreeSet<&str> = old.reserved_names.iter().map(String::as_str).collect();
    for (number, n) in &new_fields {
        if old_fields.contains_key(number) {
            continue;
        }
        let path = format!("{name}.{} ({number})", n.name);
        if reserved(&old.reserved_numbers, *number) {
            out.push((None, path, format!("new field on reserved number {number}")));
        } else if old_names.contains(n.name.as_str()) {
            out.push((
                None,
                path,
                format!("new field on reserved name `{}`", n.name),
            ));
        } else if n.label == "required" {
            out.push((
                Some(Direction::Backward),
                path,
                "new required field (old messages lack it)".to_owned(),
            ));
        }
    }
}

fn enum_changes(name: &str, old: &ProtoEnum, new: &ProtoEnum, out: &mut Found) {
    let new_by_number: BTreeMap<i32, &str> =
        new.values.iter().map(|(k, v)| (*v, k.as_str())).collect();
    for (value, number) in &old.values {
        let path = format!("{name}.{value} ({number})");
        match new_by_number.get(number) {
            Some(now) if *now != value => out.push((
                None,
                path,
                format!("enum number {number} now named `{now}`"),
            )),
            Some(_) => {}
            None => out.push((
                Some(Direction::Backward),
                path,
                "enum value removed (old messages may carry it)".to_owned(),
            )),
        }
    }
}
