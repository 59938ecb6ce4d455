-- Projection retry_rollup: retries per UTC hour x kind x reason x step x scenario, and the
-- targets created per hour, for `retrylog report trend`.
--
-- Kept asynchronously by the projector (src/projector.rs), which tails the log by
-- transaction id: a range is [from_txid, to_txid), and to_txid never passes the oldest
-- running transaction, so no event that commits late is skipped.
--
-- An event is "first" in a bucket and group when no earlier attempt of the same target among
-- the events applied (the rollup's, below its checkpoint) falls in the same bucket with the
-- same group value: summed over a bucket, the first_* columns count the targets retried there.
--
-- Two computations of the same rows, each checked against the other by verify:
--   * retry_rollup_expected(up_to) reads every event below up_to at once, window functions
--     over whole streams: what replay rebuilds from (the range from '1') and what verify
--     (retry_rollup_drift) compares the rollup with;
--   * retry_rollup_delta(from, to) is what a range adds on top of what is applied below it,
--     read from retry_rollup_cell (migration 0008: per stream and rollup row, the lowest
--     attempt applied) instead of from the streams: a batch costs what its own events cost,
--     however long their streams are already (issue 10). retry_rollup_apply adds it and
--     updates the cells, in the projector's transaction that moves the checkpoint;
--     retry_rollup_reset empties the rollup and the cells.

-- The rollup's rows from every event below up_to: per stream, the lowest attempt in each
-- bucket and group is its first.
CREATE OR REPLACE FUNCTION retry_rollup_expected(up_to xid8)
RETURNS TABLE (
    hour timestamptz, kind text, reason retry_reason, step text, scenario text,
    retries bigint,
    first_hour_kind bigint, first_hour_reason bigint, first_hour_step bigint,
    first_hour_scenario bigint,
    first_day_kind bigint, first_day_reason bigint, first_day_step bigint,
    first_day_scenario bigint,
    first_week_kind bigint, first_week_reason bigint, first_week_step bigint,
    first_week_scenario bigint)
LANGUAGE sql STABLE AS $$
    -- (The nil uuid stands for "job-level", as in retry_rollup_cell.)
    WITH events AS (
        SELECT h.job_id,
               coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000') AS stream,
               h.job_variants_id, h.attempt, h.reason,
               -- Bounded key parts: record_retry refuses longer ones since migration 0006;
               -- an event stored before is cut here rather than jam the rollup's index.
               left(coalesce(h.step, ''), 200) AS step,
               left(coalesce(h.detail ->> 'scenario', ''), 200) AS scenario,
               date_trunc('hour', h.occurred_at, 'UTC') AS hour,
               date_trunc('day', h.occurred_at, 'UTC') AS day,
               date_trunc('week', h.occurred_at, 'UTC') AS week
          FROM retry_history h
         WHERE h.txid < up_to
    ), flagged AS (
        SELECT e.*,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.hour) AS f_hour,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.hour, e.reason) AS f_hour_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.hour, e.step) AS f_hour_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.hour, e.scenario) AS f_hour_scenario,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.day) AS f_day,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.day, e.reason) AS f_day_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.day, e.step) AS f_day_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.day, e.scenario) AS f_day_scenario,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.week) AS f_week,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.week, e.reason) AS f_week_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.week, e.step) AS f_week_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.stream, e.week, e.scenario) AS f_week_scenario
          FROM events e
    )
    SELECT f.hour,
           CASE WHEN f.job_variants_id IS NULL THEN 'job' ELSE 'variant' END,
           f.reason, f.step, f.scenario,
           count(*),
           count(*) FILTER (WHERE f.f_hour),
           count(*) FILTER (WHERE f.f_hour_reason),
           count(*) FILTER (WHERE f.f_hour_step),
           count(*) FILTER (WHERE f.f_hour_scenario),
           count(*) FILTER (WHERE f.f_day),
           count(*) FILTER (WHERE f.f_day_reason),
           count(*) FILTER (WHERE f.f_day_step),
           count(*) FILTER (WHERE f.f_day_scenario),
           count(*) FILTER (WHERE f.f_week),
           count(*) FILTER (WHERE f.f_week_reason),
           count(*) FILTER (WHERE f.f_week_step),
           count(*) FILTER (WHERE f.f_week_scenario)
      FROM flagged f
     GROUP BY 1, 2, 3, 4, 5
