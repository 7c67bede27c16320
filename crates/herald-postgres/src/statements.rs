//! Every statement of the store, built once per [`PgOutbox`](crate::PgOutbox) handle from its
//! validated configuration (identifiers come from [`PgOutboxConfig`], values are always bound
//! parameters): the write path's ([`RecordSql`]), the relays' ([`ClaimSql`]), the operators'
//! ([`AdminSql`]) and the inbox's ([`InboxSql`]). The modules that run them import this one;
//! it imports none of them but the write path's, so the module graph has no loop.

use std::sync::Arc;

use herald_core::Completion;

use crate::config::PgOutboxConfig;
use crate::record::RecordSql;
use crate::row::{ENVELOPE_COLUMNS, envelope_columns};

/// The statements of one outbox handle and its clones.
pub(crate) struct Statements {
    /// The write path's.
    pub(crate) record: RecordSql,
    /// The relays'.
    pub(crate) claim: ClaimSql,
    /// The operators'.
    pub(crate) admin: AdminSql,
    /// The consumers' inbox.
    pub(crate) inbox: InboxSql,
}

impl Statements {
    /// The statements of the outbox `config` names.
    pub(crate) fn new(config: &PgOutboxConfig) -> Self {
        Statements {
            record: RecordSql::new(config),
            claim: ClaimSql::new(config),
            admin: AdminSql::new(config),
            inbox: InboxSql::new(config),
        }
    }
}

/// The statements of the claim path, built once per handle.
pub(crate) struct ClaimSql {
    /// $1 relay, $2 limit, $3 lease (µs), $4 low watermark.
    pub(crate) claim: Arc<str>,
    /// $1 seqs, $2 relay.
    pub(crate) complete: Arc<str>,
    /// $1 relay, $2 seqs, $3 errors, $4 retry delays (µs; `NULL`: dead-letter).
    pub(crate) fail: Arc<str>,
    /// $1 seqs, $2 relay.
    pub(crate) release: Arc<str>,
    /// $1 published before now minus this (µs), $2 limit.
    pub(crate) prune: Arc<str>,
    /// The advisory lock that serializes the claimers of this outbox table.
    pub(crate) lock_key: i64,
}

impl ClaimSql {
    fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        let claims = config.qualified("_claims");
        let archive = config.qualified("_archive");
        let dead_letters = config.qualified("_dead_letters");
        let o_columns = envelope_columns("o");

