-- Herald inbox key holds on SQLite, version 3.
--
-- A template, like 0001: `{table}` is the configured (validated) table name. Times are unix
-- microseconds (UTC) bound by Herald; ids are hyphenated UUID text.
--
-- One row per message a consumer sent away (a delayed retry, or a deferral behind an earlier
-- message of its key): "message `message_id` of key
-- `partition_key` is away until `due_at`". Written and committed before the retry is sent;
-- deleted in the transaction that commits the message's effects (or when it is dead-lettered).
-- A handler's inbox claim looks up its key here (the primary key's prefix): a later message of
-- a held key is deferred instead of handled, so that per-key order survives a consumer restart.
CREATE TABLE IF NOT EXISTS "{table}_held_keys" (
    consumer      TEXT    NOT NULL,
    partition_key TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    due_at        INTEGER NOT NULL,
    -- The key's order: a message holding its key waits only for holds taken before its own.
    seq           INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition_key, message_id)
) WITHOUT ROWID;
