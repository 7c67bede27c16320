//! `herald-bench`: Herald's benchmark program.
//!
//! Runs against the real PostgreSQL, RabbitMQ and Kafka, interleaves the variants it compares over
//! several rounds (the first round is a warm-up and is discarded), prints a table of medians and
//! ratios, and writes the same as JSON. `--quick` is a smoke test of the harness: small sizes,
//! under two minutes, and a non-zero exit if any scenario did not deliver every event.

mod b1_producer;
mod b2_relay;
mod b2k_relay;
mod b3_latency;
mod b4_consumer;
mod b5_growth;
mod broker;
mod cpu;
mod fixture;
mod kafka_broker;
mod naive;
mod report;
mod timed;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::fixture::Env;
use crate::report::{Machine, Report, Scenario};

/// Herald's benchmarks: producer overhead (B1), relay drain (B2 on RabbitMQ, B2k on Kafka),
/// end-to-end latency (B3), consumer throughput (B4), claim latency under table growth (B5).
#[derive(Parser)]
#[command(name = "herald-bench")]
struct Cli {
    /// Small sizes, finishes in under two minutes: checks that every scenario completes and
    /// delivers every event (CI's smoke test), not how fast.
    #[arg(long)]
    quick: bool,
    /// PostgreSQL URL (each scenario works in a schema of its own and drops it).
    #[arg(
        long,
        env = "HERALD_TEST_DATABASE_URL",
        default_value = herald_testkit::env::DATABASE_URL
    )]
    database: String,
    /// RabbitMQ URL (the run declares its own exchange and queues and deletes them).
    #[arg(
        long,
        env = "HERALD_TEST_AMQP_URL",
        default_value = herald_testkit::env::AMQP_URL
    )]
    amqp: String,
    /// Kafka bootstrap servers (B2k declares a topic of its own and deletes it).
    #[arg(
        long,
        env = "HERALD_TEST_KAFKA",
        default_value = herald_testkit::env::KAFKA
    )]
    kafka: String,
    /// B2k: a further librdkafka property of the relay's transport and of the ceiling
    /// producer alike (`linger.ms=1`); repeatable. Properties the transport owns are refused.
    #[arg(long = "kafka-property", value_name = "NAME=VALUE", value_parser = fixture::property)]
    kafka_properties: Vec<(String, String)>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/herald-bench.json")]
    json: PathBuf,
    /// Scenarios to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "b1,b2,b2k,b3,b4,b5")]
    only: Vec<String>,
    /// Measured rounds per comparison (after one warm-up round).
    #[arg(long)]
    rounds: Option<usize>,
    /// B2: events pre-filled per drain (default 100 000; quick 5 000).
    #[arg(long)]
    events: Option<usize>,
    /// B5: finished events behind the claims (default 1 000 000; quick 50 000).
    #[arg(long)]
    history: Option<usize>,
    /// B2, B2k: the relay's batch size (rows per claim; default the relay's own default).
    #[arg(long)]
    relay_batch: Option<usize>,
    /// B3: the drain rate (events/s) its loads are fractions of, when B2 does not run.
    #[arg(long, default_value_t = 10_000.0)]
    drain_rate: f64,
    #[command(subcommand)]
    hidden: Option<Hidden>,
}

#[derive(Subcommand)]
enum Hidden {
    /// B2's relay, in a process of its own so that its peak memory can be read.
    #[command(hide = true)]
    RelayChild(b2_relay::ChildArgs),
}

/// The sizes of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// A `--quick` run.
    pub quick: bool,
    /// Measured rounds (a warm-up round comes first and is discarded).
    pub rounds: usize,
    /// B1: length of one measured slice.
    pub slice: Duration,
    /// B2: events per drain.
    pub events: usize,
    /// B2, B2k: the relay's batch size.
    pub relay_batch: usize,
    /// B2: events per naive drain (it is two orders of magnitude slower).
    pub naive_events: usize,
    /// B3: how long each load runs.
    pub load_for: Duration,
    /// B4: messages per consumer run.
    pub messages: usize,
    /// B5: finished events behind the claims.
    pub history: usize,
    /// B5: claims measured per condition.
    pub claims: usize,
}

impl Plan {
    fn of(cli: &Cli) -> Self {
        let base = if cli.quick {
            Plan {
                quick: true,
                rounds: 1,
                slice: Duration::from_millis(700),
                events: 5_000,
                relay_batch: herald_relay::RelayConfig::default().batch_size,
                naive_events: 500,
                load_for: Duration::from_secs(2),
                messages: 5_000,
                history: 50_000,
                claims: 50,
            }
        } else {
            Plan {
                quick: false,
                rounds: 3,
                slice: Duration::from_secs(3),
                events: 100_000,
                relay_batch: herald_relay::RelayConfig::default().batch_size,
                naive_events: 5_000,
                load_for: Duration::from_secs(10),
                messages: 50_000,
                history: 1_000_000,
                claims: 30,
            }
        };
        Plan {
            rounds: cli.rounds.unwrap_or(base.rounds).max(1),
            events: cli.events.unwrap_or(base.events).max(1),
            history: cli.history.unwrap_or(base.history),
            relay_batch: cli.relay_batch.unwrap_or(base.relay_batch).max(1),
            ..base
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Hidden::RelayChild(args)) = cli.hidden {
        return b2_relay::child(args).await;
    }
    let plan = Plan::of(&cli);
    let env = Env {
        database: cli.database.clone(),
        amqp: cli.amqp.clone(),
        kafka: cli.kafka.clone(),
        kafka_properties: cli.kafka_properties.iter().cloned().collect(),
        run: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
    };
    let wanted = |s: &str| cli.only.iter().any(|o| o.eq_ignore_ascii_case(s));
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: cli.quick,
        machine: Machine::detect(),
        scenarios: Vec::new(),
    };
    let mut drain_rate = cli.drain_rate;
    for which in ["b1", "b2", "b2k", "b3", "b4", "b5"] {
        if !wanted(which) {
            continue;
        }
        let scenario = match which {
            "b1" => guard("B1 producer overhead", b1_producer::run(&env, &plan).await),
            "b2" => {
                let result = b2_relay::run(&env, &plan).await;
                if let Ok((_, rate)) = &result {
                    drain_rate = *rate;
                }
                guard("B2 relay drain", result.map(|(s, _)| s))
            }
            "b2k" => guard("B2k relay drain, Kafka", b2k_relay::run(&env, &plan).await),
            "b3" => guard(
                "B3 end-to-end latency",
                b3_latency::run(&env, &plan, drain_rate).await,
            ),
            "b4" => guard("B4 consumer", b4_consumer::run(&env, &plan).await),
            _ => guard("B5 growth", b5_growth::run(&env, &plan).await),
        };
        report.scenarios.push(scenario);
        // Written after every scenario, so that an interrupted run keeps what it measured.
        report.write_json(&cli.json)?;
    }
    println!("{}", report.table());
    eprintln!("results written to {}", cli.json.display());
    let incomplete: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|s| !s.complete)
        .map(|s| s.name.as_str())
        .collect();
    if !incomplete.is_empty() {
        anyhow::bail!("incomplete scenarios: {}", incomplete.join(", "));
    }
    Ok(())
}

/// A scenario's result, or an incomplete scenario carrying its error.
fn guard(name: &str, result: Result<Scenario>) -> Scenario {
    result.unwrap_or_else(|err| {
        eprintln!("{name} failed: {err:#}");
        let mut scenario = Scenario::new(name);
        scenario.complete = false;
        scenario.note(format!("failed: {err:#}"));
        scenario
    })
}