        // A claim is one row of `{table}_claims` (see migration 5): the outbox rows it hands
        // out are read, not written. `clock` is read after the statement's snapshot was taken,
        // so every committed row that the statement sees was recorded (its `available_at`)
        // before `ts`: a fresh row is always available, and only a row waiting for a retry
        // (attempts > 0) has its `available_at` in the future, which lets the retry lookup use
        // a small partial index. `(SELECT ts FROM clock)` is an init plan, usable as an index
        // bound.
        //
        // - `taken`: claims that ran out (whoever held them) are taken over: deleted, and their
        //   rows that are still there count the claim as an attempt (`recounted`). A claim
        //   whose holder is writing it back right now (slow, not dead) is locked by that
        //   write-back: it is skipped and stays live for this claim, its rows held and its
        //   keys blocked, until the write-back is over. Write-backs lock their claim the same
        //   way, so a write-back and a take-over never both apply.
        // - `live`: every other claim, the claimer's own included: their rows are not handed
        //   out again (`held`). The keys of other relays' claims are blocked for this one
        //   (`blocked`), with the keys waiting for a retry; the claimer's own are not: a relay
        //   publishes its own claims in `seq` order, so it may take the next rows of a key it
        //   holds.
        // - `picked`: the first available rows in `seq` order, from the low watermark `$4`
        //   (see `crate::watermark`; as an init plan it gets the planner's default selectivity,
        //   so a literal past the histogram does not turn the scan into a bitmap scan and a
        //   sort). `NOT IN` over a subquery is a hashed lookup per row.
        // - `claimed`: the claim's own row, written when anything was picked.
        //
        // Claimers of one outbox are serialized by an advisory lock (`lock_key`) taken before
        // this statement's snapshot, so a claim sees every claim committed before it.
        let claim = format!(
            "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS ts), \
             every_claim AS MATERIALIZED (SELECT id, relay, seqs, keys FROM {claims}), \
             taken AS MATERIALIZED ( \
                 DELETE FROM {claims} t \
                 WHERE t.id IN ( \
                     SELECT x.id FROM {claims} x WHERE x.until <= (SELECT ts FROM clock) \
                     FOR UPDATE SKIP LOCKED) \
                 RETURNING t.id, t.seqs \
             ), \
             taken_seqs AS MATERIALIZED (SELECT DISTINCT unnest(seqs) AS seq FROM taken), \
             recounted AS ( \
                 UPDATE {outbox} r SET attempts = r.attempts + 1 \
                 WHERE r.seq = ANY (ARRAY(SELECT seq FROM taken_seqs)) \
             ), \
             live AS MATERIALIZED ( \
                 SELECT l.relay, l.seqs, l.keys FROM every_claim l \
                 WHERE l.id NOT IN (SELECT id FROM taken) \
             ), \
             held AS MATERIALIZED (SELECT unnest(seqs) AS seq FROM live), \
             blocked AS MATERIALIZED ( \
                 SELECT unnest(keys) AS partition_key FROM live WHERE relay <> $1 \
                 UNION \
                 SELECT b.partition_key FROM {outbox} b \
                 WHERE b.attempts > 0 AND b.available_at > (SELECT ts FROM clock) \
                   AND b.partition_key IS NOT NULL \
             ), \
             picked AS MATERIALIZED ( \
                 SELECT o.seq, \
                        (o.attempts + 1 \
                         + CASE WHEN o.seq IN (SELECT seq FROM taken_seqs) THEN 1 ELSE 0 END \
                        )::int4 AS attempts, \
                        {o_columns} \
                 FROM {outbox} o \
                 WHERE o.available_at <= (SELECT ts FROM clock) \
                   AND o.seq NOT IN (SELECT seq FROM held) \
                   AND (o.partition_key IS NULL \
                        OR o.partition_key NOT IN (SELECT partition_key FROM blocked)) \
                   AND o.seq >= (SELECT $4::int8) \
                 ORDER BY o.seq \
                 LIMIT $2 \
             ), \
             claimed AS ( \
                 INSERT INTO {claims} (relay, until, seqs, keys) \
                 SELECT $1, (SELECT ts FROM clock) + $3::float8 * interval '1 microsecond', \
                        array_agg(seq ORDER BY seq), \
                        coalesce(array_agg(DISTINCT partition_key) \
                                 FILTER (WHERE partition_key IS NOT NULL), '{{}}') \
                 FROM picked \
                 HAVING count(*) > 0 \
             ) \
             SELECT * FROM picked ORDER BY seq"
        );

        // Every write-back starts by locking the claims of its relay (`held`, `FOR UPDATE` in
        // `id` order, so two write-backs never wait on each other crosswise; a relay has a few
        // claims in flight), which fences it against a take-over: either the take-over
        // deleted a claim first (the write-back then does not find it and changes nothing of
        // its rows) or it skips the claim while the write-back holds it. Only the rows that a
        // locked claim holds are written (`mine`), and the claims that held them then forget
        // them (`rest`, only for those: a relay's other claims in flight are not rewritten, nor
        // their arrays walked again): a claim is deleted once it holds none. Every step is a
        // hashed lookup or set difference, linear in the batch (array operators such as `&&`
        // compare every pair).
        let fenced = |relay: &str, seqs: &str, live: bool| {
            let live = if live { "AND c.until > now() " } else { "" };
            format!(
                "wanted AS MATERIALIZED (SELECT unnest({seqs}) AS seq), \
                 held AS MATERIALIZED ( \
                     SELECT c.id, c.seqs FROM {claims} c \
                     WHERE c.relay = {relay} {live}\
                     ORDER BY c.id \
                     FOR UPDATE \
                 ), \
                 mine AS MATERIALIZED ( \
                     SELECT h.id, s.seq FROM held h, unnest(h.seqs) AS s(seq) \
                     WHERE s.seq IN (SELECT seq FROM wanted) \
                 ), \
                 rest AS MATERIALIZED ( \
                     SELECT h.id, cardinality(h.seqs) AS had, \
                            ARRAY(SELECT unnest(h.seqs) EXCEPT SELECT seq FROM wanted) AS seqs \
                     FROM held h \
                     WHERE h.id IN (SELECT id FROM mine) \
                 ), \
                 shrunk AS ( \
                     UPDATE {claims} c SET seqs = r.seqs FROM rest r \
                     WHERE c.id = r.id AND cardinality(r.seqs) BETWEEN 1 AND r.had - 1 \
                 ), \
                 emptied AS ( \
                     DELETE FROM {claims} c USING rest r \
                     WHERE c.id = r.id AND cardinality(r.seqs) = 0 \
                 )"
            )
        };

