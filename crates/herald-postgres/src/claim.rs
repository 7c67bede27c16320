//! The relay's side: leased claims in `seq` order that keep per-key order, and what happens
//! to claimed rows afterwards ([`OutboxStore`]).
//!
//! A claim is one row of `{table}_claims` (migration 5): the relay, the lease's end, the claimed
//! rows' `seq`s and their keys. The outbox rows themselves are only read by a claim; they are
//! written when they leave (completed or dead-lettered), when they fail (a retry), and when a
//! claim of theirs ran out (its take-over counts the attempt). Writing the lease into every
//! claimed row instead (versions 1 to 4) cost a new version of each row plus its index
//! entries, more than the rest of a drain.
//!
//! A key is blocked for a claimer while another relay's live claim holds one of its rows, or
//! while one of its rows waits for a retry. The claimer's own claims do not block it: a relay
//! publishes its own claims in `seq` order, so it may take the next rows of a key it holds (the
//! store suite's `claim_respects_the_limit` relies on this). No claim hands out a row that a
//! live claim, its own included, holds.
//!
//! Claimers of one outbox table are serialized by a transaction-scoped advisory lock, so a
//! claim always sees the claims before it: `SKIP LOCKED` alone would let two claimers split the
//! rows of one key between them and break its order. The lock is held for one short statement,
//! not while publishing. Write-backs are not serialized with claims: each write-back locks its
//! relay's claims first, and a claim takes over an expired claim only if it can lock it (else
//! the claim counts as live: a slow relay's write-back is in flight). Failures and releases apply
//! only under a live claim; completions under any claim of their relay that still exists.
//!
//! The claim scans from a low watermark (`crate::watermark`), so the dead rows of published
//! events that VACUUM cannot remove yet (another session holds a snapshot) are not walked on
//! every claim.

use std::sync::Arc;
use std::time::Duration;

use herald_core::store::split_malformed;
use herald_core::{
    ClaimRequest, ClaimedEvent, Disposition, Failure, OutboxStore, Result, Seq, Signal,
};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::row::{attempts_from_row, envelope_from_row};

/// The first statement of a claim's transaction: its settings, and the advisory lock that
/// serializes the claimers of the outbox ($1).
///
/// `enable_sort` is off for the claim: the rows it picks come in `seq` order, and the only
/// plan that reads them in that order walks the primary key from the watermark and stops at
/// the claim's limit. Left to its estimates (an outbox's statistics are rarely fresh: it is
/// emptied and refilled all day), the planner reads every pending row and sorts them instead
/// once the limit is a few thousand rows, or fewer when the estimates are further off: a
/// claim of 2 048 rows over 100 000 pending then took 50 ms instead of 3 (see
/// `a_large_claim_walks_the_primary_key_in_order`). The sort of the few picked rows at the end
/// is needed by every plan, so it still runs. `jit` is off too: a disabled plan node costs
/// 10^10, far past `jit_above_cost`, and compiling the claim would take longer than running
/// it (hundreds of milliseconds, a short lease's worth), as it would for any claim whose
/// estimates grow past that threshold.
const CLAIM_SETTINGS: &str = "SELECT set_config('synchronous_commit', 'off', true), \
     set_config('enable_sort', 'off', true), set_config('jit', 'off', true), \
     pg_advisory_xact_lock($1)";

/// Longest delay or lease passed to the database (keeps timestamps in range).
const MAX_INTERVAL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration in microseconds, capped at [`MAX_INTERVAL`].
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_INTERVAL).as_micros()).unwrap_or(i64::MAX)
}

/// A row count as a bound parameter.
fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// PostgreSQL `text` cannot hold NUL characters.
fn error_text(error: &str) -> String {
    error.replace('\0', "\u{fffd}")
}

impl OutboxStore for PgOutbox {
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedEvent>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let secrets = &inner.secrets;
        // Beside the claim, not before it: a maintenance (two or three statements) would
        // otherwise lengthen every claim it falls on, and claims are what a drain waits for.
        let maintained = Arc::clone(inner);
        tokio::spawn(async move {
            maintained
                .watermark
                .maintain(&maintained.pool, &maintained.secrets)
                .await;
        });
        let mut conn = inner.pool.acquire().await.store_err("claim", secrets)?;
        let low = inner.watermark.low();
        let mut tx = Connection::begin(&mut *conn)
            .await
            .store_err("claim", secrets)?;
        sqlx::query(CLAIM_SETTINGS)
            .bind(inner.sql.claim.lock_key)
            .execute(&mut *tx)
            .await
            .store_err("claim", secrets)?;
        let rows = sqlx::query(AssertSqlSafe(inner.sql.claim.claim.clone()))
            .bind(request.relay_id)
            .bind(limit_param(request.limit))
            .bind(micros(request.lease))
            .bind(low)
            .fetch_all(&mut *tx)
            .await
            .store_err("claim", secrets)?;
        tx.commit().await.store_err("claim", secrets)?;

