//! B1, producer overhead: a business transaction (insert one ~300-byte order row, commit)
//! without and with recording one integration event in it, at concurrency 1 and 8. The event
//! is recorded two ways: [`PgOutboxTx::record`](herald_postgres::PgOutboxTx::record) (a
//! statement of its own) and [`PgOutboxTx::record_along`](herald_postgres::PgOutboxTx::record_along)
//! (a `WITH` clause of the order's INSERT, no round trip of its own).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use herald_core::Completion;
use herald_postgres::PgOutbox;

use crate::Plan;
use crate::fixture::{self, Env};
use crate::report::Scenario;

/// How a slice's transactions record their event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No event: the business transaction alone.
    Plain,
    /// `record`, a statement of its own.
    Record,
    /// `record_along`, in the order's statement.
    Along,
}

/// Runs B1.
pub async fn run(env: &Env, plan: &Plan) -> Result<Scenario> {
    let outbox = env.outbox("b1", Completion::Delete, 10).await?;
    let result = measure(&outbox, plan).await;
    fixture::drop_outbox(&outbox).await?;
    result
}

async fn measure(outbox: &PgOutbox, plan: &Plan) -> Result<Scenario> {
    let schema = outbox.config().schema.quoted();
    fixture::create_orders(outbox.pool(), &schema).await?;
    let mut scenario = Scenario::new("B1 producer overhead");
    for concurrency in [1usize, 8] {
        let (mut plain, mut with, mut along) = (Vec::new(), Vec::new(), Vec::new());
        let mut recorded = 0u64;
        for round in 0..=plan.rounds {
            let (a, _) = slice(outbox, &schema, Mode::Plain, concurrency, plan).await?;
            let (b, n) = slice(outbox, &schema, Mode::Record, concurrency, plan).await?;
            let (c, m) = slice(outbox, &schema, Mode::Along, concurrency, plan).await?;
            recorded += n + m;
            if round > 0 {
                plain.push(a);
                with.push(b);
                along.push(c);
            }
        }
        let a = scenario.row(
            format!("order only, concurrency {concurrency}"),
            "tx/s",
            plain,
        );
        let b = scenario.row(
            format!("order + event, concurrency {concurrency}"),
            "tx/s",
            with,
        );
        let c = scenario.row(
            format!("order + event recorded along, concurrency {concurrency}"),
            "tx/s",
            along,
        );
        for (how, tps) in [("record", b), ("record_along", c)] {
            let cost = 100.0 * (1.0 - tps / a.max(1e-9));
            scenario.target(
                format!("cost of recording an event ({how}), concurrency {concurrency}"),
                cost,
                "%",
                "≤ 5 %",
                cost <= 5.0,
            );
        }
        let left = fixture::count(outbox.pool(), &fixture::table(outbox, "")).await?;
        if u64::try_from(left).unwrap_or(0) < recorded {
            scenario.complete = false;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "TRUNCATE {}",
            fixture::table(outbox, "")
        )))
        .execute(outbox.pool())
        .await?;
    }
    scenario.note(format!(
        "variants interleaved A B A B, {} measured slices of {:?} each after one warm-up slice",
        plan.rounds, plan.slice
    ));
    Ok(scenario)
}

/// Runs `concurrency` writers for one slice; returns transactions per second and how many
/// events were recorded.
async fn slice(
    outbox: &PgOutbox,
    schema: &str,
    mode: Mode,
    concurrency: usize,
    plan: &Plan,
) -> Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let sql: Arc<str> = fixture::insert_order_sql(schema).into();
    let body: Arc<str> = fixture::order_body().into();
    let started = Instant::now();
    let deadline = started + plan.slice;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let outbox = outbox.clone();
        let (done, sql, body) = (Arc::clone(&done), Arc::clone(&sql), Arc::clone(&body));
        tasks.push(tokio::spawn(async move {
            let mut i = worker * 1_000_000;
            while Instant::now() < deadline {
                let order = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&sql)))
                    .bind(format!("customer-{}", i % 997))
                    .bind(8997_i64)
                    .bind(&*body);
                match mode {
                    Mode::Plain => {
                        // The business transaction alone: no outbox, no wake-up.
                        let mut tx = outbox.pool().begin().await?;
                        order.execute(&mut *tx).await?;
                        tx.commit().await?;
                    }
                    Mode::Record => {
                        let mut tx = outbox.begin().await?;
                        order.execute(&mut *tx).await?;
                        tx.record(&fixture::event(i, 1000)).await?;
                        tx.commit().await?;
                    }
                    Mode::Along => {
                        let mut tx = outbox.begin().await?;
                        tx.record_along(order, &fixture::event(i, 1000)).await?;
                        tx.commit().await?;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    Ok((n as f64 / elapsed, if mode == Mode::Plain { 0 } else { n }))
}
