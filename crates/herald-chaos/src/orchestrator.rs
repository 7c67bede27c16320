//! One scenario run: sets up its schema and topology (on RabbitMQ or on Kafka), starts
//! producers, two relays and two consumers as processes and the broker-side witness, breaks things until the producers are
//! done, waits for the system to heal by itself, checks, and cleans up.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use herald_amqp::AmqpTransport;
use herald_kafka::KafkaTransport;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use sqlx::AssertSqlSafe;
use tokio::time::Instant;

use crate::broker;
use crate::bus::Bus;
use crate::check::{self, ScenarioRow};
use crate::database;
use crate::event::RunNames;
use crate::kafka_broker;
use crate::observer::{Drain, Observer};
use crate::procs::{Exits, Proc, spawn_producer};
use crate::proxy::DelayProxy;
use crate::roles::{Common, KAFKA_DELIVERY_TIMEOUT};

/// The faults a scenario injects (handlers fail transiently and poison events exist in all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Only handler faults: transient failures and poison events.
    HandlerFaults,
    /// SIGKILL a relay at random moments, and restart it.
    RelayKill,
    /// SIGKILL a consumer, and make consumers exit between commit and ack; restart them.
    ConsumerKill,
    /// `rabbitmqctl stop_app` / `start_app` mid-stream.
    BrokerRestart,
    /// `pg_terminate_backend` on the relays' and consumers' sessions.
    DbTerminate,
    /// `pg_ctlcluster <version> main restart`: every session ends, the database is away for a
    /// moment.
    DbRestart,
    /// The witness queue is bounded (`max-length`, `reject-publish`) and drained at 0.8 times
    /// the production rate: the broker nacks publishes while it is full. One relay.
    Backpressure,
    /// The relays reach PostgreSQL through a proxy that delays every chunk by a changing,
    /// random latency: slow claims, slow write-backs, finishing out of order; with the
    /// back-pressure of `backpressure`, so that there are failures to write back.
    SlowDatabase,
    /// A 3 s lease, and the proxy stalls the relays' traffic for longer than that now and
    /// then: leases expire while their relay is still working on them (with the slow
    /// database's latency and back-pressure in between).
    LeaseExpiry,
    /// Handlers that, now and then, hit a unique violation after writing their effect, catch
    /// it and return success.
    SwallowedErrors,
    /// Every handler failure is retried through the broker with a delay that waits in the
    /// longest delay queue, longer than asked plus the redelivery grace (2 % of handler runs
    /// fail, so that the keys they hold let the run settle in time).
    LongRetries,
    /// All of the above at once, but the long retries (see `has`).
    All,
    /// On Kafka: only handler faults (retries through the retry topic, poison events to the
    /// dead-letter topic).
    KafkaHandlerFaults,
    /// On Kafka: SIGKILL a relay at random moments, and restart it.
    KafkaRelayKill,
    /// On Kafka: SIGKILL a consumer (its partitions go to the other one when its session
    /// times out), and make consumers exit between the inbox commit and the offset commit;
    /// restart them.
    KafkaConsumerKill,
    /// On Kafka: SIGTERM the broker of `scripts/services kafka` mid-stream and start it again.
    KafkaBrokerRestart,
}

impl Scenario {
    /// Every scenario, in the order a run goes through them.
    pub const EVERY: [Scenario; 16] = [
        Scenario::HandlerFaults,
        Scenario::RelayKill,
        Scenario::ConsumerKill,
        Scenario::BrokerRestart,
        Scenario::DbTerminate,
        Scenario::DbRestart,
        Scenario::Backpressure,
        Scenario::SlowDatabase,
        Scenario::LeaseExpiry,
        Scenario::SwallowedErrors,
        Scenario::LongRetries,
        Scenario::All,
        Scenario::KafkaHandlerFaults,
        Scenario::KafkaRelayKill,
        Scenario::KafkaConsumerKill,
        Scenario::KafkaBrokerRestart,
    ];

    /// Whether the scenario runs on Kafka.
    pub fn on_kafka(self) -> bool {
        self != self.faults()
    }

