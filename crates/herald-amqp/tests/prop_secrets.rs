//! Secrets and injection: the password of an AMQP URL never shows in errors, `Debug` output
//! or logs, whatever characters it has (as written and percent-decoded); exchange and queue
//! names from configuration are validated; `amqps://` URLs are accepted.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_amqp::{AmqpConfig, AmqpTransport, QueueNames};
use herald_core::{Backoff, Publisher};
use herald_testkit::envelope;
use proptest::prelude::*;

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

/// Log lines written by the code under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_hidden(text: &str, password: &str, encoded: &str) {
    assert!(!text.contains(password), "password leaked: {text}");
    assert!(!text.contains(encoded), "encoded password leaked: {text}");
}

/// An unreachable broker, quick to give up.
fn unreachable(password: &str) -> AmqpConfig {
    AmqpConfig {
        connect_timeout: Duration::from_millis(300),
        reconnect: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..AmqpConfig::new(format!("amqp://app:{password}@127.0.0.1:1/%2f"))
    }
}

#[test]
fn debug_output_of_the_config_and_the_transport_hides_the_password() {
    let config = unreachable("hunter2secret");
    assert_hidden(&format!("{config:?}"), "hunter2secret", "hunter2secret");
    assert_hidden(&format!("{config:#?}"), "hunter2secret", "hunter2secret");
    let transport = AmqpTransport::lazy(config).unwrap();
    assert_hidden(&format!("{transport:?}"), "hunter2secret", "hunter2secret");
}

#[test]
fn a_publish_to_an_unreachable_broker_logs_and_fails_without_the_password() {
    let password = "s3cr3t pa$$ word/@:";
    let encoded = encode(password);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let transport = AmqpTransport::lazy(unreachable(&encoded)).unwrap();
            let results = transport.publish(&[envelope("a", 0)]).await;
            let error = results.into_iter().next().unwrap().unwrap_err();
            let connect = AmqpTransport::connect(unreachable(&encoded))
                .await
                .unwrap_err();
            transport.close().await;
            format!("{error} / {error:?} / {} / {connect:?}", connect.chain())
        })
    });
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the failure was logged");
    assert_hidden(&error, password, &encoded);
    assert_hidden(&logs, password, &encoded);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the password, configuration errors and `Debug` output never show it.
    #[test]
    fn no_password_shows_in_config_errors_or_debug_output(
        password in "[a-zA-Z0-9!$&'()*+,;=%@:/?#\\[\\] ~-]{6,24}",
    ) {
        let encoded = encode(&password);
        for url in [
            format!("amqp://app:{encoded}@broker:5672/%2f"),
            format!("amqps://app:{encoded}@broker:5671/prod"),
            format!("ampq://app:{encoded}@broker/"),
        ] {
            let config = AmqpConfig::new(url.clone());
            let debug = format!("{config:?}");
            prop_assert!(!debug.contains(&encoded) && !debug.contains(&password), "{}", debug);
            if let Err(error) = config.validate() {
                let text = format!("{error} / {error:?}");
                prop_assert!(!text.contains(&encoded) && !text.contains(&password), "{}", text);
            }
            if let Ok(transport) = AmqpTransport::lazy(config) {
                let text = format!("{transport:?}");
                prop_assert!(!text.contains(&encoded) && !text.contains(&password), "{}", text);
            }
        }
    }

    /// A password written without percent-encoding (no `/`, `?` or `#`, which would end the
    /// URL's authority) is hidden too.
    #[test]
    fn an_unencoded_password_is_hidden_too(password in "[a-zA-Z0-9!$&'()*+,;=%@: ~-]{6,24}") {
        let config = AmqpConfig::new(format!("amqp://app:{password}@broker/"));
        let debug = format!("{config:?}");
        prop_assert!(!debug.contains(&password), "{}", debug);
    }
}

#[test]
fn amqps_urls_are_accepted() {
    let config = AmqpConfig::new("amqps://app:pw@broker.example:5671/prod");
    config.validate().unwrap();
}

#[test]
fn exchange_and_queue_names_are_validated() {
    let bad_exchanges = [
        String::new(),
        "amq.topic".to_owned(),
        "x".repeat(256),
        "events\nINJECT".to_owned(),
        "events\0".to_owned(),
    ];
    for exchange in bad_exchanges {
        let config = AmqpConfig {
            exchange: exchange.clone(),
            ..AmqpConfig::new("amqp://127.0.0.1/%2f")
        };
        assert!(config.validate().is_err(), "exchange {exchange:?} accepted");
    }
    for queue in ["", "amq.q", &"q".repeat(250), "billing\r\n", "a\u{7f}b"] {
        assert!(QueueNames::of(queue).is_err(), "queue {queue:?} accepted");
    }
    QueueNames::of("billing.invoices-v2:eu").unwrap();
}
