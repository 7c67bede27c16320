//! B2k, relay drain on Kafka: pre-fill the outbox, then drain PostgreSQL → Kafka (the run's
//! own topic, idempotent producer, `acks=all`). Beside it in the same run, interleaved: the
//! ceiling, a bare rdkafka producer loop with the transport's settings publishing the same
//! records from memory under the transport's in-flight window (see [`crate::kafka_broker`]).
//!
//! A third variant tells the two costs apart: the same relay child with a publisher that
//! confirms every message at once (`--instant`), which shows what PostgreSQL alone allows.
//! A fourth, the bare drain, deletes the same rows with plain `DELETE … RETURNING` statements:
//! the least any relay pays PostgreSQL. The machine's CPU time is read around the relay, the
//! ceiling and the bare drain: the ceiling's plus the bare drain's core-seconds per event are
//! the least any PostgreSQL → Kafka relay spends per event on these shared cores, which bounds
//! its rate whatever its design (the CPU bound in the report), if it could keep every core busy.
//! A fifth variant measures what that arithmetic assumes: the ceiling's producer loop and the
//! bare drain run at once, uncoupled, on the same cores (*both halves at once*). A relay does
//! both halves' work and more (it publishes only what it read and deletes only what was
//! confirmed), so no relay can be expected to drain faster here than they finish together.
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

