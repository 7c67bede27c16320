-- Herald inbox key holds, version 3.
--
-- A template, like 0001: `{schema}` and `{table}` are the configured (validated) identifiers.
--
-- One row per message a consumer sent away (a delayed retry, or a deferral behind an earlier
-- message of its key): "message `message_id` of key
-- `partition_key` is away until `due_at`". Written and committed before the retry is sent;
-- deleted in the transaction that commits the message's effects (or when it is dead-lettered).
-- The statement that writes a handler's inbox record looks up its key here (the primary key's
-- prefix): a later message of a held key is deferred instead of handled, so that per-key order
-- survives a consumer restart. Rows stay few: one per message waiting in a delay queue.

CREATE TABLE "{schema}"."{table}_held_keys" (
    consumer      text        NOT NULL,
    partition_key text        NOT NULL,
    message_id    uuid        NOT NULL,
    due_at        timestamptz NOT NULL,
    -- The key's order: a message holding its key waits only for holds taken before its own.
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (consumer, partition_key, message_id)
);