    /// The RabbitMQ scenario injecting the same faults.
    fn faults(self) -> Scenario {
        match self {
            Scenario::KafkaHandlerFaults => Scenario::HandlerFaults,
            Scenario::KafkaRelayKill => Scenario::RelayKill,
            Scenario::KafkaConsumerKill => Scenario::ConsumerKill,
            Scenario::KafkaBrokerRestart => Scenario::BrokerRestart,
            other => other,
        }
    }

    fn has(self, fault: Scenario) -> bool {
        // `All` leaves the long retries out, no longer for order (a retry waiting in a delay
        // queue holds its key in the inbox, so a consumer that replaces its sender keeps the
        // key's order: the consumer simulation's
        // `per_key_order_survives_a_consumer_restart_while_a_retry_waits_in_a_delay_queue`), but
        // for time: with `all`'s 10 % handler failures each sent through the 15 s delay queue,
        // the run did not settle within the 240 s recovery timeout (2 000 events, 2026-12-04).
        let faults = self.faults();
        faults == fault || (faults == Scenario::All && fault != Scenario::LongRetries)
    }

    /// Whether the broker nacks publishes under back-pressure. Slow statements and expiring
    /// leases harm order only where a relay writes back failures or releases, so those
    /// scenarios bring the back-pressure along.
    fn nacks(self) -> bool {
        self.has(Scenario::Backpressure)
            || self.has(Scenario::SlowDatabase)
            || self.has(Scenario::LeaseExpiry)
    }
}

/// The witness queue's bound under back-pressure.
const WITNESS_MAX_LENGTH: u32 = 10;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Services.
    pub database: String,
    /// Services.
    pub amqp: String,
    /// Kafka bootstrap servers (the Kafka scenarios').
    pub kafka: String,
    /// Events per run.
    pub events: usize,
    /// How long producing should take (the faults are injected meanwhile).
    pub duration: Duration,
    /// Share of handler runs failing transiently.
    pub fail_rate: f64,
    /// One event in this many is poison.
    pub poison_every: usize,
    /// Partition keys per producer.
    pub keys: usize,
    /// How long the system may take to settle after the last fault.
    pub recovery_timeout: Duration,
    /// Where the processes' logs go.
    pub log_dir: std::path::PathBuf,
}

