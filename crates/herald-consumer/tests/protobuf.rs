//! Protobuf and JSON events recorded in one outbox reach their handlers through the relay and
//! the consumer, each field intact and each Protobuf event still naming its message; a v1
//! Protobuf event is upcast to v2; a payload in the other format than its handler's, another
//! message under the same type, and a malformed Protobuf payload are dead-lettered whole, with
//! the reason. On the in-memory transport (from a SQLite outbox) and on RabbitMQ (from a
//! PostgreSQL outbox); `herald-kafka`'s `tests/protobuf.rs` runs the same on Kafka.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Mutex;

use common::*;
use herald_consumer::{Consumer, Context, Router};
use herald_core::{DeadLetters, Page, Uuid};
use herald_memory::MemoryTransport;
use herald_relay::{Relay, RelayConfig};
use herald_testkit::OrderPlaced;
use herald_testkit::protobuf::{Mixed, OrderShipped, SeenShipped, mixed, upcast_shipped};
use tokio_util::sync::CancellationToken;

/// What the JSON handler saw (every test's messages; each checks its own ids).
static PLACED: Mutex<Vec<(Uuid, OrderPlaced)>> = Mutex::new(Vec::new());
/// What the Protobuf handler saw.
static SHIPPED: Mutex<Vec<SeenShipped>> = Mutex::new(Vec::new());

async fn place(order: OrderPlaced, ctx: &mut Context) {
    PLACED.lock().unwrap().push((ctx.envelope().id, order));
}

async fn ship(shipment: OrderShipped, ctx: &mut Context) {
    let envelope = ctx.envelope();
    SHIPPED.lock().unwrap().push(SeenShipped {
        id: envelope.id,
        event: shipment,
        content_type: envelope.content_type.clone(),
        dataschema: envelope.dataschema().map(str::to_owned),
    });
}

fn router() -> Router {
    Router::new()
        .upcast(upcast_shipped)
        .handle("billing.place", place)
        .handle("shipping.track", ship)
}

fn check(mixed: &Mixed, letters: &[herald_core::DeadLetter]) {
    let placed = PLACED.lock().unwrap().clone();
    let shipped = SHIPPED.lock().unwrap().clone();
    mixed.check(&placed, &shipped, letters);
}

/// Runs a relay on `store` and `transport` until `done`, then stops it.
async fn relaying<S, P, F, Fut>(store: S, transport: P, done: F)
where
    S: herald_core::OutboxStore,
    P: herald_core::Publisher,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let relay = Relay::new(store, transport, RelayConfig::default()).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    eventually("every message settled", done).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_and_json_events_in_one_outbox_reach_their_handlers_on_the_memory_transport() {
    let (store, _dir) = sqlite_store().await;
    let mixed = mixed(1_000);
    let mut tx = store.begin().await.unwrap();
    tx.record_all(&mixed.envelopes).await.unwrap();
    tx.commit().await.unwrap();

    let transport = MemoryTransport::new();
    let consumer = consumer(transport.clone(), router(), config());
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start(consumer, &transport);
    let total = mixed.envelopes.len() as u64;
    relaying(store, transport.clone(), || async {
        metrics.snapshot().finished() == total
    })
    .await;
    running.stop().await;
    check(&mixed, &dead_letters(&transport, &queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_and_json_events_in_one_outbox_reach_their_handlers_on_rabbitmq() {
    let store = pg_store().await;
    let mixed = mixed(2_000);
    let mut tx = store.begin().await.unwrap();
    tx.record_all(&mixed.envelopes).await.unwrap();
    tx.commit().await.unwrap();

    let transport = amqp_transport("protobuf").await;
    let consumer = Consumer::new(transport.clone(), queue(), router(), config()).unwrap();
    let metrics = consumer.metrics();
    let queue = consumer.subscription().name.clone();
    let running = Running::start_on_amqp(consumer, &transport).await;
    let total = mixed.envelopes.len() as u64;
    relaying(store.clone(), transport.clone(), || async {
        metrics.snapshot().finished() == total
    })
    .await;
    running.stop().await;
    let letters = transport
        .dead_letter_queue(&queue)
        .unwrap()
        .dead_letters(Page::first(20))
        .await
        .unwrap();
    check(&mixed, &letters);
    transport.delete_subscription(&queue).await.unwrap();
    pg_drop(&store).await;
}
