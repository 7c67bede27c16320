//! Bad input over RabbitMQ (`HERALD_TEST_AMQP_URL`): messages that another producer (or a
//! person with the management UI) put on the queue and that are no valid envelope, or whose
//! payload no handler can read. Each ends in the dead-letter queue with its reason, the good
//! messages around them are handled, and the consumer keeps running.
//!
//! Random cases come from proptest's generator (a fixed seed, so a failure reproduces), plus
//! one message of each kind the issue names.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_amqp::mapping::header;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{Consumer, Context, Handler, HandlerResult, Outcome, Router};
use herald_core::{DeadLetters, Page, Publisher, Uuid};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_util::sync::CancellationToken;

fn amqp_url() -> String {
    herald_testkit::env::amqp_url()
}

const MAX_HEADERS: usize = 4096;
const MAX_MESSAGE: usize = 64 * 1024;

struct Seen(Arc<Mutex<HashSet<(String, u64)>>>);

impl Handler<Deposited, Context> for Seen {
    async fn handle(&self, d: Deposited, _ctx: &mut Context) -> HandlerResult {
        self.0.lock().unwrap().insert((d.account, d.n));
        Ok(Outcome::Done)
    }
}

fn text(v: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.into()))
}

/// The headers of a valid `bank.deposited` message, written as another producer would.
fn valid_headers() -> Vec<(&'static str, AMQPValue)> {
    vec![
        (header::SPECVERSION, text("1.0")),
        (header::ID, text(Uuid::now_v7().to_string())),
        (header::TYPE, text("bank.deposited")),
        (header::TIME, text("2026-11-27T03:30:00Z")),
        (header::PARTITION_KEY, text("bad")),
    ]
}

