-- Herald outbox on SQLite, version 1.
--
-- A template: `{table}` is replaced by the configured (validated) table name before it runs.
-- Times are integers, unix microseconds (UTC), computed by Herald and bound as parameters.
-- Ids are hyphenated UUID text, so that they read well in the sqlite3 shell.

-- Pending work only: published rows are deleted (or moved to the archive) and dead letters
-- are moved out, so that a claim costs O(batch) however much has gone through.
-- AUTOINCREMENT: a seq is never reused, even after the newest rows are deleted.
CREATE TABLE IF NOT EXISTS "{table}" (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT,
    partition_key  TEXT,
    content_type   TEXT    NOT NULL,
    traceparent    TEXT,
    tracestate     TEXT,
    headers        TEXT    NOT NULL DEFAULT '{}',
    payload        BLOB    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    available_at   INTEGER NOT NULL,
    locked_by      TEXT,
    locked_until   INTEGER,
    last_error     TEXT
);

-- The keys a claim must skip: rows under a lease (only claimed rows are in this index) ...
CREATE INDEX IF NOT EXISTS "{table}_locked_until"
    ON "{table}" (locked_until, locked_by, partition_key) WHERE locked_until IS NOT NULL;
-- ... and rows waiting for a retry.
CREATE INDEX IF NOT EXISTS "{table}_available_at"
    ON "{table}" (available_at, partition_key);

CREATE TABLE IF NOT EXISTS "{table}_dead_letters" (
    seq              INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    occurred_at      INTEGER NOT NULL,
    correlation_id   TEXT    NOT NULL,
    causation_id     TEXT,
    partition_key    TEXT,
    content_type     TEXT    NOT NULL,
    traceparent      TEXT,
    tracestate       TEXT,
    headers          TEXT    NOT NULL DEFAULT '{}',
    payload          BLOB    NOT NULL,
    recorded_at      INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    last_error       TEXT    NOT NULL,
    dead_lettered_at INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS "{table}_dead_letters_id"
    ON "{table}_dead_letters" (id);
CREATE INDEX IF NOT EXISTS "{table}_dead_letters_dead_lettered_at"
    ON "{table}_dead_letters" (dead_lettered_at);

CREATE TABLE IF NOT EXISTS "{table}_archive" (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT,
    partition_key  TEXT,
    content_type   TEXT    NOT NULL,
    traceparent    TEXT,
    tracestate     TEXT,
    headers        TEXT    NOT NULL DEFAULT '{}',
    payload        BLOB    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    published_at   INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS "{table}_archive_published_at"
    ON "{table}_archive" (published_at);
