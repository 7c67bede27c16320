//! The roles the orchestrator runs as processes of this same binary: producer, relay and
//! consumer. Each is the real thing (a PostgreSQL outbox, the relay, the RabbitMQ or Kafka
//! transport, a consumer with the transactional inbox); the only difference from production is the
//! handler, which records its effect in a table and fails on purpose when told to.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{
    Consumer, ConsumerConfig, ConsumerMetrics, Handler, HandlerError, HandlerResult, Outcome,
    RetryPolicy, Router, TxContext,
};
use herald_core::{Backoff, Envelope, Metadata, Publisher, Subscriber};
use herald_kafka::{KafkaConfig, KafkaTransport};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_relay::{Relay, RelayConfig, RelayMetrics};
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;

use crate::event::{RunNames, Step};

/// The longest delay queue: retries of `--long-retries` consumers wait there, longer than they
/// asked for.
pub const LONG_RETRY_QUEUE: Duration = Duration::from_secs(15);

/// Exit code of a consumer that ended itself between its database commit and its ack.
pub const CRASH_EXIT: i32 = 86;

/// How long the Kafka producer keeps trying to deliver a message (the relay's publish timeout
/// on Kafka is longer: a publish is not given up while librdkafka may still deliver it).
pub const KAFKA_DELIVERY_TIMEOUT: Duration = Duration::from_secs(8);

/// What every role is told: where the services are and which run it belongs to.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// PostgreSQL URL.
    #[arg(long)]
    pub database: String,
    /// AMQP URL.
    #[arg(long)]
    pub amqp: String,
    /// Kafka bootstrap servers: given, the run is on Kafka (its topic and consumer groups),
    /// not on RabbitMQ.
    #[arg(long)]
    pub kafka: Option<String>,
    /// The run's id (names the schema, exchange and queue).
    #[arg(long)]
    pub run: String,
}

impl Common {
    fn names(&self) -> RunNames {
        RunNames {
            id: self.run.clone(),
        }
    }

    /// The database URL with the role's `application_name`.
    pub fn database_url(&self, role: &str) -> String {
        let sep = if self.database.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}application_name={}",
            self.database,
            self.names().application_name(role)
        )
    }

    /// The run's outbox. A role (re)started while the database restarts waits for it, up to
    /// a minute, as a supervisor restarting it would.
    pub async fn outbox(&self, role: &str) -> Result<PgOutbox> {
        let config = PgOutboxConfig::new(&self.names().schema(), "outbox")?;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match PgOutbox::connect(&self.database_url(role), config.clone()).await {
                Ok(outbox) => return Ok(outbox),
                Err(err) if err.is_transient() && tokio::time::Instant::now() < give_up => {
                    tracing::warn!(error = %err, "database not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The run's transport: reconnects quickly, short delay queues.
    pub fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            exchange: self.names().exchange(),
            // The longest one is where `--long-retries` consumers' retries wait.
            retry_delays: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                LONG_RETRY_QUEUE,
            ],
            connect_timeout: Duration::from_secs(3),
            reconnect: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                multiplier: 2.0,
                jitter: 0.3,
            },
            expires: Some(Duration::from_secs(30 * 60)),
            // Two consumer processes, one active: per-key order holds, and the standby takes
            // over when the active one is killed.
            single_active_consumer: true,
            ..AmqpConfig::new(self.amqp.clone())
        }
    }

    /// The run's Kafka transport settings, when the run is on Kafka: the run's topic, six
    /// partitions, a short session timeout (a killed consumer's partitions go to the other one
    /// within 6 s, the broker's least).
    pub fn kafka_config(&self) -> Option<KafkaConfig> {
        self.kafka.as_ref().map(|servers| KafkaConfig {
            topic: self.names().topic(),
            partitions: 6,
            client_id: "herald-chaos".into(),
            session_timeout: Duration::from_secs(6),
            delivery_timeout: KAFKA_DELIVERY_TIMEOUT,
            ..KafkaConfig::new(servers.clone())
        })
    }
}

/// The producer role.
#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub common: Common,
    /// This producer's number (its keys are `p<index>-k<j>`).
    #[arg(long)]
    pub index: usize,
    /// Events to produce.
    #[arg(long)]
    pub events: usize,
    /// Keys to spread them over.
    #[arg(long, default_value_t = 50)]
    pub keys: usize,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// One event in this many is poison (0: none).
    #[arg(long, default_value_t = 0)]
    pub poison_every: usize,
}

