//! A consumer with the transactional inbox: inventory reserves stock for the orders it hears
//! of from RabbitMQ, in its own PostgreSQL database. The inbox record and the reservation commit
//! together, so a message delivered twice reserves once; an order for a product inventory does
//! not stock is rejected and ends in the dead letters with its reason.
//!
//! ```sh
//! scripts/services   # PostgreSQL and RabbitMQ on loopback
//! cargo run -p herald --example consumer_inbox --features postgres,amqp,consumer
//! ```
//!
//! `DATABASE_URL` and `AMQP_URL` replace the local defaults.

use std::time::Duration;

use herald::prelude::*;
use herald::{CancellationToken, Page, Publisher, Selection, sqlx};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Published by ordering (see the `outbox_relay` example).
#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    sku: String,
    units: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "examples.order_placed_with_lines";

    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

/// The handler: runs on the transaction that also holds the inbox record.
async fn reserve(
    order: OrderPlaced,
    ctx: &mut TxContext<PgOutbox>,
) -> Result<Outcome, HandlerError> {
    let updated =
        sqlx::query("UPDATE examples_inventory.stock SET reserved = reserved + $1 WHERE sku = $2")
            .bind(order.units)
            .bind(&order.sku)
            .execute(ctx.db())
            .await?;
    if updated.rows_affected() == 0 {
        return Ok(Outcome::reject(format!("no such product: {}", order.sku)));
    }
    Ok(Outcome::Done)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database = env_or(
        "DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/test",
    );
    let broker = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");

    let db = PgOutbox::connect(
        &database,
        PgOutboxConfig::new("examples_inventory", "outbox")?,
    )
    .await?;
    db.migrate().await?; // the outbox and inbox tables
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS examples_inventory.stock (sku text PRIMARY KEY, reserved bigint NOT NULL);
         INSERT INTO examples_inventory.stock VALUES ('apple', 0) ON CONFLICT (sku) DO UPDATE SET reserved = 0",
    )
    .execute(db.pool())
    .await?;

    let amqp = AmqpTransport::connect(AmqpConfig::new(broker)).await?;
    let router = Router::new().transactional(&db, "inventory.reserve-stock", reserve);
    let consumer = Consumer::new(
        amqp.clone(),
        "examples.inventory",
        router,
        ConsumerConfig::default(),
    )?;
    amqp.declare(consumer.subscription()).await?;
    let metrics = consumer.metrics();

    // What ordering's relay would publish: one order twice (a confirm the relay never saw), and
    // an order for a product nobody stocks.
    let apples = Envelope::from_event(
        &OrderPlaced {
            order_id: 1,
            sku: "apple".into(),
            units: 2,
        },
        Metadata::default(),
    )?;
    let pears = Envelope::from_event(
        &OrderPlaced {
            order_id: 2,
            sku: "pear".into(),
            units: 1,
        },
        Metadata::default(),
    )?;
    for published in amqp.publish(&[apples.clone(), apples, pears]).await {
        published?;
    }

    let shutdown = CancellationToken::new();
    let consuming = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let settled = async {
        while metrics.snapshot().acked + metrics.snapshot().dead_lettered < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled).await?;
    shutdown.cancel(); // running handlers finish first
    consuming.await??;

    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved FROM examples_inventory.stock WHERE sku = 'apple'")
            .fetch_one(db.pool())
            .await?;
    println!(
        "apples reserved: {reserved} (the duplicate changed nothing: {} skipped)",
        metrics.snapshot().duplicates
    );
    let dead_letters = amqp.dead_letter_queue("examples.inventory")?;
    for dead in dead_letters.dead_letters(Page::first(10)).await? {
        println!("dead letter {:?}: {}", dead.event_type(), dead.reason);
    }
    dead_letters.purge(Selection::All).await?;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
