//! The claim's low watermark: a `seq` below which no row is live or will ever become visible,
//! so the claim's index scan starts there instead of at the head of the primary key.
//!
//! Published rows are deleted. While any session holds a snapshot open (even one that never
//! touches the outbox), VACUUM cannot remove them, and a claim that scans the primary key from
//! the start walks every dead index entry and heap tuple below the first live row: with a
//! million rows behind, a claim went from 4 ms to 700 ms (benchmark B5). Starting at `low`
//! skips them.
//!
//! Raising `low` must never skip a row that will still become visible: a writer that drew
//! seq `s` from the identity sequence and commits later. The rule relies on the table lock
//! every writer holds: a transaction that inserts into the outbox takes `RowExclusiveLock` on
//! it (at parse time, or when a cached plan is locked) before the identity default draws a
//! seq, and keeps it until it ends (a subtransaction's lock is released early only when the
//! subtransaction, and so its rows, are rolled back). So:
//!
//! - *Candidate*: read `bound`, the sequence's last allocated value, then, in a later
//!   statement, `writers`, the virtual transaction ids holding or awaiting `RowExclusiveLock`
//!   on the outbox (this backend excluded). Every transaction that drew a seq `<= bound` and
//!   has not ended is among them.
//! - *Settled*: when, at a later maintenance, none of `writers` holds that lock any more, every
//!   row with seq `<= bound` is committed (a transaction releases its locks only after its
//!   commit is visible to new snapshots) or will never be visible. A statement after that
//!   check (so with a later snapshot) sets `low` to the smallest remaining seq `<= bound`, or
//!   `bound + 1`; rows leased by anyone or waiting for a retry are still in the table, so the
//!   minimum covers them. That minimum walks the dead entries between the old and the new
//!   `low` once. With no writers at all, a candidate is settled at once.
//!
//! Caveats, all handled by falling back to a lower watermark: a prepared (two-phase)
//! transaction changes its virtual transaction id, so while any prepared transaction holds a
//! lock on the outbox nothing settles; a sequence with a cache (`CACHE > 1`: another backend
//! may later use a value below `last_value`), a cycling one, or one that went back (`RESTART`)
//! sets `low` to 0. Rows must get their seq from the identity default inside the inserting
//! transaction (the replay of dead letters does). Every few minutes `low` goes back to 0
//! anyway (one full scan) as defence in depth, and a failed maintenance keeps the old `low`:
//! it never fails a claim.
//!
//! Maintenance runs at most every [`MAINTENANCE_INTERVAL`] per handle (clones share it), in a
//! task that a claim starts beside itself, on a connection of its own: the claim does not wait
//! for it (it reads `low` as it is), an error there cannot abort the claim transaction, and the
//! claimers' advisory lock is not held longer. It does not need that lock either: claims
//! delete no outbox row (a claim is a row of `{table}_claims`; a take-over only updates the
//! rows it counts), and the minimum is taken over rows that exist either way.
//!
//! SQLite needs none of this: it has no MVCC horizon, deleted rows leave its B-tree at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::config::PgOutboxConfig;
use crate::error::store_error;

/// Least time between two maintenances of one handle. Claims between two maintenances walk the
/// dead entries of the rows completed since the last one: while a snapshot is held open those
/// are not marked dead in the index, and each claim reads their heap tuples again. Once claims
/// stopped writing their rows (migration 5) that walk was the larger part of a claim under a
/// held snapshot at 50 ms (B5: 2.5 ms against 1.0 ms on an empty table; 1.8 ms at 10 ms). A
/// maintenance is two or three short statements.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(10);

/// How often `low` goes back to 0 (defence in depth against a flaw in the rule).
const RESET_INTERVAL: Duration = Duration::from_secs(300);

/// The sequence's last allocated value (NULL when none yet, or when the sequence is cached,
/// cycles or counts down), and whether none of the writers `$2` still locks the outbox `$1`.
const PROBE: &str = "SELECT \
     (SELECT CASE WHEN s.seqincrement > 0 AND NOT s.seqcycle AND s.seqcache = 1 \
                  THEN pg_catalog.pg_sequence_last_value(s.seqrelid) END \
      FROM pg_catalog.pg_sequence s \
      WHERE s.seqrelid = pg_catalog.pg_get_serial_sequence($1, 'seq')::regclass) AS bound, \
     NOT EXISTS ( \
         SELECT 1 FROM pg_catalog.pg_locks l \
         WHERE l.locktype = 'relation' \
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d \
                             WHERE d.datname = pg_catalog.current_database()) \
           AND l.relation = $1::regclass \
           AND l.mode = 'RowExclusiveLock' \
           AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid() \
           AND (l.virtualtransaction = ANY($2::text[]) OR l.pid IS NULL) \
     ) AS settled";

