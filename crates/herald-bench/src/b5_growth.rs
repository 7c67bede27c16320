//! B5, growth: the latency of one claim (100 rows) on a fresh outbox, then with a large number
//! of finished (published, archived) events behind it, then again with as many more finished
//! while another session holds a transaction open (its snapshot pins the xmin horizon, so the
//! dead rows cannot be vacuumed: the classic cause of queue-table bloat).
//!
//! The conditions are states of one table reached in sequence, so they cannot be interleaved;
//! each is measured over many claims (the first tenth discarded as warm-up) and reported as
//! the median and p99.

use std::time::{Duration, Instant};

use anyhow::Result;
use herald_core::{ClaimRequest, Completion, OutboxStore};
use herald_postgres::PgOutbox;
use sqlx::Connection;
use uuid::Uuid;

use crate::Plan;
use crate::fixture::{self, Env};
use crate::report::{Scenario, median, quantile};

/// Rows per claim.
const CLAIM: usize = 100;

/// Runs B5.
pub async fn run(env: &Env, plan: &Plan) -> Result<Scenario> {
    let outbox = env.outbox("b5", Completion::Archive, 4).await?;
    let result = measure(env, plan, &outbox).await;
    let _ = fixture::drop_outbox(&outbox).await;
    result
}

async fn measure(env: &Env, plan: &Plan, outbox: &PgOutbox) -> Result<Scenario> {
    let mut scenario = Scenario::new("B5 growth");
    let empty = claims(outbox, plan.claims, &mut scenario).await?;
    let e = record(&mut scenario, "empty table", &empty);

    finish_history(outbox, plan.history).await?;
    vacuum(outbox).await?;
    let history = claims(outbox, plan.claims, &mut scenario).await?;
    let h = record(
        &mut scenario,
        &format!("{} finished events behind", plan.history),
        &history,
    );

    // Another session's open transaction with a snapshot: the xmin horizon stays put.
    let mut holder = sqlx::PgConnection::connect(&env.database).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current();")
        .execute(&mut holder)
        .await?;
    finish_history(outbox, plan.history).await?;
    vacuum(outbox).await?;
    let held = claims(outbox, plan.claims, &mut scenario).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await?;
    let _ = holder.close().await;
    let held = held?;
    let x = record(
        &mut scenario,
        &format!(
            "{} more finished while a transaction is held open",
            plan.history
        ),
        &held,
    );
    let archived = fixture::count(outbox.pool(), &fixture::table(outbox, "_archive")).await?;
    let expected = 2 * plan.history + 3 * plan.claims * CLAIM;
    if archived != expected as i64 {
        scenario.complete = false;
        scenario.note(format!("{archived} archived rows, expected {expected}"));
    }
    scenario.target(
        "claim latency with history / empty",
        h / e.max(1e-9),
        "×",
        "≤ 2",
        h <= 2.0 * e,
    );
    scenario.target(
        "claim latency with history and an open transaction / empty",
        x / e.max(1e-9),
        "×",
        "≤ 2",
        x <= 2.0 * e,
    );
    scenario.note(format!(
        "claims of {CLAIM} rows (claim statement only, completion not timed), {} per condition, \
         archive completion; history inserted and finished with SQL, then VACUUM ANALYZE",
        plan.claims
    ));
    Ok(scenario)
}

fn record(scenario: &mut Scenario, condition: &str, samples: &[f64]) -> f64 {
    let p50 = scenario.row(
        format!("claim p50, {condition}"),
        "ms",
        vec![median(samples)],
    );
    scenario.row(
        format!("claim p99, {condition}"),
        "ms",
        vec![quantile(samples, 0.99)],
    );
    p50
}

/// Seeds `n` claims' worth of rows, then claims and completes them; returns each claim's
/// latency in ms (the first tenth, a warm-up, dropped).
async fn claims(outbox: &PgOutbox, n: usize, scenario: &mut Scenario) -> Result<Vec<f64>> {
    fixture::prefill(outbox, &fixture::envelopes(n * CLAIM, 1000)?).await?;
    let request = ClaimRequest {
        relay_id: Uuid::now_v7(),
        limit: CLAIM,
        lease: Duration::from_secs(30),
    };
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let claimed = outbox.claim(&request).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if claimed.len() != CLAIM {
            scenario.complete = false;
            scenario.note(format!(
                "a claim returned {} rows, expected {CLAIM}",
                claimed.len()
            ));
        }
        let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
        outbox.complete(request.relay_id, &seqs).await?;
    }
    Ok(latencies.split_off(n / 10))
}

/// Inserts `n` events with SQL and finishes them as the relay would (moved to the archive).
async fn finish_history(outbox: &PgOutbox, n: usize) -> Result<()> {
    let table = fixture::table(outbox, "");
    let archive = fixture::table(outbox, "_archive");
    let payload = fixture::envelopes(1, 1)?.remove(0).payload.to_vec();
    let started = Instant::now();
    for chunk in 0..n.div_ceil(100_000) {
        let rows = (n - chunk * 100_000).min(100_000) as i64;
        let insert = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
                 partition_key, content_type, payload) \
             SELECT gen_random_uuid(), 'bench.order_placed', 1, now(), gen_random_uuid(), \
                 'order-' || (g % 1000), 'application/json', $1 \
             FROM generate_series(1, $2::int8) g"
        );
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(&payload)
            .bind(rows)
            .execute(outbox.pool())
            .await?;
        let finish = format!(
            "WITH done AS (DELETE FROM {table} RETURNING *) \
             INSERT INTO {archive} (seq, id, event_type, version, occurred_at, correlation_id, \
                 causation_id, partition_key, content_type, traceparent, tracestate, headers, \
                 payload, recorded_at, attempts) \
             SELECT seq, id, event_type, version, occurred_at, correlation_id, causation_id, \
                 partition_key, content_type, traceparent, tracestate, headers, payload, \
                 recorded_at, attempts FROM done"
        );
        sqlx::query(sqlx::AssertSqlSafe(finish))
            .execute(outbox.pool())
            .await?;
    }
    eprintln!(
        "B5: {n} events finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What autovacuum would do: VACUUM ANALYZE the outbox and its archive.
async fn vacuum(outbox: &PgOutbox) -> Result<()> {
    for suffix in ["", "_archive"] {
        let sql = format!("VACUUM ANALYZE {}", fixture::table(outbox, suffix));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(outbox.pool())
            .await?;
    }
    Ok(())
}