        // The relay's write-backs are single statements, each its own transaction (one round
        // trip instead of BEGIN, SET LOCAL, the statement and COMMIT), committed without
        // waiting for the WAL flush: `ASYNC` sets `synchronous_commit` for the statement's
        // transaction, and the commit reads it before the setting is undone. A write-back
        // lost in a crash only means its rows come back after their lease: published again
        // (at least once), retried or released again.
        //
        // A completion is fenced by the claim's holder only, not by its validity: a confirmed
        // publication is a fact, and deleting the row then spares a duplicate without letting
        // anything of its key overtake it. Failures and releases also need the claim to be
        // live: a relay whose claim ran out must not reschedule a row that another relay may
        // be claiming past (its key looked free), nor give back what it no longer holds. The
        // rows then stay as the expired claim left them, and its take-over counts the attempt.
        let completion_fence = fenced("$2", "$1::int8[]", false);
        let complete = match config.completion {
            Completion::Delete => format!(
                "WITH {completion_fence} \
                 DELETE FROM {outbox} \
                 WHERE seq IN (SELECT seq FROM mine) AND {ASYNC}"
            ),
            Completion::Archive => format!(
                "WITH {completion_fence}, \
                 done AS ( \
                     DELETE FROM {outbox} WHERE seq IN (SELECT seq FROM mine) AND {ASYNC} \
                     RETURNING seq, {ENVELOPE_COLUMNS}, recorded_at, attempts + 1 AS attempts \
                 ) \
                 INSERT INTO {archive} (seq, {ENVELOPE_COLUMNS}, recorded_at, attempts) \
                 SELECT seq, {ENVELOPE_COLUMNS}, recorded_at, attempts FROM done"
            ),
        };

        // One statement for the whole batch: retries are rescheduled (the claim counted as an
        // attempt), dead letters moved. (A data-modifying CTE runs even though nothing reads
        // its output.)
        let failure_fence = fenced("$1", "$2::int8[]", true);
        let fail = format!(
            "WITH {failure_fence}, \
             f AS ( \
                 SELECT * FROM UNNEST($2::int8[], $3::text[], $4::int8[]) AS f(seq, error, delay_us) \
                 WHERE f.seq IN (SELECT seq FROM mine) \
             ), \
             retried AS ( \
                 UPDATE {outbox} o \
                 SET attempts = o.attempts + 1, last_error = f.error, \
                     available_at = now() + f.delay_us::float8 * interval '1 microsecond' \
                 FROM f \
                 WHERE o.seq = f.seq AND f.delay_us IS NOT NULL AND {ASYNC} \
                 RETURNING o.seq \
             ), \
             dead AS ( \
                 DELETE FROM {outbox} o USING f \
                 WHERE o.seq = f.seq AND f.delay_us IS NULL AND {ASYNC} \
                 RETURNING o.seq, {o_columns}, o.recorded_at, o.attempts + 1 AS attempts, f.error \
             ) \
             INSERT INTO {dead_letters} (seq, {ENVELOPE_COLUMNS}, recorded_at, attempts, last_error) \
             SELECT seq, {ENVELOPE_COLUMNS}, recorded_at, attempts, error FROM dead"
        );

