//! Upcasters: messages recorded by an older producer reach handlers written for a later
//! version of their event, through one upcaster or a chain of them; a message newer than any
//! version the consumer knows is dead-lettered with both versions named. On the in-memory
//! transport and on RabbitMQ.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Mutex;

use common::*;
use herald_consumer::{Consumer, Context, Router};
use herald_core::{DeadLetters, Envelope, Event, Metadata, Page, Publisher, Uuid};
use herald_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

const TYPE: &str = "ordering.order_placed";

/// What the first producer recorded: an amount in whole euros.
#[derive(Serialize, Deserialize)]
struct OrderPlacedV1 {
    order: String,
    euros: u64,
}

impl Event for OrderPlacedV1 {
    const TYPE: &'static str = TYPE;
}

/// The second: cents.
#[derive(Serialize, Deserialize)]
struct OrderPlacedV2 {
    order: String,
    cents: u64,
}

impl Event for OrderPlacedV2 {
    const TYPE: &'static str = TYPE;
    const VERSION: u32 = 2;
}

/// Today's: cents and a currency. The handlers take this one.
#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order: String,
    cents: u64,
    currency: String,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = TYPE;
    const VERSION: u32 = 3;
}

/// A version from a producer ahead of this consumer.
#[derive(Serialize, Deserialize)]
struct OrderPlacedV4 {
    order: String,
    cents: u64,
    currency: String,
    channel: String,
}

impl Event for OrderPlacedV4 {
    const TYPE: &'static str = TYPE;
    const VERSION: u32 = 4;
}

/// What the handler saw, by order (each test uses orders of its own).
static HANDLED: Mutex<Vec<(String, u64, String, Uuid)>> = Mutex::new(Vec::new());

async fn place(order: OrderPlaced, ctx: &mut Context) {
    HANDLED
        .lock()
        .unwrap()
        .push((order.order, order.cents, order.currency, ctx.envelope().id));
}

fn router() -> Router {
    Router::new()
        .upcast(|v1: OrderPlacedV1| OrderPlacedV2 {
            order: v1.order,
            cents: v1.euros * 100,
        })
        .upcast(|v2: OrderPlacedV2| OrderPlaced {
            order: v2.order,
            cents: v2.cents,
            currency: "EUR".into(),
        })
        .handle("billing.place", place)
}

/// One message of each version, for orders named after `run`; the last one is newer than
/// the consumer.
fn messages(run: &str) -> Vec<Envelope> {
    let meta = Metadata::default;
    vec![
        Envelope::from_event(
            &OrderPlacedV1 {
                order: format!("{run}-1"),
                euros: 12,
            },
            meta(),
        )
        .unwrap(),
        Envelope::from_event(
            &OrderPlacedV2 {
                order: format!("{run}-2"),
                cents: 1250,
            },
            meta(),
        )
        .unwrap(),
        Envelope::from_event(
            &OrderPlaced {
                order: format!("{run}-3"),
                cents: 990,
                currency: "CHF".into(),
            },
            meta(),
        )
        .unwrap(),
        Envelope::from_event(
            &OrderPlacedV4 {
                order: format!("{run}-4"),
                cents: 500,
                currency: "EUR".into(),
                channel: "web".into(),
            },
            meta(),
        )
        .unwrap(),
    ]
}

/// The handler got v1 through two upcasters, v2 through one and v3 as it was, each under
/// its own message id; v4 did not reach it.
fn check_handled(run: &str, sent: &[Envelope]) {
    let mut handled: Vec<_> = HANDLED
        .lock()
        .unwrap()
        .iter()
        .filter(|(order, ..)| order.starts_with(&format!("{run}-")))
        .cloned()
        .collect();
    handled.sort();
    assert_eq!(
        handled,
        vec![
            (format!("{run}-1"), 1200, "EUR".to_owned(), sent[0].id),
            (format!("{run}-2"), 1250, "EUR".to_owned(), sent[1].id),
            (format!("{run}-3"), 990, "CHF".to_owned(), sent[2].id),
        ]
    );
}

fn check_dead_letter(letters: &[herald_core::DeadLetter], newer: &Envelope) {
    assert_eq!(letters.len(), 1, "only the newer message is dead-lettered");
    let letter = &letters[0];
    assert_eq!(letter.envelope.as_ref().map(|e| e.id), Some(newer.id));
    assert_eq!(
        letter.envelope.as_ref().map(|e| e.version),
        Some(4),
        "dead-lettered as it came"
    );
    assert!(
        letter.reason.contains("v4") && letter.reason.contains("v3"),
        "both versions named: {}",
        letter.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_reach_the_handler_through_upcasters_on_the_memory_transport() {
    let transport = MemoryTransport::new();
    let consumer = consumer(transport.clone(), router(), config());
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    let sent = messages("memory");
    publish(&transport, &sent).await;
    eventually("every message settled", || async {
        metrics.snapshot().finished() == 4
    })
    .await;
    running.stop().await;
    check_handled("memory", &sent);
    check_dead_letter(&dead_letters(&transport, &queue).await, &sent[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_reach_the_handler_through_upcasters_on_rabbitmq() {
    let transport = amqp_transport("upcast").await;
    let consumer = Consumer::new(transport.clone(), queue(), router(), config()).unwrap();
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start_on_amqp(consumer, &transport).await;
    let sent = messages("amqp");
    for result in transport.publish(&sent).await {
        result.unwrap();
    }
    eventually("every message settled", || async {
        metrics.snapshot().finished() == 4
    })
    .await;
    running.stop().await;
    check_handled("amqp", &sent);
    let letters = transport
        .dead_letter_queue(&queue)
        .unwrap()
        .dead_letters(Page::first(10))
        .await
        .unwrap();
    check_dead_letter(&letters, &sent[3]);
    transport.delete_subscription(&queue).await.unwrap();
}

#[tokio::test]
async fn upcasters_that_do_not_lead_forward_are_refused() {
    let backwards = Router::new()
        .upcast(|v2: OrderPlacedV2| OrderPlacedV1 {
            order: v2.order,
            euros: v2.cents / 100,
        })
        .handle("billing.place", place);
    let error = Consumer::new(MemoryTransport::new(), "q", backwards, config()).unwrap_err();
    assert!(
        error.to_string().contains("not to a later version"),
        "{error}"
    );
    let twice = Router::new()
        .upcast(|v1: OrderPlacedV1| OrderPlacedV2 {
            order: v1.order,
            cents: v1.euros * 100,
        })
        .upcast(|v1: OrderPlacedV1| OrderPlacedV2 {
            order: v1.order,
            cents: v1.euros,
        })
        .handle("billing.place", place);
    let error = Consumer::new(MemoryTransport::new(), "q", twice, config()).unwrap_err();
    assert!(error.to_string().contains("two upcasters"), "{error}");
}
