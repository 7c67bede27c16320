//! The checker: holds the producers' committed events against the consumers' effects, the
//! dead-letter queue and the outbox, and the table it prints.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use herald_amqp::AmqpTransport;
use herald_core::OutboxAdmin;
use herald_postgres::PgOutbox;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

/// What one run left behind.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Events the producers committed.
    pub events: u64,
    /// Committed events without their effect (or, for poison, without their dead letter).
    pub lost: u64,
    /// Effects applied more than once.
    pub duplicated: u64,
    /// Effects of a key applied out of its order.
    pub order_violations: u64,
    /// Poison events in the dead-letter queue, each with its reason.
    pub dead_letters: u64,
    /// Dead letters that are not poison, or have no reason; and outbox dead letters.
    pub wrong_dead_letters: u64,
    /// Outbox rows still claimed or pending.
    pub stuck: u64,
}

impl Verdict {
    /// No loss, no duplicate, no disorder, nothing stuck, nothing wrongly dead-lettered.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.order_violations == 0
            && self.wrong_dead_letters == 0
            && self.stuck == 0
    }
}

/// Progress while waiting for the run to settle: effects plus dead letters, out of events.
pub async fn settled(
    outbox: &PgOutbox,
    schema: &str,
    transport: &AmqpTransport,
    queue: &str,
) -> Result<bool> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM \"{schema}\".produced) AS produced, \
                (SELECT count(*) FROM \"{schema}\".produced WHERE poison) AS poison, \
                (SELECT count(DISTINCT event_id) FROM \"{schema}\".effects) AS effects"
    )))
    .fetch_one(outbox.pool())
    .await?;
    let (produced, poison, effects): (i64, i64, i64) = (
        row.try_get("produced")?,
        row.try_get("poison")?,
        row.try_get("effects")?,
    );
    if effects < produced - poison {
        return Ok(false);
    }
    let stats = outbox.stats().await?;
    if stats.pending + stats.retrying + stats.in_flight > 0 {
        return Ok(false);
    }
    let dead = transport.dead_letters(queue, 1_000_000).await?;
    Ok(dead.len() as i64 >= poison)
}

/// Checks everything once the run settled (or gave up waiting).
pub async fn check(
    outbox: &PgOutbox,
    schema: &str,
    transport: &AmqpTransport,
    queue: &str,
) -> Result<Verdict> {
    let pool = outbox.pool();
    let mut v = Verdict::default();
    let produced: Vec<(Uuid, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, poison FROM \"{schema}\".produced"
    )))
    .fetch_all(pool)
    .await?;
    v.events = produced.len() as u64;
    let effects: HashSet<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT DISTINCT event_id FROM \"{schema}\".effects"
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let duplicated: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) - count(DISTINCT event_id) FROM \"{schema}\".effects"
    )))
    .fetch_one(pool)
    .await?;
    v.duplicated = duplicated as u64;
    // Per key, in the order the effects were applied (one at a time per key), `n` must
    // only grow.
    let disorder: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY seq) AS prev \
         FROM \"{schema}\".effects) t WHERE prev IS NOT NULL AND n <= prev"
    )))
    .fetch_one(pool)
    .await?;
    v.order_violations = disorder as u64;

    let dead = transport.dead_letters(queue, 1_000_000).await?;
    let mut dead_ids = HashSet::new();
    let poison: HashSet<Uuid> = produced
        .iter()
        .filter(|(_, p)| *p)
        .map(|(id, _)| *id)
        .collect();
    for letter in &dead {
        let id = letter.envelope.as_ref().map(|e| e.id);
        match id {
            Some(id)
                if poison.contains(&id)
                    && !letter.error.is_empty()
                    && !letter.reason.is_empty() =>
            {
                dead_ids.insert(id);
            }
            _ => v.wrong_dead_letters += 1,
        }
    }
    v.dead_letters = dead_ids.len() as u64;
    for (id, is_poison) in &produced {
        let arrived = if *is_poison {
            dead_ids.contains(id)
        } else {
            effects.contains(id)
        };
        if !arrived {
            v.lost += 1;
        }
    }
    let stats = outbox.stats().await?;
    v.stuck = stats.pending + stats.retrying + stats.in_flight;
    v.wrong_dead_letters += stats.dead_lettered;
    Ok(v)
}

/// One row of the table: a scenario over its runs.
#[derive(Debug, Default, Clone)]
pub struct ScenarioRow {
    /// The scenario.
    pub scenario: String,
    /// Runs of it.
    pub runs: u64,
    /// Summed verdicts.
    pub verdict: Verdict,
    /// Processes that exited without the harness asking.
    pub unexpected_exits: u64,
    /// Processes the harness killed (or that ended themselves on its order).
    pub kills: u64,
    /// Faults injected.
    pub faults: u64,
    /// Longest time from the last fault to everything settled.
    pub recovery: Duration,
}

/// Prints the table (Markdown, so that it can go into the README as is).
pub fn print_table(rows: &[ScenarioRow]) {
    println!(
        "| scenario | runs | events | lost | duplicated effects | order violations | dead letters | faults injected | processes killed | unexpected exits | time to recover |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let v = &r.verdict;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
            r.scenario,
            r.runs,
            v.events,
            v.lost,
            v.duplicated,
            v.order_violations,
            if v.wrong_dead_letters == 0 {
                v.dead_letters.to_string()
            } else {
                format!("{} (+{} wrong)", v.dead_letters, v.wrong_dead_letters)
            },
            r.faults,
            r.kills,
            r.unexpected_exits,
            r.recovery.as_secs_f64(),
        );
    }
}
