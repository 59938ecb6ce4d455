-- Projection retry_counts: jobs.retry_count and jobs_variants.retry_count.
--
--   retry_count(target) = opening balance(target) + number of events in target's stream
--
-- where the events archived out of the log (migration 0019) are counted by the stream's base:
-- attempts are gapless from 1, so an archived prefix ending at attempt k holds k events.
--
-- retry_counts_delta is the one definition of what a range of log positions contributes.
-- The same SQL serves every path, so they cannot drift apart:
--   * inline    record_retry adds its one event (the delta of seq..seq: +1 on its own
--               target) to the row it locked, in the append's transaction, without reading
--               the event back through the log's seq index (one probe per partition);
--               retry_counts_apply(from, to) applies any range the same way;
--   * replay    retry_counts_rebuild() resets every drifted count to its opening balance
--               plus the delta of the whole log, in one statement;
--   * verify    retry_counts_drift() lists every count that differs from that same sum.
-- retrylog installs this file (CREATE OR REPLACE) on every migrate.

CREATE OR REPLACE FUNCTION retry_counts_delta(from_seq bigint, to_seq bigint)
RETURNS TABLE (job_id uuid, job_variants_id uuid, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT h.job_id, h.job_variants_id, count(*)
      FROM retry_history h
     WHERE h.seq BETWEEN from_seq AND to_seq
     GROUP BY h.job_id, h.job_variants_id
$$;

-- Apply log positions from_seq..to_seq (inclusive) on top of the current counts: each row of
-- retry_counts_delta adds its events to its own target's count, found by primary key.
-- It runs in every append, so it is PL/pgSQL (the session caches the plans) with a generic
-- plan (planning a custom one for each one-event range costs more than executing it). One
-- UPDATE per delta row, by primary key on the target's table only, rather than one statement
-- joining the delta to both tables: a generic plan estimates a seq range at 0.5% of the log,
-- so as the log grew that join turned into a hash join over a seq scan of all of
-- jobs_variants, in every append (20,000 variants, 46,000 events: 6 ms an append instead of
-- 0.5; bench/pgbench/append-cpu.sh).
CREATE OR REPLACE FUNCTION retry_counts_apply(from_seq bigint, to_seq bigint)
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    delta record;
BEGIN
    FOR delta IN SELECT * FROM retry_counts_delta(from_seq, to_seq) LOOP
        IF delta.job_variants_id IS NULL THEN
            UPDATE jobs j
               SET retry_count = j.retry_count + delta.events
             WHERE j.job_id = delta.job_id;
        ELSE
            UPDATE jobs_variants v
               SET retry_count = v.retry_count + delta.events
             WHERE v.job_variants_id = delta.job_variants_id;
        END IF;
    END LOOP;
END
$$;

-- Every existing target with its stored count and what the log says it should be:
-- opening balance + all of its events, the archived ones (its base's attempt) included.
CREATE OR REPLACE FUNCTION retry_counts_expected()
RETURNS TABLE (job_id uuid, job_variants_id uuid, retry_count integer,
               opening_balance integer, events bigint)
LANGUAGE sql STABLE AS $$
    WITH log AS (
        SELECT coalesce(d.job_id, b.job_id) AS job_id,
               coalesce(d.job_variants_id, b.job_variants_id) AS job_variants_id,
               coalesce(d.events, 0) + coalesce(b.attempt, 0) AS events
          FROM retry_counts_delta(1, 9223372036854775807) d
          FULL JOIN retry_stream_base b
            ON b.job_id = d.job_id AND b.job_variants_id IS NOT DISTINCT FROM d.job_variants_id
    )
    SELECT j.job_id, NULL::uuid, j.retry_count,
           coalesce(o.balance, 0), coalesce(log.events, 0)
      FROM jobs j
      LEFT JOIN retry_opening_balance o
             ON o.job_id = j.job_id AND o.job_variants_id IS NULL
      LEFT JOIN log
             ON log.job_id = j.job_id AND log.job_variants_id IS NULL
    UNION ALL
    SELECT v.job_id, v.job_variants_id, v.retry_count,
           coalesce(o.balance, 0), coalesce(log.events, 0)
      FROM jobs_variants v
      LEFT JOIN retry_opening_balance o ON o.job_variants_id = v.job_variants_id
      LEFT JOIN log ON log.job_variants_id = v.job_variants_id
$$;

-- Every target whose stored count differs from what the log says.
CREATE OR REPLACE FUNCTION retry_counts_drift()
RETURNS TABLE (job_id uuid, job_variants_id uuid, retry_count integer,
               expected bigint, opening_balance integer, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.job_id, e.job_variants_id, e.retry_count,
           e.opening_balance + e.events, e.opening_balance, e.events
      FROM retry_counts_expected() e
     WHERE e.retry_count <> e.opening_balance + e.events
$$;

-- Reset every count to opening balance + the whole log. Returns every row that drifted, as
-- retry_counts_drift() lists it, with whether this statement wrote it.
--
-- Rows that are already right are not written (a write of an indexed column is never cheap,
-- and pipeline triggers may watch them). No lock keeps appends out: a row is written only if
-- its count is still the one this statement read. An append that commits meanwhile changes
-- the count, so the row is skipped (written = false) rather than overwritten with a total
-- that misses the new event; the caller runs another pass for it.
CREATE OR REPLACE FUNCTION retry_counts_rebuild()
RETURNS TABLE (job_id uuid, job_variants_id uuid, retry_count integer,
               expected bigint, opening_balance integer, events bigint, written boolean)
-- Runs as its owner: the operator capability rebuilds the counts through it and has no
-- right to write a count by hand (sql/privileges.sql grants it and pins its search_path).
LANGUAGE sql SECURITY DEFINER AS $$
    WITH drift AS (
        SELECT * FROM retry_counts_drift()
    ), job_counts AS (
        UPDATE jobs j
           SET retry_count = drift.expected
          FROM drift
         WHERE drift.job_variants_id IS NULL AND j.job_id = drift.job_id
           AND j.retry_count = drift.retry_count
        RETURNING j.job_id
    ), variant_counts AS (
        UPDATE jobs_variants v
           SET retry_count = drift.expected
          FROM drift
         WHERE v.job_variants_id = drift.job_variants_id
           AND v.retry_count = drift.retry_count
        RETURNING v.job_variants_id
    )
    SELECT d.job_id, d.job_variants_id, d.retry_count, d.expected, d.opening_balance,
           d.events,
           CASE WHEN d.job_variants_id IS NULL
                THEN EXISTS (SELECT 1 FROM job_counts c WHERE c.job_id = d.job_id)
                ELSE EXISTS (SELECT 1 FROM variant_counts c
                              WHERE c.job_variants_id = d.job_variants_id)
           END
      FROM drift d
$$;
