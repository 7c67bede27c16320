//! `herald demo`: two bounded contexts talking through the outbox, end to end.

pub mod events;
mod inventory;
mod lost_confirms;
mod ordering;
mod report;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use herald_consumer::{Consumer, ConsumerConfig, ConsumerMetrics, RetryPolicy};
use herald_core::{Backoff, Uuid};
use herald_relay::{Relay, RelayConfig, RelayMetrics};
use tokio_util::sync::CancellationToken;

use crate::store::{AnyStore, StoreOptions, is_postgres};
use crate::transport::{AnyTransport, Flaky};
use events::{OrderCancelled, OrderCreated, RETIRED_SKU, SKUS};
use inventory::{Inventory, Meter};
use lost_confirms::{ConfirmCounters, LostConfirms};
use ordering::Ordering;
use report::{Counters, Report};

#[derive(Args)]
pub struct DemoArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 2000)]
    orders: u64,
    /// Orders placed per second (0: as fast as the database takes them).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Concurrent ordering transactions.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Relay instances.
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// One order in N is cancelled afterwards.
    #[arg(long, default_value_t = 10)]
    cancel_every: u64,
    /// Share of publishes the broker refuses (transient), to show retries with backoff.
    #[arg(long, default_value_t = 0.02)]
    failure_rate: f64,
    /// Share of publishes the broker accepts but whose confirm is lost on the way back: the
    /// relay publishes them again, and the inventory's inbox skips the duplicates.
    #[arg(long, default_value_t = 0.01)]
    lost_confirm_rate: f64,
    /// Messages the inventory handles at the same time.
    #[arg(long, default_value_t = 8)]
    consumer_concurrency: usize,
    /// Ordering database: default a fresh SQLite file; or `postgres://…` (a schema of its own,
    /// dropped afterwards).
    #[arg(long, env = "HERALD_DEMO_DATABASE")]
    database: Option<String>,
    /// Broker: `memory` (in-process), or a broker URL.
    #[arg(long, env = "HERALD_TRANSPORT", default_value = "memory")]
    transport: String,
    /// Give up waiting for the pipeline after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Serve `GET /metrics` (Prometheus) here while the demo runs: the relays' and the
    /// inventory consumer's metrics and the outbox gauges, as a deployment would scrape them.
    #[arg(long, env = "HERALD_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.failure_rate) {
        bail!("--failure-rate must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&args.lost_confirm_rate) {
        bail!("--lost-confirm-rate must be in [0, 1)");
    }
    if args.consumer_concurrency == 0 {
        bail!("--consumer-concurrency must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let (url, schema) = match &args.database {
        Some(url) if is_postgres(url) => (
            url.clone(),
            format!("herald_demo_{}", &Uuid::now_v7().simple().to_string()[20..]),
        ),
        Some(url) => (url.clone(), "herald".to_owned()),
        None => (
            format!("sqlite://{}", dir.path().join("ordering.db").display()),
            "herald".to_owned(),
        ),
    };
    let store = AnyStore::connect(&StoreOptions {
        url: url.clone(),
        schema: schema.clone(),
        table: None,
        completion: herald_core::Completion::Delete,
    })
    .await?;
    store.migrate().await?;
    let ordering = match &store {
        AnyStore::Postgres(outbox) => Ordering::Postgres {
            outbox: outbox.clone(),
            schema: format!("\"{schema}\""),
        },
        AnyStore::Sqlite(outbox) => Ordering::Sqlite {
            outbox: outbox.clone(),
        },
    };
    ordering.setup().await?;
    let inventory = Inventory::open(&dir.path().join("inventory.db"), 1_000_000).await?;
    let transport = AnyTransport::connect(&args.transport).await?;

    println!(
        "Herald demo: ordering ({} outbox: {}) → relay ×{} → {} → inventory (sqlite)",
        store.backend(),
        herald_core::redact::redact_url(&url),
        args.relays,
        transport.describe()
    );

    // The metrics endpoint and the outbox monitor live as long as the pipeline.
    let ops = CancellationToken::new();
    if let Some(addr) = args.metrics_addr {
        let handle = crate::ops::install_recorder(ops.clone())?;
        crate::ops::serve_metrics(addr, handle, ops.clone()).await?;
        let monitor = herald_relay::OutboxMonitor::new(store.clone(), Duration::from_secs(1));
        let stop = ops.clone();
        tokio::spawn(async move { monitor.run(stop).await });
        println!("metrics: http://{addr}/metrics");
    }
    let outcome = pipeline(&args, &store, &transport, &ordering, &inventory).await;
    ops.cancel();
    let outcome = match outcome {
        // The closing check reads the ordering tables: before the schema is dropped.
        Ok(report) => {
            report
                .print(
                    store.backend(),
                    &transport.describe(),
                    &ordering,
                    &inventory,
                )
                .await
        }
        Err(error) => Err(error),
    };
    if let AnyStore::Postgres(pg) = &store {
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(pg.pool())
            .await?;
    }
    outcome
}

