//! `herald bench …`: quick measurements.

use anyhow::Result;
use clap::Subcommand;
use herald_core::{Completion, Envelope, Event, Metadata};
use herald_relay::RelayConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::{AnyStore, StoreOptions};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Pre-fill an outbox, then drain it through the relay into a broker (the in-memory one by
    /// default). On RabbitMQ and Kafka, also time a bare publish loop of the same events, the
    /// ceiling.
    Relay {
        /// Events to pre-fill.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Distinct partition keys.
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        /// Database URL; default: a fresh SQLite file in a temporary folder.
        #[arg(long)]
        database: Option<String>,
        /// Relay instances.
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// Rows claimed per batch.
        #[arg(long, default_value_t = 512)]
        batch_size: usize,
        /// Broker: `memory`, `amqp://…` (a queue of the run's own receives the events and is
        /// deleted afterwards) or `kafka://…` (the events go to the configured topic).
        #[arg(long, default_value = "memory")]
        transport: String,
    },
}

/// The benchmark's event: about 300 bytes of JSON.
#[derive(Serialize, Deserialize)]
struct BenchEvent {
    order_id: String,
    customer: String,
    lines: Vec<(String, u32, i64)>,
    note: String,
}

impl Event for BenchEvent {
    const TYPE: &'static str = "bench.order_placed";
    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

pub async fn run(command: BenchCommand) -> Result<()> {
    let BenchCommand::Relay {
        events,
        keys,
        database,
        instances,
        batch_size,
        transport,
    } = command;
    let transport_url = transport;
    let transport = crate::transport::AnyTransport::connect(&transport_url).await?;
    let sink = format!("herald-bench-{}", herald_core::Uuid::now_v7().simple());
    let sink_spec = herald_core::SubscriptionSpec::new(sink.clone(), Vec::<String>::new());
    if let crate::transport::AnyTransport::Amqp(_) = &transport {
        transport.declare(&sink_spec).await?;
    }
    let dir = tempfile::tempdir()?;
    let (url, schema) = match database {
        Some(url) => (
            url,
            format!("herald_bench_{}", herald_core::Uuid::now_v7().simple()),
        ),
        None => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            "herald".to_owned(),
        ),
    };
    let store = AnyStore::connect(&StoreOptions {
        url: url.clone(),
        schema: schema.clone(),
        table: None,
        completion: Completion::Delete,
    })
    .await?;
    store.migrate().await?;
    seed(&store, events, keys).await?;
    eprintln!("seeded {events} events over {keys} keys; draining…");
    let report = crate::relay::drive(
        store.clone(),
        transport.clone(),
        RelayConfig {
            batch_size,
            ..RelayConfig::default()
        },
        instances,
        true,
        CancellationToken::new(),
    )
    .await?;
    println!(
        "relay drain: {} events, {} backend, {} instance(s), batch {}: {:.2} s, {:.0} events/s",
        report.published,
        store.backend(),
        instances,
        batch_size,
        report.elapsed.as_secs_f64(),
        report.published as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    if matches!(
        &transport,
        crate::transport::AnyTransport::Amqp(_) | crate::transport::AnyTransport::Kafka(_)
    ) {
        // The relay closed its transport: the same broker, a fresh connection.
        let again = crate::transport::AnyTransport::connect(&transport_url).await?;
        let measured = ceiling(&again, events, keys, batch_size).await;
        if let crate::transport::AnyTransport::Amqp(amqp) = &again {
            amqp.delete_subscription(&sink).await?;
        }
        again.close().await;
        measured?;
    }
    if let AnyStore::Postgres(pg) = &store {
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(pg.pool())
            .await?;
    }
    Ok(())
}

/// The same events published in batches straight from memory, no store: what the broker and
/// the transport allow.
async fn ceiling(
    transport: &crate::transport::AnyTransport,
    events: usize,
    keys: usize,
    batch_size: usize,
) -> Result<()> {
    let envelopes = (0..events)
        .map(|i| Envelope::from_event(&event(i, keys), Metadata::default()))
        .collect::<herald_core::Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    for batch in envelopes.chunks(batch_size.max(1)) {
        for result in herald_core::Publisher::publish(transport, batch).await {
            result?;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "publish loop (ceiling): {events} events, batches of {batch_size}: {:.2} s, {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn event(i: usize, keys: usize) -> BenchEvent {
    BenchEvent {
        order_id: format!("order-{}", i % keys.max(1)),
        customer: format!("customer-{}", i % 997),
        lines: vec![("SKU-1".into(), 2, 1999), ("SKU-2".into(), 1, 4999)],
        note: "x".repeat(160),
    }
}

async fn seed(store: &AnyStore, events: usize, keys: usize) -> Result<()> {
    let mut batch = Vec::with_capacity(1000);
    for i in 0..events {
        batch.push(Envelope::from_event(&event(i, keys), Metadata::default())?);
        if batch.len() == 1000 || i + 1 == events {
            match store {
                AnyStore::Postgres(pg) => {
                    let mut tx = pg.begin().await?;
                    tx.record_all(&batch).await?;
                    tx.commit().await?;
                }
                AnyStore::Sqlite(sq) => {
                    let mut tx = sq.begin().await?;
                    tx.record_all(&batch).await?;
                    tx.commit().await?;
                }
            }
            batch.clear();
        }
    }
    Ok(())
}
