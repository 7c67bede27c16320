//! Every statement of the store, built once per [`SqliteOutbox`](crate::SqliteOutbox) handle
//! from its validated configuration (identifiers come from [`SqliteOutboxConfig`], values are
//! always bound parameters): the write path's ([`RecordSql`]), the relays' ([`ClaimSql`]), the
//! operators' ([`AdminSql`]) and the inbox's ([`InboxSql`]). The modules that run them import
//! this one; it imports none of them but the write path's, so the module graph has no loop.

use std::sync::Arc;

use crate::config::SqliteOutboxConfig;
use crate::record::RecordSql;
use crate::row::ENVELOPE_COLUMNS;

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
    pub(crate) fn new(config: &SqliteOutboxConfig) -> Self {
        Statements {
            record: RecordSql::new(config),
            claim: ClaimSql::new(config),
            admin: AdminSql::new(config),
            inbox: InboxSql::new(config),
        }
    }
}

/// The relay's statements, built once per outbox.
#[derive(Debug)]
pub(crate) struct ClaimSql {
    /// ?1 relay, ?2 locked until, ?3 now, ?4 limit.
    pub(crate) claim: Arc<str>,
    /// ?1 relay, ?2 JSON array of seqs.
    pub(crate) delete: Arc<str>,
    /// ?1 relay, ?2 JSON array of seqs, ?3 now.
    pub(crate) archive: Arc<str>,
    /// ?1 relay, ?2 seq, ?3 available at, ?4 error, ?5 now.
    pub(crate) retry: Arc<str>,
    /// ?1 relay, ?2 seq, ?3 error, ?4 now.
    pub(crate) dead_letter: Arc<str>,
    /// ?1 relay, ?2 seq, ?3 now.
    pub(crate) delete_one: Arc<str>,
    /// ?1 relay, ?2 JSON array of seqs, ?3 now.
    pub(crate) release: Arc<str>,
    /// ?1 published before, ?2 limit.
    pub(crate) prune: Arc<str>,
}

impl ClaimSql {
    fn new(config: &SqliteOutboxConfig) -> Self {
        let t = config.quoted("");
        let dead = config.quoted("_dead_letters");
        let archive = config.quoted("_archive");
        let cols = ENVELOPE_COLUMNS;
        let owned = "locked_by = ?1 AND seq IN (SELECT value FROM json_each(?2))";
        ClaimSql {
            // The inner SELECT walks the table in seq order (NOT INDEXED: by rowid, stopping
            // after `limit` rows) and skips the keys that have a row under another relay's
            // live lease or waiting for a retry; those keys come from the two indexes, so the
            // cost is the batch plus the rows in flight, however long the backlog.
            //
            // The claiming relay's own leases do not block it: it holds the earlier rows of
            // those keys itself and settles its batches in order (the store suite's
            // `claim_respects_the_limit` asks for exactly this: two claims in a row by one
            // relay get disjoint batches of the same keys).
            claim: format!(
                "UPDATE {t} SET attempts = attempts + 1, locked_by = ?1, locked_until = ?2 \
                 WHERE seq IN ( \
                     SELECT seq FROM {t} NOT INDEXED \
                     WHERE (locked_until IS NULL OR locked_until <= ?3) \
                       AND available_at <= ?3 \
                       AND (partition_key IS NULL OR partition_key NOT IN ( \
                           SELECT partition_key FROM {t} \
                           WHERE locked_until > ?3 AND locked_by <> ?1 \
                             AND partition_key IS NOT NULL \
                           UNION ALL \
                           SELECT partition_key FROM {t} \
                           WHERE available_at > ?3 AND partition_key IS NOT NULL)) \
                     ORDER BY seq LIMIT ?4) \
                 RETURNING seq, attempts, {cols}"
            )
            .into(),
            delete: format!("DELETE FROM {t} WHERE {owned}").into(),
            archive: format!(
                "INSERT INTO {archive} (seq, {cols}, recorded_at, attempts, published_at) \
                 SELECT seq, {cols}, recorded_at, attempts, ?3 FROM {t} WHERE {owned} ORDER BY seq"
            )
            .into(),
            retry: format!(
                "UPDATE {t} SET locked_by = NULL, locked_until = NULL, \
                     available_at = ?3, last_error = ?4 \
                 WHERE seq = ?2 AND locked_by = ?1 AND locked_until > ?5"
            )
            .into(),
            dead_letter: format!(
                "INSERT INTO {dead} \
                     (seq, {cols}, recorded_at, attempts, last_error, dead_lettered_at) \
                 SELECT seq, {cols}, recorded_at, attempts, ?3, ?4 FROM {t} \
                 WHERE seq = ?2 AND locked_by = ?1 AND locked_until > ?4"
            )
            .into(),
            delete_one: format!(
                "DELETE FROM {t} WHERE seq = ?2 AND locked_by = ?1 AND locked_until > ?3"
            )
            .into(),
            release: format!(
                "UPDATE {t} SET locked_by = NULL, locked_until = NULL, \
                     attempts = MAX(attempts - 1, 0) \
                 WHERE {owned} AND locked_until > ?3"
            )
            .into(),
            prune: format!(
                "DELETE FROM {archive} WHERE seq IN ( \
                     SELECT seq FROM {archive} WHERE published_at < ?1 \
                     ORDER BY published_at LIMIT ?2)"
            )
            .into(),
        }
    }
}

