//! Compatibility of two JSON Schemas as schemars writes them for serde types.
//!
//! Each direction asks one question: does every message the *writer's* schema allows still
//! pass the *reader's* schema? Backward: writer = old, reader = new; forward: writer = new,
//! reader = old. The rules, for a writer schema W and a reader schema R:
//!
//! * **types**: each JSON type W allows must be allowed by R (`integer` is within `number`):
//!   a type change breaks both directions, `T` → `Option<T>` breaks forward only (old readers
//!   reject `null`), `Option<T>` → `T` backward only.
//! * **objects**: a field R requires must be required by W (a new required field breaks
//!   backward; a required field removed breaks forward; optional → required breaks
//!   backward). A field W writes that R does not know is ignored — unless R denies unknown
//!   fields (`additionalProperties: false`, serde's `deny_unknown_fields`). Fields both know
//!   are compared recursively. So an optional field added is compatible both ways, unless the
//!   old schema denies unknown fields (then old readers reject it: forward breaks).
//! * **enums and unions** (`enum`, `const`, `oneOf`, `anyOf`): each value or variant W can
//!   write must be one R accepts, matched by its value or tag. A variant removed breaks
//!   backward (old messages may carry it); a variant added breaks forward.
//! * **formats and bounds**: R's `format` must hold for W's values (integer formats may widen:
//!   `uint32` within `int64`, `int32` within `int64`, `float` within `double`); R's
//!   `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems` must not be tighter
//!   than W's. So `u32` → `u64` breaks forward only.
//! * **arrays and maps**: items and map values are compared like fields.
//! * Documentation (`description`, `title`, `examples`, …) never matters.
//!
//! `$ref`s are followed in each schema's own `$defs` (or `definitions`), so a type renamed in
//! Rust but unchanged on the wire is not a change.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use crate::compat::{Comparison, Direction, Incompatibility};

mod shape;

use shape::{
    accepts_anything, alternatives, describe, format_within, is_object, json_list, list, overlaps,
    ref_of, required, resolve, type_within, types, values,
};

/// Compares the old and the new JSON Schema of one (type, version).
pub fn compare(old: &Value, new: &Value) -> Comparison {
    Comparison {
        backward: Walk::new(Direction::Backward, old, new).run(),
        forward: Walk::new(Direction::Forward, new, old).run(),
    }
}

/// Past this depth the comparison stops (recursive types are caught earlier, by their refs).
const MAX_DEPTH: usize = 64;

struct Walk<'a> {
    direction: Direction,
    /// The root of the writer's schema, for its `$ref`s.
    writer_root: &'a Value,
    /// The root of the reader's schema.
    reader_root: &'a Value,
    /// (writer ref, reader ref) pairs being compared: a recursive type compares once.
    seen: HashSet<(String, String)>,
}

type Reasons = Vec<Incompatibility>;

impl<'a> Walk<'a> {
    fn new(direction: Direction, writer: &'a Value, reader: &'a Value) -> Self {
        Walk {
            direction,
            writer_root: writer,
            reader_root: reader,
            seen: HashSet::new(),
        }
    }

    fn run(mut self) -> Reasons {
        let (writer, reader) = (self.writer_root, self.reader_root);
        self.subset(writer, reader, "$", 0)
    }

    fn reason(&self, path: &str, backward: &str, forward: &str) -> Incompatibility {
        Incompatibility {
            path: path.to_owned(),
            change: self.direction.say(backward, forward).to_owned(),
        }
    }

    /// (old, new) in the order of the direction.
    fn old_new<T>(&self, writer: T, reader: T) -> (T, T) {
        match self.direction {
            Direction::Backward => (writer, reader),
            Direction::Forward => (reader, writer),
        }
    }

    /// Why some message `writer` allows fails `reader` (empty: none does).
    fn subset(&mut self, writer: &Value, reader: &Value, path: &str, depth: usize) -> Reasons {
        if depth > MAX_DEPTH {
            return Vec::new();
        }
        let writer_ref = ref_of(writer);
        let reader_ref = ref_of(reader);
        if let (Some(w), Some(r)) = (writer_ref, reader_ref)
            && !self.seen.insert((w.to_owned(), r.to_owned()))
        {
            return Vec::new();
        }
        let writer = resolve(self.writer_root, writer);
        let reader = resolve(self.reader_root, reader);
        let reasons = self.subset_resolved(writer, reader, path, depth);
        if let (Some(w), Some(r)) = (writer_ref, reader_ref) {
            self.seen.remove(&(w.to_owned(), r.to_owned()));
        }
        reasons
    }

