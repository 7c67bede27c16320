//! The relay's side: leased claims in `seq` order that keep per-key order, and what happens
//! to claimed rows afterwards ([`OutboxStore`]).
//!
//! A key is blocked for a claimer while one of its rows is leased by *another* relay or waits
//! for a retry. Rows leased by the claimer itself do not block it: a relay publishes its own
//! claims in `seq` order, so it may take the next rows of a key it holds (the store suite's
//! `claim_respects_the_limit` relies on this).
//!
//! Claimers of one outbox table are serialized by a transaction-scoped advisory lock, so a
//! claim always sees the leases of the claim before it: `SKIP LOCKED` alone would let two
//! claimers split the rows of one key between them and break its order. The lock is held for
//! one short `UPDATE`, not while publishing. Write-backs are not serialized with claims, so a
//! claim locks the rows of other relays' expired leases first and treats one it cannot lock (a
//! slow relay's write-back in flight) as blocking its key; failures and releases apply only
//! under a live lease.
//!
//! The claim scans from a low watermark (`crate::watermark`), so the dead rows of published
//! events that VACUUM cannot remove yet (another session holds a snapshot) are not walked on
//! every claim.

use std::sync::Arc;
use std::time::Duration;

use herald_core::store::split_malformed;
use herald_core::{
    ClaimRequest, ClaimedEvent, Completion, Disposition, Failure, OutboxStore, Result, Seq, Signal,
};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

use crate::config::PgOutboxConfig;
use crate::error::ResultExt;
use crate::outbox::PgOutbox;
use crate::row::{ENVELOPE_COLUMNS, attempts_from_row, envelope_columns, envelope_from_row};

/// Longest delay or lease passed to the database (keeps timestamps in range).
const MAX_INTERVAL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The statements of the claim path, built once per handle.
pub(crate) struct ClaimSql {
    claim: Arc<str>,
    complete: Arc<str>,
    fail: Arc<str>,
    release: Arc<str>,
    prune: Arc<str>,
    lock_key: i64,
}

impl ClaimSql {
    pub(crate) fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        let archive = config.qualified("_archive");
        let dead_letters = config.qualified("_dead_letters");
        let o_columns = envelope_columns("o");

        // `clock` is read after the statement's snapshot was taken, so every committed row
        // that the statement sees was recorded (its `available_at`) before `ts`: a fresh row is
        // always available, and only a row waiting for a retry (attempts > 0) has its
        // `available_at` in the future. That lets both "blocked" conditions use small partial
        // indexes. `(SELECT ts FROM clock)` is an init plan, usable as an index bound.
        // `seq >= $4` (the handle's low watermark, see `crate::watermark`) starts the scan of
        // the primary key past rows that are deleted but not yet vacuumed. As an init plan it
        // gets the planner's default selectivity: a literal past the histogram (the usual case,
        // the watermark follows the newest rows) is estimated at one row, which made it pick
        // a bitmap scan of every pending row plus a sort. The update looks the picked rows up
        // by `seq = ANY(array)`: as a join, those one-row estimates made it scan the whole
        // primary key (dead entries included) as the outer side of a nested loop (B5).
        // A row of another relay whose lease ran out may be being written back right now
        // (that relay is slow, not dead): its `fail` holds the row's lock, and the snapshot
        // still shows the row as it was. `SKIP LOCKED` alone would pass over it and hand out the
        // next row of its key while the failed one is about to wait for its retry. So those
        // rows (`stale`: few, from the lease index) are locked first, without waiting, and the
        // key of every one that could not be locked (`seized` lacks it) is blocked for this
        // claim. A row updated or deleted since the snapshot is not locked either: its key is
        // blocked once, conservatively. Rows of the claimer itself are its own business: the
        // relay holds their keys in memory until their write-backs are known.
        let claim = format!(
            "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS ts), \
             stale AS MATERIALIZED ( \
                 SELECT s.seq, s.partition_key FROM {outbox} s \
                 WHERE s.locked_until <= (SELECT ts FROM clock) AND s.locked_by <> $1 \
                   AND s.partition_key IS NOT NULL \
             ), \
             seized AS MATERIALIZED ( \
                 SELECT z.seq FROM {outbox} z \
                 WHERE z.seq = ANY (ARRAY(SELECT seq FROM stale)) \
                   AND z.locked_until <= (SELECT ts FROM clock) AND z.locked_by <> $1 \
                 FOR UPDATE OF z SKIP LOCKED \
             ), \
             blocked AS MATERIALIZED ( \
                 SELECT b.partition_key FROM {outbox} b \
                 WHERE b.partition_key IS NOT NULL \
                   AND ((b.locked_until > (SELECT ts FROM clock) AND b.locked_by <> $1) \
                        OR (b.attempts > 0 AND b.available_at > (SELECT ts FROM clock))) \
                 UNION \
                 SELECT st.partition_key FROM stale st \
                 WHERE st.seq <> ALL (ARRAY(SELECT seq FROM seized)) \
             ), \
             picked AS ( \
                 SELECT c.seq AS picked_seq FROM {outbox} c \
                 WHERE (c.locked_until IS NULL OR c.locked_until <= (SELECT ts FROM clock)) \
                   AND c.available_at <= (SELECT ts FROM clock) \
                   AND (c.partition_key IS NULL \
                        OR c.partition_key NOT IN (SELECT partition_key FROM blocked)) \
                   AND c.seq >= (SELECT $4::int8) \
                 ORDER BY c.seq \
                 LIMIT $2 \
                 FOR UPDATE OF c SKIP LOCKED \
             ) \
             UPDATE {outbox} o \
             SET attempts = o.attempts + 1, \
                 locked_by = $1, \
                 locked_until = (SELECT ts FROM clock) + $3::float8 * interval '1 microsecond' \
             WHERE o.seq = ANY (ARRAY(SELECT picked_seq FROM picked)) \
             RETURNING o.seq, o.attempts, {o_columns}"
        );

