//! The checker: holds the producers' committed events against the consumers' effects, the
//! dead-letter queue and the outbox, and the table it prints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use herald_core::OutboxAdmin;
use herald_postgres::PgOutbox;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::bus::Bus;
use crate::observer::{self, Arrival, Inversion};

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
    /// Events that reached the broker before an earlier event of their key (first arrivals
    /// in the witness queue against recording order).
    pub broker_order_violations: u64,
    /// Committed events the broker never delivered to the witness queue.
    pub unseen: u64,
    /// Every order violation, named: broker side first, then effects.
    pub inversions: Vec<(Side, Inversion)>,
    /// Poison events in the dead-letter queue, each with its reason.
    pub dead_letters: u64,
    /// Dead letters that are not poison, or have no reason; and outbox dead letters.
    pub wrong_dead_letters: u64,
    /// Outbox rows still claimed or pending.
    pub stuck: u64,
    /// The lost events' ids.
    pub lost_ids: Vec<Uuid>,
}

impl Verdict {
    /// No loss, no duplicate, no disorder, nothing stuck, nothing wrongly dead-lettered.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.order_violations == 0
            && self.broker_order_violations == 0
            && self.unseen == 0
            && self.wrong_dead_letters == 0
            && self.stuck == 0
    }
}

/// Where an order violation was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// First arrivals at the broker.
    Broker,
    /// The order the consumers applied effects in.
    Effects,
}

/// Progress while waiting for the run to settle: effects plus dead letters, out of events;
/// and every event seen by the broker-side witness.
pub async fn settled(
    outbox: &PgOutbox,
    schema: &str,
    transport: &Bus,
    queue: &str,
    witnessed: usize,
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
    if effects < produced - poison || (witnessed as i64) < produced {
        return Ok(false);
    }
    let stats = outbox.stats().await?;
    if stats.pending + stats.retrying + stats.in_flight > 0 {
        return Ok(false);
    }
    let dead = transport.dead_letters(queue).await?;
    Ok(dead.len() as i64 >= poison)
}

/// Checks everything once the run settled (or gave up waiting).
pub async fn check(
    outbox: &PgOutbox,
    schema: &str,
    transport: &Bus,
    queue: &str,
    arrivals: &[Arrival],
) -> Result<Verdict> {
    let pool = outbox.pool();
    let mut v = Verdict::default();
    let recorded: Vec<(Uuid, bool, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, poison, key, n FROM \"{schema}\".produced"
    )))
    .fetch_all(pool)
    .await?;
    v.events = recorded.len() as u64;
    let ids: HashMap<(String, i64), Uuid> = recorded
        .iter()
        .map(|(id, _, key, n)| ((key.clone(), *n), *id))
        .collect();
    let produced: Vec<(Uuid, bool)> = recorded.iter().map(|(id, p, _, _)| (*id, *p)).collect();
    let witnessed: HashSet<Uuid> = arrivals.iter().map(|a| a.id).collect();
    v.unseen = produced
        .iter()
        .filter(|(id, _)| !witnessed.contains(id))
        .count() as u64;
    // Kept with the run's schema for a look: the witness's first arrivals, in order.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".arrivals AS SELECT * FROM \
         unnest($1::uuid[], $2::text[], $3::bigint[]) WITH ORDINALITY AS a(event_id, key, n, seq)"
    )))
    .bind(arrivals.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(arrivals.iter().map(|a| a.key.clone()).collect::<Vec<_>>())
    .bind(arrivals.iter().map(|a| a.n).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    for inversion in observer::inversions(arrivals, &ids) {
        v.broker_order_violations += 1;
        v.inversions.push((Side::Broker, inversion));
    }
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
    // only grow: name every effect applied after one of a later event of its key.
    let disorder: Vec<(String, i64, Uuid, i64, Uuid)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT key, n, event_id, prev, prev_id FROM (SELECT key, n, event_id, seq, \
             lag(n) OVER w AS prev, lag(event_id) OVER w AS prev_id \
             FROM \"{schema}\".effects WINDOW w AS (PARTITION BY key ORDER BY seq)) t \
         WHERE prev IS NOT NULL AND n <= prev ORDER BY key, seq"
    )))
    .fetch_all(pool)
    .await?;
    v.order_violations = disorder.len() as u64;
    for (key, n, id, prev, prev_id) in disorder {
        v.inversions.push((
            Side::Effects,
            Inversion {
                key,
                late: (prev, prev_id),
                early: (n, Some(id)),
            },
        ));
    }

    let dead = transport.dead_letters(queue).await?;
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
                    && !letter.reason.is_empty()
                    && letter
                        .raw
                        .headers
                        .get("x-herald-dead-letter-reason")
                        .is_some_and(|kind| !kind.is_empty()) =>
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
            v.lost_ids.push(*id);
        }
    }
    let stats = outbox.stats().await?;
    v.stuck = stats.pending + stats.retrying + stats.in_flight;
    v.wrong_dead_letters += stats.dead_lettered;
    Ok(v)
}

/// One line per violation: which key, which event came too soon, which one it overtook.
pub fn describe(side: Side, inversion: &Inversion) -> String {
    let (what, verb) = match side {
        Side::Broker => ("broker", "arrived"),
        Side::Effects => ("effects", "applied"),
    };
    let early_id = inversion
        .early
        .1
        .map_or_else(|| "id unknown".to_owned(), |id| id.to_string());
    format!(
        "{what}: key {}: event n={} ({}) {verb} before n={} ({early_id})",
        inversion.key, inversion.late.0, inversion.late.1, inversion.early.0
    )
}

/// Names every violating key with its count and its first pair of events out of order.
pub fn summary(inversions: &[(Side, Inversion)]) -> String {
    let mut by_key: BTreeMap<(u8, &str), (usize, String)> = BTreeMap::new();
    for (side, inversion) in inversions {
        let slot = by_key
            .entry((u8::from(*side == Side::Effects), inversion.key.as_str()))
            .or_insert_with(|| (0, describe(*side, inversion)));
        slot.0 += 1;
    }
    let mut out = String::new();
    for ((_, _), (count, first)) in by_key {
        let _ = writeln!(out, "  {first} [{count} in this key]");
    }
    out
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
        "| scenario | runs | events | lost | duplicated effects | order violations: broker / effects | dead letters | faults injected | processes killed | unexpected exits | time to recover |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let v = &r.verdict;
        println!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {:.1} s |",
            r.scenario,
            r.runs,
            v.events,
            if v.unseen == 0 {
                v.lost.to_string()
            } else {
                format!("{} (+{} never at the broker)", v.lost, v.unseen)
            },
            v.duplicated,
            v.broker_order_violations,
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
