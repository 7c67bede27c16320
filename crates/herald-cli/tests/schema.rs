//! `herald schema diff` on snapshot folders (the demo's committed `schemas/`, and changed
//! copies of it) and `herald schema asyncapi`, run as a CI pipeline would.

mod common;

use std::path::Path;

use common::{herald, text};
use serde_json::Value;

/// The demo's committed snapshots.
fn committed() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))
}

/// A copy of the committed snapshots, to change.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(committed()).expect("schemas/") {
        let folder = entry.expect("entry").path();
        let target = dir.path().join(folder.file_name().expect("named"));
        std::fs::create_dir_all(&target).expect("folder");
        for file in std::fs::read_dir(&folder).expect("type folder") {
            let file = file.expect("file").path();
            std::fs::copy(&file, target.join(file.file_name().expect("named"))).expect("copy");
        }
    }
    dir
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn diff_of_identical_folders_exits_0() {
    let new = copy();
    let output = herald(&["schema", "diff", arg(committed()), arg(new.path())]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("schema diff passed"),
        "{}",
        text(&output)
    );
}

#[test]
fn diff_of_a_compatible_change_exits_0_and_names_it() {
    let new = copy();
    let file = new.path().join("ordering.order_created/v1.json");
    let mut snapshot: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    snapshot["schema"]["properties"]["note"] = serde_json::json!({ "type": ["string", "null"] });
    snapshot["schema"]["description"] = "Documentation changed.".into();
    std::fs::write(&file, snapshot.to_string()).expect("write");
    let output = herald(&["schema", "diff", arg(committed()), arg(new.path())]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("ordering.order_created v1: changed, compatible both ways"),
        "{}",
        text(&output)
    );
}

/// A field renamed without a new version: breaking both ways, exit 2, and the report says
/// where and in which direction; `--json` says the same to programs.
#[test]
fn diff_of_a_breaking_change_exits_2_with_the_report() {
    let new = copy();
    let file = new.path().join("ordering.order_created/v1.json");
    let renamed = std::fs::read_to_string(&file)
        .expect("read")
        .replace("\"customer\"", "\"buyer\"");
    std::fs::write(&file, renamed).expect("write");

    let output = herald(&["schema", "diff", arg(committed()), arg(new.path())]);
    let report = text(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(
        report.contains("ordering.order_created v1: BREAKING"),
        "{report}"
    );
    assert!(report.contains("$.buyer: new required field"), "{report}");
    assert!(
        report.contains("$.customer: required field removed"),
        "{report}"
    );

    let output = herald(&[
        "schema",
        "diff",
        "--json",
        arg(committed()),
        arg(new.path()),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let created = json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["type"] == "ordering.order_created")
        .expect("the changed event");
    assert_eq!(created["status"], "breaking", "{json:#}");
    assert_eq!(created["backward"][0]["path"], "$.buyer", "{json:#}");
    assert_eq!(created["forward"][0]["path"], "$.customer", "{json:#}");
}

#[test]
fn diff_of_a_removed_version_exits_2() {
    let new = copy();
    std::fs::remove_dir_all(new.path().join("ordering.order_cancelled")).expect("removed");
    let output = herald(&["schema", "diff", arg(committed()), arg(new.path())]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("ordering.order_cancelled v1: removed"),
        "{}",
        text(&output)
    );
}

#[test]
fn diff_of_unreadable_folders_exits_1() {
    let new = copy();
    let output = herald(&["schema", "diff", "/no/such/folder", arg(new.path())]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("/no/such/folder"),
        "{}",
        text(&output)
    );

    std::fs::write(
        new.path().join("ordering.order_created/v1.json"),
        "{ not json",
    )
    .expect("write");
    let output = herald(&["schema", "diff", arg(committed()), arg(new.path())]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("not a schema snapshot"),
        "{}",
        text(&output)
    );
}

#[test]
fn asyncapi_prints_a_valid_document_of_the_demo() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../herald-schema/tests/fixtures/asyncapi-3.0.0.schema.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    let validator = jsonschema::validator_for(&schema).expect("compiles offline");
    for (args, channel) in [
        (vec!["schema", "asyncapi"], "ordering.order_created"),
        (
            vec!["schema", "asyncapi", "--transport", "amqp://localhost"],
            "ordering.order_created",
        ),
        (
            vec![
                "schema",
                "asyncapi",
                "--transport",
                "kafka://localhost:9092",
            ],
            "herald.events",
        ),
    ] {
        let output = herald(&args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
        let document: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{args:?}: {errors:#?}");
        assert!(
            document["channels"].get(channel).is_some(),
            "{args:?}: {document:#}"
        );
        assert!(
            document["components"]["messages"]
                .get("ordering.order_cancelled.v1")
                .is_some(),
            "{document:#}"
        );
    }
}
