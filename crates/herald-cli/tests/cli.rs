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

/// The demo serves the relays' and the consumer's metrics while it runs: what an operator
/// scrapes from a service that runs both.
#[test]
fn the_demo_serves_relay_and_consumer_metrics() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "demo",
            "--orders",
            "1500",
            "--rate",
            "250",
            "--metrics-addr",
            &addr,
        ])
        .env_remove("HERALD_TRANSPORT")
        .env_remove("HERALD_DEMO_DATABASE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sum = |body: &str, prefix: &str, having: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(having))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let handled = "herald_consumer_handled_total{consumer=\"herald-demo-inventory-";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = loop {
        if let Some(body) = scrape(&addr)
            && sum(&body, handled, "outcome=\"done\"") >= 100.0
            && sum(&body, "herald_relay_published_total", "") >= 100.0
        {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no relay and consumer metrics at {addr}: {:?}",
            scrape(&addr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = demo.wait().unwrap();
    assert!(status.success(), "the demo's closing check passed");
    for series in [
        "herald_consumer_received_total",
        "herald_consumer_lag_seconds_bucket",
        "herald_consumer_handling_duration_seconds_count",
        "herald_relay_publish_duration_seconds_count",
        "herald_outbox_pending_rows",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
}
