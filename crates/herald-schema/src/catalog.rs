//! The catalog an application builds from its event types, and its check against the
//! snapshot folder.

use std::collections::BTreeMap;
use std::path::Path;

use herald_core::Event;
use schemars::JsonSchema;
use serde_json::Value;

use crate::error::Error;
use crate::protobuf::ProtoSchema;
use crate::report::{Entry, Report, ReportKind, Status, status_of};
use crate::snapshot::{self, Format, Key, Snapshot};

/// The variable that makes [`Catalog::check`] record: `1` (or `true`, `yes`) records new
/// versions and compatible changes, `force` records breaking changes too.
pub const UPDATE_VARIABLE: &str = "HERALD_SCHEMA_UPDATE";

/// Whether a check records what differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// Only compare (CI).
    #[default]
    Check,
    /// Record new versions and compatible changes; breaking changes still fail.
    Update,
    /// Record everything, breaking changes too (for events not released yet).
    Force,
}

impl UpdateMode {
    /// The mode `HERALD_SCHEMA_UPDATE` asks for: unset, empty or `0` → check; `force` →
    /// force; anything else → update.
    pub fn from_env() -> Self {
        match std::env::var(UPDATE_VARIABLE) {
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" => UpdateMode::Check,
                "force" => UpdateMode::Force,
                _ => UpdateMode::Update,
            },
            Err(_) => UpdateMode::Check,
        }
    }
}

