//! Orders and their events in one PostgreSQL transaction; a relay in the same process publishes
//! the events to RabbitMQ, and a queue bound to their type receives them, in order per order.
//!
//! ```sh
//! scripts/services   # PostgreSQL and RabbitMQ on loopback
//! cargo run -p herald --example outbox_relay --features postgres,amqp
//! ```
//!
//! `DATABASE_URL` and `AMQP_URL` replace the local defaults. The outbox lives in the schema
//! `examples`; the queue `examples.orders` is left declared for a look in the management UI.

use std::time::Duration;

use herald::prelude::*;
use herald::{CancellationToken, DeliveryStream, Subscriber, SubscriptionSpec, sqlx};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The published contract: what other bounded contexts learn about an order.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    total_cents: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "examples.order_placed";

    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database = env_or(
        "DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/test",
    );
    let broker = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");

    let outbox = PgOutbox::connect(&database, PgOutboxConfig::new("examples", "outbox")?).await?;
    outbox.migrate().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS examples.orders (id bigint PRIMARY KEY, total_cents bigint NOT NULL)")
        .execute(outbox.pool())
        .await?;

    // Where the events go: a queue bound to their type, declared before anything is published.
    let amqp = AmqpTransport::connect(AmqpConfig::new(broker)).await?;
    let orders = SubscriptionSpec::new("examples.orders", [OrderPlaced::TYPE]);
    amqp.declare(&orders).await?;
    let mut received = amqp.subscribe(&orders).await?;

    // The relay, on a small pool of its own, until `shutdown` is cancelled.
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        outbox.with_pool_size(4),
        amqp.clone(),
        RelayConfig::default(),
    )?;
    let relaying = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });

    // The application: each order and its event commit together, or not at all.
    let first: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM examples.orders")
        .fetch_one(outbox.pool())
        .await?;
    for order_id in first..first + 5 {
        let total_cents = 1_000 * order_id;
        let mut tx = outbox.begin().await?;
        sqlx::query("INSERT INTO examples.orders (id, total_cents) VALUES ($1, $2)")
            .bind(order_id)
            .bind(total_cents)
            .execute(&mut *tx)
            .await?;
        tx.record(&OrderPlaced {
            order_id,
            total_cents,
        })
        .await?;
        tx.commit().await?;
    }
    // A transaction rolled back records nothing: this order is never published.
    let mut tx = outbox.begin().await?;
    tx.record(&OrderPlaced {
        order_id: -1,
        total_cents: 0,
    })
    .await?;
    tx.rollback().await?;

    for _ in 0..5 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), received.next())
            .await?
            .ok_or("the subscription ended")??;
        let order: OrderPlaced = delivery.envelope.decode()?;
        println!("received {} {order:?}", delivery.envelope.event_type);
        delivery.ack().await?;
    }

    shutdown.cancel();
    relaying.await??;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
