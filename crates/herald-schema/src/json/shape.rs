//! The shapes of schemars' JSON Schemas: `$ref`s, union alternatives and their tags, types,
//! listed values, formats.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Value, json};

/// One alternative of a union, with the tag or value that identifies it across versions.
pub(super) struct Alt<'v> {
    pub(super) label: Option<String>,
    pub(super) schema: Cow<'v, Value>,
}

/// The alternatives of a schema: the branches of `oneOf`/`anyOf` (flattened), the values of
/// an `enum`, `null` split from a nullable type; or the schema itself.
pub(super) fn alternatives<'v>(root: &'v Value, schema: &'v Value) -> Vec<Alt<'v>> {
    let mut alts = Vec::new();
    collect(root, schema, &mut alts, 0);
    if alts.len() > 1 {
        for alt in &mut alts {
            if alt.label.is_none() && ref_of(&alt.schema).is_none() {
                alt.label = label(&alt.schema);
            }
        }
    }
    alts
}

pub(super) fn collect<'v>(
    root: &'v Value,
    schema: &'v Value,
    alts: &mut Vec<Alt<'v>>,
    depth: usize,
) {
    let resolved = resolve(root, schema);
    if depth < 8
        && let Some(branches) = resolved
            .get("oneOf")
            .or_else(|| resolved.get("anyOf"))
            .and_then(Value::as_array)
    {
        for branch in branches {
            collect(root, branch, alts, depth + 1);
        }
        return;
    }
    if let Some(values) = resolved.get("enum").and_then(Value::as_array)
        && values.len() > 1
    {
        for value in values {
            alts.push(Alt {
                label: Some(value.to_string()),
                schema: Cow::Owned(json!({ "const": value })),
            });
        }
        return;
    }
    if let Some(Value::Array(kinds)) = resolved.get("type") {
        let null = Value::String("null".to_owned());
        if kinds.len() > 1 && kinds.contains(&null) {
            alts.push(Alt {
                label: Some("null".to_owned()),
                schema: Cow::Owned(json!({ "type": "null" })),
            });
            let mut rest = resolved.as_object().cloned().unwrap_or_default();
            let others: Vec<Value> = kinds.iter().filter(|k| **k != null).cloned().collect();
            let others = match <[Value; 1]>::try_from(others) {
                Ok([one]) => one,
                Err(others) => Value::Array(others),
            };
            rest.insert("type".to_owned(), others);
            alts.push(Alt {
                label: None,
                schema: Cow::Owned(Value::Object(rest)),
            });
            return;
        }
    }
    alts.push(Alt {
        label: None,
        schema: Cow::Borrowed(schema),
    });
}

/// The tag of a union branch: its constant value, `null`, `tag=value` for an internally
/// tagged variant, or the name of an externally tagged one (`{ "Variant": … }`).
pub(super) fn label(schema: &Value) -> Option<String> {
    if let Some(value) = schema.get("const") {
        return Some(value.to_string());
    }
    if let Some([value]) = schema
        .get("enum")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return Some(value.to_string());
    }
    if schema.get("type").and_then(Value::as_str) == Some("null") {
        return Some("null".to_owned());
    }
    let props = schema.get("properties").and_then(Value::as_object)?;
    let required = required(schema);
    for name in &required {
        if let Some(value) = props.get(*name).and_then(|p| p.get("const")) {
            return Some(format!("{name}={value}"));
        }
    }
    if let ([name], 1) = (required.as_slice(), props.len()) {
        return Some((*name).to_owned());
    }
    None
}

pub(super) fn ref_of(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// Follows `$ref`s (`#`, `#/$defs/…`, `#/definitions/…`) within `root`.
pub(super) fn resolve<'v>(root: &'v Value, mut schema: &'v Value) -> &'v Value {
    for _ in 0..16 {
        let Some(reference) = ref_of(schema) else {
            return schema;
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return schema;
        };
        match root.pointer(pointer) {
            Some(target) => schema = target,
            None => return schema,
        }
    }
    schema
}

/// Accepts every value: `true`, or an object with no constraining keyword.
pub(super) fn accepts_anything(schema: &Value) -> bool {
    const DOCS: [&str; 9] = [
        "description",
        "title",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$comment",
    ];
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| DOCS.contains(&k.as_str())),
        _ => false,
    }
}

/// The JSON types a schema allows (`None`: any).
pub(super) fn types(schema: &Value) -> Option<BTreeSet<String>> {
    match schema.get("type") {
        Some(Value::String(kind)) => return Some(BTreeSet::from([kind.clone()])),
        Some(Value::Array(kinds)) => {
            return Some(
                kinds
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            );
        }
        _ => {}
    }
    values(schema).map(|values| values.iter().map(json_type).collect())
}

pub(super) fn json_type(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
    .to_owned()
}

pub(super) fn type_within(kind: &str, allowed: &BTreeSet<String>) -> bool {
    allowed.contains(kind) || (kind == "integer" && allowed.contains("number"))
}

pub(super) fn overlaps(a: Option<&BTreeSet<String>>, b: Option<&BTreeSet<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|t| type_within(t, b)),
        _ => true,
    }
}

/// The values a schema allows, when it lists them (`enum` or `const`).
pub(super) fn values(schema: &Value) -> Option<Vec<Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value.clone()]);
    }
    schema.get("enum").and_then(Value::as_array).cloned()
}

pub(super) fn is_object(schema: &Value) -> bool {
    schema.get("properties").is_some()
        || schema.get("required").is_some()
        || schema.get("additionalProperties").is_some()
}

pub(super) fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether every value of format `written` has format `required` (integer formats widen).
pub(super) fn format_within(written: &str, required: &str) -> bool {
    if written == required {
        return true;
    }
    let int = |f: &str| -> Option<(bool, u32)> {
        let (signed, bits) = match f.strip_prefix("uint") {
            Some(bits) => (false, bits),
            None => (true, f.strip_prefix("int")?),
        };
        Some((signed, bits.parse().ok()?))
    };
    match (int(written), int(required)) {
        (Some((ws, wb)), Some((rs, rb))) => match (ws, rs) {
            (false, false) | (true, true) => wb <= rb,
            (false, true) => wb < rb,
            (true, false) => false,
        },
        _ => matches!(
            (written, required),
            ("float", "double") | ("int8" | "int16" | "int32", "double")
        ),
    }
}

pub(super) fn describe(schema: &Value) -> String {
    types(schema).map_or_else(|| "any".to_owned(), |t| list(&t))
}

pub(super) fn list(kinds: &BTreeSet<String>) -> String {
    kinds.iter().cloned().collect::<Vec<_>>().join(" | ")
}

pub(super) fn json_list(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
