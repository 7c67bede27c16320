//! The roles the orchestrator runs as processes of this same binary: producer, relay and
//! consumer. Each is the real thing (a PostgreSQL outbox, the relay, the RabbitMQ transport,
//! a consumer with the transactional inbox); the only difference from production is the
//! handler, which records its effect in a table and fails on purpose when told to.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use herald_amqp::{AmqpConfig, AmqpTransport};
use herald_consumer::{
    Consumer, ConsumerConfig, Handler, HandlerError, HandlerResult, Outcome, RetryPolicy, Router,
    TxContext,
};
use herald_core::{Backoff, Envelope, Metadata};
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_relay::{Relay, RelayConfig};
use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;

use crate::event::{RunNames, Step};

/// Exit code of a consumer that ended itself between its database commit and its ack.
pub const CRASH_EXIT: i32 = 86;

/// What every role is told: where the services are and which run it belongs to.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// PostgreSQL URL.
    #[arg(long)]
    pub database: String,
    /// AMQP URL.
    #[arg(long)]
    pub amqp: String,
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

    /// The run's outbox.
    pub async fn outbox(&self, role: &str) -> Result<PgOutbox> {
        let config = PgOutboxConfig::new(&self.names().schema(), "outbox")?;
        Ok(PgOutbox::connect(&self.database_url(role), config).await?)
    }

    /// The run's transport: reconnects quickly, short delay queues.
    pub fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            exchange: self.names().exchange(),
            retry_delays: vec![Duration::from_millis(200), Duration::from_secs(1)],
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
/// was committed: that table is what the checker holds the consumers' effects against.
pub async fn producer(args: ProducerArgs) -> Result<()> {
    let outbox = args.common.outbox("producer").await?;
    let produced = format!("\"{}\".produced", args.common.names().schema());
    let mut next = vec![0i64; args.keys.max(1)];
    let started = tokio::time::Instant::now();
    let batch = 10;
    let mut done = 0;
    while done < args.events {
        let count = batch.min(args.events - done);
        let mut tx = outbox.pool().begin().await?;
        let mut envelopes = Vec::with_capacity(count);
        for i in done..done + count {
            let k = fastrand::usize(..next.len());
            let step = Step {
                key: format!("p{}-k{k}", args.index),
                n: next[k],
                poison: args.poison_every > 0 && (i + 1) % args.poison_every == 0,
            };
            next[k] += 1;
            let envelope = Envelope::from_event(&step, Metadata::default())?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {produced} (event_id, key, n, poison) VALUES ($1, $2, $3, $4)"
            )))
            .bind(envelope.id)
            .bind(&step.key)
            .bind(step.n)
            .bind(step.poison)
            .execute(&mut *tx)
            .await?;
            envelopes.push(envelope);
        }
        outbox.record_all(&mut tx, &envelopes).await?;
        outbox.commit(tx).await?;
        done += count;
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(done as f64 / args.rate);
            tokio::time::sleep_until(due).await;
        }
    }
    Ok(())
}

/// Runs a relay until killed.
pub async fn relay(common: Common) -> Result<()> {
    let outbox = common.outbox("relay").await?;
    let transport = AmqpTransport::lazy(common.amqp_config())?;
    let config = RelayConfig {
        lease: Duration::from_secs(15),
        publish_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(200),
        max_attempts: 1000,
        ..RelayConfig::default()
    };
    let relay = Relay::new(outbox.clone(), transport, config)?;
    let shutdown = CancellationToken::new();
    let _listener = outbox.listen(shutdown.clone());
    relay.run(shutdown).await.context("relay stopped")?;
    Ok(())
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
}

/// The handler: records the effect in `effects` (no unique constraint, so that a duplicate
/// would show), fails transiently now and then, and always fails on poison.
struct Apply {
    effects: String,
    fail_rate: f64,
    crash_rate: f64,
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
    let transport = AmqpTransport::lazy(args.common.amqp_config())?;
    let handler = Apply {
        effects: format!("\"{}\".effects", args.common.names().schema()),
        fail_rate: args.fail_rate,
        crash_rate: args.crash_rate,
    };
    let config = ConsumerConfig {
        concurrency: 8,
        retry: RetryPolicy {
            immediate: 10,
            delayed: 2,
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(50),
                multiplier: 2.0,
                jitter: 0.2,
            },
            ..RetryPolicy::default()
        },
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(
        transport,
        args.common.names().queue(),
        Router::new().transactional(&outbox, "chaos.apply", handler),
        config,
    )?;
    consumer
        .run(CancellationToken::new())
        .await
        .context("consumer stopped")?;
    Ok(())
}