    fn subset_resolved(
        &mut self,
        writer: &Value,
        reader: &Value,
        path: &str,
        depth: usize,
    ) -> Reasons {
        if accepts_anything(reader) || writer == &Value::Bool(false) {
            return Vec::new();
        }
        if reader == &Value::Bool(false) {
            return vec![self.reason(
                path,
                "the new schema accepts nothing",
                "the old schema accepts nothing",
            )];
        }
        let writer_alts = alternatives(self.writer_root, writer);
        let reader_alts = alternatives(self.reader_root, reader);
        if writer_alts.len() == 1 && reader_alts.len() == 1 {
            return self.single(writer, reader, path, depth);
        }
        let mut reasons = Vec::new();
        for alt in &writer_alts {
            if let Some(label) = &alt.label
                && let Some(same) = reader_alts.iter().find(|r| r.label.as_ref() == Some(label))
            {
                let inner = format!("{path}{{{label}}}");
                reasons.extend(self.subset(&alt.schema, &same.schema, &inner, depth + 1));
                continue;
            }
            if reader_alts.iter().any(|r| {
                self.subset(&alt.schema, &r.schema, path, depth + 1)
                    .is_empty()
            }) {
                continue;
            }
            match &alt.label {
                Some(label) => reasons.push(self.reason(
                    path,
                    &format!("`{label}` removed (old messages may carry it)"),
                    &format!("`{label}` added (old readers reject it)"),
                )),
                None => {
                    let writer_types = types(resolve(self.writer_root, &alt.schema));
                    let closest = reader_alts.iter().find(|r| {
                        overlaps(
                            writer_types.as_ref(),
                            types(resolve(self.reader_root, &r.schema)).as_ref(),
                        )
                    });
                    match closest {
                        Some(closest) => reasons.extend(self.subset(
                            &alt.schema,
                            &closest.schema,
                            path,
                            depth + 1,
                        )),
                        None => {
                            let (old, new) = self.old_new(writer, reader);
                            reasons.push(Incompatibility {
                                path: path.to_owned(),
                                change: format!(
                                    "type changed from {} to {}",
                                    describe(old),
                                    describe(new)
                                ),
                            });
                        }
                    }
                }
            }
        }
        reasons
    }

    /// Two schemas without alternatives.
    fn single(&mut self, writer: &Value, reader: &Value, path: &str, depth: usize) -> Reasons {
        let mut reasons = Vec::new();
        let writer_types = types(writer);
        if let Some(reader_types) = types(reader) {
            match &writer_types {
                None => reasons.push(self.reason(
                    path,
                    &format!("now restricted to {}", list(&reader_types)),
                    &format!("was restricted to {}", list(&reader_types)),
                )),
                Some(writer_types) => {
                    let missing: BTreeSet<&String> = writer_types
                        .iter()
                        .filter(|t| !type_within(t, &reader_types))
                        .collect();
                    if missing.len() == 1 && missing.contains(&"null".to_owned()) {
                        reasons.push(self.reason(
                            path,
                            "no longer nullable (old messages may hold null)",
                            "became nullable (old readers reject null)",
                        ));
                    } else if !missing.is_empty() {
                        let (old, new) = self.old_new(writer_types, &reader_types);
                        reasons.push(Incompatibility {
                            path: path.to_owned(),
                            change: format!("type changed from {} to {}", list(old), list(new)),
                        });
                        if writer_types.iter().all(|t| missing.contains(t)) {
                            return reasons;
                        }
                    }
                }
            }
        }
        self.values(writer, reader, path, &mut reasons);
        self.format(writer, reader, path, &mut reasons);
        self.bounds(writer, reader, path, &mut reasons);
        if is_object(writer) || is_object(reader) {
            self.object(writer, reader, path, depth, &mut reasons);
        }
        self.array(writer, reader, path, depth, &mut reasons);
        reasons
    }

    fn values(&self, writer: &Value, reader: &Value, path: &str, reasons: &mut Reasons) {
        let Some(allowed) = values(reader) else {
            return;
        };
        match values(writer) {
            None => reasons.push(self.reason(
                path,
                &format!("now restricted to the values {}", json_list(&allowed)),
                &format!("was restricted to the values {}", json_list(&allowed)),
            )),
            Some(written) => {
                for value in written.iter().filter(|v| !allowed.contains(v)) {
                    reasons.push(self.reason(
                        path,
                        &format!("value {value} removed (old messages may carry it)"),
                        &format!("value {value} added (old readers reject it)"),
                    ));
                }
            }
        }
    }