/// Runs `scenario` once; returns its row (runs = 1).
pub async fn run(scenario: Scenario, settings: &RunSettings) -> Result<ScenarioRow> {
    // Starts PostgreSQL again if the run ends (error, panic) while it is down.
    let _running = scenario
        .has(Scenario::DbRestart)
        .then_some(database::RunningGuard);
    let names = RunNames::fresh();
    let common = Common {
        database: settings.database.clone(),
        amqp: settings.amqp.clone(),
        kafka: scenario.on_kafka().then(|| settings.kafka.clone()),
        run: names.id.clone(),
    };
    if scenario.has(Scenario::BrokerRestart) && scenario.on_kafka() {
        kafka_broker::check_local(&settings.kafka)?;
    }
    let schema = names.schema();
    let outbox = PgOutbox::connect(
        &common.database_url("checker"),
        PgOutboxConfig::new(&schema, "outbox")?,
    )
    .await?;
    outbox.migrate().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".produced (event_id uuid PRIMARY KEY, key text NOT NULL, \
             n bigint NOT NULL, poison boolean NOT NULL); \
         CREATE TABLE \"{schema}\".effects (seq bigserial PRIMARY KEY, event_id uuid NOT NULL, \
             key text NOT NULL, n bigint NOT NULL);"
    )))
    .execute(outbox.pool())
    .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".markers (id int PRIMARY KEY); \
         INSERT INTO \"{schema}\".markers (id) VALUES (0); \
         CREATE TABLE \"{schema}\".relay_stats (relay uuid PRIMARY KEY, claimed bigint NOT NULL, \
             published bigint NOT NULL, retried bigint NOT NULL, released bigint NOT NULL, \
             store_errors bigint NOT NULL); \
         CREATE TABLE \"{schema}\".consumer_stats (consumer uuid PRIMARY KEY, \
             received bigint NOT NULL, duplicates bigint NOT NULL, \
             dead_lettered bigint NOT NULL);"
    )))
    .execute(outbox.pool())
    .await?;
    let transport = match common.kafka_config() {
        Some(kafka) => Bus::Kafka(KafkaTransport::connect(kafka).await?),
        None => Bus::Amqp(AmqpTransport::connect(common.amqp_config()).await?),
    };
    // The consumers' and the witness's subscriptions exist (the witness's queue bounded)
    // before the first event is published.
    transport.declare(&names.queue()).await?;
    let witness = names.witness_queue();
    if scenario.nacks() {
        broker::bound_queue(&names.policy(), &witness, WITNESS_MAX_LENGTH)?;
    }
    transport.declare(&witness).await?;

    let result = drive(scenario, settings, &common, &names, &outbox, &transport).await;

    // Clean up whatever happened; the broker and the database are running again by now.
    transport.delete(&names.queue()).await;
    transport.delete(&witness).await;
    if scenario.nacks() {
        let _ = broker::clear_policy(&names.policy());
    }
    transport.close().await;
    if let Ok(row) = &result
        && (!row.verdict.inversions.is_empty() || !row.verdict.lost_ids.is_empty())
    {
        let path = settings.log_dir.join(&names.id).join("violations.txt");
        let lines: Vec<String> = row
            .verdict
            .inversions
            .iter()
            .map(|(side, inversion)| check::describe(*side, inversion))
            .chain(row.verdict.lost_ids.iter().map(|id| format!("lost: {id}")))
            .collect();
        let _ = std::fs::write(&path, lines.join("\n") + "\n");
        eprintln!(
            "herald-chaos: {scenario:?}: order violations by key (all of them, and the lost \
             events, in {}):\n{}",
            path.display(),
            check::summary(&row.verdict.inversions)
        );
    }
    if result
        .as_ref()
        .is_ok_and(|r| r.verdict.is_clean() && r.unexpected_exits == 0)
        // Asked for the processes' logs: kept, with the run's schema.
        && std::env::var_os("HERALD_CHAOS_LOG").is_none()
    {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(outbox.pool())
            .await?;
        let _ = std::fs::remove_dir_all(settings.log_dir.join(&names.id));
    } else {
        eprintln!(
            "herald-chaos: kept schema {schema} and logs in {} for a look",
            settings.log_dir.display()
        );
    }
    result
}

