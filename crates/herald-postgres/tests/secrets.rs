//! Secrets, injection and TLS against the test server (`HERALD_TEST_DATABASE_URL`): the
//! password of a database URL never shows in errors or `Debug` output, whatever characters it
//! has and wherever it is written (userinfo or `?password=`); schema and table names are
//! validated; `sslmode` is honoured.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use herald_core::Error;
use herald_core::error::error_chain;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use proptest::prelude::*;

fn database_url() -> String {
    herald_testkit::env::database_url()
}

/// Percent-encodes everything but unreserved characters, as a URL's userinfo needs.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Everything an error can print: its chain and its `Debug` form.
fn all_text(error: &Error) -> String {
    format!("{} / {error:?}", error_chain(error))
}

async fn connect_error(url: &str) -> Error {
    PgOutbox::connect(url, PgOutboxConfig::default())
        .await
        .map(|_| ())
        .expect_err("the connection must fail")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the password and wherever it is written, a failed connection never shows it,
    /// neither as written nor percent-decoded.
    #[test]
    fn no_password_shows_in_connection_errors(
        password in "[a-zA-Z0-9!$&'()*+,;=%@:/?#\\[\\] ~-]{6,24}",
    ) {
        let encoded = encode(&password);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for url in [
            format!("postgres://app:{encoded}@127.0.0.1:1/orders"),
            format!("postgresql://app:{encoded}@127.0.0.1:1/orders?sslmode=prefer"),
            format!("postgres://127.0.0.1:1/orders?user=app&password={encoded}"),
            format!("postgres://app:{encoded}@127.0.0.1:notaport/orders"),
            format!("mysql://app:{encoded}@127.0.0.1/orders"),
        ] {
            let error = runtime.block_on(connect_error(&url));
            let text = all_text(&error);
            prop_assert!(!text.contains(&encoded), "{}", text);
            prop_assert!(!text.contains(&password), "{}", text);
        }
    }
}

#[tokio::test]
async fn a_refused_login_shows_the_user_but_not_the_password() {
    let url = database_url().replacen("://", "://herald_no_such_role:hunter2secret@", 1);
    // The test URL may carry a user already: keep only the one we put in.
    let url = match url.split_once('@') {
        Some((head, tail)) => match tail.split_once('@') {
            Some((_, host)) => format!("{head}@{host}"),
            None => url.clone(),
        },
        None => url,
    };
    let error = connect_error(&url).await;
    let text = all_text(&error);
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(text.contains("herald_no_such_role"), "{text}");
    assert!(
        !error.is_transient(),
        "a refused login is no transient fault: {text}"
    );
}

#[tokio::test]
async fn debug_output_of_the_outbox_and_its_config_has_no_password() {
    let config = PgOutboxConfig::default();
    let url = database_url();
    let outbox = PgOutbox::connect(&url, config.clone()).await.unwrap();
    let text = format!("{outbox:?} {config:?}");
    assert!(!text.contains("://"), "no URL in debug output: {text}");
}

#[test]
fn schema_and_table_names_are_validated() {
    for (schema, table) in [
        ("x\"; DROP SCHEMA public CASCADE; --", "outbox"),
        ("herald", "outbox\" (id int); --"),
        ("", "outbox"),
        ("herald", "out box"),
        ("herald", &"t".repeat(64)),
        ("her\0ald", "outbox"),
    ] {
        let err = PgOutboxConfig::new(schema, table).expect_err("refused");
        assert!(
            matches!(err, Error::Config(_)),
            "{schema:?}.{table:?}: {err:?}"
        );
    }
    PgOutboxConfig::new("herald_eu", "outbox_v2").unwrap();
}

#[tokio::test]
async fn sslmode_require_speaks_tls_and_disable_does_not() {
    let base = database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    for (mode, expect_tls) in [("require", true), ("prefer", true), ("disable", false)] {
        let outbox = PgOutbox::connect(
            &format!("{base}{sep}sslmode={mode}"),
            PgOutboxConfig::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("sslmode={mode}: {}", error_chain(&e)));
        let tls: bool = sqlx::query_scalar(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
        )
        .fetch_one(outbox.pool())
        .await
        .unwrap();
        assert_eq!(tls, expect_tls, "sslmode={mode}");
    }
}

#[tokio::test]
async fn sslmode_verify_full_with_an_unknown_ca_is_refused_without_the_password() {
    let base = database_url().replacen("://postgres@", "://postgres:hunter2secret@", 1);
    let sep = if base.contains('?') { '&' } else { '?' };
    let error = connect_error(&format!(
        "{base}{sep}sslmode=verify-full&sslrootcert=/nonexistent/herald-ca.pem"
    ))
    .await;
    let text = all_text(&error);
    assert!(!text.contains("hunter2secret"), "{text}");
}
