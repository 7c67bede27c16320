//! The catalog check against a snapshot folder: what fails, what records, what the report
//! says; and the diff of two folders.
#![allow(dead_code)]

use herald_core::Event;
use herald_schema::{Catalog, ReportKind, Status, UpdateMode, diff};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod v1 {
    use super::*;
    /// An order was placed.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: i64,
        pub customer: String,
    }
    impl Event for OrderPlaced {
        const TYPE: &'static str = "ordering.order_placed";
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderCancelled {
        pub order_id: i64,
    }
    impl Event for OrderCancelled {
        const TYPE: &'static str = "ordering.order_cancelled";
    }
}

mod documented {
    use super::*;
    /// An order was placed by a customer.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        /// The order.
        pub order_id: i64,
        pub customer: String,
        pub note: Option<String>,
    }
    impl Event for OrderPlaced {
        const TYPE: &'static str = "ordering.order_placed";
    }
}

mod broken {
    use super::*;
    /// The customer field was renamed without a new version.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: i64,
        pub buyer: String,
    }
    impl Event for OrderPlaced {
        const TYPE: &'static str = "ordering.order_placed";
    }
    /// The same change as a new version.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlacedV2 {
        pub order_id: i64,
        pub buyer: String,
    }
    impl Event for OrderPlacedV2 {
        const TYPE: &'static str = "ordering.order_placed";
        const VERSION: u32 = 2;
    }
}

fn status_of(report: &herald_schema::Report, version: u32) -> &Status {
    &report
        .entries
        .iter()
        .find(|e| e.event_type == "ordering.order_placed" && e.version == version)
        .expect("in the report")
        .status
}

#[test]
fn a_version_not_recorded_fails_until_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = Catalog::new()
        .event::<v1::OrderPlaced>()
        .event::<v1::OrderCancelled>();
    let report = catalog
        .check_with(dir.path(), UpdateMode::Check)
        .expect_err("nothing recorded");
    let text = report.to_string();
    assert!(
        text.contains("ordering.order_placed v1: not recorded yet"),
        "{text}"
    );
    assert!(text.contains("HERALD_SCHEMA_UPDATE=1"), "{text}");

    catalog
        .check_with(dir.path(), UpdateMode::Update)
        .expect("recording passes");
    let file = dir.path().join("ordering.order_placed").join("v1.json");
    let written = std::fs::read_to_string(&file).expect("snapshot written");
    assert!(written.contains("\"format\": \"json-schema\""), "{written}");
    assert!(written.ends_with("}\n"), "pretty, with a final newline");
    catalog
        .check_with(dir.path(), UpdateMode::Check)
        .expect("recorded: passes");
}

#[test]
fn a_compatible_change_fails_until_recorded_and_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    Catalog::new()
        .event::<v1::OrderPlaced>()
        .check_with(dir.path(), UpdateMode::Update)
        .expect("recorded");
    let catalog = Catalog::new().event::<documented::OrderPlaced>();
    let report = catalog
        .check_with(dir.path(), UpdateMode::Check)
        .expect_err("out of date");
    assert_eq!(status_of(&report, 1), &Status::Compatible);
    assert!(report.to_string().contains("out of date"), "{report}");
    catalog
        .check_with(dir.path(), UpdateMode::Update)
        .expect("compatible changes are recorded");
    catalog
        .check_with(dir.path(), UpdateMode::Check)
        .expect("up to date");
}