/// Records `events` events, each in the same transaction as a `produced` row that says it
/// was committed: that table is what the checker holds the consumers' effects against. A batch
/// that fails (the database restarted under it) is recorded again, unless its commit landed.
pub async fn producer(args: ProducerArgs) -> Result<()> {
    let outbox = args.common.outbox("producer").await?;
    let produced = format!("\"{}\".produced", args.common.names().schema());
    let mut next = vec![0i64; args.keys.max(1)];
    let started = tokio::time::Instant::now();
    let batch = 10;
    let mut done = 0;
    while done < args.events {
        let count = batch.min(args.events - done);
        let mut steps = Vec::with_capacity(count);
        for i in done..done + count {
            let k = fastrand::usize(..next.len());
            steps.push(Step {
                key: format!("p{}-k{k}", args.index),
                n: next[k],
                poison: args.poison_every > 0 && (i + 1) % args.poison_every == 0,
            });
            next[k] += 1;
        }
        let envelopes = steps
            .iter()
            .map(|step| Envelope::from_event(step, Metadata::default()))
            .collect::<Result<Vec<_>, _>>()?;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let Err(err) = record(&outbox, &produced, &steps, &envelopes).await else {
                break;
            };
            if tokio::time::Instant::now() > give_up {
                return Err(err.context("record a batch"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The commit may have landed before the connection broke.
            let landed: Result<bool, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {produced} WHERE event_id = $1)"
            )))
            .bind(envelopes[0].id)
            .fetch_one(outbox.pool())
            .await;
            if landed.is_ok_and(|landed| landed) {
                break;
            }
        }
        done += count;
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(done as f64 / args.rate);
            tokio::time::sleep_until(due).await;
        }
    }
    Ok(())
}

/// One batch: its `produced` rows and its outbox rows, in one transaction.
async fn record(
    outbox: &PgOutbox,
    produced: &str,
    steps: &[Step],
    envelopes: &[Envelope],
) -> Result<()> {
    let mut tx = outbox.begin().await?;
    for (step, envelope) in steps.iter().zip(envelopes) {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {produced} (event_id, key, n, poison) VALUES ($1, $2, $3, $4)"
        )))
        .bind(envelope.id)
        .bind(&step.key)
        .bind(step.n)
        .bind(step.poison)
        .execute(&mut *tx)
        .await?;
    }
    tx.record_all(envelopes).await?;
    tx.commit().await?;
    Ok(())
}

/// The relay role.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: Common,
    /// The relay's lease, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub lease_ms: u64,
    /// The relay's publish timeout, in milliseconds (below the lease).
    #[arg(long, default_value_t = 5_000)]
    pub publish_timeout_ms: u64,
}

/// Runs a relay until killed.
pub async fn relay(args: RelayArgs) -> Result<()> {
    let common = args.common;
    let outbox = common.outbox("relay").await?;
    let config = RelayConfig {
        lease: Duration::from_millis(args.lease_ms),
        publish_timeout: Duration::from_millis(args.publish_timeout_ms),
        poll_interval: Duration::from_millis(200),
        max_attempts: 1000,
        // Publishes nacked under back-pressure come back soon, not minutes later.
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        },
        ..RelayConfig::default()
    };
    match common.kafka_config() {
        Some(kafka) => run_relay(&common, outbox, KafkaTransport::lazy(kafka)?, config).await,
        None => {
            let transport = AmqpTransport::lazy(common.amqp_config())?;
            run_relay(&common, outbox, transport, config).await
        }
    }
}

/// Runs a relay on `transport` until killed.
async fn run_relay<P: Publisher>(
    common: &Common,
    outbox: PgOutbox,
    transport: P,
    config: RelayConfig,
) -> Result<()> {
    let relay = Relay::new(outbox.clone(), transport, config)?;
    let shutdown = CancellationToken::new();
    let _listener = outbox.watch_commits(shutdown.clone()).await?;
    tokio::spawn(report_stats(
        outbox.clone(),
        format!("\"{}\".relay_stats", common.names().schema()),
        relay.id(),
        relay.metrics(),
    ));
    relay.run(shutdown).await.context("relay stopped")?;
    Ok(())
}

/// Writes the relay's counters to `relay_stats` twice a second (what the run reports as the
/// faults the relays saw: publishes that failed, rows released, store errors). A write that
/// fails (the database is away) is simply skipped.
async fn report_stats(outbox: PgOutbox, table: String, id: uuid::Uuid, metrics: RelayMetrics) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = metrics.snapshot();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let _ = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (relay, claimed, published, retried, released, store_errors) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (relay) DO UPDATE SET \
             claimed = $2, published = $3, retried = $4, released = $5, store_errors = $6"
        )))
        .bind(id)
        .bind(count(s.claimed))
        .bind(count(s.published))
        .bind(count(s.retried))
        .bind(count(s.released))
        .bind(count(s.store_errors))
        .execute(outbox.pool())
        .await;
    }
}

/// Writes the consumer's counters to `consumer_stats` twice a second, as [`report_stats`]
/// does the relay's: what the run reports as redeliveries the inbox absorbed (a process
/// killed loses its last half second of them, so the figure is a floor).
async fn report_consumer_stats(outbox: PgOutbox, table: String, metrics: ConsumerMetrics) {
    let id = uuid::Uuid::now_v7();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = metrics.snapshot();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let _ = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (consumer, received, duplicates, dead_lettered) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (consumer) DO UPDATE SET \
             received = $2, duplicates = $3, dead_lettered = $4"
        )))
        .bind(id)
        .bind(count(s.received))
        .bind(count(s.duplicates))
        .bind(count(s.dead_lettered))
        .execute(outbox.pool())
        .await;
    }
}

