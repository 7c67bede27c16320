//! B4, consumer throughput: the same queue, filled with the same number of messages before
//! each run, drained by (A) the consumer with the transactional inbox on PostgreSQL, (B) the
//! consumer with a plain handler (no inbox), (C) an ack-only loop on the transport's stream —
//! the ceiling of consuming. Interleaved A B C, warm-up discarded.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use herald_amqp::AmqpTransport;
use herald_consumer::{Consumer, ConsumerConfig, Context, HandlerError, Router, TxContext};
use herald_core::{Completion, DeliveryStream, Subscriber, SubscriptionSpec};
use herald_postgres::PgOutbox;
use tokio_util::sync::CancellationToken;

use crate::Plan;
use crate::broker::Broker;
use crate::fixture::{self, Env, OrderPlaced};
use crate::report::Scenario;

async fn with_inbox(
    _event: OrderPlaced,
    _ctx: &mut TxContext<PgOutbox>,
) -> Result<(), HandlerError> {
    Ok(())
}

async fn plain(_event: OrderPlaced, _ctx: &mut Context) -> Result<(), HandlerError> {
    Ok(())
}

/// Runs B4.
pub async fn run(env: &Env, plan: &Plan) -> Result<Scenario> {
    let transport = AmqpTransport::connect(env.amqp_config())
        .await
        .context("connect the transport")?;
    let broker = Broker::connect(&env.amqp).await?;
    let outbox = env.outbox("b4", Completion::Delete, 24).await?;
    let queue = env.name("b4");
    let result = measure(plan, &transport, &broker, &outbox, &queue).await;
    fixture::tear_down(env, &transport, Some(broker), &queue, &outbox).await;
    result
}

async fn measure(
    plan: &Plan,
    transport: &AmqpTransport,
    broker: &Broker,
    outbox: &PgOutbox,
    queue: &str,
) -> Result<Scenario> {
    let mut scenario = Scenario::new("B4 consumer");
    let spec = consumer(transport, outbox, queue, true)?
        .subscription()
        .clone();
    transport.declare(&spec).await?;
    let exchange = transport.config().exchange.clone();
    let window = transport.config().confirm_window;
    let (mut inbox, mut handler, mut ack) = (vec![], vec![], vec![]);
    for round in 0..=plan.rounds {
        let mut rates = [0.0; 3];
        for (variant, rate) in rates.iter_mut().enumerate() {
            let envelopes = fixture::envelopes(plan.messages, 1000)?;
            broker
                .publish(&exchange, &envelopes, window)
                .await
                .context("fill the queue")?;
            let started = Instant::now();
            match variant {
                0 => run_consumer(consumer(transport, outbox, queue, true)?, plan.messages)
                    .await
                    .context("inbox consumer")?,
                1 => run_consumer(consumer(transport, outbox, queue, false)?, plan.messages)
                    .await
                    .context("plain consumer")?,
                _ => ack_only(transport, &spec, plan.messages)
                    .await
                    .context("ack-only loop")?,
            }
            *rate = plan.messages as f64 / started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let left = broker.ready(queue).await.context("count the queue")?;
            if left != 0 {
                scenario.complete = false;
                scenario.note(format!(
                    "variant {variant}: {left} messages left in the queue"
                ));
                broker.purge(queue).await?;
            }
        }
        eprintln!(
            "B4 round {round}: inbox {:.0}/s, handler {:.0}/s, ack-only {:.0}/s",
            rates[0], rates[1], rates[2]
        );
        if round > 0 {
            inbox.push(rates[0]);
            handler.push(rates[1]);
            ack.push(rates[2]);
        }
    }
    let a = scenario.row("consumer, transactional inbox (PostgreSQL)", "msg/s", inbox);
    scenario.row("consumer, plain handler (no inbox)", "msg/s", handler);
    let c = scenario.row("ack-only loop on the transport's stream", "msg/s", ack);
    scenario.target(
        "inbox consumer / ack-only",
        a / c.max(1e-9),
        "×",
        "≥ 0.5",
        a >= 0.5 * c,
    );
    scenario.note(format!(
        "{} messages per run, consumer defaults (concurrency {}, prefetch {}); interleaved A B C, \
         {} measured rounds after one warm-up",
        plan.messages,
        ConsumerConfig::default().concurrency,
        ConsumerConfig::default().prefetch,
        plan.rounds
    ));
    Ok(scenario)
}

fn consumer(
    transport: &AmqpTransport,
    outbox: &PgOutbox,
    queue: &str,
    inbox: bool,
) -> Result<Consumer<AmqpTransport>> {
    let router = if inbox {
        Router::new().transactional(outbox, "bench.inbox", with_inbox)
    } else {
        Router::new().handle("bench.plain", plain)
    };
    Ok(Consumer::new(
        transport.clone(),
        queue,
        router,
        ConsumerConfig::default(),
    )?)
}

async fn run_consumer(consumer: Consumer<AmqpTransport>, expected: usize) -> Result<()> {
    let metrics = consumer.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let started = Instant::now();
    while metrics.snapshot().acked < expected as u64 {
        if running.is_finished() || started.elapsed() > Duration::from_secs(600) {
            bail!(
                "consumer stopped after {} of {expected} messages",
                metrics.snapshot().acked
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}

async fn ack_only(
    transport: &AmqpTransport,
    spec: &SubscriptionSpec,
    expected: usize,
) -> Result<()> {
    let mut stream = transport.subscribe(spec).await?;
    for _ in 0..expected {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(delivery)) => delivery?.ack().await?,
            _ => bail!("the ack-only stream ended early"),
        }
    }
    Ok(())
}
