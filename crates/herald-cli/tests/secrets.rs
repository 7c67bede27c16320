//! The `herald` binary never prints a connection password: not in errors, not in its debug
//! logs, whichever URL carries it and however it is written.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Output;

fn assert_hidden(out: &Output, secrets: &[&str]) {
    let all = text(out);
    for secret in secrets {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn a_relay_with_an_unreachable_broker_never_prints_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    for broker in [
        "amqp://app:hunter2secret@127.0.0.1:1/%2f",
        "amqps://app:hunter2secret@127.0.0.1:1/%2f",
        "amqp://app:hunter%32secret%21@127.0.0.1:1/%2f",
    ] {
        let out = herald_logging(
            "trace",
            &[
                "relay",
                "--database",
                &db,
                "--migrate",
                "--until-empty",
                "--transport",
                broker,
            ],
        );
        assert!(!out.status.success(), "{}", text(&out));
        assert_hidden(&out, &["hunter2secret", "hunter%32secret"]);
    }
}

#[test]
fn database_urls_with_encoded_or_query_passwords_are_never_printed() {
    for url in [
        "postgres://app:hunter%32secret%40x@127.0.0.1:1/orders",
        "postgres://127.0.0.1:1/orders?user=app&password=hunter2secret",
        "postgresql://app:hunter2secret@127.0.0.1:1/orders?sslmode=require",
    ] {
        let out = herald_logging("trace", &["outbox", "--database", url, "status"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert_hidden(&out, &["hunter2secret", "hunter%32secret"]);
    }
}
