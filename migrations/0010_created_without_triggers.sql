-- Targets created are counted from the pipeline's rows, not by a trigger on its inserts
-- (issue 10, DESIGN.md invariant 10: retrylog's cost is paid on retries, not on every step).
--
-- 0004 put a statement-level trigger with a transition table on every INSERT into jobs and
-- jobs_variants; each inserting statement ran a PL/pgSQL function that inserted a row into
-- retry_target_created. It made inserting a job with four variants run at 0.63–0.87× the same
-- insert on a database without retrylog (docs/performance.md, "Footprint").
--
-- From here on the projector recounts the hours not yet settled from the rows themselves
-- (projections/retry_rollup.sql, retry_rollup_count_created): a BRIN index on created_at
-- finds them. A BRIN index holds one summary per range of table pages; an insert at the end
-- of the table, into a range not summarized yet, does not touch it at all, and one into a
-- summarized range widens that range's summary at most. created_at is never updated, so the
-- pipeline's updates stay HOT as before.

-- 1. The triggers go first: dropping them waits for the inserts that are running, so
--    everything they logged is visible below.
DROP TRIGGER jobs_count_created ON jobs;
DROP TRIGGER jobs_variants_count_created ON jobs_variants;
DROP FUNCTION retrylog_count_created();

-- 2. Fold what the projector had not applied yet, then drop the log of creations and the
--    function that summed it (projections/retry_rollup.sql no longer defines it).
INSERT INTO retry_rollup_created AS r (hour, kind, created)
SELECT c.hour, c.kind, sum(c.created)::bigint
  FROM retry_target_created c
 WHERE c.txid >= (SELECT position FROM projection_checkpoint WHERE projection = 'retry_rollup')
 GROUP BY 1, 2
ON CONFLICT (hour, kind) DO UPDATE SET created = r.created + excluded.created;
-- (Only a database migrated before has it: projections are installed after the migrations.)
DROP FUNCTION IF EXISTS retry_rollup_created_delta(xid8, xid8);
DROP TABLE retry_target_created;

-- 3. What finds the rows created since a moment. 32 pages per range: a range holds a few
--    thousand rows of these narrow tables, so a recount of the last hours reads little more
--    than those hours' rows.
CREATE INDEX IF NOT EXISTS retrylog_jobs_created_at
    ON jobs USING brin (created_at) WITH (pages_per_range = 32);
CREATE INDEX IF NOT EXISTS retrylog_jobs_variants_created_at
    ON jobs_variants USING brin (created_at) WITH (pages_per_range = 32);

-- 4. The hours still recounted: every hour from recount_from on is counted again by each
--    recount (rows may commit after their created_at, and a transaction's now() is its
--    start); the hours before it are settled. NULL: nothing counted yet, the next recount
--    takes every row. An install that had counted with the triggers keeps its settled hours
--    as counted (rows the pipeline has deleted since stay in them) and recounts from the
--    previous hour on.
CREATE TABLE retry_rollup_created_window (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    recount_from timestamptz,
    counted_at   timestamptz
);
INSERT INTO retry_rollup_created_window (recount_from)
SELECT CASE WHEN EXISTS (SELECT 1 FROM retry_rollup_created)
            THEN date_trunc('hour', now() - interval '1 hour', 'UTC') END;

REVOKE ALL ON retry_rollup_created_window FROM PUBLIC;
GRANT SELECT, UPDATE ON retry_rollup_created_window TO retrylog_operator;
GRANT SELECT ON retry_rollup_created_window TO retrylog_reader;
