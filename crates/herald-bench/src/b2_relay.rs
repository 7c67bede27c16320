//! B2, relay drain: pre-fill the outbox, then drain PostgreSQL → RabbitMQ (durable classic
//! queue, persistent messages, confirms). Beside it in the same run, interleaved: the ceiling
//! (a bare publish loop, same client, messages and confirm window, from memory) and the naive
//! relay (see [`crate::naive`]).
//!
//! The relay runs in a child process (this binary, hidden `relay-child` subcommand; B2k's
//! relay too), which
//! reports its drain time and its peak resident memory: `VmHWM` from `/proc/self/status`, the
//! whole process (runtime, pool, transport and relay).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use herald_amqp::AmqpTransport;
use herald_core::{Completion, Publisher, SubscriptionSpec};
use herald_kafka::{KafkaConfig, KafkaTransport};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_relay::{Relay, RelayConfig};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::Plan;
use crate::broker::Broker;
use crate::cpu::CpuTime;
use crate::fixture::{self, Env};
use crate::naive;
use crate::report::Scenario;
use crate::timed::Timed;

/// Partition keys of the pre-filled events.
const KEYS: usize = 1000;

/// Connections the relay child opens before its clock starts: one for claims, one for
/// write-backs, one for the watermark's maintenance, and one more (a drain sometimes opened a
/// fourth, when a maintenance overlapped a write-back and a claim).
const RELAY_CONNECTIONS: u32 = 4;

/// Runs B2; returns the scenario and the relay's median drain rate (events/s).
pub async fn run(env: &Env, plan: &Plan) -> Result<(Scenario, f64)> {
    let transport = AmqpTransport::connect(env.amqp_config()).await?;
    let queue = env.name("b2");
    transport
        .declare(&SubscriptionSpec::new(queue.clone(), Vec::<String>::new()))
        .await?;
    let broker = Broker::connect(&env.amqp).await?;
    let outbox = env.outbox("b2", Completion::Delete, 4).await?;
    let result = measure(env, plan, &transport, &broker, &outbox, &queue).await;
    fixture::tear_down(env, &transport, Some(broker), &queue, &outbox).await;
    result
}

async fn measure(
    env: &Env,
    plan: &Plan,
    transport: &AmqpTransport,
    broker: &Broker,
    outbox: &PgOutbox,
    queue: &str,
) -> Result<(Scenario, f64)> {
    let mut scenario = Scenario::new("B2 relay drain");
    let schema = outbox.config().schema.quoted();
    naive::create(outbox.pool(), &schema).await?;
    let envelopes = fixture::envelopes(plan.events, KEYS)?;
    let naive_envelopes = &envelopes[..plan.naive_events.min(envelopes.len())];
    let window = transport.config().confirm_window;
    let (mut relay, mut ceiling, mut naive_rates, mut memory) = (vec![], vec![], vec![], vec![]);
    for round in 0..=plan.rounds {
        // A: the relay, in its own process.
        broker.purge(queue).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let exchange = env.amqp_config().exchange;
        let broker_args = ["--amqp", &env.amqp, "--exchange", &exchange].map(str::to_owned);
        let child = spawn_child(env, plan, outbox, &broker_args).await?;
        check(
            &mut scenario,
            "relay",
            broker.ready(queue).await?,
            plan.events,
        );
        // B: the ceiling.
        broker.purge(queue).await?;
        let started = Instant::now();
        broker
            .publish(&transport.config().exchange, &envelopes, window)
            .await?;
        let ceiling_s = started.elapsed().as_secs_f64();
        check(
            &mut scenario,
            "ceiling",
            broker.ready(queue).await?,
            plan.events,
        );
        // C: the naive relay.
        broker.purge(queue).await?;
        naive::fill(outbox.pool(), &schema, naive_envelopes).await?;
        let naive_s =
            naive::drain(outbox.pool(), &schema, transport, naive_envelopes.len()).await?;
        check(
            &mut scenario,
            "naive",
            broker.ready(queue).await?,
            naive_envelopes.len(),
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "TRUNCATE {schema}.naive_outbox"
        )))
        .execute(outbox.pool())
        .await?;
        eprintln!(
            "B2 round {round}: relay {:.0}/s ({:.1} MiB), ceiling {:.0}/s, naive {:.0}/s",
            plan.events as f64 / child.elapsed_s,
            child.vm_hwm_kib as f64 / 1024.0,
            plan.events as f64 / ceiling_s,
            naive_envelopes.len() as f64 / naive_s.as_secs_f64()
        );
        if round > 0 {
            relay.push(plan.events as f64 / child.elapsed_s);
            ceiling.push(plan.events as f64 / ceiling_s);
            naive_rates.push(naive_envelopes.len() as f64 / naive_s.as_secs_f64());
            memory.push(child.vm_hwm_kib as f64 / 1024.0);
        }
    }
    broker.purge(queue).await?;
    let r = scenario.row("relay (PostgreSQL → RabbitMQ)", "events/s", relay);
    let c = scenario.row(
        "ceiling (bare publish loop from memory)",
        "events/s",
        ceiling,
    );
    let n = scenario.row(
        "naive relay (fetch 100, publish+confirm+update each)",
        "events/s",
        naive_rates,
    );
    let m = scenario.row("relay process peak RSS (VmHWM)", "MiB", memory);
    scenario.target(
        "relay / ceiling",
        r / c.max(1e-9),
        "×",
        "≥ 0.8",
        r >= 0.8 * c,
    );
    scenario.target(
        "relay / naive relay",
        r / n.max(1e-9),
        "×",
        "≥ 10",
        r >= 10.0 * n,
    );
    scenario.target("relay peak memory", m, "MiB", "≤ 50 MiB", m <= 50.0);
    scenario.note(format!(
        "{} events per drain ({} for the naive relay), {KEYS} partition keys, ~300-byte payloads, \
         confirm window {window}, relay batch {}; A B C interleaved, {} measured rounds after one warm-up",
        plan.events,
        naive_envelopes.len(),
        plan.relay_batch,
        plan.rounds
    ));
    let rate = scenario_rate(&scenario);
    Ok((scenario, rate))
}

