-- Herald inbox on SQLite, version 2.
--
-- A template, like 0001: `{table}` is the configured (validated) table name. Times are unix
-- microseconds (UTC) bound by Herald; ids are hyphenated UUID text.
--
-- One row per message a consumer's handler has handled, written in the same transaction as the
-- handler's own effects. The primary key is what detects a duplicate delivery: the second
-- `INSERT … ON CONFLICT DO NOTHING` of a (message, handler) pair inserts nothing. WITHOUT
-- ROWID: the key is the row, so a lookup or insert touches one b-tree. Retention deletes old
-- rows in bounded batches by `handled_at`.
CREATE TABLE IF NOT EXISTS "{table}_inbox" (
    message_id TEXT    NOT NULL,
    handler    TEXT    NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, handler)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS "{table}_inbox_handled_at"
    ON "{table}_inbox" (handled_at);