/// The operators' statements, built once per outbox.
#[derive(Debug)]
pub(crate) struct AdminSql {
    /// ?1 now.
    pub(crate) stats: Arc<str>,
    /// ?1 limit, ?2 offset.
    pub(crate) dead_letters: Arc<str>,
    /// ?1 now, ?2 id (the newest dead letter of that id).
    pub(crate) replay_one: Arc<str>,
    /// ?1 id.
    pub(crate) forget_one: Arc<str>,
    /// ?1 now.
    pub(crate) replay_all: Arc<str>,
    /// No parameters.
    pub(crate) forget_all: Arc<str>,
    /// ?1 id (every dead letter of that id).
    pub(crate) purge_one: Arc<str>,
    /// The outbox table as operators name it.
    pub(crate) table: Arc<str>,
}

impl AdminSql {
    fn new(config: &SqliteOutboxConfig) -> Self {
        let t = config.quoted("");
        let dead = config.quoted("_dead_letters");
        let archive = config.quoted("_archive");
        let cols = ENVELOPE_COLUMNS;
        // A lease that has expired counts as pending: any relay may take the row.
        let unleased = "(locked_until IS NULL OR locked_until <= ?1)";
        let newest_of_id =
            |param: &str| format!("seq = (SELECT MAX(seq) FROM {dead} WHERE id = {param})");
        // Replayed rows get a new seq (behind everything pending for their keys), a fresh
        // attempt count and `recorded_at` = now; the envelope keeps its id and times.
        let replay = |filter: &str| {
            format!(
                "INSERT INTO {t} ({cols}, recorded_at, available_at) \
                 SELECT {cols}, ?1, ?1 FROM {dead} {filter} ORDER BY seq"
            )
        };
        AdminSql {
            stats: format!(
                "SELECT \
                   (SELECT COUNT(*) FROM {t} WHERE {unleased}) AS pending, \
                   (SELECT COUNT(*) FROM {t} WHERE {unleased} AND available_at > ?1) AS retrying, \
                   (SELECT COUNT(*) FROM {t} WHERE locked_until > ?1) AS in_flight, \
                   (SELECT COUNT(*) FROM {dead}) AS dead_lettered, \
                   (SELECT COUNT(*) FROM {archive}) AS archived, \
                   (SELECT MIN(recorded_at) FROM {t} WHERE {unleased}) AS oldest_pending_at, \
                   (SELECT MIN(recorded_at) FROM {t} WHERE {unleased} AND available_at <= ?1) \
                     AS oldest_due_at"
            )
            .into(),
            // The row's columns as JSON too (its raw form), so that a row whose envelope no
            // longer decodes is still listed.
            dead_letters: format!(
                "SELECT {cols}, attempts, last_error, dead_lettered_at, {raw} AS raw_columns \
                 FROM {dead} ORDER BY dead_lettered_at DESC, seq DESC LIMIT ?1 OFFSET ?2",
                raw = raw_columns()
            )
            .into(),
            replay_one: replay(&format!("WHERE {}", newest_of_id("?2"))).into(),
            forget_one: format!("DELETE FROM {dead} WHERE {}", newest_of_id("?1")).into(),
            replay_all: replay("").into(),
            forget_all: format!("DELETE FROM {dead}").into(),
            purge_one: format!("DELETE FROM {dead} WHERE id = ?1").into(),
            table: config.table.to_string().into(),
        }
    }
}

/// `json_object(...)` of every envelope column but the payload.
fn raw_columns() -> String {
    let pairs: Vec<String> = ENVELOPE_COLUMNS
        .split(", ")
        .filter(|column| *column != "payload")
        .map(|column| format!("'{column}', {column}"))
        .collect();
    format!("json_object({})", pairs.join(", "))
}

