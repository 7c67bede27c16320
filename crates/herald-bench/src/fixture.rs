//! What every scenario shares: the services' URLs, the benchmark's event and order row, fresh
//! outbox schemas, and counting what is left in a table.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_core::{Completion, Envelope, Event, Metadata};
use herald_kafka::KafkaConfig;
use herald_postgres::{PgOutbox, PgOutboxConfig, PgPool};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;

use crate::broker::Broker;

/// Where the services are, and the names of this run.
#[derive(Debug, Clone)]
pub struct Env {
    /// PostgreSQL URL.
    pub database: String,
    /// RabbitMQ URL.
    pub amqp: String,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Further librdkafka properties of B2k's clients.
    pub kafka_properties: BTreeMap<String, String>,
    /// A fresh suffix for this run's schemas, exchanges and queues.
    pub run: String,
}

impl Env {
    /// A name of this run: `herald_bench_<what>_<run>`.
    pub fn name(&self, what: &str) -> String {
        format!("herald_bench_{what}_{}", self.run)
    }

    /// The transport configuration of this run: its own exchange, default settings otherwise
    /// (confirm window 256, durable classic queues, persistent messages).
    pub fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            url: self.amqp.clone(),
            exchange: self.name("exchange"),
            connection_name: "herald-bench".to_owned(),
            ..AmqpConfig::default()
        }
    }

    /// The Kafka transport configuration of this run's scenario `what`: its own topic
    /// (`herald_bench_<what>_<run>`), default settings otherwise (6 partitions, 1 000 messages
    /// in flight per publish call).
    pub fn kafka_config(&self, what: &str) -> KafkaConfig {
        KafkaConfig {
            topic: self.name(what),
            client_id: "herald-bench".to_owned(),
            properties: self.kafka_properties.clone(),
            ..KafkaConfig::new(self.kafka.as_str())
        }
    }

    /// A pool of `size` connections.
    pub async fn pool(&self, size: u32) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&self.database)
            .await
            .context("connect to postgresql")
    }

    /// A migrated outbox in a schema of its own (`herald_bench_<what>_<run>`), on a pool of
    /// `pool` connections.
    pub async fn outbox(&self, what: &str, completion: Completion, pool: u32) -> Result<PgOutbox> {
        let config = PgOutboxConfig::new(&self.name(what), "outbox")?.with_completion(completion);
        let outbox = PgOutbox::new(self.pool(pool).await?, config);
        outbox.migrate().await?;
        Ok(outbox)
    }
}

/// Reads a `NAME=VALUE` property.
pub fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// Removes what a scenario left on the services, ignoring failures (clean-up only): its queue
/// `subscription`, this run's exchange (through `broker`, or a connection of its own when
/// there is none) and `outbox`'s schema; closes `transport` and the broker connection.
pub async fn tear_down(
    env: &Env,
    transport: &AmqpTransport,
    broker: Option<Broker>,
    subscription: &str,
    outbox: &PgOutbox,
) {
    let _ = transport.delete_subscription(subscription).await;
    transport.close().await;
    let broker = match broker {
        Some(broker) => Some(broker),
        None => Broker::connect(&env.amqp).await.ok(),
    };
    if let Some(broker) = broker {
        let _ = broker.delete_exchange(&env.amqp_config().exchange).await;
        broker.close().await;
    }
    let _ = drop_outbox(outbox).await;
}

/// Drops the schema of `outbox` and everything in it.
pub async fn drop_outbox(outbox: &PgOutbox) -> Result<()> {
    let sql = format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        outbox.config().schema.quoted()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(outbox.pool())
        .await?;
    Ok(())
}

/// The quoted, schema-qualified name of `outbox`'s table with `suffix` (`""`, `"_archive"`).
pub fn table(outbox: &PgOutbox, suffix: &str) -> String {
    let config = outbox.config();
    format!(
        "{}.\"{}{suffix}\"",
        config.schema.quoted(),
        config.table.as_str()
    )
}

/// Rows in table `name` (a schema-qualified, quoted name built from identifiers).
pub async fn count(pool: &PgPool, name: &str) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM {name}");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// The benchmark's integration event: about 300 bytes of JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order, also the partition key.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// SKU, quantity, unit price in cents.
    pub lines: Vec<(String, u32, i64)>,
    /// Free text, to reach the size.
    pub note: String,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "bench.order_placed";
    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// Event number `i` of a run with `keys` partition keys.
pub fn event(i: usize, keys: usize) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("order-{}", i % keys.max(1)),
        customer: format!("customer-{}", i % 997),
        lines: vec![("SKU-1".into(), 2, 1999), ("SKU-2".into(), 1, 4999)],
        note: "x".repeat(170),
    }
}

/// Envelopes of events `0..n` over `keys` keys.
pub fn envelopes(n: usize, keys: usize) -> Result<Vec<Envelope>> {
    (0..n)
        .map(|i| Ok(Envelope::from_event(&event(i, keys), Metadata::default())?))
        .collect()
}

/// Records `envelopes` into `outbox`, 1 000 per transaction.
pub async fn prefill(outbox: &PgOutbox, envelopes: &[Envelope]) -> Result<()> {
    for chunk in envelopes.chunks(1000) {
        let mut tx = outbox.begin().await?;
        tx.record_all(chunk).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Creates the business table `orders` in `schema` (a quoted identifier).
pub async fn create_orders(pool: &PgPool, schema: &str) -> Result<()> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {schema}.orders ( \
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             customer text NOT NULL, total_cents bigint NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

/// The INSERT of one ~300-byte order row into `schema`.orders.
pub fn insert_order_sql(schema: &str) -> String {
    format!("INSERT INTO {schema}.orders (customer, total_cents, body) VALUES ($1, $2, $3)")
}

/// The body of an order row (with the other columns, about 300 bytes).
pub fn order_body() -> String {
    "line: SKU-1 x2 @ 19.99; SKU-2 x1 @ 49.99; ".repeat(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_is_a_name_an_equals_sign_and_a_value() {
        assert_eq!(
            property("linger.ms=1"),
            Ok(("linger.ms".to_owned(), "1".to_owned()))
        );
        assert_eq!(
            property("sasl.password=a=b"),
            Ok(("sasl.password".to_owned(), "a=b".to_owned()))
        );
        assert!(property("linger.ms").is_err());
        assert!(property("=1").is_err());
    }
}