$$;

-- What the events of [from_txid, to_txid) add to the rollup holding everything below
-- from_txid, its cells included. A first_* can be -1: an event with a lower attempt than the
-- first applied so far (its transaction took its id first and committed later) takes the flag
-- over from that one's row.
CREATE OR REPLACE FUNCTION retry_rollup_delta(from_txid xid8, to_txid xid8)
RETURNS TABLE (
    hour timestamptz, kind text, reason retry_reason, step text, scenario text,
    retries bigint,
    first_hour_kind bigint, first_hour_reason bigint, first_hour_step bigint,
    first_hour_scenario bigint,
    first_day_kind bigint, first_day_reason bigint, first_day_step bigint,
    first_day_scenario bigint,
    first_week_kind bigint, first_week_reason bigint, first_week_step bigint,
    first_week_scenario bigint)
LANGUAGE sql STABLE AS $$
    -- 1. The range's events, keyed like the cells.
    WITH events AS (
        SELECT h.job_id,
               coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000') AS variant,
               CASE WHEN h.job_variants_id IS NULL THEN 'job' ELSE 'variant' END AS kind,
               h.attempt, h.reason,
               left(coalesce(h.step, ''), 200) AS step,
               left(coalesce(h.detail ->> 'scenario', ''), 200) AS scenario,
               date_trunc('hour', h.occurred_at, 'UTC') AS hour,
               date_trunc('day', h.occurred_at, 'UTC') AS day,
               date_trunc('week', h.occurred_at, 'UTC') AS week
          FROM retry_history h
         WHERE h.txid >= from_txid AND h.txid < to_txid
    ),
    -- 2. The twelve (bucket, group) pairs of a flag; a bucket is [start, start + width) in
    --    UTC, widths in hours (a day added to a timestamptz follows the session's time zone).
    --    A group's value is '' for kind: a stream has one kind.
    spans (unit, width) AS (
        VALUES ('hour', interval '1 hour'), ('day', interval '24 hours'),
               ('week', interval '168 hours')
    ), grps (grp) AS (
        VALUES ('kind'), ('reason'), ('step'), ('scenario')
    ),
    -- 3. Each pair's lowest attempt in the range, per stream, bucket and value.
    keys AS (
        SELECT e.job_id, e.variant, s.unit, s.width, g.grp,
               CASE s.unit WHEN 'hour' THEN e.hour WHEN 'day' THEN e.day ELSE e.week END
                   AS bucket,
               CASE g.grp WHEN 'kind' THEN '' WHEN 'reason' THEN e.reason::text
                          WHEN 'step' THEN e.step ELSE e.scenario END AS value,
               min(e.attempt) AS attempt
          FROM events e CROSS JOIN spans s CROSS JOIN grps g
         GROUP BY 1, 2, 3, 4, 5, 6, 7
    ),
    -- 4. What is applied already: does an applied attempt below the range's lowest fall in the
    --    key? One index probe per key, which stops at the first such cell (the primary key
    --    for kind, an index per group otherwise): its cost does not grow with the stream.
    --    Only when none does is the key's lowest cell looked up, to take its flag: then the
    --    key holds no applied cell at all, or only later attempts whose transactions took
    --    their ids first.
    --    (Reading a short stream's cells whole instead was slower: 12 keys per cell to sort.)
    probed AS (
        SELECT k.*,
               CASE k.grp
                 WHEN 'kind' THEN EXISTS (
                     SELECT 1 FROM retry_rollup_cell c
                      WHERE c.job_id = k.job_id AND c.variant = k.variant
                        AND c.hour >= k.bucket AND c.hour < k.bucket + k.width
                        AND c.first_attempt < k.attempt)
                 WHEN 'reason' THEN EXISTS (
                     SELECT 1 FROM retry_rollup_cell c
                      WHERE c.job_id = k.job_id AND c.variant = k.variant
                        AND c.reason = k.value::retry_reason
                        AND c.hour >= k.bucket AND c.hour < k.bucket + k.width
                        AND c.first_attempt < k.attempt)
                 WHEN 'step' THEN EXISTS (
                     SELECT 1 FROM retry_rollup_cell c
                      WHERE c.job_id = k.job_id AND c.variant = k.variant AND c.step = k.value
                        AND c.hour >= k.bucket AND c.hour < k.bucket + k.width
                        AND c.first_attempt < k.attempt)
                 ELSE EXISTS (
                     SELECT 1 FROM retry_rollup_cell c
                      WHERE c.job_id = k.job_id AND c.variant = k.variant
                        AND c.scenario = k.value
                        AND c.hour >= k.bucket AND c.hour < k.bucket + k.width
                        AND c.first_attempt < k.attempt)
               END AS has_lower
          FROM keys k
    ), decided AS (
        SELECT k.job_id, k.variant, k.unit, k.grp, k.attempt, k.has_lower,
               p.first_attempt, p.hour, p.kind, p.reason, p.step, p.scenario
          FROM probed k
          LEFT JOIN LATERAL (
              SELECT c.first_attempt, c.hour, c.kind, c.reason, c.step, c.scenario
                FROM retry_rollup_cell c
               WHERE NOT k.has_lower
                 AND c.job_id = k.job_id AND c.variant = k.variant
                 AND c.hour >= k.bucket AND c.hour < k.bucket + k.width
                 AND (k.grp = 'kind'
                      OR (k.grp = 'reason' AND c.reason::text = k.value)
                      OR (k.grp = 'step' AND c.step = k.value)
                      OR (k.grp = 'scenario' AND c.scenario = k.value))
               ORDER BY c.first_attempt
               LIMIT 1) p ON true
    ),
    -- 5. A key without a lower applied attempt: its range event of the lowest attempt is
    --    first (+1 in its row); the applied cell that was first there, if any, is no more
    --    (-1 in that cell's row).
    marks AS (
        SELECT e.hour, e.kind, e.reason, e.step, e.scenario, d.unit, d.grp, 1 AS mark
          FROM decided d
          JOIN events e
            ON e.job_id = d.job_id AND e.variant = d.variant AND e.attempt = d.attempt
         WHERE NOT d.has_lower
        UNION ALL
        SELECT d.hour, d.kind, d.reason, d.step, d.scenario, d.unit, d.grp, -1
          FROM decided d
         WHERE NOT d.has_lower AND d.first_attempt IS NOT NULL
    ), counted AS (
        SELECT e.hour, e.kind, e.reason, e.step, e.scenario, NULL AS unit, NULL AS grp,
               0 AS mark, 1 AS retries
          FROM events e
        UNION ALL
        SELECT m.*, 0 FROM marks m
    )
    SELECT c.hour, c.kind, c.reason, c.step, c.scenario,
           sum(c.retries)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'hour' AND c.grp = 'kind'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'hour' AND c.grp = 'reason'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'hour' AND c.grp = 'step'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'hour' AND c.grp = 'scenario'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'day' AND c.grp = 'kind'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'day' AND c.grp = 'reason'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'day' AND c.grp = 'step'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'day' AND c.grp = 'scenario'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'week' AND c.grp = 'kind'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'week' AND c.grp = 'reason'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'week' AND c.grp = 'step'), 0)::bigint,
           coalesce(sum(c.mark) FILTER (WHERE c.unit = 'week' AND c.grp = 'scenario'), 0)::bigint
      FROM counted c
     GROUP BY 1, 2, 3, 4, 5
$$;

-- Targets created in a range: the insert-only retry_target_created, summed per hour and kind.
CREATE OR REPLACE FUNCTION retry_rollup_created_delta(from_txid xid8, to_txid xid8)
RETURNS TABLE (hour timestamptz, kind text, created bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.hour, c.kind, sum(c.created)::bigint
      FROM retry_target_created c
     WHERE c.txid >= from_txid AND c.txid < to_txid
     GROUP BY 1, 2
$$;

-- Add a range's events and creations to the rollup, and its events to the cells; returns the
-- number of events applied. A range from '1' has nothing applied below it: it is read with
-- retry_rollup_expected, whole streams at once (what replay runs, on an empty rollup).
CREATE OR REPLACE FUNCTION retry_rollup_apply(from_txid xid8, to_txid xid8)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    applied bigint;
BEGIN
    -- 1. The rollup, from the cells as they were before this range.
    IF from_txid = '1' THEN
        WITH delta AS (
            SELECT * FROM retry_rollup_expected(to_txid)
        ), upserted AS (
            INSERT INTO retry_rollup AS r
            SELECT * FROM delta
            ON CONFLICT (hour, kind, reason, step, scenario) DO UPDATE SET
                retries             = r.retries             + excluded.retries,
                first_hour_kind     = r.first_hour_kind     + excluded.first_hour_kind,
                first_hour_reason   = r.first_hour_reason   + excluded.first_hour_reason,
                first_hour_step     = r.first_hour_step     + excluded.first_hour_step,
                first_hour_scenario = r.first_hour_scenario + excluded.first_hour_scenario,
                first_day_kind      = r.first_day_kind      + excluded.first_day_kind,
                first_day_reason    = r.first_day_reason    + excluded.first_day_reason,
                first_day_step      = r.first_day_step      + excluded.first_day_step,
                first_day_scenario  = r.first_day_scenario  + excluded.first_day_scenario,
                first_week_kind     = r.first_week_kind     + excluded.first_week_kind,
                first_week_reason   = r.first_week_reason   + excluded.first_week_reason,
                first_week_step     = r.first_week_step     + excluded.first_week_step,
                first_week_scenario = r.first_week_scenario + excluded.first_week_scenario
        )
        SELECT coalesce(sum(retries), 0)::bigint INTO applied FROM delta;
    ELSE
        WITH delta AS (
            SELECT * FROM retry_rollup_delta(from_txid, to_txid)
        ), upserted AS (
            INSERT INTO retry_rollup AS r
            SELECT * FROM delta
            ON CONFLICT (hour, kind, reason, step, scenario) DO UPDATE SET
                retries             = r.retries             + excluded.retries,
                first_hour_kind     = r.first_hour_kind     + excluded.first_hour_kind,
                first_hour_reason   = r.first_hour_reason   + excluded.first_hour_reason,
                first_hour_step     = r.first_hour_step     + excluded.first_hour_step,
                first_hour_scenario = r.first_hour_scenario + excluded.first_hour_scenario,
                first_day_kind      = r.first_day_kind      + excluded.first_day_kind,
                first_day_reason    = r.first_day_reason    + excluded.first_day_reason,
                first_day_step      = r.first_day_step      + excluded.first_day_step,
                first_day_scenario  = r.first_day_scenario  + excluded.first_day_scenario,
                first_week_kind     = r.first_week_kind     + excluded.first_week_kind,
                first_week_reason   = r.first_week_reason   + excluded.first_week_reason,
                first_week_step     = r.first_week_step     + excluded.first_week_step,
                first_week_scenario = r.first_week_scenario + excluded.first_week_scenario
        )
        SELECT coalesce(sum(retries), 0)::bigint INTO applied FROM delta;
    END IF;

    -- 2. Then the cells: each stream's lowest attempt per rollup row, this range's included.
    INSERT INTO retry_rollup_cell AS c
    SELECT h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
           date_trunc('hour', h.occurred_at, 'UTC'),
           CASE WHEN h.job_variants_id IS NULL THEN 'job' ELSE 'variant' END,
           h.reason, left(coalesce(h.step, ''), 200),
           left(coalesce(h.detail ->> 'scenario', ''), 200),
           min(h.attempt)
      FROM retry_history h
     WHERE h.txid >= from_txid AND h.txid < to_txid
     GROUP BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (job_id, variant, hour, kind, reason, step, scenario) DO UPDATE
       SET first_attempt = least(c.first_attempt, excluded.first_attempt);

    INSERT INTO retry_rollup_created AS r
    SELECT * FROM retry_rollup_created_delta(from_txid, to_txid)
    ON CONFLICT (hour, kind) DO UPDATE SET created = r.created + excluded.created;

    RETURN applied;
END
$$;

-- Empty the rollup and its cells (replay then applies everything below its horizon).
CREATE OR REPLACE FUNCTION retry_rollup_reset()
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM retry_rollup;
    DELETE FROM retry_rollup_cell;
    DELETE FROM retry_rollup_created;
$$;

-- Rollup rows that differ from what the log (and the creations) say below `up_to`; and the
-- rollup rows whose cells differ (the catch-up's state: a later batch would go wrong), with
-- the number of cells stored and expected.
CREATE OR REPLACE FUNCTION retry_rollup_drift(up_to xid8)
RETURNS TABLE (hour timestamptz, kind text, reason retry_reason, step text, scenario text,
               stored_retries bigint, expected_retries bigint, problem text)
LANGUAGE sql STABLE AS $$
    WITH expected AS (
        SELECT * FROM retry_rollup_expected(up_to)
    ), expected_cells AS (
        SELECT h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000') AS variant,
               date_trunc('hour', h.occurred_at, 'UTC') AS hour,
               CASE WHEN h.job_variants_id IS NULL THEN 'job' ELSE 'variant' END AS kind,
               h.reason, left(coalesce(h.step, ''), 200) AS step,
               left(coalesce(h.detail ->> 'scenario', ''), 200) AS scenario,
               min(h.attempt) AS first_attempt
          FROM retry_history h
         WHERE h.txid < up_to
         GROUP BY 1, 2, 3, 4, 5, 6, 7
    ), cells_differ AS (
        SELECT coalesce(s.hour, e.hour) AS hour, coalesce(s.kind, e.kind) AS kind,
               coalesce(s.reason, e.reason) AS reason, coalesce(s.step, e.step) AS step,
               coalesce(s.scenario, e.scenario) AS scenario,
               count(s.job_id) AS stored, count(e.job_id) AS expected
          FROM retry_rollup_cell s
          FULL JOIN expected_cells e
            ON (s.job_id, s.variant, s.hour, s.kind, s.reason, s.step, s.scenario)
             = (e.job_id, e.variant, e.hour, e.kind, e.reason, e.step, e.scenario)
         WHERE s.first_attempt IS DISTINCT FROM e.first_attempt
         GROUP BY 1, 2, 3, 4, 5
    )
    SELECT coalesce(s.hour, e.hour), coalesce(s.kind, e.kind), coalesce(s.reason, e.reason),
           coalesce(s.step, e.step), coalesce(s.scenario, e.scenario),
           s.retries, e.retries,
           CASE WHEN s.hour IS NULL THEN 'missing from the rollup'
                WHEN e.hour IS NULL THEN 'not in the log'
                ELSE 'counts differ' END
      FROM retry_rollup s
      FULL JOIN expected e
        ON (s.hour, s.kind, s.reason, s.step, s.scenario)
         = (e.hour, e.kind, e.reason, e.step, e.scenario)
     WHERE (s.retries, s.first_hour_kind, s.first_hour_reason, s.first_hour_step,
            s.first_hour_scenario, s.first_day_kind, s.first_day_reason, s.first_day_step,
            s.first_day_scenario, s.first_week_kind, s.first_week_reason, s.first_week_step,
            s.first_week_scenario)
           IS DISTINCT FROM
           (e.retries, e.first_hour_kind, e.first_hour_reason, e.first_hour_step,
            e.first_hour_scenario, e.first_day_kind, e.first_day_reason, e.first_day_step,
            e.first_day_scenario, e.first_week_kind, e.first_week_reason, e.first_week_step,
            e.first_week_scenario)
    UNION ALL
    SELECT coalesce(s.hour, e.hour), coalesce(s.kind, e.kind), NULL, NULL, NULL,
           s.created, e.created,
           'targets created differ'
      FROM retry_rollup_created s
      FULL JOIN retry_rollup_created_delta('1', up_to) e
        ON (s.hour, s.kind) = (e.hour, e.kind)
     WHERE s.created IS DISTINCT FROM e.created
    UNION ALL
    SELECT d.hour, d.kind, d.reason, d.step, d.scenario, d.stored, d.expected,
           'catch-up cells differ'
      FROM cells_differ d
$$;