async fn drive(
    scenario: Scenario,
    settings: &RunSettings,
    common: &Common,
    names: &RunNames,
    outbox: &PgOutbox,
    transport: &Bus,
) -> Result<ScenarioRow> {
    let dir = settings.log_dir.join(&names.id);
    std::fs::create_dir_all(&dir)?;
    let mut base = vec![
        "--database".to_owned(),
        common.database.clone(),
        "--amqp".to_owned(),
        common.amqp.clone(),
        "--run".to_owned(),
        names.id.clone(),
    ];
    if let Some(kafka) = &common.kafka {
        base.extend(["--kafka".to_owned(), kafka.clone()]);
    }
    let crash_rate = if scenario.has(Scenario::ConsumerKill) {
        0.001
    } else {
        0.0
    };
    let producers = 2;
    let per_producer = settings.events / producers;
    let rate = per_producer as f64 / settings.duration.as_secs_f64().max(0.1);
    let drain = if scenario.nacks() {
        // Slower than production, a few messages in hand: the bound is reached soon and
        // left now and then.
        Drain {
            rate: Some(rate * producers as f64 * 0.8),
            prefetch: 5,
        }
    } else {
        Drain {
            rate: None,
            prefetch: 200,
        }
    };
    let witness = match common.kafka_config() {
        Some(kafka) => Observer::start(KafkaTransport::lazy(kafka)?, names.witness_queue(), drain),
        None => Observer::start(
            AmqpTransport::lazy(common.amqp_config())?,
            names.witness_queue(),
            drain,
        ),
    };
    let proxy = if scenario.has(Scenario::SlowDatabase) || scenario.has(Scenario::LeaseExpiry) {
        let (upstream, _) = address_of(&common.database)?;
        Some(DelayProxy::start(upstream).await?)
    } else {
        None
    };
    // Back-pressure alone breaks order with a single relay (issue 13's black-box run):
    // one relay makes that plain. Everything else runs two.
    let relays = if scenario == Scenario::Backpressure {
        1
    } else {
        2
    };
    let mut procs = Vec::new();
    for i in 0..relays {
        let mut args = vec!["relay".to_owned()];
        match &proxy {
            Some(proxy) => args.extend(with_database(&base, &via(&common.database, proxy)?)),
            None => args.extend(base.clone()),
        }
        if scenario.has(Scenario::LeaseExpiry) {
            args.extend([
                "--lease-ms".to_owned(),
                "3000".to_owned(),
                "--publish-timeout-ms".to_owned(),
                "1000".to_owned(),
            ]);
        }
        if scenario.on_kafka() {
            // Longer than librdkafka's delivery timeout: the relay does not give a publish up
            // while the producer may still deliver it.
            args.extend([
                "--publish-timeout-ms".to_owned(),
                (KAFKA_DELIVERY_TIMEOUT + Duration::from_secs(2))
                    .as_millis()
                    .to_string(),
            ]);
        }
        procs.push(Proc::spawn(format!("relay-{i}"), args, &dir)?);
    }
    for i in 0..2 {
        let mut args = vec!["consumer".to_owned()];
        args.extend(base.clone());
        args.extend([
            "--fail-rate".to_owned(),
            if scenario == Scenario::LongRetries {
                settings.fail_rate.min(0.02)
            } else {
                settings.fail_rate
            }
            .to_string(),
            "--crash-rate".to_owned(),
            crash_rate.to_string(),
        ]);
        if scenario.has(Scenario::SwallowedErrors) {
            args.extend(["--swallow-rate".to_owned(), "0.02".to_owned()]);
        }
        if scenario.has(Scenario::LongRetries) {
            args.push("--long-retries".to_owned());
        }
        procs.push(Proc::spawn(format!("consumer-{i}"), args, &dir)?);
    }
    let mut children = Vec::new();
    for i in 0..producers {
        let mut args = vec!["producer".to_owned()];
        args.extend(base.clone());
        args.extend([
            "--index".to_owned(),
            i.to_string(),
            "--events".to_owned(),
            per_producer.to_string(),
            "--rate".to_owned(),
            rate.to_string(),
            "--poison-every".to_owned(),
            settings.poison_every.to_string(),
            "--keys".to_owned(),
            settings.keys.to_string(),
        ]);
        children.push(spawn_producer(
            args,
            &dir.join(format!("producer-{i}.log")),
        )?);
    }

    let mut row = ScenarioRow {
        scenario: format!("{scenario:?}"),
        runs: 1,
        ..ScenarioRow::default()
    };
    let mut exits = Exits::default();
    let mut last_fault = Instant::now();
    let mut latency_changes = 0u32;
    let mut next = Faults::new(scenario);
    // Break things while the producers produce.
    loop {
        let mut done = true;
        for child in &mut children {
            match child.try_wait()? {
                Some(status) if !status.success() => {
                    bail!("a producer failed ({status}); see {}", dir.display())
                }
                Some(_) => {}
                None => done = false,
            }
        }
        if done {
            break;
        }
        for p in &mut procs {
            p.tend(&mut exits)?;
        }
        let now = Instant::now();
        if next.relay_kill.is_some_and(|at| at <= now) {
            procs[fastrand::usize(0..relays)]
                .kill(Duration::from_millis(300))
                .await?;
            row.kills += 1;
            next.relay_kill = Some(now + jitter(Duration::from_millis(1500)));
            last_fault = now;
        }
        if next.consumer_kill.is_some_and(|at| at <= now) {
            procs[relays + fastrand::usize(0..2)]
                .kill(Duration::from_millis(300))
                .await?;
            row.kills += 1;
            // On Kafka a killed consumer's partitions wait for its session to time out (6 s)
            // before the other one takes them: fewer kills, or nothing would move.
            let every = if scenario.on_kafka() {
                Duration::from_secs(4)
            } else {
                Duration::from_millis(1500)
            };
            next.consumer_kill = Some(now + jitter(every));
            last_fault = now;
        }
        if next.db_terminate.is_some_and(|at| at <= now) {
            // Fails only while the database restarts (`all`): then there is nothing to end.
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name IN ($1, $2) AND pid <> pg_backend_pid()",
            )
            .bind(names.application_name("relay"))
            .bind(names.application_name("consumer"))
            .fetch_all(outbox.pool())
            .await
            .unwrap_or_default();
            row.faults += killed.len() as u64;
            next.db_terminate = Some(now + jitter(Duration::from_millis(1000)));
            last_fault = now;
        }
        if next.broker_restart.is_some_and(|at| at <= now) {
            if scenario.on_kafka() {
                tokio::task::spawn_blocking(|| -> Result<()> {
                    let mut stopped = kafka_broker::Stopped::stop()?;
                    std::thread::sleep(Duration::from_millis(1500));
                    stopped.start()
                })
                .await??;
            } else {
                tokio::task::spawn_blocking(|| -> Result<()> {
                    let mut stopped = broker::Stopped::stop()?;
                    std::thread::sleep(Duration::from_millis(1500));
                    stopped.start()
                })
                .await??;
            }
            row.faults += 1;
            next.broker_restart = Some(Instant::now() + jitter(Duration::from_secs(5)));
            last_fault = Instant::now();
        }
        if next.db_restart.is_some_and(|at| at <= now) {
            tokio::task::spawn_blocking(database::restart).await??;
            row.faults += 1;
            next.db_restart = Some(Instant::now() + jitter(Duration::from_secs(4)));
            last_fault = Instant::now();
        }
        if let Some(proxy) = &proxy
            && next.latency.is_some_and(|at| at <= now)
        {
            // Every third change stalls: a few stalls in even the shortest run.
            latency_changes += 1;
            let stall = scenario.has(Scenario::LeaseExpiry) && latency_changes.is_multiple_of(3);
            let (base, spread, hold) = if stall {
                // Longer than the 3 s lease: another relay may take the rows over meanwhile.
                (
                    Duration::from_millis(fastrand::u64(2500..4500)),
                    Duration::from_millis(200),
                    Duration::from_millis(800),
                )
            } else {
                (
                    Duration::from_millis(fastrand::u64(0..20)),
                    Duration::from_millis(fastrand::u64(0..300)),
                    Duration::from_millis(fastrand::u64(300..1200)),
                )
            };
            proxy.latency.set(base, spread);
            row.faults += 1;
            next.latency = Some(now + hold);
            last_fault = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(proxy) = &proxy {
        // Healing happens at full speed.
        proxy.latency.set(Duration::ZERO, Duration::ZERO);
    }
    row.faults += row.kills;
    if row.faults == 0 {
        // Handler faults only: recovery counts from the end of production.
        last_fault = Instant::now();
    }

    // Let the system heal by itself: only restarts of what the harness killed.
    let deadline = Instant::now() + settings.recovery_timeout;
    let mut settled = false;
    while Instant::now() < deadline {
        for p in &mut procs {
            p.tend(&mut exits)?;
        }
        // The database may still be coming back from a restart: not settled yet.
        let witnessed = witness.distinct();
        if check::settled(
            outbox,
            &names.schema(),
            transport,
            &names.queue(),
            witnessed,
        )
        .await
        .unwrap_or(false)
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    row.recovery = last_fault.elapsed();
    // The relays write their counters twice a second: let the last of them land.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for p in &mut procs {
        p.tend(&mut exits)?;
        p.stop().await;
    }
    if !settled {
        eprintln!(
            "herald-chaos: {scenario:?} did not settle within {:?}",
            settings.recovery_timeout
        );
    }
    row.kills += exits.induced;
    row.unexpected_exits = exits.unexpected;
    let arrivals = witness.first_arrivals();
    eprintln!(
        "herald-chaos: {scenario:?}: the witness queue delivered {} messages for {} events",
        witness.deliveries(),
        arrivals.len()
    );
    drop(witness);
    drop(proxy);
    let stats: Result<(i64, i64, i64, i64, i64), sqlx::Error> =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT coalesce(sum(claimed), 0)::bigint, coalesce(sum(published), 0)::bigint, \
                    coalesce(sum(retried), 0)::bigint, coalesce(sum(released), 0)::bigint, \
                    coalesce(sum(store_errors), 0)::bigint FROM \"{}\".relay_stats",
            names.schema()
        )))
        .fetch_one(outbox.pool())
        .await;
    if let Ok((claimed, published, retried, released, store_errors)) = stats {
        eprintln!(
            "herald-chaos: {scenario:?}: relays claimed {claimed} rows, published {published}, \
             rescheduled {retried} after failed publishes, released {released}, \
             {store_errors} store errors"
        );
    }
    let consumed: Result<(i64, i64, i64, i64), sqlx::Error> =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), coalesce(sum(received), 0)::bigint, \
                    coalesce(sum(duplicates), 0)::bigint, \
                    coalesce(sum(dead_lettered), 0)::bigint FROM \"{}\".consumer_stats",
            names.schema()
        )))
        .fetch_one(outbox.pool())
        .await;
    if let Ok((processes, received, duplicates, dead_lettered)) = consumed {
        eprintln!(
            "herald-chaos: {scenario:?}: {processes} consumer processes received {received} \
             deliveries, {duplicates} of them redeliveries the inbox absorbed, dead-lettered \
             {dead_lettered} (counters of killed processes miss their last half second)"
        );
    }
    row.verdict = check::check(
        outbox,
        &names.schema(),
        transport,
        &names.queue(),
        &arrivals,
    )
    .await
    .context("check")?;
    Ok(row)
}

