-- Herald outbox claims, version 5.
--
-- A template, like 0001: `{schema}` and `{table}` are the configured (validated) identifiers.
--
-- A relay's lease moves from its rows to one row per claim: "relay `relay` holds the outbox rows
-- `seqs` (whose keys are `keys`) until `until`". Versions 1 to 4 wrote the lease into every
-- claimed row (`attempts`, `locked_by`, `locked_until`): a new version of each row, payload and
-- all, plus an entry in each of its three indexes, which made the claim cost more than the rest
-- of a drain (B2k: 37 % of PostgreSQL's time inserting those index entries). A claim now reads
-- its rows and writes one row here; the outbox rows are written only when they leave (published
-- or dead-lettered), when they fail (a retry), or when a claim of theirs ran out (counted as an
-- attempt by the claim that takes them over). `attempts` now counts the claims that are over:
-- a claim hands out `attempts + 1`.
--
-- The table holds one row per claim in flight (a few per relay). Claims read all of it, so it
-- has no index but its key.

CREATE TABLE "{schema}"."{table}_claims" (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay uuid        NOT NULL,
    until timestamptz NOT NULL,
    seqs  bigint[]    NOT NULL,
    keys  text[]      NOT NULL
);

-- Leases live at the upgrade become claims, and stop counting as attempts of their rows (the
-- claim's end will count them). Expired leases were counted when they were taken.
INSERT INTO "{schema}"."{table}_claims" (relay, until, seqs, keys)
SELECT locked_by, max(locked_until), array_agg(seq ORDER BY seq),
       coalesce(array_agg(DISTINCT partition_key) FILTER (WHERE partition_key IS NOT NULL), '{}')
FROM "{schema}"."{table}"
WHERE locked_by IS NOT NULL AND locked_until > now()
GROUP BY locked_by;

UPDATE "{schema}"."{table}" SET attempts = greatest(attempts - 1, 0)
WHERE locked_by IS NOT NULL AND locked_until > now();

DROP INDEX "{schema}"."{table}_lease_by_idx";
ALTER TABLE "{schema}"."{table}" DROP COLUMN locked_by, DROP COLUMN locked_until;
