//! Protobuf and JSON events recorded in one PostgreSQL outbox reach their handlers through the
//! relay, Kafka and the consumer: each field intact, each Protobuf event still naming its
//! message (`ce_dataschema`), a v1 Protobuf event upcast to v2, and the payloads no handler
//! can read (the other format, another message, malformed bytes) on the dead-letter topic
//! whole, with the reason. `herald-consumer`'s `tests/protobuf.rs` runs the same on the
//! in-memory transport and RabbitMQ.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_consumer::{Consumer, ConsumerConfig, Context, Router};
use herald_core::{DeadLetters, Page, Uuid};
use herald_relay::Relay;
use herald_testkit::OrderPlaced;
use herald_testkit::protobuf::{OrderShipped, SeenShipped, mixed, upcast_shipped};
use tokio_util::sync::CancellationToken;

static PLACED: Mutex<Vec<(Uuid, OrderPlaced)>> = Mutex::new(Vec::new());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_and_json_events_in_one_outbox_reach_their_handlers_on_kafka() {
    let transport = common::transport().await;
    let group = common::unique("protobuf");
    transport.declare_subscription(&group).await.unwrap();
    let store = common::pg_store().await;
    let mixed = mixed(3_000);
    common::record(&store, &mixed.envelopes).await;

    let router = Router::new()
        .upcast(upcast_shipped)
        .handle("billing.place", place)
        .handle("shipping.track", ship);
    let consumer =
        Consumer::new(transport.clone(), &group, router, ConsumerConfig::default()).unwrap();
    let metrics = consumer.metrics();
    let consumer_stop = CancellationToken::new();
    let consuming = tokio::spawn({
        let shutdown = consumer_stop.clone();
        async move { consumer.run(shutdown).await }
    });
    let relay = Relay::new(store.clone(), transport.clone(), common::relay_config()).unwrap();
    let relay_stop = CancellationToken::new();
    let relaying = tokio::spawn({
        let shutdown = relay_stop.clone();
        async move { relay.run(shutdown).await }
    });

    let total = mixed.envelopes.len() as u64;
    let dead_letters = transport.dead_letter_queue(&group).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = dead_letters.dead_letters(Page::ALL).await.unwrap();
        if metrics.snapshot().finished() == total && letters.len() >= mixed.dead.len() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}, {} dead letters",
            metrics.snapshot(),
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    consumer_stop.cancel();
    relay_stop.cancel();
    consuming.await.unwrap().unwrap();
    relaying.await.unwrap().unwrap();

    let placed = PLACED.lock().unwrap().clone();
    let shipped = SHIPPED.lock().unwrap().clone();
    mixed.check(&placed, &shipped, &letters);
    transport.delete_subscription(&group).await.unwrap();
    common::drop_schema(&store).await;
}