use crate::Plan;
use crate::b2_relay::{self, check};
use crate::cpu::CpuTime;
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
    // Core-seconds per 1 000 events of the whole machine: the relay, the ceiling, the bare drain.
    let (mut relay_cpu, mut ceiling_cpu, mut bare_cpu) =
        (Vec::<f64>::new(), Vec::<f64>::new(), Vec::<f64>::new());
    let mut bare: Vec<f64> = vec![];
    let mut halves: Vec<f64> = vec![];
    let per_1000 = 1000.0 / plan.events as f64;
    for round in 0..=plan.rounds {
        // A: the relay, in its own process.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let before = broker.written(topic).await?;
        let child = b2_relay::spawn_child(env, plan, outbox, &broker_args).await?;
        let written = broker.written(topic).await? - before;
        check(&mut scenario, "relay", written, plan.events);
        // B: the ceiling.
        let before = broker.written(topic).await?;
        let cpu = CpuTime::now()?;
        let started = Instant::now();
        broker.publish(&records, window).await?;
        let ceiling_s = started.elapsed().as_secs_f64();
        let ceiling_core_s = cpu.core_seconds_until(&CpuTime::now()?, ceiling_s);
        let written = broker.written(topic).await? - before;
        check(&mut scenario, "ceiling", written, plan.events);
        // C: the relay with a publisher that confirms at once: the store's share alone.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let instant = b2_relay::spawn_child(env, plan, outbox, &["--instant".to_owned()]).await?;
        let left = fixture::count(outbox.pool(), &table).await?;
        if left != 0 {
            scenario.complete = false;
            scenario.note(format!(
                "relay, instant publisher: {left} events left in the outbox"
            ));
        }
        // D: the cheapest drain of the same rows PostgreSQL allows, no lease and no broker.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let cpu = CpuTime::now()?;
        let started = Instant::now();
        let drained = bare_drain(outbox, &table, plan.relay_batch).await?;
        let bare_s = started.elapsed().as_secs_f64();
        let bare_core_s = cpu.core_seconds_until(&CpuTime::now()?, bare_s);
        check_drained(&mut scenario, "bare drain", drained, plan.events);
        // E: the ceiling's producer loop and the bare drain at once, uncoupled: both halves
        // of the work every PostgreSQL → Kafka relay does, sharing the cores as a relay's
        // halves do. No relay, whatever its design, takes and publishes faster here.
        vacuum(outbox, &table).await?;
        fixture::prefill(outbox, &envelopes).await?;
        let before = broker.written(topic).await?;
        let started = Instant::now();
        let (published, drained) = tokio::join!(
            broker.publish(&records, window),
            bare_drain(outbox, &table, plan.relay_batch)
        );
        let halves_s = started.elapsed().as_secs_f64();
        published?;
        let drained = drained?;
        let written = broker.written(topic).await? - before;
        check(
            &mut scenario,
            "halves at once (producer)",
            written,
            plan.events,
        );
        check_drained(&mut scenario, "halves at once", drained, plan.events);
        let (relay_rate, ceiling_rate, store_rate, bare_rate) = (
            plan.events as f64 / child.elapsed_s,
            plan.events as f64 / ceiling_s,
            plan.events as f64 / instant.elapsed_s,
            plan.events as f64 / bare_s,
        );
        let halves_rate = plan.events as f64 / halves_s;
        eprintln!(
            "B2k round {round}: relay {relay_rate:.0}/s ({:.1} MiB, {:.2} core-s), \
             ceiling {ceiling_rate:.0}/s ({ceiling_core_s:.2} core-s), relay with an instant \
             publisher {store_rate:.0}/s, bare drain {bare_rate:.0}/s ({bare_core_s:.2} core-s), \
             both halves at once {halves_rate:.0}/s",
            child.vm_hwm_kib as f64 / 1024.0,
            child.machine_core_s,
        );
        if round > 0 {
            relay.push(relay_rate);
            ceiling.push(ceiling_rate);
            store.push(store_rate);
            bare.push(bare_rate);
            halves.push(halves_rate);
            publisher_share.push(relay_rate / store_rate.max(1e-9));
            memory.push(child.vm_hwm_kib as f64 / 1024.0);
            relay_cpu.push(child.machine_core_s * per_1000 * 1e3);
            ceiling_cpu.push(ceiling_core_s * per_1000 * 1e3);
            bare_cpu.push(bare_core_s * per_1000 * 1e3);
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
    scenario.row(
        "bare drain: DELETE … RETURNING of the same rows, no lease, no broker",
        "events/s",
        bare,
    );
    let h = scenario.row(
        "both halves at once: the ceiling's producer loop and the bare drain, uncoupled",
        "events/s",
        halves,
    );
    scenario.row("relay process peak RSS (VmHWM)", "MiB", memory);
    scenario.row(
        "machine CPU, relay (relay + PostgreSQL + broker)",
        "core-ms / 1000 events",
        relay_cpu,
    );
    let kafka_cpu = scenario.row(
        "machine CPU, ceiling (producer + broker)",
        "core-ms / 1000 events",
        ceiling_cpu,
    );
    let pg_cpu = scenario.row(
        "machine CPU, bare drain (client + PostgreSQL)",
        "core-ms / 1000 events",
        bare_cpu,
    );
    // Every relay from PostgreSQL to Kafka spends at least the ceiling's CPU (the same records,
    // the same producer settings) plus the bare drain's (the same rows leave the table) per
    // event, on the same cores: that caps its rate, whatever its design.
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let bound = cores * 1e6 / (kafka_cpu + pg_cpu).max(1e-9);
    scenario.row(
        "CPU bound of any PostgreSQL → Kafka relay here: cores / (ceiling + bare drain CPU)",
        "events/s",
        vec![bound],
    );
    scenario.target(
        "relay / ceiling",
        r / c.max(1e-9),
        "×",
        "≥ 0.8",
        r >= 0.8 * c,
    );
    scenario.target(
        "CPU bound / ceiling: cores fully busy, no wait anywhere",
        bound / c.max(1e-9),
        "×",
        "(information)",
        true,
    );
    scenario.target(
        "both halves at once / ceiling: more than any relay reaches here",
        h / c.max(1e-9),
        "×",
        "≥ 0.8 for the target to be reachable",
        h >= 0.8 * c,
    );
    scenario.target(
        "relay / both halves at once",
        r / h.max(1e-9),
        "×",
        "(information)",
        true,
    );
    scenario.target(
        "relay / CPU bound",
        r / bound.max(1e-9),
        "×",
        "(information)",
        true,
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
         reports, relay batch {} (publish calls pipelined); the outbox vacuumed before each drain; A B C D E interleaved, {} measured rounds \
         after one warm-up",
        plan.events,
        if config.properties.is_empty() {
            String::new()
        } else {
            format!(", Kafka properties {:?}", config.properties)
        },
        config.partitions,
        config.replication_factor,
        plan.relay_batch,
        plan.rounds
    ));
    Ok(scenario)
}

/// Marks `scenario` incomplete, with a note, when `variant` deleted other than `events` rows.
fn check_drained(scenario: &mut Scenario, variant: &str, drained: usize, events: usize) {
    if drained != events {
        scenario.complete = false;
        scenario.note(format!("{variant}: {drained} rows of {events} deleted"));
    }
}

/// Deletes every row of `table` in statements of `batch` rows, reading each row back (`DELETE …
/// RETURNING *`, one connection, in `seq` order): what PostgreSQL charges any outbox relay for
/// the rows it takes out, without leases, order per key or write-backs. Returns the rows read.
async fn bare_drain(outbox: &PgOutbox, table: &str, batch: usize) -> Result<usize> {
    let sql = format!(
        "DELETE FROM {table} WHERE seq = ANY (ARRAY( \
             SELECT seq FROM {table} ORDER BY seq LIMIT $1)) RETURNING *"
    );
    let mut drained = 0;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(i64::try_from(batch)?)
            .fetch_all(outbox.pool())
            .await?;
        if rows.is_empty() {
            return Ok(drained);
        }
        drained += rows.len();
    }
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