/// The inbox's statements (`{table}_inbox` and `{table}_held_keys`). A list of rows is one
/// bound JSON array (`json_each(?)`), so each statement's text, and its cached preparation,
/// is the same whatever the list's length.
#[derive(Debug)]
pub(crate) struct InboxSql {
    /// ?1 JSON array of `[n, consumer, key, message id]`: every hold of those keys by another
    /// message (`n`, the hold's consumer, key, message id and due time).
    pub(crate) holds_of_keys: Arc<str>,
    /// ?1 JSON array of `[consumer, key, message id]`, ?2 due before: deletes those holds if
    /// they are still stale.
    pub(crate) delete_stale: Arc<str>,
    /// ?1 consumer, ?2 key, ?3 message id, ?4 due at.
    pub(crate) hold_key: Arc<str>,
    /// ?1 JSON array of `[consumer, key, message id]`.
    pub(crate) release_keys: Arc<str>,
    /// ?1 consumer, ?2 key, ?3 message id.
    pub(crate) release_key: Arc<str>,
    /// ?1 message id, ?2 handler, ?3 now.
    pub(crate) mark: Arc<str>,
    /// ?1 JSON array of `[message id, handler]`, ?2 now; returns the pairs inserted.
    pub(crate) mark_all: Arc<str>,
    /// ?1 JSON array of `[message id, handler]`.
    pub(crate) unmark: Arc<str>,
    /// ?1 message id, ?2 handler.
    pub(crate) is_handled: Arc<str>,
    /// ?1 handled before, ?2 limit.
    pub(crate) prune: Arc<str>,
}

impl InboxSql {
    fn new(config: &SqliteOutboxConfig) -> Self {
        let inbox = config.quoted("_inbox");
        let holds = config.quoted("_held_keys");
        // The rows of a JSON array parameter, its items' fields named.
        let rows = |param: &str, fields: &[&str]| {
            let columns: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, name)| format!("json_extract(value, '$[{i}]') AS {name}"))
                .collect();
            format!("SELECT {} FROM json_each({param})", columns.join(", "))
        };
        let hold_columns = ["consumer", "partition_key", "message_id"];
        let record_columns = ["message_id", "handler"];
        InboxSql {
            // The primary key's prefix (consumer, partition_key) finds each key's holds; a
            // claim whose message holds its key itself sees only the holds taken before.
            holds_of_keys: format!(
                "SELECT c.n, h.consumer, h.partition_key, h.message_id, h.due_at, h.seq \
                 FROM ({claims}) AS c JOIN {holds} AS h \
                   ON h.consumer = c.consumer AND h.partition_key = c.partition_key \
                  AND h.message_id <> c.message_id \
                 WHERE h.seq < coalesce((SELECT own.seq FROM {holds} AS own \
                                         WHERE own.consumer = c.consumer \
                                           AND own.partition_key = c.partition_key \
                                           AND own.message_id = c.message_id), \
                                        9223372036854775807)",
                claims = rows("?1", &["n", "consumer", "partition_key", "message_id"])
            )
            .into(),
            delete_stale: format!(
                "DELETE FROM {holds} WHERE due_at < ?2 \
                 AND (consumer, partition_key, message_id) IN ({})",
                rows("?1", &hold_columns)
            )
            .into(),
            hold_key: format!(
                // `seq` orders the holds as first taken (writes are serialised); holding
                // again keeps it.
                "INSERT INTO {holds} (consumer, partition_key, message_id, due_at, seq) \
                 VALUES (?1, ?2, ?3, ?4, (SELECT coalesce(max(seq), 0) + 1 FROM {holds})) \
                 ON CONFLICT (consumer, partition_key, message_id) \
                 DO UPDATE SET due_at = excluded.due_at"
            )
            .into(),
            release_keys: format!(
                "DELETE FROM {holds} WHERE (consumer, partition_key, message_id) IN ({})",
                rows("?1", &hold_columns)
            )
            .into(),
            release_key: format!(
                "DELETE FROM {holds} \
                 WHERE consumer = ?1 AND partition_key = ?2 AND message_id = ?3"
            )
            .into(),
            mark: format!(
                "INSERT INTO {inbox} (message_id, handler, handled_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING"
            )
            .into(),
            // `WHERE true`: without it SQLite would read `ON CONFLICT` as a join constraint.
            // Rows go in the array's order; a pair listed twice is inserted (returned) once.
            mark_all: format!(
                "INSERT INTO {inbox} (message_id, handler, handled_at) \
                 SELECT message_id, handler, ?2 FROM ({}) WHERE true \
                 ON CONFLICT DO NOTHING RETURNING message_id, handler",
                rows("?1", &record_columns)
            )
            .into(),
            unmark: format!(
                "DELETE FROM {inbox} WHERE (message_id, handler) IN ({})",
                rows("?1", &record_columns)
            )
            .into(),
            is_handled: format!(
                "SELECT EXISTS (SELECT 1 FROM {inbox} WHERE message_id = ?1 AND handler = ?2)"
            )
            .into(),
            // The inner SELECT walks the `handled_at` index from the oldest row and stops after
            // `limit`: one bounded statement, however large the table.
            prune: format!(
                "DELETE FROM {inbox} WHERE (message_id, handler) IN ( \
                     SELECT message_id, handler FROM {inbox} WHERE handled_at < ?1 \
                     ORDER BY handled_at LIMIT ?2)"
            )
            .into(),
        }
    }
}