fn with(
    mut headers: Vec<(&'static str, AMQPValue)>,
    name: &'static str,
    value: AMQPValue,
) -> Vec<(&'static str, AMQPValue)> {
    headers.retain(|(n, _)| *n != name);
    headers.push((name, value));
    headers
}

fn props(headers: Vec<(&'static str, AMQPValue)>) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name.into(), value);
    }
    BasicProperties::default()
        .with_headers(table)
        .with_content_type("application/json".into())
}

/// One message of each kind of bad input, with what its dead letter's reason must be.
fn named_cases() -> Vec<(&'static str, BasicProperties, Vec<u8>)> {
    let ok = br#"{"account":"bad","n":0,"cents":1}"#.to_vec();
    vec![
        (
            "malformed",
            BasicProperties::default(),
            b"no headers at all".to_vec(),
        ),
        (
            "malformed",
            props(with(valid_headers(), header::SPECVERSION, text("0.3"))),
            ok.clone(),
        ),
        (
            "malformed",
            props(with(valid_headers(), header::ID, text("not-a-uuid"))),
            ok.clone(),
        ),
        (
            "malformed",
            props(with(
                valid_headers(),
                header::TYPE,
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
            )),
            ok.clone(),
        ),
        (
            "malformed",
            props(with(
                valid_headers(),
                header::TYPE,
                text(vec![0xff, 0xfe, b'x']),
            )),
            ok.clone(),
        ),
        (
            "malformed",
            props(with(valid_headers(), header::EVENT_VERSION, text("two"))),
            ok.clone(),
        ),
        (
            "malformed",
            props(with(
                valid_headers(),
                "big",
                text(vec![b'h'; MAX_HEADERS * 2]),
            )),
            ok.clone(),
        ),
        (
            "malformed",
            props(valid_headers()),
            vec![b' '; MAX_MESSAGE + 1],
        ),
        // A valid envelope whose payload the handler's type cannot read.
        (
            "payload",
            props(valid_headers()),
            br#"{"account":"#.to_vec(),
        ),
        (
            "payload",
            props(valid_headers()),
            br#"{"account":5,"n":"x","cents":[]}"#.to_vec(),
        ),
        (
            "payload",
            props(valid_headers()),
            vec![0xff, 0x00, 0x80, 0x7f],
        ),
        (
            "payload",
            props(with(
                valid_headers(),
                header::EVENT_VERSION,
                AMQPValue::LongInt(99),
            )),
            ok.clone(),
        ),
        (
            "payload",
            props(with(valid_headers(), header::TYPE, text("bank.unknown"))),
            ok,
        ),
    ]
}

/// Random headers (a few of them the mapping's, with values of random types) and random
/// payload bytes.
fn random_cases(count: usize) -> Vec<(&'static str, BasicProperties, Vec<u8>)> {
    let names = proptest::sample::select(vec![
        header::SPECVERSION,
        header::ID,
        header::TYPE,
        header::TIME,
        header::EVENT_VERSION,
        "tenant",
        "x-other",
    ]);
    let value = proptest::prop_oneof![
        proptest::collection::vec(proptest::num::u8::ANY, 0..30).prop_map(text),
        proptest::num::i64::ANY.prop_map(AMQPValue::LongLongInt),
        proptest::num::u64::ANY.prop_map(AMQPValue::Timestamp),
        proptest::bool::ANY.prop_map(AMQPValue::Boolean),
    ];
    let case = (
        proptest::collection::vec((names, value), 0..6),
        proptest::collection::vec(proptest::num::u8::ANY, 0..200),
    );
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..count)
        .map(|_| {
            let (headers, payload) = case.new_tree(&mut runner).unwrap().current();
            // Never a valid envelope: the spec version is always wrong or missing.
            let headers = headers
                .into_iter()
                .filter(|(n, _)| *n != header::SPECVERSION)
                .collect();
            ("malformed", props(headers), payload)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_reasons_and_the_consumer_keeps_going() {
    let config = AmqpConfig {
        exchange: format!("herald-consumer-test-{}", Uuid::now_v7().simple()),
        retry_delays: vec![Duration::from_millis(100)],
        expires: Some(Duration::from_secs(120)),
        max_header_bytes: MAX_HEADERS,
        max_message_bytes: MAX_MESSAGE,
        ..AmqpConfig::new(amqp_url())
    };
    let transport = AmqpTransport::connect(config).await.unwrap();
    let queue = queue();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        Router::new().handle("bank.seen", Seen(seen.clone())),
        config_for_tests(),
    )
    .unwrap();
    transport.declare(consumer.subscription()).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });

    let good: Vec<_> = (0..20).map(|n| deposit("good", n)).collect();
    for r in transport.publish(&good[..10]).await {
        r.unwrap();
    }
    let mut bad = named_cases();
    bad.extend(random_cases(40));
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for (_, properties, payload) in &bad {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for r in transport.publish(&good[10..]).await {
        r.unwrap();
    }

    eventually("every good message handled", || async {
        seen.lock().unwrap().len() == good.len()
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let dead = transport
            .dead_letter_queue(&queue)
            .unwrap()
            .dead_letters(Page::first(1000))
            .await
            .unwrap();
        if dead.len() >= bad.len() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!task.is_finished(), "the consumer keeps running");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    connection.close(0, "done".into()).await.unwrap();

    assert_eq!(
        dead.len(),
        bad.len(),
        "only the bad messages are dead letters"
    );
    let malformed = bad.iter().filter(|(kind, ..)| *kind == "malformed").count();
    assert_eq!(
        dead.iter()
            .filter(|d| d
                .raw
                .headers
                .get("x-herald-dead-letter-reason")
                .map(String::as_str)
                == Some("malformed"))
            .count(),
        malformed,
        "{:#?}",
        dead.iter()
            .map(|d| (
                d.raw
                    .headers
                    .get("x-herald-dead-letter-reason")
                    .map(String::as_str),
                &d.reason
            ))
            .collect::<Vec<_>>()
    );
    for d in &dead {
        assert!(!d.reason.is_empty(), "a dead letter says why: {d:?}");
    }
    transport.delete_subscription(&queue).await.unwrap();
}

/// The shared test configuration: quick retries.
fn config_for_tests() -> herald_consumer::ConsumerConfig {
    config()
}