fn scenario_rate(scenario: &Scenario) -> f64 {
    scenario.rows.first().map_or(0.0, |r| r.value)
}

/// Marks `scenario` incomplete, with a note, unless `delivered` is `expected`.
pub fn check(scenario: &mut Scenario, variant: &str, delivered: u64, expected: usize) {
    if delivered != expected as u64 {
        scenario.complete = false;
        scenario.note(format!(
            "{variant}: {delivered} of {expected} messages reached the broker"
        ));
    }
}

/// What the relay child reports on its stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// Seconds from the relay's start to the last event confirmed.
    pub elapsed_s: f64,
    /// Peak resident set size of the child, KiB.
    pub vm_hwm_kib: u64,
    /// Core-seconds the whole machine (relay, PostgreSQL, broker) spent during the drain.
    pub machine_core_s: f64,
}

/// The hidden `relay-child` subcommand's arguments: the outbox, and the broker the relay
/// publishes to (RabbitMQ with `--amqp` and `--exchange`, or Kafka with `--kafka` and
/// `--topic`).
#[derive(Debug, Args)]
pub struct ChildArgs {
    #[arg(long)]
    database: String,
    #[arg(long)]
    schema: String,
    #[arg(long)]
    events: usize,
    #[arg(long, requires = "exchange", conflicts_with = "kafka")]
    amqp: Option<String>,
    #[arg(long)]
    exchange: Option<String>,
    #[arg(long, requires = "topic")]
    kafka: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long = "kafka-property", requires = "kafka", value_parser = crate::fixture::property)]
    kafka_properties: Vec<(String, String)>,
    /// No broker: a publisher that confirms every message at once (what the store alone
    /// allows the relay).
    #[arg(long, conflicts_with_all = ["amqp", "kafka"])]
    instant: bool,
    /// The relay's batch size.
    #[arg(long)]
    batch_size: usize,
}

