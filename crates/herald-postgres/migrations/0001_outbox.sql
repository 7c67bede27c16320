-- Herald outbox, version 1.
--
-- A template: `{schema}` and `{table}` are replaced by the configured (validated) identifiers
-- before it runs, inside the migration transaction that holds the schema's advisory lock.
--
-- The outbox table only ever holds pending work: published rows are deleted (or moved to the
-- archive) and dead letters are moved out, so a claim costs O(batch), not O(history).

CREATE TABLE "{schema}"."{table}" (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             uuid NOT NULL UNIQUE,
    event_type     text NOT NULL,
    version        integer NOT NULL,
    occurred_at    timestamptz NOT NULL,
    correlation_id uuid NOT NULL,
    causation_id   uuid,
    partition_key  text,
    content_type   text NOT NULL,
    traceparent    text,
    tracestate     text,
    headers        jsonb NOT NULL DEFAULT '{}',
    payload        bytea NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    attempts       integer NOT NULL DEFAULT 0,
    available_at   timestamptz NOT NULL DEFAULT now(),
    locked_by      uuid,
    locked_until   timestamptz,
    last_error     text
);

-- The claim's "blocked keys" lookup: rows under a lease, and rows waiting for a retry.
-- Both are partial, so a freshly recorded row (no lease, never attempted) enters neither and
-- the write path pays for the primary key and the id only.
CREATE INDEX "{table}_lease_idx" ON "{schema}"."{table}" (locked_until)
    WHERE locked_until IS NOT NULL;
CREATE INDEX "{table}_retry_idx" ON "{schema}"."{table}" (available_at)
    WHERE attempts > 0;

CREATE TABLE "{schema}"."{table}_dead_letters" (
    seq              bigint PRIMARY KEY, -- the row's seq in the outbox
    id               uuid NOT NULL,
    event_type       text NOT NULL,
    version          integer NOT NULL,
    occurred_at      timestamptz NOT NULL,
    correlation_id   uuid NOT NULL,
    causation_id     uuid,
    partition_key    text,
    content_type     text NOT NULL,
    traceparent      text,
    tracestate       text,
    headers          jsonb NOT NULL DEFAULT '{}',
    payload          bytea NOT NULL,
    recorded_at      timestamptz NOT NULL,
    attempts         integer NOT NULL,
    last_error       text NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX "{table}_dl_at_idx" ON "{schema}"."{table}_dead_letters" (dead_lettered_at);
CREATE INDEX "{table}_dl_id_idx" ON "{schema}"."{table}_dead_letters" (id);

CREATE TABLE "{schema}"."{table}_archive" (
    seq            bigint PRIMARY KEY, -- the row's seq in the outbox
    id             uuid NOT NULL,
    event_type     text NOT NULL,
    version        integer NOT NULL,
    occurred_at    timestamptz NOT NULL,
    correlation_id uuid NOT NULL,
    causation_id   uuid,
    partition_key  text,
    content_type   text NOT NULL,
    traceparent    text,
    tracestate     text,
    headers        jsonb NOT NULL DEFAULT '{}',
    payload        bytea NOT NULL,
    recorded_at    timestamptz NOT NULL,
    attempts       integer NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX "{table}_ar_at_idx" ON "{schema}"."{table}_archive" (published_at);