/// The consumer role.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Share of handler runs that fail transiently.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of handled events after which the process exits right after its handler
    /// (so between the database commit and the broker ack).
    #[arg(long, default_value_t = 0.0)]
    pub crash_rate: f64,
    /// Share of handler runs that, after writing their effect, hit a unique violation, catch
    /// it and return success ("a duplicate means already done"), as handlers often do.
    #[arg(long, default_value_t = 0.0)]
    pub swallow_rate: f64,
    /// Retries go through the delay queues only, asking for delays that wait in the longest
    /// one ([`LONG_RETRY_QUEUE`]), longer than asked and longer than the redelivery grace.
    #[arg(long)]
    pub long_retries: bool,
}

/// The handler: records the effect in `effects` (no unique constraint, so that a duplicate
/// would show), fails transiently now and then, and always fails on poison.
struct Apply {
    effects: String,
    markers: String,
    fail_rate: f64,
    crash_rate: f64,
    swallow_rate: f64,
}

impl Handler<Step, TxContext<PgOutbox>> for Apply {
    async fn handle(&self, step: Step, ctx: &mut TxContext<PgOutbox>) -> HandlerResult {
        if step.poison {
            return Err(HandlerError::permanent("poison event"));
        }
        if fastrand::f64() < self.fail_rate {
            return Err(HandlerError::transient("injected transient failure"));
        }
        let id = ctx.message_id();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (event_id, key, n) VALUES ($1, $2, $3)",
            self.effects
        )))
        .bind(id)
        .bind(&step.key)
        .bind(step.n)
        .execute(ctx.db())
        .await
        .map_err(HandlerError::new)?;
        if fastrand::f64() < self.swallow_rate {
            // Marker 0 always exists: this is a unique violation, which leaves the
            // transaction aborted. Taking it for "already done" hides that from the consumer.
            let marked = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (id) VALUES (0)",
                self.markers
            )))
            .execute(ctx.db())
            .await;
            match marked {
                Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {}
                Err(err) => return Err(HandlerError::new(err)),
                Ok(_) => {}
            }
        }
        if fastrand::f64() < self.crash_rate {
            // The consumer commits after the handler returns and acks in batches, a few
            // milliseconds later: exiting now lands between the two.
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(3));
                std::process::exit(CRASH_EXIT);
            });
        }
        Ok(Outcome::Done)
    }
}

/// Runs a consumer until killed.
pub async fn consumer(args: ConsumerArgs) -> Result<()> {
    let outbox = args.common.outbox("consumer").await?;
    let schema = args.common.names().schema();
    let handler = Apply {
        effects: format!("\"{schema}\".effects"),
        markers: format!("\"{schema}\".markers"),
        fail_rate: args.fail_rate,
        crash_rate: args.crash_rate,
        swallow_rate: args.swallow_rate,
    };
    let retry = if args.long_retries {
        // Every failure goes to the broker and asks for about 1.5 s, which waits in the 15 s
        // queue: a lane that waited for what was asked plus the 5 s grace would give up after
        // 6.5 s; it must wait for the 15 s the transport imposes.
        RetryPolicy {
            immediate: 0,
            delayed: 8,
            backoff: Backoff {
                initial: Duration::from_millis(1500),
                max: Duration::from_millis(1500),
                multiplier: 1.0,
                jitter: 0.2,
            },
            ..RetryPolicy::default()
        }
    } else {
        RetryPolicy {
            immediate: 10,
            delayed: 2,
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(50),
                multiplier: 2.0,
                jitter: 0.2,
            },
            ..RetryPolicy::default()
        }
    };
    let config = ConsumerConfig {
        concurrency: 8,
        retry,
        redelivery_grace: if args.long_retries {
            Duration::from_secs(5)
        } else {
            ConsumerConfig::default().redelivery_grace
        },
        ..ConsumerConfig::default()
    };
    let router = Router::new().transactional(&outbox, "chaos.apply", handler);
    let queue = args.common.names().queue();
    let stats = (outbox.clone(), format!("\"{schema}\".consumer_stats"));
    match args.common.kafka_config() {
        Some(kafka) => {
            run_consumer(KafkaTransport::lazy(kafka)?, queue, router, config, stats).await
        }
        None => {
            let transport = AmqpTransport::lazy(args.common.amqp_config())?;
            run_consumer(transport, queue, router, config, stats).await
        }
    }
}

/// Runs a consumer of subscription `queue` on `transport` until killed, its counters written
/// to `stats` (the outbox's pool, the table).
async fn run_consumer<S: Subscriber>(
    transport: S,
    queue: String,
    router: Router,
    config: ConsumerConfig,
    stats: (PgOutbox, String),
) -> Result<()> {
    let consumer = Consumer::new(transport, queue, router, config)?;
    tokio::spawn(report_consumer_stats(stats.0, stats.1, consumer.metrics()));
    consumer
        .run(CancellationToken::new())
        .await
        .context("consumer stopped")?;
    Ok(())
}