#[test]
fn a_breaking_change_fails_in_both_modes_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    Catalog::new()
        .event::<v1::OrderPlaced>()
        .check_with(dir.path(), UpdateMode::Update)
        .expect("recorded");
    let before = std::fs::read_to_string(dir.path().join("ordering.order_placed/v1.json"))
        .expect("snapshot");
    let catalog = Catalog::new().event::<broken::OrderPlaced>();
    for mode in [UpdateMode::Check, UpdateMode::Update] {
        let report = catalog.check_with(dir.path(), mode).expect_err("breaking");
        let text = report.to_string();
        assert!(text.contains("BREAKING"), "{text}");
        assert!(
            text.contains("backward: a consumer upgraded first"),
            "{text}"
        );
        assert!(text.contains("$.buyer: new required field"), "{text}");
        assert!(
            text.contains("forward: consumers not yet upgraded"),
            "{text}"
        );
        assert!(
            text.contains("$.customer: required field removed"),
            "{text}"
        );
        assert!(text.contains("needs a new version"), "{text}");
        // `Debug` is the same report, for `unwrap()` in tests.
        assert_eq!(format!("{report:?}"), text);
    }
    let after = std::fs::read_to_string(dir.path().join("ordering.order_placed/v1.json"))
        .expect("snapshot");
    assert_eq!(before, after, "a breaking change is not recorded by =1");

    // The right way: keep v1, add v2.
    let bumped = Catalog::new()
        .event::<v1::OrderPlaced>()
        .event::<broken::OrderPlacedV2>();
    bumped
        .check_with(dir.path(), UpdateMode::Update)
        .expect("a new version records");

    // `force` overwrites (an event never released).
    catalog
        .check_with(dir.path(), UpdateMode::Force)
        .expect_err("v2 is no longer registered");
    let forced = std::fs::read_to_string(dir.path().join("ordering.order_placed/v1.json"))
        .expect("snapshot");
    assert!(forced.contains("buyer"), "{forced}");
}

#[test]
fn a_snapshot_no_longer_registered_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    Catalog::new()
        .event::<v1::OrderPlaced>()
        .event::<v1::OrderCancelled>()
        .check_with(dir.path(), UpdateMode::Update)
        .expect("recorded");
    let catalog = Catalog::new().event::<v1::OrderPlaced>();
    for mode in [UpdateMode::Check, UpdateMode::Update] {
        let report = catalog
            .check_with(dir.path(), mode)
            .expect_err("unregistered");
        let text = report.to_string();
        assert!(
            text.contains("ordering.order_cancelled v1: recorded, but no longer registered"),
            "{text}"
        );
        assert!(text.contains("Old versions matter to consumers"), "{text}");
    }
}

#[test]
fn a_duplicate_registration_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = Catalog::new()
        .event::<v1::OrderPlaced>()
        .event::<v1::OrderPlaced>()
        .check_with(dir.path(), UpdateMode::Update)
        .expect_err("duplicate");
    assert!(report.to_string().contains("registered twice"), "{report}");
}

#[test]
fn diff_fails_on_breaking_changes_and_removed_versions_only() {
    let old = tempfile::tempdir().expect("temp dir");
    let new = tempfile::tempdir().expect("temp dir");
    Catalog::new()
        .event::<v1::OrderPlaced>()
        .event::<v1::OrderCancelled>()
        .write_all(old.path())
        .expect("written");

    Catalog::new()
        .event::<documented::OrderPlaced>()
        .event::<v1::OrderCancelled>()
        .event::<broken::OrderPlacedV2>()
        .write_all(new.path())
        .expect("written");
    let report = diff(old.path(), new.path()).expect("diffed");
    assert_eq!(report.kind, ReportKind::Diff);
    assert!(!report.failed(), "{report}");
    assert_eq!(status_of(&report, 1), &Status::Compatible);
    assert_eq!(status_of(&report, 2), &Status::Added);

    Catalog::new()
        .event::<broken::OrderPlaced>()
        .write_all(new.path())
        .expect("written");
    std::fs::remove_dir_all(new.path().join("ordering.order_cancelled")).expect("removed");
    let report = diff(old.path(), new.path()).expect("diffed");
    assert!(report.failed() && report.is_breaking(), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("ordering.order_placed v1: BREAKING"),
        "{text}"
    );
    assert!(
        text.contains("ordering.order_cancelled v1: removed"),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("serializable");
    assert_eq!(json["entries"][0]["status"], "removed", "{json:#}");
}

#[test]
fn a_misplaced_snapshot_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    Catalog::new()
        .event::<v1::OrderPlaced>()
        .write_all(dir.path())
        .expect("written");
    std::fs::rename(
        dir.path().join("ordering.order_placed/v1.json"),
        dir.path().join("ordering.order_placed/v3.json"),
    )
    .expect("renamed");
    let error = herald_schema::read_dir(dir.path()).expect_err("misplaced");
    assert!(error.to_string().contains("whose place is"), "{error}");
}