/// Runs producers, relays and the consumer until every recorded event was handled or
/// dead-lettered, and every copy the broker accepted was settled.
async fn pipeline(
    args: &DemoArgs,
    store: &AnyStore,
    transport: &AnyTransport,
    ordering: &Ordering,
    inventory: &Inventory,
) -> Result<Report> {
    let counters = Arc::new(Counters::default());
    let meter = Meter::default();
    let confirms = Arc::new(ConfirmCounters::default());
    let shutdown = CancellationToken::new();
    crate::cancel_on_signal(shutdown.clone());
    let started = Instant::now();

    // The inventory context: a consumer with the transactional inbox, on a queue of its own
    // per run, deleted at the end (so that a shared broker carries no leftovers between runs).
    let queue = format!("herald-demo-inventory-{}", Uuid::now_v7().simple());
    let consumer = Consumer::new(
        transport.clone(),
        queue.clone(),
        inventory.router(meter.clone()),
        ConsumerConfig {
            concurrency: args.consumer_concurrency,
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_secs(1),
                    multiplier: 2.0,
                    jitter: 0.5,
                },
                ..RetryPolicy::default()
            },
            shutdown_timeout: Duration::from_secs(5),
            ..ConsumerConfig::default()
        },
    )?;
    transport.declare(consumer.subscription()).await?;
    let consumer_metrics = consumer.metrics();
    let consuming = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { consumer.run(shutdown).await })
    };

    // The relays.
    let relay_config = RelayConfig {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        },
        poll_interval: Duration::from_millis(500),
        ..RelayConfig::default()
    };
    let mut relays = Vec::new();
    let mut relay_metrics: Vec<RelayMetrics> = Vec::new();
    for _ in 0..args.relays.max(1) {
        // Refused before the broker (transient), or accepted with the confirm lost.
        let broker = LostConfirms::new(transport.clone(), args.lost_confirm_rate, confirms.clone());
        let publisher = Flaky::new(broker, args.failure_rate);
        let relay = Relay::new(store.clone(), publisher, relay_config.clone())?;
        relay_metrics.push(relay.metrics());
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }

    // The ordering context.
    let producers = produce(args, ordering, &counters, &meter.committed, &shutdown);
    let progress = progress(
        &counters,
        &meter,
        &consumer_metrics,
        &relay_metrics,
        started,
    );
    tokio::select! {
        result = producers => result?,
        () = shutdown.cancelled() => bail!("interrupted"),
    }
    let recorded = counters.recorded.load(AtomicOrdering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut finished = false;
    while Instant::now() < deadline && !shutdown.is_cancelled() {
        // Every row published (its last copy confirmed), every copy the broker accepted
        // settled by the consumer, and every event handled or dead-lettered.
        let published: u64 = relay_metrics.iter().map(|m| m.snapshot().published).sum();
        let copies = confirms.accepted.load(AtomicOrdering::Relaxed);
        let consumed = consumer_metrics.snapshot();
        let settled = meter.handled.load(AtomicOrdering::Relaxed) + consumed.dead_lettered;
        if published >= recorded && consumed.finished() >= copies && settled >= recorded {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    progress.abort();
    shutdown.cancel();
    for relay in relays {
        relay.await??;
    }
    consuming.await??;
    let dead_letters = transport.dead_letters(&queue).await;
    // The run's subscription goes with it: a queue left bound to a shared exchange would
    // collect every later run's messages.
    if let Err(error) = transport.delete_subscription(&queue).await {
        eprintln!("warning: could not delete the demo's subscription {queue}: {error:#}");
    }
    let dead_letters = dead_letters?;
    transport.close().await;
    if !finished {
        bail!("the pipeline did not finish within {} s", args.timeout);
    }
    let latencies = meter
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    Ok(Report::new(
        args.orders,
        &counters,
        &meter,
        &confirms,
        consumer_metrics.snapshot(),
        relay_metrics.iter().map(|m| m.snapshot()).collect(),
        dead_letters,
        latencies,
        elapsed,
    ))
}

/// Places the orders (and cancels some) at the configured rate with `concurrency` writers.
async fn produce(
    args: &DemoArgs,
    ordering: &Ordering,
    counters: &Arc<Counters>,
    committed: &Arc<Mutex<HashMap<Uuid, Instant>>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (ordering, counters, committed, next, shutdown) = (
            ordering.clone(),
            counters.clone(),
            committed.clone(),
            next.clone(),
            shutdown.clone(),
        );
        let (orders, rate, cancel_every) = (args.orders, args.rate, args.cancel_every.max(1));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                if i >= orders || shutdown.is_cancelled() {
                    return anyhow::Ok(());
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                // The last order asks for a product the inventory no longer stocks: a poison
                // message that must end in the dead letters without stopping anything.
                let sku = if i + 1 == orders {
                    RETIRED_SKU
                } else {
                    SKUS[(i % 8) as usize]
                };
                let order = OrderCreated {
                    order_id: Uuid::now_v7(),
                    customer: format!("customer-{}", i % 97),
                    sku: sku.to_owned(),
                    quantity: 1 + (i % 3) as u32,
                    total_cents: 1999 * (1 + (i % 3) as i64),
                };
                let id = ordering.place(&order).await?;
                note_commit(&committed, id);
                counters.recorded.fetch_add(1, AtomicOrdering::Relaxed);
                if i % cancel_every == cancel_every - 1 && i + 1 != orders {
                    let cancel = OrderCancelled {
                        order_id: order.order_id,
                        reason: "customer changed their mind".into(),
                    };
                    let id = ordering.cancel(&cancel).await?;
                    note_commit(&committed, id);
                    counters.recorded.fetch_add(1, AtomicOrdering::Relaxed);
                    counters.cancelled.fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn note_commit(committed: &Mutex<HashMap<Uuid, Instant>>, id: Uuid) {
    if let Ok(mut map) = committed.lock() {
        map.insert(id, Instant::now());
    }
}

/// Prints a progress line every half second until aborted.
fn progress(
    counters: &Arc<Counters>,
    meter: &Meter,
    consumer: &ConsumerMetrics,
    relays: &[RelayMetrics],
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    let counters = counters.clone();
    let handled = meter.handled.clone();
    let consumer = consumer.clone();
    let relays = relays.to_vec();
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let published: u64 = relays.iter().map(|m| m.snapshot().published).sum();
            let retried: u64 = relays.iter().map(|m| m.snapshot().retried).sum();
            let consumed = consumer.snapshot();
            let line = format!(
                "  {:>5.1} s  recorded {:>6}  published {:>6}  handled {:>6}  duplicates {:>3}  retries {:>4}  dead letters {}",
                started.elapsed().as_secs_f64(),
                counters.recorded.load(AtomicOrdering::Relaxed),
                published,
                handled.load(AtomicOrdering::Relaxed),
                consumed.duplicates,
                retried,
                consumed.dead_lettered,
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}
