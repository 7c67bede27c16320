//! The `herald` binary, run as an operator would.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

#[test]
fn demo_runs_end_to_end_and_checks_both_contexts() {
    let out = herald_logging("debug", &["demo", "--orders", "300", "--rate", "0"]);
    let all = text(&out);
    assert!(out.status.success(), "demo failed:\n{all}");
    assert!(all.contains("Herald demo summary"), "{all}");
    assert!(all.contains("check:"), "consistency check printed:\n{all}");
    assert!(
        all.contains("unknown sku"),
        "the poison order is dead-lettered:\n{all}"
    );
}

#[test]
fn outbox_commands_work_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let out = herald_logging("debug", &["migrate", "--database", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let out = herald_logging("debug", &["outbox", "--database", &url, "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pending"), "{}", text(&out));
    let out = herald_logging("debug", &["outbox", "--database", &url, "dead-letters"]);
    assert!(text(&out).contains("no dead letters"), "{}", text(&out));
    let out = herald_logging(
        "debug",
        &[
            "outbox",
            "--database",
            &url,
            "replay",
            "0190b5a8-0000-7000-8000-000000000000",
        ],
    );
    assert!(!out.status.success(), "replaying an unknown id is an error");
    assert!(
        text(&out).contains("no dead letter with id"),
        "{}",
        text(&out)
    );
    let out = herald_logging(
        "debug",
        &["outbox", "--database", &url, "purge", "--dead-letters"],
    );
    assert!(text(&out).contains("purged 0"), "{}", text(&out));
}

#[test]
fn unreachable_database_is_a_clear_error_without_the_password() {
    let out = herald_logging(
        "debug",
        &[
            "outbox",
            "--database",
            "postgres://app:hunter2secret@127.0.0.1:1/orders",
            "status",
        ],
    );
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("error:"), "{all}");
    assert!(!all.contains("hunter2secret"), "password leaked:\n{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn malformed_url_and_bad_table_name_are_configuration_errors() {
    let out = herald_logging(
        "debug",
        &[
            "migrate",
            "--database",
            "postgres://app:pw-in-url@[::1:5432/x",
        ],
    );
    let all = text(&out);
    assert!(!out.status.success());
    assert!(!all.contains("pw-in-url"), "password leaked:\n{all}");
    assert!(!all.contains("panicked"), "{all}");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = herald_logging(
        "debug",
        &[
            "migrate",
            "--database",
            &url,
            "--table",
            "outbox; drop table users",
        ],
    );
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("not a valid SQL identifier"), "{all}");
}
