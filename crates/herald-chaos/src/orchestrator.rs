//! One scenario run: sets up its schema and topology, starts producers, two relays and two
//! consumers as processes, breaks things until the producers are done, waits for the system
//! to heal by itself, checks, and cleans up.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use herald_amqp::AmqpTransport;
use herald_core::SubscriptionSpec;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use sqlx::AssertSqlSafe;
use tokio::time::Instant;

use crate::broker;
use crate::check::{self, ScenarioRow};
use crate::event::{RunNames, Step};
use crate::procs::{Exits, Proc, spawn_producer};
use crate::roles::Common;
use herald_core::Event;

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
    /// All of the above at once.
    All,
}

impl Scenario {
    fn has(self, fault: Scenario) -> bool {
        self == fault || self == Scenario::All
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Services.
    pub database: String,
    /// Services.
    pub amqp: String,
    /// Events per run.
    pub events: usize,
    /// How long producing should take (the faults are injected meanwhile).
    pub duration: Duration,
    /// Share of handler runs failing transiently.
    pub fail_rate: f64,
    /// One event in this many is poison.
    pub poison_every: usize,
    /// How long the system may take to settle after the last fault.
    pub recovery_timeout: Duration,
    /// Where the processes' logs go.
    pub log_dir: std::path::PathBuf,
}

/// Runs `scenario` once; returns its row (runs = 1).
pub async fn run(scenario: Scenario, settings: &RunSettings) -> Result<ScenarioRow> {
    let names = RunNames::fresh();
    let common = Common {
        database: settings.database.clone(),
        amqp: settings.amqp.clone(),
        run: names.id.clone(),
    };
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
    let transport = AmqpTransport::connect(common.amqp_config()).await?;
    let spec = SubscriptionSpec::new(names.queue(), vec![Step::TYPE.to_owned()]);
    transport.declare(&spec).await?;

    let result = drive(scenario, settings, &common, &names, &outbox, &transport).await;

    // Clean up whatever happened; the broker is running again by now.
    let _ = transport.delete_subscription(&names.queue()).await;
    transport.close().await;
    if result
        .as_ref()
        .is_ok_and(|r| r.verdict.is_clean() && r.unexpected_exits == 0)
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
    transport: &AmqpTransport,
) -> Result<ScenarioRow> {
    let dir = settings.log_dir.join(&names.id);
    std::fs::create_dir_all(&dir)?;
    let base = vec![
        "--database".to_owned(),
        common.database.clone(),
        "--amqp".to_owned(),
        common.amqp.clone(),
        "--run".to_owned(),
        names.id.clone(),
    ];
    let crash_rate = if scenario.has(Scenario::ConsumerKill) {
        0.001
    } else {
        0.0
    };
    let mut procs = Vec::new();
    for i in 0..2 {
        let mut args = vec!["relay".to_owned()];
        args.extend(base.clone());
        procs.push(Proc::spawn(format!("relay-{i}"), args, &dir)?);
    }
    for i in 0..2 {
        let mut args = vec!["consumer".to_owned()];
        args.extend(base.clone());
        args.extend([
            "--fail-rate".to_owned(),
            settings.fail_rate.to_string(),
            "--crash-rate".to_owned(),
            crash_rate.to_string(),
        ]);
        procs.push(Proc::spawn(format!("consumer-{i}"), args, &dir)?);
    }
    let producers = 2;
    let per_producer = settings.events / producers;
    let rate = per_producer as f64 / settings.duration.as_secs_f64().max(0.1);
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
            procs[fastrand::usize(0..2)]
                .kill(Duration::from_millis(300))
                .await?;
            row.kills += 1;
            next.relay_kill = Some(now + jitter(Duration::from_millis(1500)));
            last_fault = now;
        }
        if next.consumer_kill.is_some_and(|at| at <= now) {
            procs[2 + fastrand::usize(0..2)]
                .kill(Duration::from_millis(300))
                .await?;
            row.kills += 1;
            next.consumer_kill = Some(now + jitter(Duration::from_millis(1500)));
            last_fault = now;
        }
        if next.db_terminate.is_some_and(|at| at <= now) {
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name IN ($1, $2) AND pid <> pg_backend_pid()",
            )
            .bind(names.application_name("relay"))
            .bind(names.application_name("consumer"))
            .fetch_all(outbox.pool())
            .await?;
            row.faults += killed.len() as u64;
            next.db_terminate = Some(now + jitter(Duration::from_millis(1000)));
            last_fault = now;
        }
        if next.broker_restart.is_some_and(|at| at <= now) {
            tokio::task::spawn_blocking(|| -> Result<()> {
                let mut stopped = broker::Stopped::stop()?;
                std::thread::sleep(Duration::from_millis(1500));
                stopped.start()
            })
            .await??;
            row.faults += 1;
            next.broker_restart = Some(Instant::now() + jitter(Duration::from_secs(5)));
            last_fault = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        if check::settled(outbox, &names.schema(), transport, &names.queue()).await? {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    row.recovery = last_fault.elapsed();
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
    row.verdict = check::check(outbox, &names.schema(), transport, &names.queue())
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
        }
    }
}

/// `mean` ± 50 %.
fn jitter(mean: Duration) -> Duration {
    mean.mul_f64(0.5 + fastrand::f64())
}

/// Makes sure the log directory exists.
pub fn log_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    Ok(())
}
