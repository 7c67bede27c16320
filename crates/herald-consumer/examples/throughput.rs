//! Consumer throughput: a transactional-inbox consumer on PostgreSQL (and on SQLite) beside a
//! plain ack-only consumer, over the same in-memory transport, in interleaved rounds.
//!
//! ```sh
//! cargo run --release -p herald-consumer --example throughput -- [messages] [keys] [rounds]
//! ```
//!
//! Each round publishes `messages` events over `keys` partition keys into a fresh queue, then
//! starts a consumer (concurrency 16) and times it from start until every message is
//! acknowledged. The inbox handlers write one row per message (an upsert of the key's running
//! total) next to their inbox record, in one transaction. PostgreSQL is
//! `HERALD_TEST_DATABASE_URL` (default `postgres://postgres:postgres@127.0.0.1:5432/test`); a schema of
//! its own is created and dropped.

use std::time::{Duration, Instant};

use herald_consumer::{Consumer, ConsumerConfig, Context, HandlerError, Router, TxContext};
use herald_core::{Envelope, Event, Metadata, Publisher, Uuid};
use herald_memory::MemoryTransport;
use herald_postgres::{PgOutbox, PgOutboxConfig};
use herald_sqlite::{SqliteOutbox, SqliteOutboxConfig};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Serialize, Deserialize)]
struct Deposited {
    account: String,
    cents: i64,
    note: String,
}

impl Event for Deposited {
    const TYPE: &'static str = "bench.deposited";
    fn partition_key(&self) -> Option<String> {
        Some(self.account.clone())
    }
}

async fn ack_only(_event: Deposited, _ctx: &mut Context) {}

async fn pg_credit(event: Deposited, ctx: &mut TxContext<PgOutbox>) -> Result<(), HandlerError> {
    let table = format!("{}.balances", ctx.outbox().config().schema.quoted());
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} AS b (account, cents) VALUES ($1, $2) \
         ON CONFLICT (account) DO UPDATE SET cents = b.cents + EXCLUDED.cents"
    )))
    .bind(&event.account)
    .bind(event.cents)
    .execute(ctx.db())
    .await?;
    Ok(())
}

async fn sqlite_credit(
    event: Deposited,
    ctx: &mut TxContext<SqliteOutbox>,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO balances (account, cents) VALUES (?, ?) \
         ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents",
    )
    .bind(&event.account)
    .bind(event.cents)
    .execute(ctx.db())
    .await?;
    Ok(())
}

/// Publishes the round's messages, then consumes them all; returns the elapsed time.
async fn round(
    transport: &MemoryTransport,
    router: Router,
    messages: usize,
    keys: usize,
) -> Result<Duration, BoxError> {
    let config = ConsumerConfig {
        concurrency: 16,
        ..ConsumerConfig::default()
    };
    let queue = format!("bench-{}", Uuid::now_v7().simple());
    let consumer = Consumer::new(transport.clone(), queue, router, config)?;
    transport.declare(consumer.subscription());
    let batch: Vec<Envelope> = (0..messages)
        .map(|i| {
            let event = Deposited {
                account: format!("account-{}", i % keys),
                cents: 100,
                note: "x".repeat(200),
            };
            Envelope::from_event(&event, Metadata::default())
        })
        .collect::<Result<_, _>>()?;
    for chunk in batch.chunks(1000) {
        for result in transport.publish(chunk).await {
            result?;
        }
    }

    let metrics = consumer.metrics();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    while metrics.snapshot().acked < messages as u64 {
        if running.is_finished() {
            return Err("the consumer stopped early".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await??;
    Ok(elapsed)
}

/// The same transactions as the PostgreSQL inbox consumer (begin, inbox insert, upsert,
/// commit), issued by 16 tasks straight through sqlx, without a broker or a consumer: the
/// ceiling that the database and this machine set.
async fn pg_baseline(pg: &PgOutbox, messages: usize, keys: usize) -> Result<Duration, BoxError> {
    let schema = pg.config().schema.quoted();
    let inbox = format!(
        "INSERT INTO {schema}.outbox_inbox (message_id, handler) VALUES ($1, 'baseline') \
         ON CONFLICT DO NOTHING"
    );
    let upsert = format!(
        "INSERT INTO {schema}.balances AS b (account, cents) VALUES ($1, $2) \
         ON CONFLICT (account) DO UPDATE SET cents = b.cents + EXCLUDED.cents"
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (pool, inbox, upsert) = (pg.pool().clone(), inbox.clone(), upsert.clone());
        tasks.spawn(async move {
            // Worker w takes the keys ≡ w (mod 16), as per-key lanes would.
            for i in (worker..messages).step_by(16) {
                let mut tx = pool.begin().await?;
                sqlx::query(AssertSqlSafe(inbox.clone()))
                    .bind(Uuid::now_v7())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AssertSqlSafe(upsert.clone()))
                    .bind(format!("account-{}", i % keys))
                    .bind(100_i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok::<(), sqlx::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let messages = args.first().copied().unwrap_or(20_000);
    let keys = args.get(1).copied().unwrap_or(1_000);
    let rounds = args.get(2).copied().unwrap_or(3);

    let url = herald_testkit::env::database_url();
    let schema = format!("herald_bench_{}", Uuid::now_v7().simple());
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    let pg = PgOutbox::new(pool, PgOutboxConfig::new(&schema, "outbox")?);
    pg.migrate().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".balances (account text PRIMARY KEY, cents bigint NOT NULL)"
    )))
    .execute(pg.pool())
    .await?;

    let dir = tempfile::tempdir()?;
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = SqliteOutbox::connect(&sqlite_url, SqliteOutboxConfig::default()).await?;
    sqlite.migrate().await?;
    sqlx::query("CREATE TABLE balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL)")
        .execute(sqlite.pool())
        .await?;

    let transport = MemoryTransport::new();
    println!(
        "consumer throughput: {messages} messages over {keys} keys per round, concurrency 16, \
         in-memory transport"
    );
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("ack-only (no inbox)", Vec::new()),
        ("transactional inbox, PostgreSQL", Vec::new()),
        ("transactional inbox, SQLite", Vec::new()),
        ("baseline: same SQL, no consumer (PG)", Vec::new()),
    ];
    for r in 1..=rounds {
        for (mode, rates) in results.iter_mut() {
            let router = match *mode {
                "ack-only (no inbox)" => Router::new().handle("bench.ack", ack_only),
                "transactional inbox, PostgreSQL" => {
                    Router::new().transactional(&pg, "bench.credit", pg_credit)
                }
                "transactional inbox, SQLite" => {
                    Router::new().transactional(&sqlite, "bench.credit", sqlite_credit)
                }
                _ => {
                    let elapsed = pg_baseline(&pg, messages, keys).await?;
                    let rate = messages as f64 / elapsed.as_secs_f64();
                    println!("  round {r}  {mode:<37} {rate:>9.0} msg/s  ({elapsed:.2?})");
                    rates.push(rate);
                    continue;
                }
            };
            let elapsed = round(&transport, router, messages, keys).await?;
            let rate = messages as f64 / elapsed.as_secs_f64();
            println!("  round {r}  {mode:<37} {rate:>9.0} msg/s  ({elapsed:.2?})");
            rates.push(rate);
        }
    }
    println!("median of {rounds} rounds:");
    for (mode, mut rates) in results {
        rates.sort_by(f64::total_cmp);
        println!("  {mode:<37} {:>9.0} msg/s", rates[rates.len() / 2]);
    }

    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(pg.pool())
        .await?;
    Ok(())
}
