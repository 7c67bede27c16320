//! B2k, relay drain on Kafka: pre-fill the outbox, then drain PostgreSQL → Kafka (the run's
//! own topic, idempotent producer, `acks=all`). Beside it in the same run, interleaved: the
//! ceiling, a bare rdkafka producer loop with the transport's settings publishing the same
//! records from memory under the transport's in-flight window (see [`crate::kafka_broker`]).
//!
//! A third variant tells the two costs apart: the same relay child with a publisher that
//! confirms every message at once (`--instant`), which shows what PostgreSQL alone allows.
//!
//! The relay runs in B2's child process (hidden `relay-child` subcommand with `--kafka`).
//! Each variant is checked by the records it added to the topic (its partitions' high
//! watermarks before and after; C by an empty outbox). The outbox is vacuumed before each
//! relay drain, so that neither relay variant starts behind the other's dead rows.

use std::time::Instant;

use anyhow::Result;
use herald_core::Completion;
use herald_kafka::{KafkaConfig, KafkaTransport};
use herald_postgres::PgOutbox;
use herald_relay::RelayConfig;

use crate::Plan;
use crate::b2_relay::{self, check};
use crate::fixture::{self, Env};
use crate::kafka_broker::{KafkaBroker, Record};
use crate::report::{self, Scenario};

/// Partition keys of the pre-filled events.
const KEYS: usize = 1000;

/// Runs B2k: declares the run's topic through the transport, measures, deletes the topic
/// and the outbox schema.
pub async fn run(env: &Env, plan: &Plan) -> Result<Scenario> {
    let config = env.kafka_config("b2k");
    let transport = KafkaTransport::connect(config.clone()).await?;
    let broker = KafkaBroker::connect(&config)?;
    let result = match env.outbox("b2k", Completion::Delete, 4).await {
        Ok(outbox) => {
            let result = measure(env, plan, &config, &broker, &outbox).await;
            let _ = fixture::drop_outbox(&outbox).await;
            result
        }
        Err(err) => Err(err),
    };
    transport.close().await;
    if let Err(err) = broker.delete_topic(&config.topic).await {
        eprintln!("B2k: {err:#}");
    }
    broker.close().await;
    result
}

async fn measure(
    env: &Env,
    plan: &Plan,
    config: &KafkaConfig,
    broker: &KafkaBroker,
    outbox: &PgOutbox,
) -> Result<Scenario> {
    let mut scenario = Scenario::new("B2k relay drain, Kafka");
    let topic = config.topic.as_str();
    let envelopes = fixture::envelopes(plan.events, KEYS)?;
    let records = envelopes
        .iter()
        .map(|e| Record::of(e, config))
        .collect::<Result<Vec<_>>>()?;
    let window = config.in_flight;
    let mut broker_args = ["--kafka", &config.bootstrap_servers, "--topic", topic]
        .map(str::to_owned)
        .to_vec();
    for (name, value) in &config.properties {
        broker_args.extend(["--kafka-property".to_owned(), format!("{name}={value}")]);
    }
    let table = fixture::table(outbox, "");
    let (mut relay, mut ceiling, mut store, mut memory) = (vec![], vec![], vec![], vec![]);
    // Relay / instant-publisher relay, per round: the two share the store's state of the round.
    let mut publisher_share = vec![];
    for round in 0..=plan.rounds {
        // A: the relay, in its own process.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let before = broker.written(topic).await?;
        let child = b2_relay::spawn_child(env, outbox, plan.events, &broker_args).await?;
        let written = broker.written(topic).await? - before;
        check(&mut scenario, "relay", written, plan.events);
        // B: the ceiling.
        let before = broker.written(topic).await?;
        let started = Instant::now();
        broker.publish(&records, window).await?;
        let ceiling_s = started.elapsed().as_secs_f64();
        let written = broker.written(topic).await? - before;
        check(&mut scenario, "ceiling", written, plan.events);
        // C: the relay with a publisher that confirms at once: the store's share alone.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let instant =
            b2_relay::spawn_child(env, outbox, plan.events, &["--instant".to_owned()]).await?;
        let left = fixture::count(outbox.pool(), &table).await?;
        if left != 0 {
            scenario.complete = false;
            scenario.note(format!(
                "relay, instant publisher: {left} events left in the outbox"
            ));
        }
        let (relay_rate, ceiling_rate, store_rate) = (
            plan.events as f64 / child.elapsed_s,
            plan.events as f64 / ceiling_s,
            plan.events as f64 / instant.elapsed_s,
        );
        eprintln!(
            "B2k round {round}: relay {relay_rate:.0}/s ({:.1} MiB), ceiling {ceiling_rate:.0}/s, \
             relay with an instant publisher {store_rate:.0}/s",
            child.vm_hwm_kib as f64 / 1024.0,
        );
        if round > 0 {
            relay.push(relay_rate);
            ceiling.push(ceiling_rate);
            store.push(store_rate);
            publisher_share.push(relay_rate / store_rate.max(1e-9));
            memory.push(child.vm_hwm_kib as f64 / 1024.0);
        }
    }
    let r = scenario.row("relay (PostgreSQL → Kafka)", "events/s", relay);
    let c = scenario.row(
        "ceiling (bare rdkafka producer loop from memory)",
        "events/s",
        ceiling,
    );
    scenario.row(
        "relay, publisher confirming at once (no broker: the store's share)",
        "events/s",
        store,
    );
    scenario.row("relay process peak RSS (VmHWM)", "MiB", memory);
    scenario.target(
        "relay / ceiling",
        r / c.max(1e-9),
        "×",
        "≥ 0.8",
        r >= 0.8 * c,
    );
    let share = report::median(&publisher_share);
    scenario.target(
        "relay / relay with a publisher confirming at once (median of rounds)",
        share,
        "×",
        "≥ 0.8",
        share >= 0.8,
    );
    scenario.note(format!(
        "{} events per drain, {KEYS} partition keys{}, ~300-byte payloads with the transport's \
         CloudEvents headers, topic of {} partitions (replication {}); idempotent producer, \
         acks=all, 5 requests in flight per connection; ceiling window {window} delivery \
         reports, relay batch {} (publish calls pipelined); the outbox vacuumed before each drain; A B C interleaved, {} measured rounds \
         after one warm-up",
        plan.events,
        if config.properties.is_empty() {
            String::new()
        } else {
            format!(", Kafka properties {:?}", config.properties)
        },
        config.partitions,
        config.replication_factor,
        RelayConfig::default().batch_size,
        plan.rounds
    ));
    Ok(scenario)
}

/// Vacuums the outbox table `table` (its quoted, qualified name), so that each relay drain
/// starts without the dead rows and index entries of the drain before it: otherwise the
/// claims of whichever variant comes right after a drain walk 100 000 dead index entries
/// whose leases have not run out (see the README's B2 notes), and C would always pay for A.
async fn vacuum(outbox: &PgOutbox, table: &str) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM {table}")))
        .execute(outbox.pool())
        .await?;
    Ok(())
}