/// When each fault of the scenario strikes next.
struct Faults {
    relay_kill: Option<Instant>,
    consumer_kill: Option<Instant>,
    db_terminate: Option<Instant>,
    broker_restart: Option<Instant>,
    db_restart: Option<Instant>,
    latency: Option<Instant>,
}

impl Faults {
    fn new(scenario: Scenario) -> Self {
        let at =
            |fault, first: Duration| scenario.has(fault).then(|| Instant::now() + jitter(first));
        Self {
            relay_kill: at(Scenario::RelayKill, Duration::from_millis(800)),
            consumer_kill: at(Scenario::ConsumerKill, Duration::from_millis(800)),
            db_terminate: at(Scenario::DbTerminate, Duration::from_millis(800)),
            broker_restart: at(Scenario::BrokerRestart, Duration::from_secs(2)),
            db_restart: at(Scenario::DbRestart, Duration::from_secs(2)),
            latency: (scenario.has(Scenario::SlowDatabase) || scenario.has(Scenario::LeaseExpiry))
                .then(Instant::now),
        }
    }
}

/// `mean` ± 50 %.
fn jitter(mean: Duration) -> Duration {
    mean.mul_f64(0.5 + fastrand::f64())
}

/// The socket address of a PostgreSQL URL's host, and where in the URL it is written.
fn address_of(url: &str) -> Result<(std::net::SocketAddr, std::ops::Range<usize>)> {
    let start = url.find("://").context("database url without a scheme")? + 3;
    let rest = &url[start..];
    let end = start + rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    let host = &url[host_start..end];
    let with_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .with_context(|| format!("resolve the database host {host}"))?
        .next()
        .with_context(|| format!("database host {host} has no address"))?;
    Ok((addr, host_start..end))
}

/// The database URL with its host replaced by the proxy's address.
fn via(url: &str, proxy: &DelayProxy) -> Result<String> {
    let (_, range) = address_of(url)?;
    Ok(format!(
        "{}{}{}",
        &url[..range.start],
        proxy.addr,
        &url[range.end..]
    ))
}

/// `base` (the roles' common arguments) with another `--database`.
fn with_database(base: &[String], database: &str) -> Vec<String> {
    let mut args = base.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--database") {
        args[i + 1] = database.to_owned();
    }
    args
}

/// Makes sure the log directory exists.
pub fn log_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    Ok(())
}