/// The event types and versions an application publishes or consumes, with their schemas.
///
/// ```
/// use herald_core::Event;
/// use herald_schema::Catalog;
/// use serde::{Deserialize, Serialize};
///
/// /// An order was placed.
/// #[derive(Serialize, Deserialize, schemars::JsonSchema)]
/// struct OrderPlaced { order_id: i64, cents: u64 }
/// impl Event for OrderPlaced { const TYPE: &'static str = "ordering.order_placed"; }
///
/// let catalog = Catalog::new().event::<OrderPlaced>();
/// assert_eq!(catalog.snapshots().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<Key, Snapshot>,
    problems: Vec<String>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers serde event `E`: its JSON Schema under (`E::TYPE`, `E::VERSION`). Register
    /// every version the application still writes or reads, old ones included.
    pub fn event<E: Event + JsonSchema>(self) -> Self {
        let schema = schemars::schema_for!(E);
        let value = serde_json::to_value(&schema).unwrap_or(Value::Null);
        self.insert(E::TYPE, E::VERSION, Format::JsonSchema, value)
    }

    /// Registers a JSON Schema written by other means under (`event_type`, `version`).
    pub fn json_schema(self, event_type: &str, version: u32, schema: Value) -> Self {
        self.insert(event_type, version, Format::JsonSchema, schema)
    }

    /// Registers a Protobuf event: message `message` (full name, `shop.v1.OrderPlaced`) of an
    /// encoded `FileDescriptorSet` (as `prost-build`'s `file_descriptor_set_path` or `protoc
    /// --descriptor_set_out --include_imports` write it) under (`event_type`, `version`).
    pub fn protobuf(
        self,
        event_type: &str,
        version: u32,
        message: &str,
        descriptor_set: &[u8],
    ) -> Result<Self, Error> {
        let schema = ProtoSchema::from_descriptor_set(message, descriptor_set)?;
        Ok(self.proto_schema(event_type, version, &schema))
    }

    /// Registers Protobuf event `E` (a prost message with `impl Payload for E { type Codec =
    /// Protobuf; }`) under (`E::TYPE`, `E::VERSION`): its message, by `prost::Name`'s full
    /// name, read from `descriptor_set`, the encoded `FileDescriptorSet` that holds it.
    pub fn protobuf_event<E: Event + prost::Name>(
        self,
        descriptor_set: &[u8],
    ) -> Result<Self, Error> {
        self.protobuf(E::TYPE, E::VERSION, &E::full_name(), descriptor_set)
    }

    /// Registers an already read Protobuf message under (`event_type`, `version`).
    pub fn proto_schema(self, event_type: &str, version: u32, schema: &ProtoSchema) -> Self {
        let value = serde_json::to_value(schema).unwrap_or(Value::Null);
        self.insert(event_type, version, Format::Protobuf, value)
    }

    fn insert(mut self, event_type: &str, version: u32, format: Format, schema: Value) -> Self {
        if let Err(error) = snapshot::check_type(event_type) {
            self.problems.push(error.to_string());
            return self;
        }
        let key = (event_type.to_owned(), version);
        if self.entries.contains_key(&key) {
            self.problems.push(
                Error::Duplicate {
                    event_type: event_type.to_owned(),
                    version,
                }
                .to_string(),
            );
            return self;
        }
        let snapshot = Snapshot {
            event_type: event_type.to_owned(),
            version,
            format,
            schema: snapshot::canonical(&schema),
        };
        self.entries.insert(key, snapshot);
        self
    }

    /// The registered schemas, in (type, version) order.
    pub fn snapshots(&self) -> Vec<&Snapshot> {
        self.entries.values().collect()
    }

    /// The schema of (`event_type`, `version`).
    pub fn get(&self, event_type: &str, version: u32) -> Option<&Snapshot> {
        self.entries.get(&(event_type.to_owned(), version))
    }

    /// Checks the catalog against the snapshot folder `dir` (`<dir>/<type>/v<version>.json`),
    /// recording as the variable `HERALD_SCHEMA_UPDATE` asks (see [`UpdateMode::from_env`]).
    ///
    /// Without it, the check fails when anything differs: a version not recorded yet, a
    /// snapshot whose (type, version) is no longer registered, a breaking change, and also a
    /// compatible change (so that the committed snapshot is always what the code writes, and
    /// the next change is compared with it). The report says which, in which direction a
    /// change breaks, and how to record.
    ///
    /// A relative `dir` is relative to the working directory, which `cargo test` sets to the
    /// crate's folder.
    pub fn check(&self, dir: impl AsRef<Path>) -> Result<(), Report> {
        self.check_with(dir, UpdateMode::from_env())
    }

    /// [`check`](Self::check) with an explicit mode instead of the environment's.
    pub fn check_with(&self, dir: impl AsRef<Path>, mode: UpdateMode) -> Result<(), Report> {
        let dir = dir.as_ref();
        let kind = match mode {
            UpdateMode::Check => ReportKind::Check,
            UpdateMode::Update => ReportKind::Update,
            UpdateMode::Force => ReportKind::Force,
        };
        let mut report = Report::new(kind, dir);
        report.problems.extend(self.problems.iter().cloned());
        let recorded = match snapshot::read_dir(dir) {
            Ok(recorded) => recorded,
            Err(error) => {
                report.problems.push(error.to_string());
                return Err(report);
            }
        };
        let mut keys: Vec<&Key> = recorded.keys().chain(self.entries.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let current = self.entries.get(key);
            let mut status = status_of(recorded.get(key), current);
            if let Some(current) = current {
                let was = match (&status, mode) {
                    (Status::Added, UpdateMode::Update | UpdateMode::Force) => Some("added"),
                    (Status::Compatible, UpdateMode::Update | UpdateMode::Force) => {
                        Some("compatible")
                    }
                    (Status::Breaking(_), UpdateMode::Force) => Some("breaking"),
                    _ => None,
                };
                if let Some(was) = was {
                    match current.write(dir) {
                        Ok(_) => {
                            status = Status::Recorded {
                                was: was.to_owned(),
                            }
                        }
                        Err(error) => report.problems.push(error.to_string()),
                    }
                }
            }
            report.entries.push(Entry {
                event_type: key.0.clone(),
                version: key.1,
                status,
            });
        }
        if report.failed() { Err(report) } else { Ok(()) }
    }

    /// Writes every registered schema under `dir`, whatever is there (what `herald schema`
    /// tools and first-time setups use; tests use [`check`](Self::check)).
    pub fn write_all(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        for snapshot in self.entries.values() {
            snapshot.write(dir.as_ref())?;
        }
        Ok(())
    }
}
