//! `herald relay`: run the outbox processor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use herald_core::{DeliveryStream, OutboxAdmin, Subscriber, SubscriptionSpec};
use herald_relay::{OutboxMonitor, Relay, RelayConfig, RelaySnapshot};
use tokio_util::sync::CancellationToken;

use crate::DatabaseArgs;
use crate::config::FileConfig;
use crate::store::AnyStore;
use crate::transport::AnyTransport;

#[derive(Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Broker to publish to: `amqp://user:password@host:5672/vhost` (or `amqps://…`) for
    /// RabbitMQ, `kafka://host:9092[,host:9092…][/topic]` for Kafka, or `memory`, an in-process broker whose messages a built-in sink consumes (for
    /// smoke tests and drain measurements).
    #[arg(long, env = "HERALD_TRANSPORT", default_value = "memory")]
    pub transport: String,
    /// Settings file (TOML: `[relay]`, `[amqp]`, `[operations]`; see `herald config check`).
    /// Flags given here win over it.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Relay instances to run in this process [default: 1].
    #[arg(long, env = "HERALD_INSTANCES")]
    pub instances: Option<usize>,
    /// Rows claimed per batch [default: 512].
    #[arg(long, env = "HERALD_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Publish attempts before a row is dead-lettered [default: 10].
    #[arg(long, env = "HERALD_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Create or upgrade the outbox tables first.
    #[arg(long)]
    pub migrate: bool,
    /// Exit once the outbox is empty, and report the drain rate.
    #[arg(long)]
    pub until_empty: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. `127.0.0.1:9464`).
    #[arg(long, env = "HERALD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve liveness (`/livez`) and readiness (`/readyz`: the database and the broker
    /// answer) at this address (e.g. `0.0.0.0:8080`).
    #[arg(long, env = "HERALD_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// How often the outbox's depth and oldest due row are sampled for the metrics (`15s`,
    /// `500ms`; only with `--metrics-addr`) [default: 15s].
    #[arg(long, env = "HERALD_STATS_INTERVAL", value_parser = crate::parse_duration)]
    pub stats_interval: Option<Duration>,
}

/// Result of running relays until the outbox was empty.
pub struct DrainReport {
    /// Events published.
    pub published: u64,
    /// Wall time from start to empty.
    pub elapsed: Duration,
    /// Summed relay counters.
    pub relays: RelaySnapshot,
}

pub async fn run(args: RelayArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    file.check()?;
    let mut config = file.relay_config()?;
    if let Some(n) = args.batch_size {
        config.batch_size = n;
    }
    if let Some(n) = args.max_attempts {
        config.max_attempts = n;
    }
    config.validate()?;
    let instances = args.instances.or(file.relay.instances).unwrap_or(1);
    let operations = &file.operations;
    let metrics_addr = args.metrics_addr.or(operations.metrics_addr);
    let health_addr = args.health_addr.or(operations.health_addr);
    let stats_interval = args
        .stats_interval
        .or(operations.stats_interval.map(|d| d.0))
        .unwrap_or(Duration::from_secs(15));
    let transport = AnyTransport::connect_with(&args.transport, &file).await?;
    let store = AnyStore::connect(&args.database.store_options()).await?;
    if args.migrate {
        store.migrate().await?;
    }
    let shutdown = CancellationToken::new();
    crate::cancel_on_signal(shutdown.clone());
    // The operations endpoints and the outbox monitor stop with the relays.
    let ops = shutdown.child_token();
    let mut served = Vec::new();
    if let Some(addr) = metrics_addr {
        let handle = crate::ops::install_recorder(ops.clone())?;
        served.push(crate::ops::serve_metrics(addr, handle, ops.clone()).await?);
        let monitor = OutboxMonitor::new(store.clone(), stats_interval);
        let stop = ops.clone();
        served.push(tokio::spawn(async move { monitor.run(stop).await }));
        let dependencies = crate::ops::Dependencies {
            store: store.clone(),
            transport: transport.clone(),
        };
        served.push(tokio::spawn(crate::ops::watch_dependencies(
            dependencies,
            stats_interval,
            ops.clone(),
        )));
    }
    if let Some(addr) = health_addr {
        let dependencies = crate::ops::Dependencies {
            store: store.clone(),
            transport: transport.clone(),
        };
        served.push(crate::ops::serve_health(addr, dependencies, ops.clone()).await?);
    }
    let report = drive(
        store,
        transport,
        config,
        instances,
        args.until_empty,
        shutdown,
    )
    .await;
    ops.cancel();
    for task in served {
        let _ = task.await;
    }
    let report = report?;
    println!(
        "published {} events in {:.2} s ({:.0} events/s); retried {}, dead-lettered {}",
        report.published,
        report.elapsed.as_secs_f64(),
        report.published as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.relays.retried,
        report.relays.dead_lettered
    );
    Ok(())
}

/// Runs `instances` relays from `store` into `transport` until `shutdown` or, with
/// `until_empty`, until the outbox is empty. On the in-memory broker a sink consumes
/// everything (there is nobody else to).
pub async fn drive(
    store: AnyStore,
    transport: AnyTransport,
    config: RelayConfig,
    instances: usize,
    until_empty: bool,
    shutdown: CancellationToken,
) -> Result<DrainReport> {
    let consumed = match &transport {
        AnyTransport::Memory(_) => {
            let mut sink = transport
                .subscribe(&SubscriptionSpec {
                    prefetch: 10_000,
                    ..SubscriptionSpec::new("herald-relay-sink", Vec::<String>::new())
                })
                .await?;
            Some(tokio::spawn(async move {
                while let Some(Ok(delivery)) = sink.next().await {
                    if delivery.ack().await.is_err() {
                        break;
                    }
                }
            }))
        }
        // Messages go to the queues consumers (or `herald amqp declare`) bound.
        AnyTransport::Amqp(_) => None,
        // Kafka keeps every record on its topic, read or not.
        AnyTransport::Kafka(_) => None,
    };
    // Commits of other processes wake the relays at once (NOTIFY, or the file's commit counter).
    let listener = match &store {
        AnyStore::Postgres(pg) => pg.watch_commits(shutdown.clone()).await?,
        AnyStore::Sqlite(sqlite) => sqlite.watch_commits(shutdown.clone()).await?,
    };

    let started = Instant::now();
    let mut relays = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..instances.max(1) {
        let relay = Relay::new(store.clone(), transport.clone(), config.clone())?;
        metrics.push(relay.metrics());
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }
    if until_empty {
        // Ask the database only when the relays have stopped making progress: polling its
        // counts while they drain would compete with them (on SQLite, for the one connection).
        let mut last_published = u64::MAX;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let published: u64 = metrics.iter().map(|m| m.snapshot().published).sum();
            if published != last_published {
                last_published = published;
                continue;
            }
            let stats = store.stats().await?;
            if stats.pending == 0 && stats.in_flight == 0 {
                break;
            }
        }
        shutdown.cancel();
    }
    for relay in relays {
        relay.await??;
    }
    let elapsed = started.elapsed();
    listener.await?;
    transport.close().await;
    if let Some(consumed) = consumed {
        let _ = consumed.await;
    }
    let relays =
        metrics
            .iter()
            .map(|m| m.snapshot())
            .fold(RelaySnapshot::default(), |mut acc, s| {
                acc.batches += s.batches;
                acc.claimed += s.claimed;
                acc.published += s.published;
                acc.retried += s.retried;
                acc.dead_lettered += s.dead_lettered;
                acc.released += s.released;
                acc.store_errors += s.store_errors;
                acc
            });
    Ok(DrainReport {
        published: relays.published,
        elapsed,
        relays,
    })
}
