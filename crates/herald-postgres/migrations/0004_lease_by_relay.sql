-- Herald outbox lease index by relay, version 4.
--
-- A template, like 0001: `{schema}` and `{table}` are the configured (validated) identifiers.
--
-- A claim looks up the leases of *other* relays (their keys are blocked for it) and the leases
-- of other relays that ran out (`stale`). Version 1 indexed leases by `locked_until` alone, so
-- those lookups read every lease entry, the claimer's own included, and a bitmap scan checks
-- each entry against the table: the entries of the rows this relay published and deleted in the
-- last lease period (all of them, until vacuum) were read again by every claim, a cost that grew
-- with the drain (7 ms of a 19 ms claim after 75 000 rows). Leading with `locked_by`, the
-- lookups are two ranges, below and above the claimer's id (`locked_by <> $1` as `<` or `>`),
-- and never touch the claimer's own entries, dead or alive.

CREATE INDEX "{table}_lease_by_idx" ON "{schema}"."{table}" (locked_by, locked_until)
    WHERE locked_until IS NOT NULL;
DROP INDEX "{schema}"."{table}_lease_idx";