        // The relay's write-backs are single statements, each its own transaction (one round
        // trip instead of BEGIN, SET LOCAL, the statement and COMMIT), committed without
        // waiting for the WAL flush: `ASYNC` sets `synchronous_commit` for the statement's
        // transaction, and the commit reads it before the setting is undone. A write-back
        // lost in a crash only means its rows come back after their lease: published again
        // (at least once), retried or released again.
        let complete = match config.completion {
            Completion::Delete => {
                format!("DELETE FROM {outbox} WHERE seq = ANY($1) AND locked_by = $2 AND {ASYNC}")
            }
            Completion::Archive => format!(
                "WITH done AS ( \
                     DELETE FROM {outbox} WHERE seq = ANY($1) AND locked_by = $2 AND {ASYNC} \
                     RETURNING seq, {ENVELOPE_COLUMNS}, recorded_at, attempts \
                 ) \
                 INSERT INTO {archive} (seq, {ENVELOPE_COLUMNS}, recorded_at, attempts) \
                 SELECT seq, {ENVELOPE_COLUMNS}, recorded_at, attempts FROM done"
            ),
        };

        // One statement for the whole batch: retries are rescheduled, dead letters moved.
        // (A data-modifying CTE runs even though nothing reads its output.) Failures and
        // releases are fenced by the lease's validity as well as by its holder: a relay whose
        // lease ran out must not reschedule a row that another relay may be claiming past (its
        // key looked free), nor give back what it no longer holds. The rows stay as the expired
        // claim left them, claimable at once, the claim counted. A completion is fenced by the
        // holder only: a confirmed publication is a fact, and deleting the row then spares a
        // duplicate without letting anything of its key overtake it.
        let fail = format!(
            "WITH f AS ( \
                 SELECT * FROM UNNEST($2::int8[], $3::text[], $4::int8[]) AS f(seq, error, delay_us) \
             ), \
             retried AS ( \
                 UPDATE {outbox} o \
                 SET locked_by = NULL, locked_until = NULL, last_error = f.error, \
                     available_at = now() + f.delay_us::float8 * interval '1 microsecond' \
                 FROM f \
                 WHERE o.seq = f.seq AND f.delay_us IS NOT NULL AND o.locked_by = $1 \
                   AND o.locked_until > now() AND {ASYNC} \
                 RETURNING o.seq \
             ), \
             dead AS ( \
                 DELETE FROM {outbox} o USING f \
                 WHERE o.seq = f.seq AND f.delay_us IS NULL AND o.locked_by = $1 \
                   AND o.locked_until > now() AND {ASYNC} \
                 RETURNING o.seq, {o_columns}, o.recorded_at, o.attempts, f.error \
             ) \
             INSERT INTO {dead_letters} (seq, {ENVELOPE_COLUMNS}, recorded_at, attempts, last_error) \
             SELECT seq, {ENVELOPE_COLUMNS}, recorded_at, attempts, error FROM dead"
        );

        let release = format!(
            "UPDATE {outbox} \
             SET locked_by = NULL, locked_until = NULL, attempts = greatest(attempts - 1, 0) \
             WHERE seq = ANY($1) AND locked_by = $2 AND locked_until > now() AND {ASYNC}"
        );

        let prune = format!(
            "DELETE FROM {archive} WHERE seq IN ( \
                 SELECT seq FROM {archive} \
                 WHERE published_at < now() - $1::float8 * interval '1 microsecond' \
                 ORDER BY published_at \
                 LIMIT $2 \
             )"
        );

        ClaimSql {
            claim: claim.into(),
            complete: complete.into(),
            fail: fail.into(),
            release: release.into(),
            prune: prune.into(),
            lock_key: config.claim_lock_key(),
        }
    }
}

/// A condition that is always true and, evaluated once per statement (an uncorrelated init
/// plan), turns off `synchronous_commit` for the statement's own transaction: the relay's
/// bookkeeping (completions, failures, releases) commits without waiting for the WAL flush.
/// That is safe: if the database crashes before the flush, the bookkeeping is lost, not an
/// event — the rows come back as pending and are published again (at least once). The
/// setting ends with the transaction; the pooled connection keeps its own.
const ASYNC: &str = "(SELECT set_config('synchronous_commit', 'off', true)) = 'off'";

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
        let mut conn = inner.pool.acquire().await.store_err("claim", secrets)?;
        // Outside the transaction: each maintenance statement needs a snapshot of its own,
        // and a failure there must not abort the claim.
        inner.watermark.maintain(&mut conn, secrets).await;
        let low = inner.watermark.low();
        let mut tx = Connection::begin(&mut *conn)
            .await
            .store_err("claim", secrets)?;
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock($1)",
        )
        .bind(inner.claim.lock_key)
        .execute(&mut *tx)
        .await
        .store_err("claim", secrets)?;
        let rows = sqlx::query(AssertSqlSafe(inner.claim.claim.clone()))
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
        let done = sqlx::query(AssertSqlSafe(self.inner.claim.complete.clone()))
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
        sqlx::query(AssertSqlSafe(self.inner.claim.fail.clone()))
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
        sqlx::query(AssertSqlSafe(self.inner.claim.release.clone()))
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
        let pruned = sqlx::query(AssertSqlSafe(self.inner.claim.prune.clone()))
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

    #[test]
    fn durations_become_bounded_micros() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), micros(MAX_INTERVAL));
        assert_eq!(limit_param(usize::MAX), i64::MAX);
        assert_eq!(error_text("a\0b"), "a\u{fffd}b");
    }
}
