//! The outcome of a check or a diff, readable by people (`Display`) and by programs (serde).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::compat::{self, Comparison};
use crate::error::Result;
use crate::snapshot::{self, Key, Snapshot};

/// What produced a report, which decides what fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// [`Catalog::check`](crate::Catalog::check) without recording: any difference between
    /// the code and the snapshots fails.
    Check,
    /// [`Catalog::check`](crate::Catalog::check) with `HERALD_SCHEMA_UPDATE=1`: new and
    /// compatible schemas were recorded; breaking changes and unregistered snapshots still
    /// fail.
    Update,
    /// With `HERALD_SCHEMA_UPDATE=force`: everything was recorded, breaking changes too;
    /// unregistered snapshots still fail.
    Force,
    /// [`diff`]: two snapshot folders; breaking changes and removed versions fail.
    Diff,
}

/// What happened to one (type, version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    /// Same schema.
    Unchanged,
    /// The schema changed, compatibly both ways (documentation, an optional field added, a
    /// variant a reader accepts anyway …).
    Compatible,
    /// The schema changed incompatibly in at least one direction.
    Breaking(Comparison),
    /// No snapshot yet (check), or only in the new folder (diff).
    Added,
    /// A snapshot whose (type, version) is not registered (check), or only in the old folder
    /// (diff): consumers may still receive that version.
    Removed,
    /// Written to the snapshot folder by this run (`HERALD_SCHEMA_UPDATE`).
    Recorded {
        /// What the recorded change was: `added`, `compatible` or `breaking`.
        was: String,
    },
}

/// One (type, version) in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its version.
    pub version: u32,
    /// What happened to it.
    #[serde(flatten)]
    pub status: Status,
}

/// The result of a check or a diff. `Display` is the readable report; `Debug` shows the same,
/// so that a failing test's `unwrap()` or `?` prints it.
#[derive(Clone, Serialize)]
pub struct Report {
    /// What produced it.
    pub kind: ReportKind,
    /// The snapshot folder (check), or the new folder (diff).
    pub dir: PathBuf,
    /// The old folder (diff only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_dir: Option<PathBuf>,
    /// Every (type, version), in order.
    pub entries: Vec<Entry>,
    /// What could not be read, written or registered.
    pub problems: Vec<String>,
}

impl Report {
    pub(crate) fn new(kind: ReportKind, dir: &Path) -> Self {
        Report {
            kind,
            dir: dir.to_owned(),
            old_dir: None,
            entries: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Whether the report fails its check or diff.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty() || self.entries.iter().any(|e| self.fails(e))
    }

    /// Whether any entry breaks compatibility (or removes a version).
    pub fn is_breaking(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.status, Status::Breaking(_) | Status::Removed))
    }

    fn fails(&self, entry: &Entry) -> bool {
        match (&entry.status, self.kind) {
            (Status::Unchanged | Status::Recorded { .. }, _) => false,
            (Status::Breaking(_) | Status::Removed, _) => true,
            (Status::Compatible | Status::Added, ReportKind::Check) => true,
            (Status::Compatible | Status::Added, _) => false,
        }
    }

    fn path(&self, entry: &Entry) -> PathBuf {
        snapshot::path_of(&self.dir, &entry.event_type, entry.version)
    }
}

