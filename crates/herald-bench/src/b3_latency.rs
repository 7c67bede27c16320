//! B3, end-to-end latency: an open-loop producer (a fixed schedule; each transaction starts on
//! its tick whether or not earlier ones finished, so a stall cannot hide its own delay) at
//! several fractions of B2's drain rate; latency from the producer's commit to the commit of
//! the consumer handler's transaction (transactional inbox on PostgreSQL), through the relay
//! and RabbitMQ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use herald_amqp::AmqpTransport;
use herald_consumer::{
    Consumer, ConsumerConfig, Context, HandlerError, HandlerResult, Layer, Next, Router, TxContext,
};
use herald_core::Completion;
use herald_postgres::PgOutbox;
use herald_relay::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Plan;
use crate::fixture::{self, Env, OrderPlaced};
use crate::report::{Scenario, quantile};

type Stamps = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Stamps the moment a message's handler chain (the inbox's commit included) returned.
struct Handled(Stamps);

impl Layer for Handled {
    async fn call(&self, ctx: &mut Context, next: Next<'_>) -> HandlerResult {
        let result = next.run(ctx).await;
        if result.is_ok()
            && let Ok(mut stamps) = self.0.lock()
        {
            stamps.entry(ctx.message_id()).or_insert_with(Instant::now);
        }
        result
    }
}

/// The consumer's handler: its transaction holds the inbox record, nothing else to do.
async fn handle(_event: OrderPlaced, _ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    Ok(())
}

/// Runs B3 at fractions of `drain_rate` (events/s).
pub async fn run(env: &Env, plan: &Plan, drain_rate: f64) -> Result<Scenario> {
    let transport = AmqpTransport::connect(env.amqp_config()).await?;
    // Three pools, as three deployments would have: the producing application's, the relay's
    // and the consuming service's (whose inbox lives beside the outbox here). On one shared
    // pool, writers queued for connections delay the relay's claims and write-backs, the
    // backlog makes the next claims larger and slower, and latency runs away (measured at 50%
    // load: p50 1 161 ms on one pool of 24, 18-30 ms on three).
    let outbox = env.outbox("b3", Completion::Delete, 24).await?;
    let relay_outbox = outbox.with_pool(env.pool(4).await?);
    let consumer_db = outbox.with_pool(env.pool(8).await?);
    let handled: Stamps = Arc::default();
    let router = Router::new()
        .transactional(&consumer_db, "bench.latency", handle)
        .layer(Handled(Arc::clone(&handled)));
    let consumer = Consumer::new(
        transport.clone(),
        env.name("b3"),
        router,
        ConsumerConfig::default(),
    )?;
    transport.declare(consumer.subscription()).await?;
    let shutdown = CancellationToken::new();
    let relay = Relay::new(relay_outbox, transport.clone(), RelayConfig::default())?;
    let relay_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let consumer_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let result = measure(plan, &outbox, &handled, drain_rate).await;
    shutdown.cancel();
    let _ = relay_task.await;
    let _ = consumer_task.await;
    fixture::tear_down(env, &transport, None, &env.name("b3"), &outbox).await;
    result
}

