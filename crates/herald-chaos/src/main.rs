//! `herald-chaos`: Herald's fault-injection harness.
//!
//! `herald-chaos run` starts, per scenario, two producers, two relays and two consumers (with
//! the transactional inbox) as processes of this binary against the real PostgreSQL and
//! RabbitMQ (or Kafka: the `kafka-…` scenarios), breaks things on purpose while the producers produce (SIGKILLs, broker and
//! database restarts, terminated database sessions, publish nacks under back-pressure, slow
//! and stalled database traffic with expiring leases, handlers that fail, swallow database
//! errors or retry through long delay queues), lets the system heal by itself, and then checks
//! every committed event: per-key order at the broker (first arrivals in a witness queue) and
//! in the effects, handled exactly once in effect, every poison event (and nothing else) in
//! the dead-letter queue, nothing stuck. It prints a table, names every order violation, and
//! exits non-zero if any check failed.

mod broker;
mod bus;
mod check;
mod database;
mod event;
mod kafka_broker;
mod observer;
mod orchestrator;
mod procs;
mod proxy;
mod roles;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::orchestrator::{RunSettings, Scenario};

#[derive(Debug, Parser)]
#[command(name = "herald-chaos", about = "Herald's fault-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs scenarios and prints the table.
    Run(RunArgs),
    #[command(hide = true)]
    Producer(roles::ProducerArgs),
    #[command(hide = true)]
    Relay(roles::RelayArgs),
    #[command(hide = true)]
    Consumer(roles::ConsumerArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "HERALD_TEST_DATABASE_URL",
        default_value = herald_testkit::env::DATABASE_URL
    )]
    database: String,
    /// AMQP URL.
    #[arg(
        long,
        env = "HERALD_TEST_AMQP_URL",
        default_value = herald_testkit::env::AMQP_URL
    )]
    amqp: String,
    /// Kafka bootstrap servers (the `kafka-…` scenarios).
    #[arg(
        long,
        env = "HERALD_TEST_KAFKA",
        default_value = herald_testkit::env::KAFKA
    )]
    kafka: String,
    /// Scenarios to run (default: all of them, one after the other).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Events per run.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Seconds the producers take per run (faults strike meanwhile).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Runs per scenario.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Share of handler runs that fail transiently.
    #[arg(long, default_value_t = 0.1)]
    fail_rate: f64,
    /// One event in this many is poison.
    #[arg(long, default_value_t = 200)]
    poison_every: usize,
    /// Partition keys per producer (two producers). Fewer keys mean more events per key in
    /// flight at once, where order can break.
    #[arg(long, default_value_t = 15)]
    keys: usize,
    /// Seconds the system may take to settle after the last fault (`long-retries` takes about
    /// 100 s: every failed handler run holds its key for the 15 s delay queue).
    #[arg(long, default_value_t = 240)]
    recovery_timeout: u64,
    /// Where the processes' logs go.
    #[arg(long, default_value = "target/herald-chaos")]
    log_dir: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // librdkafka logs every refused connection as an error: while the Kafka
                // scenarios stop the broker on purpose, that is all it would print.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,librdkafka=off,rdkafka=off")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Producer(args) => roles::producer(args).await,
            Command::Relay(args) => roles::relay(args).await,
            Command::Consumer(args) => roles::consumer(args).await,
        }
    })
}

async fn run(args: RunArgs) -> Result<()> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::EVERY.to_vec()
    } else {
        args.scenarios.clone()
    };
    orchestrator::log_dir(&args.log_dir)?;
    let settings = RunSettings {
        database: args.database.clone(),
        amqp: args.amqp.clone(),
        kafka: args.kafka.clone(),
        events: args.events,
        duration: Duration::from_secs(args.duration),
        fail_rate: args.fail_rate,
        poison_every: args.poison_every,
        keys: args.keys,
        recovery_timeout: Duration::from_secs(args.recovery_timeout),
        log_dir: args.log_dir.clone(),
    };
    let mut rows = Vec::new();
    let mut clean = true;
    for scenario in scenarios {
        let mut total = check::ScenarioRow {
            scenario: format!("{scenario:?}"),
            ..Default::default()
        };
        for _ in 0..args.runs {
            let result = orchestrator::run(scenario, &settings).await;
            // Whatever happened, the broker and the database must be running when we move on.
            let database = database::ensure_running();
            let kafka = if scenario.on_kafka() {
                kafka_broker::ensure_running(&args.kafka)
            } else {
                Ok(())
            };
            broker::ensure_running()?;
            database?;
            kafka?;
            let row = result?;
            clean &= row.verdict.is_clean() && row.unexpected_exits == 0;
            eprintln!(
                "herald-chaos: {scenario:?}: {} events, {} lost, {} never at the broker, \
                 {} duplicated, order violations {} at the broker / {} in effects, \
                 {} dead letters (+{} wrong), {} stuck",
                row.verdict.events,
                row.verdict.lost,
                row.verdict.unseen,
                row.verdict.duplicated,
                row.verdict.broker_order_violations,
                row.verdict.order_violations,
                row.verdict.dead_letters,
                row.verdict.wrong_dead_letters,
                row.verdict.stuck
            );
            total.runs += 1;
            total.verdict.events += row.verdict.events;
            total.verdict.lost += row.verdict.lost;
            total.verdict.duplicated += row.verdict.duplicated;
            total.verdict.order_violations += row.verdict.order_violations;
            total.verdict.broker_order_violations += row.verdict.broker_order_violations;
            total.verdict.unseen += row.verdict.unseen;
            total.verdict.dead_letters += row.verdict.dead_letters;
            total.verdict.wrong_dead_letters += row.verdict.wrong_dead_letters;
            total.verdict.stuck += row.verdict.stuck;
            total.faults += row.faults;
            total.kills += row.kills;
            total.unexpected_exits += row.unexpected_exits;
            total.recovery = total.recovery.max(row.recovery);
        }
        rows.push(total);
    }
    check::print_table(&rows);
    if !clean {
        anyhow::bail!("some checks failed (see above)");
    }
    Ok(())
}
