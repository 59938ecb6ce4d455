-- Projection retry_rollup: retries per UTC hour x kind x reason x step x scenario, and the
-- targets created per hour (recounted from the pipeline's rows, below), for `retrylog report
-- trend`.
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
--     attempt applied) and retry_rollup_lowest (0011: per stream, day or week, and key, the
--     lowest of those cells) instead of from the streams: a batch costs what its own events
--     cost, however long their streams are already (issue 10). retry_rollup_apply adds it and
--     updates both, in the projector's transaction that moves the checkpoint;
--     retry_rollup_reset empties the rollup, the cells and the lowest.

-- The events of [from_txid, to_txid), keyed as the rollup's rows and the cells are (the nil
-- uuid stands for the job-level stream). A plain SQL function, so the planner inlines it and
-- the txid range reaches the index.
CREATE OR REPLACE FUNCTION retry_rollup_keyed(from_txid xid8, to_txid xid8)
RETURNS TABLE (job_id uuid, variant uuid, kind text, attempt integer, reason retry_reason,
               step text, scenario text, hour timestamptz, day timestamptz, week timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT h.job_id,
           coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
           CASE WHEN h.job_variants_id IS NULL THEN 'job' ELSE 'variant' END,
           h.attempt, h.reason,
           -- Bounded key parts: record_retry refuses longer ones since migration 0006;
           -- an event stored before is cut here rather than jam the rollup's index.
           left(coalesce(h.step, ''), 200),
           left(coalesce(h.detail ->> 'scenario', ''), 200),
           date_trunc('hour', h.occurred_at, 'UTC'),
           date_trunc('day', h.occurred_at, 'UTC'),
           date_trunc('week', h.occurred_at, 'UTC')
      FROM retry_history h
     WHERE h.txid >= from_txid AND h.txid < to_txid
$$;

-- The cells of [from_txid, to_txid) alone: per stream and rollup row, its lowest attempt.
CREATE OR REPLACE FUNCTION retry_rollup_cells_of(from_txid xid8, to_txid xid8)
RETURNS TABLE (job_id uuid, variant uuid, hour timestamptz, kind text, reason retry_reason,
               step text, scenario text, first_attempt integer)
LANGUAGE sql STABLE AS $$
    SELECT e.job_id, e.variant, e.hour, e.kind, e.reason, e.step, e.scenario, min(e.attempt)
      FROM retry_rollup_keyed(from_txid, to_txid) e
     GROUP BY 1, 2, 3, 4, 5, 6, 7
$$;

-- The lowest of those cells per stream, UTC day or week, and key (retry_rollup_lowest). The
-- lowest attempt by hashing, then its cell by the attempt (unique in its stream): sorting
-- the cells to keep each group's first instead took a rebuild of a million events 10 s.
CREATE OR REPLACE FUNCTION retry_rollup_lowest_of(from_txid xid8, to_txid xid8)
RETURNS TABLE (job_id uuid, variant uuid, span text, starts timestamptz, kind text,
               reason retry_reason, step text, scenario text, hour timestamptz,
               first_attempt integer)
LANGUAGE sql STABLE AS $$
    WITH cells AS (
        SELECT * FROM retry_rollup_cells_of(from_txid, to_txid)
    ), lowest AS (
        SELECT c.job_id, c.variant, s.span, s.starts, c.kind, c.reason, c.step, c.scenario,
               min(c.first_attempt) AS first_attempt
          FROM cells c
         CROSS JOIN LATERAL (VALUES ('day', date_trunc('day', c.hour, 'UTC')),
                                    ('week', date_trunc('week', c.hour, 'UTC'))) AS s(span, starts)
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    )
    SELECT l.job_id, l.variant, l.span, l.starts, l.kind, l.reason, l.step, l.scenario,
           c.hour, l.first_attempt
      FROM lowest l
      JOIN cells c
        ON (c.job_id, c.variant, c.first_attempt) = (l.job_id, l.variant, l.first_attempt)
$$;

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
    WITH events AS (
        SELECT * FROM retry_rollup_keyed('0', up_to)
    ), flagged AS (
        SELECT e.*,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.hour) AS f_hour,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.hour, e.reason) AS f_hour_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.hour, e.step) AS f_hour_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.hour, e.scenario) AS f_hour_scenario,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.day) AS f_day,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.day, e.reason) AS f_day_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.day, e.step) AS f_day_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.day, e.scenario) AS f_day_scenario,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.week) AS f_week,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.week, e.reason) AS f_week_reason,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.week, e.step) AS f_week_step,
               e.attempt = min(e.attempt) OVER (PARTITION BY e.job_id, e.variant, e.week, e.scenario) AS f_week_scenario
          FROM events e
    )
    SELECT f.hour, f.kind, f.reason, f.step, f.scenario,
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
        SELECT * FROM retry_rollup_keyed(from_txid, to_txid)
    ),
    -- 2. What is applied already where the range can change a flag, for each stream it
    --    touches: every cell of each hour it touches, and the lowest cell per reason, step
    --    and scenario of each day and week it touches (retry_rollup_lowest). (Every bucket's
    --    lowest attempt per group value, and the row it lies in, is among them; a bucket
    --    without range events changes no flag.) What goes on to the window functions is thus
    --    bounded by the range's own hours plus a dozen cells per stream and day or week, and
    --    so is what is read: not by the stream's history, nor by how far into its week the
    --    batch falls. A cell that is also the lowest of its day or week comes once (UNION).
    --    Each touched bucket is one index probe (OFFSET 0 keeps the lateral subquery one):
    --    as a join, the planner, over-estimating a range's events, hashed the whole of
    --    retry_rollup_lowest instead, a scan that grows with the history (43,000 rows for a
    --    million events, 8 ms of a 10,000-event batch).
    touched AS (
        SELECT DISTINCT e.job_id, e.variant, e.hour, e.day, e.week FROM events e
    ), kept AS (
        SELECT c.job_id, c.variant, c.kind, c.first_attempt, c.reason, c.step, c.scenario,
               c.hour
          FROM touched t
         CROSS JOIN LATERAL (
               SELECT * FROM retry_rollup_cell c
                WHERE (c.job_id, c.variant, c.hour) = (t.job_id, t.variant, t.hour)
               OFFSET 0) c
        UNION
        SELECT l.job_id, l.variant, l.kind, l.first_attempt, l.reason, l.step, l.scenario,
               l.hour
          FROM (SELECT t.job_id, t.variant, 'day' AS span, t.day AS starts FROM touched t
                UNION
                SELECT t.job_id, t.variant, 'week', t.week FROM touched t) b
         CROSS JOIN LATERAL (
               SELECT * FROM retry_rollup_lowest l
                WHERE (l.job_id, l.variant, l.span, l.starts)
                    = (b.job_id, b.variant, b.span, b.starts)
               OFFSET 0) l
    ), rows AS (
        SELECT e.job_id, e.variant, e.kind, e.attempt, e.reason, e.step, e.scenario,
               e.hour, e.day, e.week, true AS new
          FROM events e
        UNION ALL
        SELECT k.job_id, k.variant, k.kind, k.first_attempt, k.reason, k.step, k.scenario,
               k.hour, date_trunc('day', k.hour, 'UTC'), date_trunc('week', k.hour, 'UTC'),
               false
          FROM kept k
    ),
    -- 3. Per bucket and group, the lowest attempt with the range (m_*) and without it (p_*,
    --    the applied cell that is first there now).
    flagged AS (
        SELECT r.*,
               min(r.attempt) OVER w_hour_kind AS m_hour_kind,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_hour_kind AS p_hour_kind,
               min(r.attempt) OVER w_hour_reason AS m_hour_reason,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_hour_reason AS p_hour_reason,
               min(r.attempt) OVER w_hour_step AS m_hour_step,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_hour_step AS p_hour_step,
               min(r.attempt) OVER w_hour_scenario AS m_hour_scenario,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_hour_scenario AS p_hour_scenario,
               min(r.attempt) OVER w_day_kind AS m_day_kind,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_day_kind AS p_day_kind,
               min(r.attempt) OVER w_day_reason AS m_day_reason,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_day_reason AS p_day_reason,
               min(r.attempt) OVER w_day_step AS m_day_step,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_day_step AS p_day_step,
               min(r.attempt) OVER w_day_scenario AS m_day_scenario,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_day_scenario AS p_day_scenario,
               min(r.attempt) OVER w_week_kind AS m_week_kind,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_week_kind AS p_week_kind,
               min(r.attempt) OVER w_week_reason AS m_week_reason,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_week_reason AS p_week_reason,
               min(r.attempt) OVER w_week_step AS m_week_step,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_week_step AS p_week_step,
               min(r.attempt) OVER w_week_scenario AS m_week_scenario,
               min(r.attempt) FILTER (WHERE NOT r.new) OVER w_week_scenario AS p_week_scenario
          FROM rows r
        WINDOW
               w_hour_kind AS (PARTITION BY r.job_id, r.variant, r.hour),
               w_hour_reason AS (PARTITION BY r.job_id, r.variant, r.hour, r.reason),
               w_hour_step AS (PARTITION BY r.job_id, r.variant, r.hour, r.step),
               w_hour_scenario AS (PARTITION BY r.job_id, r.variant, r.hour, r.scenario),
               w_day_kind AS (PARTITION BY r.job_id, r.variant, r.day),
               w_day_reason AS (PARTITION BY r.job_id, r.variant, r.day, r.reason),
               w_day_step AS (PARTITION BY r.job_id, r.variant, r.day, r.step),
               w_day_scenario AS (PARTITION BY r.job_id, r.variant, r.day, r.scenario),
               w_week_kind AS (PARTITION BY r.job_id, r.variant, r.week),
               w_week_reason AS (PARTITION BY r.job_id, r.variant, r.week, r.reason),
               w_week_step AS (PARTITION BY r.job_id, r.variant, r.week, r.step),
               w_week_scenario AS (PARTITION BY r.job_id, r.variant, r.week, r.scenario)
    )
    -- 4. A range event of the lowest attempt is first (+1 in its row); the applied cell that
    --    was first, when a range event has a lower attempt, is no more (-1 in that cell's
    --    row). Rows of applied cells that change nothing are left out.
    SELECT d.hour, d.kind, d.reason, d.step, d.scenario, d.retries,
           d.first_hour_kind, d.first_hour_reason, d.first_hour_step, d.first_hour_scenario,
           d.first_day_kind, d.first_day_reason, d.first_day_step, d.first_day_scenario,
           d.first_week_kind, d.first_week_reason, d.first_week_step, d.first_week_scenario
      FROM (
        SELECT f.hour, f.kind, f.reason, f.step, f.scenario,
               count(*) FILTER (WHERE f.new) AS retries,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_hour_kind)::int
                        WHEN f.attempt = f.p_hour_kind AND f.m_hour_kind < f.p_hour_kind THEN -1
                        ELSE 0 END) AS first_hour_kind,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_hour_reason)::int
                        WHEN f.attempt = f.p_hour_reason AND f.m_hour_reason < f.p_hour_reason THEN -1
                        ELSE 0 END) AS first_hour_reason,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_hour_step)::int
                        WHEN f.attempt = f.p_hour_step AND f.m_hour_step < f.p_hour_step THEN -1
                        ELSE 0 END) AS first_hour_step,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_hour_scenario)::int
                        WHEN f.attempt = f.p_hour_scenario AND f.m_hour_scenario < f.p_hour_scenario THEN -1
                        ELSE 0 END) AS first_hour_scenario,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_day_kind)::int
                        WHEN f.attempt = f.p_day_kind AND f.m_day_kind < f.p_day_kind THEN -1
                        ELSE 0 END) AS first_day_kind,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_day_reason)::int
                        WHEN f.attempt = f.p_day_reason AND f.m_day_reason < f.p_day_reason THEN -1
                        ELSE 0 END) AS first_day_reason,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_day_step)::int
                        WHEN f.attempt = f.p_day_step AND f.m_day_step < f.p_day_step THEN -1
                        ELSE 0 END) AS first_day_step,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_day_scenario)::int
                        WHEN f.attempt = f.p_day_scenario AND f.m_day_scenario < f.p_day_scenario THEN -1
                        ELSE 0 END) AS first_day_scenario,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_week_kind)::int
                        WHEN f.attempt = f.p_week_kind AND f.m_week_kind < f.p_week_kind THEN -1
                        ELSE 0 END) AS first_week_kind,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_week_reason)::int
                        WHEN f.attempt = f.p_week_reason AND f.m_week_reason < f.p_week_reason THEN -1
                        ELSE 0 END) AS first_week_reason,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_week_step)::int
                        WHEN f.attempt = f.p_week_step AND f.m_week_step < f.p_week_step THEN -1
                        ELSE 0 END) AS first_week_step,
               sum(CASE WHEN f.new THEN (f.attempt = f.m_week_scenario)::int
                        WHEN f.attempt = f.p_week_scenario AND f.m_week_scenario < f.p_week_scenario THEN -1
                        ELSE 0 END) AS first_week_scenario
          FROM flagged f
         GROUP BY 1, 2, 3, 4, 5
      ) d
     WHERE d.retries > 0
        OR 0 <> ANY (ARRAY[d.first_hour_kind, d.first_hour_reason, d.first_hour_step,
                           d.first_hour_scenario, d.first_day_kind, d.first_day_reason,
                           d.first_day_step, d.first_day_scenario, d.first_week_kind,
                           d.first_week_reason, d.first_week_step, d.first_week_scenario])
$$;

-- Targets created per UTC hour and kind: the rows of jobs and jobs_variants whose created_at
-- is at or after `since` (NULL: every row), found through the BRIN indexes on created_at
-- (migration 0010). Nothing on the pipeline's inserts counts them (invariant 10 in
-- docs/architecture.md).
CREATE OR REPLACE FUNCTION retry_rollup_created_expected(since timestamptz)
RETURNS TABLE (hour timestamptz, kind text, created bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('hour', j.created_at, 'UTC'), 'job', count(*)
      FROM jobs j
     WHERE j.created_at >= coalesce(since, '-infinity')
     GROUP BY 1
    UNION ALL
    SELECT date_trunc('hour', v.created_at, 'UTC'), 'variant', count(*)
      FROM jobs_variants v
     WHERE v.created_at >= coalesce(since, '-infinity')
     GROUP BY 1
$$;

-- Recount the targets created in the hours not yet settled (retry_rollup_created_window),
-- unless the last recount is younger than `at_most_every`; true when it recounted. Rows
-- commit after their created_at (a transaction's now() is its start), so every recount takes
-- the hours from the window's start on again and then settles the hours before the previous
-- one: a row counts when it commits within about an hour of its created_at. A row inserted
-- later with an older created_at (a backfill) is counted by replay; verify names its hour.
-- Only rows that differ are written.
CREATE OR REPLACE FUNCTION retry_rollup_count_created(at_most_every interval)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    w retry_rollup_created_window;
BEGIN
    -- The row lock makes concurrent recounts (serve's projector, a report) take turns.
    SELECT * INTO STRICT w FROM retry_rollup_created_window FOR UPDATE;
    IF w.counted_at > now() - at_most_every THEN
        RETURN false;
    END IF;
    WITH counted AS (
        SELECT * FROM retry_rollup_created_expected(w.recount_from)
    ), gone AS (
        DELETE FROM retry_rollup_created r
         WHERE r.hour >= coalesce(w.recount_from, '-infinity')
           AND NOT EXISTS (SELECT 1 FROM counted c WHERE (c.hour, c.kind) = (r.hour, r.kind))
    )
    INSERT INTO retry_rollup_created AS r
    SELECT * FROM counted
    ON CONFLICT (hour, kind) DO UPDATE SET created = excluded.created
     WHERE r.created IS DISTINCT FROM excluded.created;
    UPDATE retry_rollup_created_window
       SET recount_from = greatest(w.recount_from,
                                   date_trunc('hour', now() - interval '1 hour', 'UTC')),
           counted_at = now();
    RETURN true;
END
$$;

-- Add a range's events to the rollup and to the cells; returns the number of events applied.
-- A range from '1' has nothing applied below it: it is read with retry_rollup_expected, whole
-- streams at once (what replay runs, on an empty rollup).
CREATE OR REPLACE FUNCTION retry_rollup_apply(from_txid xid8, to_txid xid8)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    applied bigint;
    rebuilding boolean;
BEGIN
    -- 1. The rollup, from the cells as they were before this range. A rebuild (from '1',
    --    nothing applied: replay after retry_rollup_reset, or a first catch-up) has no cells
    --    to read: it takes the window functions over the whole log, and writes the cells in
    --    one plain INSERT (no conflict is possible; ON CONFLICT's speculative insertion cost
    --    a third more).
    rebuilding := from_txid = '1' AND NOT EXISTS (SELECT 1 FROM retry_rollup_cell);
    WITH delta AS (
        -- One of the two, by a one-time filter: the other is never run.
        SELECT * FROM retry_rollup_expected(to_txid) WHERE rebuilding
        UNION ALL
        SELECT * FROM retry_rollup_delta(from_txid, to_txid) WHERE NOT rebuilding
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

    -- 2. Then the cells: each stream's lowest attempt per rollup row, this range's included;
    --    and the lowest cell of each day and week, where the range's is lower than what was
    --    there.
    IF rebuilding THEN
        INSERT INTO retry_rollup_cell SELECT * FROM retry_rollup_cells_of('0', to_txid);
        INSERT INTO retry_rollup_lowest SELECT * FROM retry_rollup_lowest_of('0', to_txid);
    ELSE
        INSERT INTO retry_rollup_cell AS c
        SELECT * FROM retry_rollup_cells_of(from_txid, to_txid)
        ON CONFLICT (job_id, variant, hour, kind, reason, step, scenario) DO UPDATE
           SET first_attempt = least(c.first_attempt, excluded.first_attempt);
        INSERT INTO retry_rollup_lowest AS l
        SELECT * FROM retry_rollup_lowest_of(from_txid, to_txid)
        ON CONFLICT (job_id, variant, span, starts, kind, reason, step, scenario) DO UPDATE
           SET hour = excluded.hour, first_attempt = excluded.first_attempt
         WHERE excluded.first_attempt < l.first_attempt;
    END IF;

    RETURN applied;
END
$$;

-- Empty the rollup, its cells (and their lowest per day and week) and the targets created
-- (replay then applies everything below its horizon and recounts every row).
CREATE OR REPLACE FUNCTION retry_rollup_reset()
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM retry_rollup;
    DELETE FROM retry_rollup_cell;
    DELETE FROM retry_rollup_lowest;
    DELETE FROM retry_rollup_created;
    UPDATE retry_rollup_created_window SET recount_from = NULL, counted_at = NULL;
$$;

-- Rollup rows that differ from what the log says below `up_to`; settled hours of targets
-- created where the pipeline's rows hold more than were counted; and the rollup rows whose
-- cells, or lowest cells of a day or week, differ (the catch-up's state: a later batch would
-- go wrong), with the number of those stored and expected.
CREATE OR REPLACE FUNCTION retry_rollup_drift(up_to xid8)
RETURNS TABLE (hour timestamptz, kind text, reason retry_reason, step text, scenario text,
               stored_retries bigint, expected_retries bigint, problem text)
LANGUAGE sql STABLE AS $$
    WITH expected AS (
        SELECT * FROM retry_rollup_expected(up_to)
    ), expected_cells AS (
        SELECT * FROM retry_rollup_cells_of('0', up_to)
    ), expected_lowest AS (
        SELECT * FROM retry_rollup_lowest_of('0', up_to)
    ), differing AS (
        SELECT coalesce(s.hour, e.hour) AS hour, coalesce(s.kind, e.kind) AS kind,
               coalesce(s.reason, e.reason) AS reason, coalesce(s.step, e.step) AS step,
               coalesce(s.scenario, e.scenario) AS scenario,
               s.job_id AS stored, e.job_id AS expected
          FROM retry_rollup_cell s
          FULL JOIN expected_cells e
            ON (s.job_id, s.variant, s.hour, s.kind, s.reason, s.step, s.scenario)
             = (e.job_id, e.variant, e.hour, e.kind, e.reason, e.step, e.scenario)
         WHERE s.first_attempt IS DISTINCT FROM e.first_attempt
        UNION ALL
        SELECT coalesce(s.hour, e.hour), coalesce(s.kind, e.kind),
               coalesce(s.reason, e.reason), coalesce(s.step, e.step),
               coalesce(s.scenario, e.scenario), s.job_id, e.job_id
          FROM retry_rollup_lowest s
          FULL JOIN expected_lowest e
            ON (s.job_id, s.variant, s.span, s.starts, s.kind, s.reason, s.step, s.scenario)
             = (e.job_id, e.variant, e.span, e.starts, e.kind, e.reason, e.step, e.scenario)
         WHERE (s.hour, s.first_attempt) IS DISTINCT FROM (e.hour, e.first_attempt)
    ), cells_differ AS (
        SELECT d.hour, d.kind, d.reason, d.step, d.scenario,
               count(d.stored) AS stored, count(d.expected) AS expected
          FROM differing d
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
    -- A settled hour holding more rows than were counted in it: rows inserted with an older
    -- created_at after the hour settled. Fewer is no problem: the pipeline deletes its rows,
    -- and an hour counts the targets created in it. The hours not settled are counted again
    -- by the next recount.
    SELECT e.hour, e.kind, NULL, NULL, NULL,
           coalesce(s.created, 0), e.created,
           'targets created not counted'
      FROM retry_rollup_created_window w
      CROSS JOIN retry_rollup_created_expected(NULL) e
      LEFT JOIN retry_rollup_created s ON (s.hour, s.kind) = (e.hour, e.kind)
     WHERE e.hour < w.recount_from AND e.created > coalesce(s.created, 0)
    UNION ALL
    SELECT d.hour, d.kind, d.reason, d.step, d.scenario, d.stored, d.expected,
           'catch-up cells differ'
      FROM cells_differ d
$$;