/// Runs the relay child on `outbox` with `broker_args` naming its broker (see [`ChildArgs`]),
/// and reads its report.
pub async fn spawn_child(
    env: &Env,
    plan: &Plan,
    outbox: &PgOutbox,
    broker_args: &[String],
) -> Result<ChildReport> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["relay-child", "--database", &env.database])
        .args(broker_args)
        .args(["--schema", outbox.config().schema.as_str()])
        .args(["--events", &plan.events.to_string()])
        .args(["--batch-size", &plan.relay_batch.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the relay child")?;
    let stdout = child.stdout.take().context("relay child stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(900), lines.next_line())
        .await
        .context("relay child timed out")??
        .context("relay child printed nothing")?;
    let status = child.wait().await?;
    if !status.success() {
        bail!("relay child failed: {status}");
    }
    Ok(serde_json::from_str(&line)?)
}

/// The child: drains `events` events with a [`Relay`], prints a [`ChildReport`] line.
pub async fn child(args: ChildArgs) -> Result<()> {
    let config = PgOutboxConfig::new(&args.schema, "outbox")?;
    let outbox = PgOutbox::connect(&args.database, config).await?;
    // The connections a relay works on (claims, write-backs, the watermark's maintenance) are
    // opened before the clock starts, as the broker connections are: what is measured is a
    // running relay's drain, not sqlx opening connections (~90 ms each here, see `warm_up`).
    outbox.warm_up(RELAY_CONNECTIONS).await?;
    let (elapsed_s, machine_core_s) = match (&args.amqp, &args.exchange, &args.kafka, &args.topic) {
        (Some(url), Some(exchange), None, _) => {
            let transport = AmqpTransport::connect(herald_amqp::AmqpConfig {
                url: url.clone(),
                exchange: exchange.clone(),
                connection_name: "herald-bench relay".to_owned(),
                ..herald_amqp::AmqpConfig::default()
            })
            .await?;
            let drained = drain(outbox, transport.clone(), &args).await?;
            transport.close().await;
            drained
        }
        (None, _, Some(servers), Some(topic)) => {
            let transport = KafkaTransport::connect(KafkaConfig {
                topic: topic.clone(),
                client_id: "herald-bench-relay".to_owned(),
                properties: args.kafka_properties.iter().cloned().collect(),
                ..KafkaConfig::new(servers.as_str())
            })
            .await?;
            let drained = drain(outbox, transport.clone(), &args).await?;
            transport.close().await;
            drained
        }
        (None, _, None, _) if args.instant => drain(outbox, InstantPublisher, &args).await?,
        _ => bail!("relay-child needs --amqp and --exchange, --kafka and --topic, or --instant"),
    };
    let report = ChildReport {
        elapsed_s,
        vm_hwm_kib: vm_hwm_kib()?,
        machine_core_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A publisher that confirms every message at once, without sending it anywhere.
#[derive(Debug, Clone, Copy)]
struct InstantPublisher;

impl Publisher for InstantPublisher {
    async fn publish(&self, batch: &[herald_core::Envelope]) -> Vec<herald_core::Result<()>> {
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// Runs a [`Relay`] from `outbox` to `publisher` until it published `events` events; returns
/// the seconds that took and the core-seconds the machine spent meanwhile.
async fn drain<P: Publisher + Clone>(
    outbox: PgOutbox,
    publisher: P,
    args: &ChildArgs,
) -> Result<(f64, f64)> {
    let events = args.events;
    let publisher = Timed::new(publisher);
    let config = RelayConfig {
        batch_size: args.batch_size,
        ..RelayConfig::default()
    };
    let relay = Relay::new(outbox, publisher.clone(), config)?;
    let metrics = relay.metrics();
    let shutdown = CancellationToken::new();
    let cpu = CpuTime::now()?;
    let started = Instant::now();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    while metrics.snapshot().published < events as u64 {
        if running.is_finished() || started.elapsed() > Duration::from_secs(600) {
            bail!(
                "relay stopped after {} of {} events",
                metrics.snapshot().published,
                events
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let machine_core_s = cpu.core_seconds_until(&CpuTime::now()?, elapsed_s);
    if std::env::var_os("HERALD_BENCH_RELAY_COUNTERS").is_some() {
        let f = publisher.figures();
        eprintln!(
            "relay child: {elapsed_s:.2} s, {:?}; publish calls: {}, {:.0} envelopes each, \
             {:.1} ms each, at most {} at once, in flight {:.0} % of the drain",
            metrics.snapshot(),
            f.calls,
            f.envelopes as f64 / f.calls.max(1) as f64,
            f.in_calls.as_secs_f64() * 1e3 / f.calls.max(1) as f64,
            f.most_at_once,
            100.0 * f.busy.as_secs_f64() / elapsed_s,
        );
    }
    shutdown.cancel();
    running.await??;
    Ok((elapsed_s, machine_core_s))
}

/// This process's peak resident set size, KiB.
fn vm_hwm_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}
