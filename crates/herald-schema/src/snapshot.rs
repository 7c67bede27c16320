//! Snapshots: one file per (type, version), `<dir>/<type>/v<version>.json`, pretty JSON with
//! sorted keys so that a change reads well in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The kind of schema a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// A JSON Schema (draft 2020-12, as schemars writes it) of a serde event.
    #[serde(rename = "json-schema")]
    JsonSchema,
    /// A Protobuf message: its fields, reserved numbers and names, and the messages and enums
    /// it uses (see [`ProtoSchema`](crate::ProtoSchema)).
    #[serde(rename = "protobuf")]
    Protobuf,
}

/// The recorded schema of one (event type, version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The event type (`Event::TYPE`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload version (`Event::VERSION`).
    pub version: u32,
    /// What [`schema`](Self::schema) is.
    pub format: Format,
    /// The schema: a JSON Schema, or a [`ProtoSchema`](crate::ProtoSchema) as JSON.
    pub schema: Value,
}

/// The key of a snapshot: (event type, version).
pub type Key = (String, u32);

impl Snapshot {
    /// The file of this snapshot under `dir`: `<dir>/<type>/v<version>.json`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        path_of(dir, &self.event_type, self.version)
    }

    /// The snapshot as its file holds it: pretty JSON, keys sorted, a final newline.
    pub fn to_pretty_json(&self) -> String {
        let value = serde_json::to_value(self).map_or(Value::Null, |value| canonical(&value));
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the snapshot under `dir`, creating its folder.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = self.path_in(dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, self.to_pretty_json()).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Reads one snapshot file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Snapshot {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// `<dir>/<type>/v<version>.json`.
pub fn path_of(dir: &Path, event_type: &str, version: u32) -> PathBuf {
    dir.join(event_type).join(format!("v{version}.json"))
}

/// Every snapshot under `dir` (an absent folder holds none). A file that is not a snapshot,
/// or whose place does not match its content, is an error.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<Key, Snapshot>> {
    let mut snapshots = BTreeMap::new();
    let types = match std::fs::read_dir(dir) {
        Ok(types) => types,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(snapshots),
        Err(error) => return Err(Error::io(dir, error)),
    };
    for entry in types {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let folder = entry.path();
        if !folder.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
            let path = file.map_err(|e| Error::io(&folder, e))?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let snapshot = Snapshot::read(&path)?;
            if snapshot.path_in(dir) != path {
                return Err(Error::Snapshot {
                    path,
                    reason: format!(
                        "it holds {} v{}, whose place is {}",
                        snapshot.event_type,
                        snapshot.version,
                        snapshot.path_in(dir).display()
                    ),
                });
            }
            snapshots.insert((snapshot.event_type.clone(), snapshot.version), snapshot);
        }
    }
    Ok(snapshots)
}

/// Checks that an event type can name a folder.
pub(crate) fn check_type(event_type: &str) -> Result<()> {
    let legal = !event_type.is_empty()
        && event_type != "."
        && event_type != ".."
        && event_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal {
        Ok(())
    } else {
        Err(Error::EventType(event_type.to_owned()))
    }
}

/// The value with every object's keys sorted (whatever map type serde_json was built with).
pub(crate) fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