/// Compares two snapshot folders: `old` (e.g. the main branch's) and `new` (the change's).
///
/// Both folders must exist (a mistyped path must not pass as "nothing changed").
pub fn diff(old: &Path, new: &Path) -> Result<Report> {
    for dir in [old, new] {
        if !dir.is_dir() {
            return Err(crate::error::Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
    }
    let before = snapshot::read_dir(old)?;
    let after = snapshot::read_dir(new)?;
    let mut report = Report::new(ReportKind::Diff, new);
    report.old_dir = Some(old.to_owned());
    let mut keys: Vec<&Key> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let status = status_of(before.get(key), after.get(key));
        report.entries.push(Entry {
            event_type: key.0.clone(),
            version: key.1,
            status,
        });
    }
    Ok(report)
}

/// The status of a (type, version) between its old and its new snapshot.
pub(crate) fn status_of(old: Option<&Snapshot>, new: Option<&Snapshot>) -> Status {
    match (old, new) {
        (None, None) => Status::Unchanged,
        (None, Some(_)) => Status::Added,
        (Some(_), None) => Status::Removed,
        (Some(old), Some(new)) => {
            if old.format == new.format
                && snapshot::canonical(&old.schema) == snapshot::canonical(&new.schema)
            {
                return Status::Unchanged;
            }
            let comparison = compat::compare(old, new);
            if comparison.is_breaking() {
                Status::Breaking(comparison)
            } else {
                Status::Compatible
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changed: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.status != Status::Unchanged)
            .collect();
        let verdict = if self.failed() { "failed" } else { "passed" };
        match (&self.kind, &self.old_dir) {
            (ReportKind::Diff, Some(old)) => writeln!(
                f,
                "schema diff {verdict}: {} → {}: {} of {} event versions changed",
                old.display(),
                self.dir.display(),
                changed.len(),
                self.entries.len()
            )?,
            _ => writeln!(
                f,
                "schema check {verdict}: {} of {} event versions differ from {}",
                changed.len(),
                self.entries.len(),
                self.dir.display()
            )?,
        }
        for problem in &self.problems {
            writeln!(f, "\nerror: {problem}")?;
        }
        let mut hints = BTreeMap::new();
        for entry in changed {
            writeln!(f)?;
            let name = format!("{} v{}", entry.event_type, entry.version);
            let file = self.path(entry);
            match &entry.status {
                Status::Unchanged => {}
                Status::Compatible => {
                    writeln!(
                        f,
                        "{name}: changed, compatible both ways ({})",
                        file.display()
                    )?;
                    if self.kind == ReportKind::Check {
                        writeln!(f, "  the snapshot is out of date: record it")?;
                        hints.insert(0, RECORD);
                    }
                }
                Status::Added => {
                    if self.kind == ReportKind::Diff {
                        writeln!(f, "{name}: new version")?;
                    } else {
                        writeln!(f, "{name}: not recorded yet ({})", file.display())?;
                        hints.insert(0, RECORD);
                    }
                }
                Status::Removed => {
                    if self.kind == ReportKind::Diff {
                        writeln!(
                            f,
                            "{name}: removed — consumers may still receive this version"
                        )?;
                    } else {
                        writeln!(
                            f,
                            "{name}: recorded, but no longer registered in the catalog ({})",
                            file.display()
                        )?;
                        hints.insert(2, UNREGISTERED);
                    }
                }
                Status::Recorded { was } => {
                    writeln!(f, "{name}: recorded ({was}) in {}", file.display())?;
                }
                Status::Breaking(comparison) => {
                    writeln!(f, "{name}: BREAKING change ({})", file.display())?;
                    write_direction(
                        f,
                        "backward: a consumer upgraded first cannot read messages written with the old schema",
                        &comparison.backward,
                    )?;
                    write_direction(
                        f,
                        "forward: consumers not yet upgraded cannot read what an upgraded producer writes",
                        &comparison.forward,
                    )?;
                    hints.insert(1, BREAKING);
                }
            }
        }
        if self.kind != ReportKind::Diff {
            for hint in hints.values() {
                writeln!(f, "\n{hint}")?;
            }
        }
        Ok(())
    }
}

fn write_direction(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    reasons: &[compat::Incompatibility],
) -> fmt::Result {
    if reasons.is_empty() {
        return Ok(());
    }
    writeln!(f, "  {title}:")?;
    for reason in reasons {
        writeln!(f, "    {}: {}", reason.path, reason.change)?;
    }
    Ok(())
}

const RECORD: &str = "To record the current schemas, run the tests with HERALD_SCHEMA_UPDATE=1 \
(e.g. `HERALD_SCHEMA_UPDATE=1 cargo test`) and commit the snapshot files.";

const BREAKING: &str = "A breaking change needs a new version: keep the old type registered, give \
the new one `const VERSION: u32 = <next>;` (and an upcaster on the consumers' side), then record. \
For an event never released, HERALD_SCHEMA_UPDATE=force overwrites the snapshot.";

const UNREGISTERED: &str = "Old versions matter to consumers (messages in flight, dead letters, \
producers not yet upgraded): keep registering them, or delete the snapshot file once no one \
writes or holds that version any more.";

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Report {}