async fn measure(
    plan: &Plan,
    outbox: &PgOutbox,
    handled: &Stamps,
    drain_rate: f64,
) -> Result<Scenario> {
    let mut scenario = Scenario::new("B3 end-to-end latency");
    let schema = outbox.config().schema.quoted();
    fixture::create_orders(outbox.pool(), &schema).await?;
    let fractions: &[f64] = if plan.quick {
        &[0.1, 0.5, 0.8]
    } else {
        &[0.1, 0.25, 0.5, 0.8]
    };
    // Warm-up, discarded.
    load(
        outbox,
        &schema,
        handled,
        drain_rate * 0.1,
        Duration::from_secs(1),
    )
    .await?;
    for &fraction in fractions {
        let rate = drain_rate * fraction;
        let run = load(outbox, &schema, handled, rate, plan.load_for).await?;
        let pct = (fraction * 100.0).round();
        if run.delivered < run.sent {
            scenario.complete = false;
            scenario.note(format!(
                "{pct}% load: {} of {} events handled",
                run.delivered, run.sent
            ));
        }
        let ms = |q| quantile(&run.latencies, q);
        let p50 = scenario.row(format!("p50 at {pct}% ({rate:.0}/s)"), "ms", vec![ms(0.5)]);
        let p99 = scenario.row(format!("p99 at {pct}% ({rate:.0}/s)"), "ms", vec![ms(0.99)]);
        scenario.row(
            format!("p99.9 at {pct}% ({rate:.0}/s)"),
            "ms",
            vec![ms(0.999)],
        );
        scenario.row(
            format!("p99 from scheduled start at {pct}%"),
            "ms",
            vec![quantile(&run.from_schedule, 0.99)],
        );
        scenario.row(
            format!("producer rate reached at {pct}%"),
            "tx/s",
            vec![run.achieved],
        );
        if (fraction - 0.5).abs() < 1e-9 {
            scenario.target("p50 at 50% load", p50, "ms", "≤ 5 ms", p50 <= 5.0);
            scenario.target("p99 at 50% load", p99, "ms", "≤ 25 ms", p99 <= 25.0);
        }
    }
    scenario.note(format!(
        "loads are fractions of the relay's drain rate {drain_rate:.0}/s, {:?} each; latency = \
         producer's commit → consumer handler's commit (inbox); relay and consumer in this process, each on a pool of its own",
        plan.load_for
    ));
    Ok(scenario)
}

/// One load's outcome.
struct Load {
    sent: usize,
    delivered: usize,
    achieved: f64,
    latencies: Vec<f64>,
    from_schedule: Vec<f64>,
}

async fn load(
    outbox: &PgOutbox,
    schema: &str,
    handled: &Stamps,
    rate: f64,
    length: Duration,
) -> Result<Load> {
    let committed: Arc<Mutex<HashMap<Uuid, (Instant, Instant)>>> = Arc::default();
    let sql: Arc<str> = fixture::insert_order_sql(schema).into();
    let body: Arc<str> = fixture::order_body().into();
    let n = (rate * length.as_secs_f64()).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let tick = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(tick.into()).await;
        let (outbox, sql, body, committed) = (
            outbox.clone(),
            Arc::clone(&sql),
            Arc::clone(&body),
            Arc::clone(&committed),
        );
        tasks.spawn(async move {
            let mut tx = outbox.begin().await?;
            let order = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(format!("customer-{}", i % 997))
                .bind(8997_i64)
                .bind(&*body);
            let id = tx.record_along(order, &fixture::event(i, 1000)).await?.id;
            tx.commit().await?;
            if let Ok(mut map) = committed.lock() {
                map.insert(id, (tick, Instant::now()));
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let produced = start.elapsed().as_secs_f64();
    let ids: Vec<(Uuid, Instant, Instant)> = committed
        .lock()
        .map(|m| m.iter().map(|(id, (s, c))| (*id, *s, *c)).collect())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = handled
            .lock()
            .map(|h| ids.iter().filter(|(id, _, _)| h.contains_key(id)).count())
            .unwrap_or(0);
        if seen == ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut latencies, mut from_schedule) = (Vec::new(), Vec::new());
    if let Ok(h) = handled.lock() {
        for (id, scheduled, commit) in &ids {
            if let Some(done) = h.get(id) {
                latencies.push(done.saturating_duration_since(*commit).as_secs_f64() * 1000.0);
                from_schedule
                    .push(done.saturating_duration_since(*scheduled).as_secs_f64() * 1000.0);
            }
        }
    }
    if let Ok(mut h) = handled.lock() {
        h.clear();
    }
    Ok(Load {
        sent: n,
        delivered: latencies.len(),
        achieved: n as f64 / produced.max(1e-9),
        latencies,
        from_schedule,
    })
}
