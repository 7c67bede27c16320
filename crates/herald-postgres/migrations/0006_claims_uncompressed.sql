-- Herald outbox claims stored uncompressed, version 6.
--
-- A template, like 0001: `{schema}` and `{table}` are the configured (validated) identifiers.
--
-- A claim row's arrays (512 `seq`s and up to 512 keys for a default batch) are past the 2 kB
-- TOAST threshold, so PostgreSQL compressed them (pglz) on every claim, and every claim after it
-- decompressed them again to learn which rows and keys are held: pglz was the largest single
-- function in PostgreSQL's profile of a B2k drain. Stored out of line but uncompressed, a claim
-- of 512 rows runs ~20 % faster (1.33 ms against 1.72 ms, 100 000 rows pending behind two
-- claims of 512). The rows are short-lived, so the extra bytes do not accumulate.
--
-- Only the storage of new values changes: no row is rewritten.

ALTER TABLE "{schema}"."{table}_claims"
    ALTER COLUMN seqs SET STORAGE EXTERNAL,
    ALTER COLUMN keys SET STORAGE EXTERNAL;