/// The transactions (other than this backend's) holding or awaiting `RowExclusiveLock` on the
/// outbox `$1`; prepared transactions (no pid) included.
const WRITERS: &str = "SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}')::text[] \
     FROM pg_catalog.pg_locks l \
     WHERE l.locktype = 'relation' \
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d \
                         WHERE d.datname = pg_catalog.current_database()) \
       AND l.relation = $1::regclass \
       AND l.mode = 'RowExclusiveLock' \
       AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()";

/// A `bound` whose writers have not been seen to end yet.
struct Candidate {
    bound: i64,
    writers: Vec<String>,
}

/// What only the maintenance touches (one at a time per handle).
struct State {
    candidate: Option<Candidate>,
    due: Instant,
    reset_at: Instant,
    warned: bool,
}

/// The low watermark of one [`PgOutbox`](crate::PgOutbox) and its clones.
pub(crate) struct Watermark {
    low: AtomicI64,
    state: tokio::sync::Mutex<State>,
    /// The outbox table's quoted, qualified name, bound as a parameter (cast to `regclass`).
    relation: String,
    settle: Arc<str>,
}

impl Watermark {
    /// A watermark at 0 (a full scan until the first maintenance).
    pub(crate) fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        let now = Instant::now();
        Watermark {
            low: AtomicI64::new(0),
            state: tokio::sync::Mutex::new(State {
                candidate: None,
                due: now,
                reset_at: now + RESET_INTERVAL,
                warned: false,
            }),
            settle: format!(
                "SELECT coalesce(min(seq), $2::int8 + 1) FROM {outbox} \
                 WHERE seq >= $1 AND seq <= $2"
            )
            .into(),
            relation: outbox,
        }
    }

    /// The current low watermark: no row below it is live or will become visible.
    pub(crate) fn low(&self) -> i64 {
        self.low.load(Ordering::Acquire)
    }

    /// Advances the watermark if a maintenance is due and no other one is running, on a
    /// connection of `pool` of its own (each statement needs its own snapshot, outside any
    /// transaction). Errors are logged and leave the watermark as it was.
    pub(crate) async fn maintain(&self, pool: &PgPool, secrets: &[String]) {
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now < state.due {
            return;
        }
        if now >= state.reset_at {
            self.low.store(0, Ordering::Release);
            state.reset_at = now + RESET_INTERVAL;
        }
        let advanced = match pool.acquire().await {
            Ok(mut conn) => self.advance(&mut conn, &mut state).await,
            // The handle is being shut down: nothing left to claim.
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => Err(error),
        };
        if let Err(error) = advanced {
            let error = store_error("claim watermark", error, secrets);
            if state.warned {
                tracing::debug!(%error, "outbox watermark not advanced");
            } else {
                state.warned = true;
                tracing::warn!(%error, "outbox watermark not advanced; claims scan from the old watermark");
            }
        }
        state.due = Instant::now() + MAINTENANCE_INTERVAL;
    }

    async fn advance(
        &self,
        conn: &mut PgConnection,
        state: &mut State,
    ) -> std::result::Result<(), sqlx::Error> {
        let low = self.low();
        let old_writers: &[String] = state
            .candidate
            .as_ref()
            .map_or(&[], |candidate| &candidate.writers);
        let (bound, settled): (Option<i64>, bool) = sqlx::query_as(PROBE)
            .bind(&self.relation)
            .bind(old_writers)
            .fetch_one(&mut *conn)
            .await?;
        // `low` never exceeds the last allocated value + 1: a smaller bound means the sequence
        // was restarted (or cannot be relied on), and new rows may lie below `low`.
        let Some(bound) = bound.filter(|&bound| bound >= low.saturating_sub(1)) else {
            self.low.store(0, Ordering::Release);
            state.candidate = None;
            return Ok(());
        };
        if state.candidate.is_some() && !settled {
            // Keep waiting for those writers: a fresh candidate could wait forever under a
            // steady stream of overlapping writers.
            return Ok(());
        }
        let settled_bound = state.candidate.take().map(|candidate| candidate.bound);
        // Read after `bound`: every transaction that drew a seq <= bound and is still running.
        let writers: Vec<String> = sqlx::query_scalar(WRITERS)
            .bind(&self.relation)
            .fetch_one(&mut *conn)
            .await?;
        let upto = if writers.is_empty() {
            Some(bound)
        } else {
            settled_bound
        };
        if let Some(upto) = upto.filter(|&upto| upto >= low) {
            // A new statement, so a snapshot taken after the writers were seen to end.
            let next: i64 = sqlx::query_scalar(AssertSqlSafe(self.settle.clone()))
                .bind(low)
                .bind(upto)
                .fetch_one(&mut *conn)
                .await?;
            self.low.fetch_max(next, Ordering::AcqRel);
        }
        if !writers.is_empty() {
            state.candidate = Some(Candidate { bound, writers });
        }
        Ok(())
    }
}