        // A release gives rows back untouched: the claim forgets them, so they are claimable
        // again at once, and it was no attempt.
        let release_fence = fenced("$2", "$1::int8[]", true);
        let release = format!("WITH {release_fence} SELECT {ASYNC}");

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

/// The statements of the admin operations, built once per handle.
pub(crate) struct AdminSql {
    /// No parameters.
    pub(crate) stats: Arc<str>,
    /// $1 limit, $2 offset.
    pub(crate) dead_letters: Arc<str>,
    /// $1 event id (`NULL`: all).
    pub(crate) replay: Arc<str>,
    /// $1 event id (`NULL`: all).
    pub(crate) purge: Arc<str>,
    /// The outbox table as operators name it (`schema.table`).
    pub(crate) table: Arc<str>,
}

impl AdminSql {
    fn new(config: &PgOutboxConfig) -> Self {
        let outbox = config.qualified("");
        let claims = config.qualified("_claims");
        let dead_letters = config.qualified("_dead_letters");
        let archive = config.qualified("_archive");
        // A row is in flight while a live claim holds it; every other row is pending.
        let pending = "seq NOT IN (SELECT seq FROM in_flight)";

        let stats = format!(
            "WITH in_flight AS MATERIALIZED ( \
                 SELECT unnest(seqs) AS seq FROM {claims} WHERE until > now() \
             ) \
             SELECT \
                 count(*) FILTER (WHERE {pending}) AS pending, \
                 count(*) FILTER (WHERE {pending} AND available_at > now()) AS retrying, \
                 count(*) FILTER (WHERE NOT ({pending})) AS in_flight, \
                 min(recorded_at) FILTER (WHERE {pending}) AS oldest_pending_at, \
                 min(recorded_at) FILTER (WHERE {pending} AND available_at <= now()) \
                     AS oldest_due_at, \
                 (SELECT count(*) FROM {dead_letters}) AS dead_lettered, \
                 (SELECT count(*) FROM {archive}) AS archived \
             FROM {outbox}"
        );

        // The row's columns as JSON too (its raw form), so that a row whose envelope no longer
        // decodes is still listed.
        let list = format!(
            "SELECT {ENVELOPE_COLUMNS}, attempts, last_error, dead_lettered_at, \
                 to_jsonb(d) - ARRAY['payload', 'attempts', 'last_error', 'dead_lettered_at'] \
                     AS raw_columns \
             FROM {dead_letters} AS d \
             ORDER BY dead_lettered_at DESC, seq DESC \
             LIMIT $1 OFFSET $2"
        );

        // New rows (new seq, so behind everything pending for their keys), in the order they
        // were first recorded; attempts and available_at take their defaults.
        let replay = format!(
            "WITH moved AS ( \
                 DELETE FROM {dead_letters} WHERE $1::uuid IS NULL OR id = $1 \
                 RETURNING seq, {ENVELOPE_COLUMNS} \
             ) \
             INSERT INTO {outbox} ({ENVELOPE_COLUMNS}) \
             SELECT {ENVELOPE_COLUMNS} FROM moved ORDER BY seq"
        );

        AdminSql {
            stats: stats.into(),
            dead_letters: list.into(),
            replay: replay.into(),
            purge: format!("DELETE FROM {dead_letters} WHERE $1::uuid IS NULL OR id = $1").into(),
            table: format!("{}.{}", config.schema, config.table).into(),
        }
    }
}

/// The inbox's statements (`{table}_inbox` and `{table}_held_keys`).
pub(crate) struct InboxSql {
    /// $1 message ids, $2 handlers, $3 consumers, $4 keys, $5 stale after (µs): one row per
    /// claim, in order (`n`, the live hold's message and its due time in seconds, whether the
    /// record was inserted, the stale holds deleted).
    pub(crate) claim: Arc<str>,
    /// $1 consumer, $2 key, $3 message id, $4 due in (µs).
    pub(crate) hold_key: Arc<str>,
    /// $1 consumers, $2 keys, $3 message ids.
    pub(crate) release_keys: Arc<str>,
    /// $1 consumer, $2 key, $3 message id.
    pub(crate) release_key: Arc<str>,
    /// $1 message id, $2 handler.
    pub(crate) mark: Arc<str>,
    /// $1 message ids, $2 handlers; returns the pairs inserted.
    pub(crate) mark_all: Arc<str>,
    /// $1 message ids, $2 handlers.
    pub(crate) unmark: Arc<str>,
    /// $1 message id, $2 handler.
    pub(crate) is_handled: Arc<str>,
    /// $1 handled before now minus this (µs), $2 limit.
    pub(crate) prune: Arc<str>,
}

impl InboxSql {
    fn new(config: &PgOutboxConfig) -> Self {
        let inbox = config.qualified("_inbox");
        let holds = config.qualified("_held_keys");
        // `claim` numbers the claims; `held` finds, per claim, the first live hold of its key
        // by another message (taken before the claim's own, if it has one); the others (`free`) insert their records; stale holds of the claimed keys
        // go. Every CTE sees the same snapshot.
        let claim = format!(
            "WITH claim AS ( \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) \
                 WITH ORDINALITY AS c(message_id, handler, consumer, partition_key, n) \
             ), stale AS ( \
                 DELETE FROM {holds} h USING claim c \
                 WHERE h.consumer = c.consumer AND h.partition_key = c.partition_key \
                   AND h.message_id <> c.message_id \
                   AND h.due_at < now() - $5::float8 * interval '1 microsecond' \
                 RETURNING h.message_id \
             ), held AS ( \
                 SELECT DISTINCT ON (c.n) c.n, h.message_id AS held_by, \
                        GREATEST(EXTRACT(EPOCH FROM h.due_at - now())::float8, 0) AS due_in \
                 FROM claim c JOIN {holds} h \
                   ON h.consumer = c.consumer AND h.partition_key = c.partition_key \
                  AND h.message_id <> c.message_id \
                 LEFT JOIN {holds} own \
                   ON own.consumer = c.consumer AND own.partition_key = c.partition_key \
                  AND own.message_id = c.message_id \
                 WHERE h.due_at >= now() - $5::float8 * interval '1 microsecond' \
                   AND (own.seq IS NULL OR h.seq < own.seq) \
                 ORDER BY c.n, h.seq \
             ), free AS ( \
                 SELECT c.* FROM claim c WHERE NOT EXISTS (SELECT 1 FROM held WHERE held.n = c.n) \
             ), inserted AS ( \
                 INSERT INTO {inbox} (message_id, handler) \
                 SELECT message_id, handler FROM free \
                 ON CONFLICT DO NOTHING \
                 RETURNING message_id, handler \
             ) \
             SELECT c.n, held.held_by, held.due_in, \
                    EXISTS (SELECT 1 FROM inserted i \
                            WHERE i.message_id = c.message_id AND i.handler = c.handler), \
                    (SELECT count(*) FROM stale) \
             FROM claim c LEFT JOIN held ON held.n = c.n \
             ORDER BY c.n"
        );
        // The inner SELECT walks the `handled_at` index from the oldest row and stops after
        // `limit`: one bounded statement, however large the table.
        let prune = format!(
            "DELETE FROM {inbox} WHERE (message_id, handler) IN ( \
                 SELECT message_id, handler FROM {inbox} \
                 WHERE handled_at < now() - $1::float8 * interval '1 microsecond' \
                 ORDER BY handled_at \
                 LIMIT $2 \
             )"
        );
        InboxSql {
            claim: claim.into(),
            hold_key: format!(
                "INSERT INTO {holds} (consumer, partition_key, message_id, due_at) \
                 VALUES ($1, $2, $3, now() + $4::float8 * interval '1 microsecond') \
                 ON CONFLICT (consumer, partition_key, message_id) \
                 DO UPDATE SET due_at = EXCLUDED.due_at"
            )
            .into(),
            release_keys: format!(
                "DELETE FROM {holds} WHERE (consumer, partition_key, message_id) IN \
                 (SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[]))"
            )
            .into(),
            release_key: format!(
                "DELETE FROM {holds} WHERE consumer = $1 AND partition_key = $2 AND message_id = $3"
            )
            .into(),
            mark: format!(
                "INSERT INTO {inbox} (message_id, handler) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            )
            .into(),
            mark_all: format!(
                "INSERT INTO {inbox} (message_id, handler) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[]) \
                 ON CONFLICT DO NOTHING \
                 RETURNING message_id, handler"
            )
            .into(),
            unmark: format!(
                "DELETE FROM {inbox} WHERE (message_id, handler) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
            )
            .into(),
            is_handled: format!(
                "SELECT EXISTS (SELECT 1 FROM {inbox} WHERE message_id = $1 AND handler = $2)"
            )
            .into(),
            prune: prune.into(),
        }
    }
}