    fn format(&self, writer: &Value, reader: &Value, path: &str, reasons: &mut Reasons) {
        let Some(required) = reader.get("format").and_then(Value::as_str) else {
            return;
        };
        let written = writer.get("format").and_then(Value::as_str);
        if written.is_some_and(|w| format_within(w, required)) {
            return;
        }
        let (old, new) = self.old_new(written, Some(required));
        let show = |f: Option<&str>| f.map_or("none".to_owned(), |f| format!("`{f}`"));
        reasons.push(Incompatibility {
            path: path.to_owned(),
            change: format!("format changed from {} to {}", show(old), show(new)),
        });
    }

    fn bounds(&self, writer: &Value, reader: &Value, path: &str, reasons: &mut Reasons) {
        const LOWER: [&str; 4] = ["minimum", "exclusiveMinimum", "minLength", "minItems"];
        const UPPER: [&str; 4] = ["maximum", "exclusiveMaximum", "maxLength", "maxItems"];
        for (keys, lower) in [(LOWER, true), (UPPER, false)] {
            for key in keys {
                let Some(bound) = reader.get(key).and_then(Value::as_f64) else {
                    continue;
                };
                let held = writer
                    .get(key)
                    .and_then(Value::as_f64)
                    .is_some_and(|w| if lower { w >= bound } else { w <= bound });
                // A `uint` format promises a minimum of 0 by itself.
                let implied = lower
                    && key == "minimum"
                    && bound <= 0.0
                    && writer
                        .get("format")
                        .and_then(Value::as_str)
                        .is_some_and(|f| f.starts_with("uint"));
                if !held && !implied {
                    reasons.push(self.reason(
                        path,
                        &format!("`{key}: {bound}` is new or tighter"),
                        &format!("`{key}: {bound}` of the old schema is dropped or loosened"),
                    ));
                }
            }
        }
    }

    fn object(
        &mut self,
        writer: &Value,
        reader: &Value,
        path: &str,
        depth: usize,
        reasons: &mut Reasons,
    ) {
        let empty = Map::new();
        let writer_props = writer
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let reader_props = reader
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let writer_required = required(writer);
        let reader_required = required(reader);
        for name in &reader_required {
            let field = format!("{path}.{name}");
            if !writer_props.contains_key(*name) && !writer_required.contains(name) {
                reasons.push(self.reason(
                    &field,
                    "new required field (old messages lack it)",
                    "required field removed (old readers require it)",
                ));
            } else if !writer_required.contains(name) {
                reasons.push(self.reason(
                    &field,
                    "became required (old messages may lack it)",
                    "became optional (old readers require it)",
                ));
            }
        }
        let reader_extra = reader.get("additionalProperties");
        for (name, schema) in writer_props {
            let field = format!("{path}.{name}");
            match (reader_props.get(name), reader_extra) {
                (Some(read), _) => reasons.extend(self.subset(schema, read, &field, depth + 1)),
                (None, Some(Value::Bool(false))) => reasons.push(self.reason(
                    &field,
                    "field removed, and the new schema denies unknown fields (old messages carry it)",
                    "new field, and the old schema denies unknown fields (deny_unknown_fields)",
                )),
                (None, Some(extra @ Value::Object(_))) => {
                    reasons.extend(self.subset(schema, extra, &field, depth + 1));
                }
                (None, _) => {}
            }
        }
        if let Some(extra @ Value::Object(_)) = writer.get("additionalProperties") {
            let entries = format!("{path}.*");
            match reader_extra {
                Some(read @ Value::Object(_)) => {
                    reasons.extend(self.subset(extra, read, &entries, depth + 1));
                }
                Some(Value::Bool(false)) if !accepts_anything(extra) || extra.is_object() => {
                    reasons.push(self.reason(
                        &entries,
                        "arbitrary keys no longer accepted",
                        "arbitrary keys now written (old readers deny unknown fields)",
                    ));
                }
                _ => {}
            }
        }
    }

    fn array(
        &mut self,
        writer: &Value,
        reader: &Value,
        path: &str,
        depth: usize,
        reasons: &mut Reasons,
    ) {
        let items = format!("{path}[]");
        if let Some(read) = reader.get("items") {
            let written = writer.get("items").unwrap_or(&Value::Bool(true));
            reasons.extend(self.subset(written, read, &items, depth + 1));
        }
        if let (Some(written), Some(read)) = (
            writer.get("prefixItems").and_then(Value::as_array),
            reader.get("prefixItems").and_then(Value::as_array),
        ) {
            for (index, (w, r)) in written.iter().zip(read).enumerate() {
                reasons.extend(self.subset(w, r, &format!("{path}[{index}]"), depth + 1));
            }
        }
    }
}