        let mut decoded = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: Seq = sqlx::Row::try_get(row, "seq").store_err("claim", secrets)?;
            let event = attempts_from_row(row).and_then(|attempts| {
                envelope_from_row(row).map(|envelope| ClaimedEvent {
                    seq,
                    attempts,
                    envelope,
                })
            });
            decoded.push((seq, event));
        }
        let (claimed, malformed) = split_malformed(decoded);
        for failure in &malformed {
            tracing::warn!(seq = failure.seq, error = %failure.error, "dead-lettering an outbox row");
        }
        self.fail(request.relay_id, &malformed).await?;
        Ok(claimed)
    }

    async fn complete(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.claim.complete.clone()))
            .bind(seqs)
            .bind(relay_id)
            .execute(&self.inner.pool)
            .await
            .store_err("complete", &self.inner.secrets)?;
        Ok(done.rows_affected())
    }

    async fn fail(&self, relay_id: Uuid, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let delays: Vec<Option<i64>> = failures
            .iter()
            .map(|f| match f.disposition {
                Disposition::Retry { delay } => Some(micros(delay)),
                Disposition::DeadLetter => None,
            })
            .collect();
        sqlx::query(AssertSqlSafe(self.inner.sql.claim.fail.clone()))
            .bind(relay_id)
            .bind(failures.iter().map(|f| f.seq).collect::<Vec<_>>())
            .bind(
                failures
                    .iter()
                    .map(|f| error_text(&f.error))
                    .collect::<Vec<_>>(),
            )
            .bind(delays)
            .execute(&self.inner.pool)
            .await
            .store_err("fail", &self.inner.secrets)?;
        Ok(())
    }

    async fn release(&self, relay_id: Uuid, seqs: &[Seq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(self.inner.sql.claim.release.clone()))
            .bind(seqs)
            .bind(relay_id)
            .execute(&self.inner.pool)
            .await
            .store_err("release", &self.inner.secrets)?;
        Ok(())
    }

    async fn prune(&self, older_than: Duration, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let pruned = sqlx::query(AssertSqlSafe(self.inner.sql.claim.prune.clone()))
            .bind(micros(older_than))
            .bind(limit_param(limit))
            .execute(&self.inner.pool)
            .await
            .store_err("prune", &self.inner.secrets)?;
        Ok(pruned.rows_affected())
    }

    fn signal(&self) -> Signal {
        self.inner.signal.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PgOutboxConfig;

    /// The node types of every plan node over `relation` under `alias` in an `EXPLAIN (FORMAT
    /// JSON)` plan.
    fn scans_of(plan: &serde_json::Value, relation: &str, alias: &str, out: &mut Vec<String>) {
        if plan.get("Relation Name").and_then(|v| v.as_str()) == Some(relation)
            && plan.get("Alias").and_then(|v| v.as_str()) == Some(alias)
        {
            let node = plan.get("Node Type").and_then(|v| v.as_str());
            out.push(node.unwrap_or("?").to_owned());
        }
        for child in plan
            .get("Plans")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            scans_of(child, relation, alias, out);
        }
    }

    /// A large claim over many pending rows walks the primary key from the watermark and stops
    /// at its limit. Costed by the planner's estimates alone, a claim of 2 048 rows over 100 000
    /// pending ones read every pending row (a bitmap heap scan and a top-N sort: 50 ms instead
    /// of 3, and the more rows wait, the worse). The rows are inserted, not analyzed, as in an
    /// outbox that autovacuum has not caught up with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_claim_walks_the_primary_key_in_order() {
        let url = herald_testkit::env::database_url();
        let schema = format!("herald_t_{}", Uuid::now_v7().simple());
        let config = PgOutboxConfig::new(&schema, "outbox").expect("valid names");
        let outbox = PgOutbox::connect(&url, config)
            .await
            .expect("test database");
        outbox.migrate().await.expect("migrate");
        let table = format!("\"{schema}\".outbox");
        let setup = format!(
            "INSERT INTO {table} (id, event_type, version, occurred_at, correlation_id, \
                 partition_key, content_type, payload) \
             SELECT gen_random_uuid(), 'test.ping', 1, now(), gen_random_uuid(), \
                 'key-' || (n % 1000), 'application/json', convert_to(repeat('x', 300), 'UTF8') \
             FROM generate_series(1, 100000) AS n"
        );
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(outbox.pool())
            .await
            .expect("fill the outbox");

        let inner = &outbox.inner;
        let mut found = Vec::new();
        for limit in [512_usize, 2048, 8192] {
            let mut tx = outbox.pool().begin().await.expect("begin");
            sqlx::query(CLAIM_SETTINGS)
                .bind(inner.sql.claim.lock_key)
                .execute(&mut *tx)
                .await
                .expect("the claim's settings");
            let plan: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) {}",
                inner.sql.claim.claim
            )))
            .bind(Uuid::now_v7())
            .bind(limit_param(limit))
            .bind(micros(Duration::from_secs(30)))
            .bind(0_i64)
            .fetch_one(&mut *tx)
            .await
            .expect("explain the claim");
            tx.rollback().await.expect("rollback");
            let mut scans = Vec::new();
            scans_of(&plan[0]["Plan"], "outbox", "o", &mut scans);
            found.push((limit, scans));
        }
        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(outbox.pool())
            .await;
        for (limit, scans) in found {
            assert_eq!(scans, ["Index Scan"], "the claim of {limit} rows");
        }
    }

    #[test]
    fn durations_become_bounded_micros() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), micros(MAX_INTERVAL));
        assert_eq!(limit_param(usize::MAX), i64::MAX);
        assert_eq!(error_text("a\0b"), "a\u{fffd}b");
    }
}
