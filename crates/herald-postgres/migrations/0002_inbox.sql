-- Herald inbox, version 2.
--
-- A template, like 0001: `{schema}` and `{table}` are the configured (validated) identifiers.
--
-- One row per message a consumer's handler has handled, written in the same transaction as the
-- handler's own effects. The primary key is what detects a duplicate delivery: the second
-- `INSERT … ON CONFLICT DO NOTHING` of a (message, handler) pair inserts nothing (and, while
-- the first transaction is still open, waits for it). Message ids are UUIDv7, so new keys land
-- at the right edge of the index. Retention deletes old rows in bounded batches by
-- `handled_at`.

CREATE TABLE "{schema}"."{table}_inbox" (
    message_id uuid NOT NULL,
    handler    text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, handler)
);

CREATE INDEX "{table}_inbox_at_idx" ON "{schema}"."{table}_inbox" (handled_at);
