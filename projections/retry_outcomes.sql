-- Projection retry_outcomes: what became of each retry (migrations/0009_retry_outcomes.sql).
--
-- Outcomes themselves are observations, append-only like the log: nothing here rebuilds them.
-- Two things derive from the log and the outcomes, and are kept, rebuilt and verified here:
--   * retry_open            each target's latest retry while it has no outcome: a view over
--                           the head rows whose last_open is set (migration 0021), kept
--                           inline by record_retry, the note trigger and
--                           retry_outcome_observe; retry_open_rebuild() resets it,
--                           retry_open_drift() compares it;
--   * retry_outcome_rollup and retry_outcome_recovery_time, the reports' counts per hour and
--                           times to recover per day; kept by the projector in the rollup's
--                           batches (same range, same checkpoint):
--                           retry_outcome_rollup_apply(from, to) adds what a txid range
--                           contributes to both, reset + apply('1', horizon) rebuilds them,
--                           and retry_outcome_rollup_drift(checkpoint) compares them.
-- retrylog installs this file (CREATE OR REPLACE) on every migrate.

-- Milliseconds rounded down to two significant figures (0-99 exact, then 100, 110, ...,
-- 990, 1000, 1100, ...): the resolution of the report's median and p90, so the projection
-- keeps a few hundred time values per day and group, each within 10% of the truth.
CREATE OR REPLACE FUNCTION retry_outcome_ttr_bucket(ms bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms < 100 THEN greatest(ms, 0)
                ELSE ms - ms % (10::bigint ^ (length(ms::text) - 2))::bigint END
$$;

-- The pipeline's progress, observed: every open retry whose target moved on is decided
-- recovered. One pass over retry_open (the open retries only; of `jobs` only, unless NULL),
-- each joined to its target's row by primary key; retries dated in the future wait until they
-- are due. Returns how many it decided. The watchdog runs it at the start of every sweep, with
-- its managed steps in order and the sweep's jobs, so a target that moved on is decided
-- recovered before a new retry of it could call it retried again.
CREATE OR REPLACE FUNCTION retry_outcome_observe(steps text[], observer text, jobs uuid[])
RETURNS bigint
LANGUAGE sql SECURITY DEFINER AS $$
    WITH clock AS (
        SELECT clock_timestamp() AS at
    ), moved AS (
        SELECT o.job_id, o.stream, o.seq, o.occurred_at, v.status, v.current_step,
               v.updated_at, j.status AS job_status
          FROM retry_open o
          JOIN jobs_variants v ON v.job_variants_id = o.job_variants_id
          JOIN jobs j ON j.job_id = v.job_id
         WHERE o.job_variants_id IS NOT NULL
           AND (jobs IS NULL OR o.job_id = ANY (jobs))
           AND o.occurred_at <= (SELECT at FROM clock)
           AND (array_position(steps, v.current_step) > array_position(steps, o.step)
                OR (v.status = 'done' AND j.status = 'done'))
        UNION ALL
        SELECT o.job_id, o.stream, o.seq, o.occurred_at, j.status, j.current_step,
               j.updated_at, j.status
          FROM retry_open o
          JOIN jobs j ON j.job_id = o.job_id
         WHERE o.job_variants_id IS NULL
           AND (jobs IS NULL OR o.job_id = ANY (jobs))
           AND o.occurred_at <= (SELECT at FROM clock)
           AND j.status = 'done'
    ), decided AS (
        -- Clears the open state on the head row, taking its lock: a concurrent next retry or
        -- note that took it first wins (the flag is cleared, or the head is at another
        -- event), and the row is skipped here.
        UPDATE retry_stream_head hd
           SET last_open = false
          FROM moved m
         WHERE hd.job_id = m.job_id AND hd.stream = m.stream AND hd.last_seq = m.seq
           AND hd.last_open
        RETURNING m.*
    ), recorded AS (
        INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_at, observed_by, evidence)
        SELECT d.seq, 'recovered',
               least(c.at, greatest(d.occurred_at, d.updated_at)), c.at, observer,
               jsonb_build_object('status', d.status, 'step', d.current_step,
                                  'job_status', d.job_status, 'updated_at', d.updated_at)
          FROM decided d CROSS JOIN clock c
        RETURNING 1
    )
    SELECT count(*) FROM recorded
$$;

-- What retry_open should hold: the latest retry of each stream, unless it has an outcome.
CREATE OR REPLACE FUNCTION retry_open_expected()
RETURNS TABLE (job_id uuid, stream uuid, job_variants_id uuid, seq bigint, step text,
               occurred_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT l.job_id, coalesce(l.job_variants_id, '00000000-0000-0000-0000-000000000000'),
           l.job_variants_id, l.seq, l.step, l.occurred_at
      FROM (SELECT DISTINCT ON (h.job_id, h.job_variants_id)
                   h.job_id, h.job_variants_id, h.seq, h.step, h.occurred_at
              FROM retry_history h
             ORDER BY h.job_id, h.job_variants_id, h.attempt DESC) l
     WHERE NOT EXISTS (SELECT 1 FROM retry_outcome r WHERE r.seq = l.seq)
$$;

-- retry_open rows that differ from what the log and the outcomes say.
CREATE OR REPLACE FUNCTION retry_open_drift()
RETURNS TABLE (job_id uuid, job_variants_id uuid, stored_seq bigint, expected_seq bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.job_id, e.job_id),
           coalesce(s.job_variants_id, e.job_variants_id), s.seq, e.seq
      FROM retry_open s
      FULL JOIN retry_open_expected() e ON (s.job_id, s.stream) = (e.job_id, e.stream)
     WHERE (s.seq, s.step, s.occurred_at) IS DISTINCT FROM (e.seq, e.step, e.occurred_at)
$$;

-- Rebuilds retry_open from the log and the outcomes, and the rest of the append's inline
-- state with it (the stream heads and event ids, sql/retry_stream_head.sql); returns the rows
-- that were wrong. The tables are locked first, so no retry, note or observation decides
-- anything meanwhile. retry_open is the open state of the head rows (migration 0021): the
-- head rows are rebuilt first, then their open state is set from the outcomes.
CREATE OR REPLACE FUNCTION retry_open_rebuild()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    wrong bigint;
BEGIN
    -- In the order an append writes them, so that no append holding one of them waits for
    -- this rebuild while the rebuild waits for it.
    LOCK TABLE retry_event_id, retry_stream_head IN EXCLUSIVE MODE;
    SELECT count(*) INTO wrong FROM retry_open_drift();
    wrong := wrong + retry_stream_head_rebuild();
    IF wrong > 0 THEN
        UPDATE retry_stream_head hd
           SET last_open = e.open
          FROM (SELECT hd2.job_id, hd2.stream, x.seq IS NOT NULL AS open
                  FROM retry_stream_head hd2
                  LEFT JOIN retry_open_expected() x
                         ON (x.job_id, x.stream, x.seq)
                            = (hd2.job_id, hd2.stream, hd2.last_seq)) e
         WHERE (hd.job_id, hd.stream) = (e.job_id, e.stream) AND hd.last_open <> e.open;
    END IF;
    RETURN wrong;
END
$$;

-- What a txid range changes, per retry: each retry in the range adds one to `open`; each
-- outcome in the range takes its retry out of `open` and adds it to its outcome (recovered
-- ones with their time to recover). The two may fall in different ranges in either order (a
-- transaction's id is assigned at its first write); the sums do not care. Each change comes
-- with the retry's hour and day and one row per dimension a report groups by.
--
-- What it reads is the range's own rows: its retries through the txid index, and for each
-- of its outcomes that outcome's retry, one probe of the log's primary key (the LIMIT keeps
-- the subquery a per-row probe: as a join the planner may read the whole log in seq order
-- to merge it, which cost a 10,000-event batch 0.5 s on a log of a million).
CREATE OR REPLACE FUNCTION retry_outcome_changes(from_txid xid8, to_txid xid8)
RETURNS TABLE (hour timestamptz, day timestamptz, dimension text, value text, outcome text,
               ttr_ms bigint, n integer)
LANGUAGE sql STABLE AS $$
    WITH changes AS (
        SELECT h.occurred_at, h.job_variants_id, h.reason, h.step, h.detail, h.attempt,
               'open' AS outcome, NULL::bigint AS ttr_ms, 1 AS n
          FROM retry_history h
         WHERE h.txid >= from_txid AND h.txid < to_txid
        UNION ALL
        SELECT h.occurred_at, h.job_variants_id, h.reason, h.step, h.detail, h.attempt,
               o.outcome, o.ttr_ms, o.n
          FROM retry_outcome r
         CROSS JOIN LATERAL (
               SELECT l.occurred_at, l.job_variants_id, l.reason, l.step, l.detail, l.attempt
                 FROM retry_history l
                WHERE l.seq = r.seq
                LIMIT 1) AS h
         CROSS JOIN LATERAL (VALUES
               ('open', NULL::bigint, -1),
               (r.outcome::text,
                CASE WHEN r.outcome = 'recovered' THEN retry_outcome_ttr_bucket(
                    (extract(epoch FROM r.resolved_at - h.occurred_at) * 1000)::bigint) END,
                1)) AS o(outcome, ttr_ms, n)
         WHERE r.txid >= from_txid AND r.txid < to_txid
    )
    SELECT date_trunc('hour', c.occurred_at, 'UTC'), date_trunc('day', c.occurred_at, 'UTC'),
           d.dimension, d.value, c.outcome, c.ttr_ms, c.n
      FROM changes c
     CROSS JOIN LATERAL (VALUES
           ('kind', CASE WHEN c.job_variants_id IS NULL THEN 'job' ELSE 'variant' END),
           ('reason', c.reason::text),
           -- Bounded like the trend rollup's keys.
           ('step', left(coalesce(c.step, ''), 200)),
           ('scenario', left(coalesce(c.detail ->> 'scenario', ''), 200)),
           ('attempt', c.attempt::text)) AS d(dimension, value)
$$;

CREATE OR REPLACE FUNCTION retry_outcome_rollup_delta(from_txid xid8, to_txid xid8)
RETURNS TABLE (dimension text, hour timestamptz, value text, outcome text, retries bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.dimension, c.hour, c.value, c.outcome, sum(c.n)::bigint
      FROM retry_outcome_changes(from_txid, to_txid) c
     GROUP BY 1, 2, 3, 4
    HAVING sum(c.n) <> 0
$$;

CREATE OR REPLACE FUNCTION retry_outcome_recovery_time_delta(from_txid xid8, to_txid xid8)
RETURNS TABLE (dimension text, day timestamptz, value text, ttr_ms bigint, recovered bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.dimension, c.day, c.value, c.ttr_ms, sum(c.n)::bigint
      FROM retry_outcome_changes(from_txid, to_txid) c
     WHERE c.ttr_ms IS NOT NULL
     GROUP BY 1, 2, 3, 4
$$;

-- Adds a range to both tables; returns the changes it applied (retries and outcomes, each
-- counted once, not once per dimension).
CREATE OR REPLACE FUNCTION retry_outcome_rollup_apply(from_txid xid8, to_txid xid8)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    applied bigint;
BEGIN
    WITH delta AS (
        SELECT * FROM retry_outcome_rollup_delta(from_txid, to_txid)
    ), upserted AS (
        INSERT INTO retry_outcome_rollup AS r
        SELECT * FROM delta
        ON CONFLICT (dimension, hour, value, outcome)
        DO UPDATE SET retries = r.retries + excluded.retries
    )
    SELECT coalesce(sum(abs(retries)) FILTER (WHERE dimension = 'kind'), 0)::bigint
      INTO applied FROM delta;
    INSERT INTO retry_outcome_recovery_time AS r
    SELECT * FROM retry_outcome_recovery_time_delta(from_txid, to_txid)
    ON CONFLICT (dimension, day, value, ttr_ms)
    DO UPDATE SET recovered = r.recovered + excluded.recovered;
    RETURN applied;
END
$$;

CREATE OR REPLACE FUNCTION retry_outcome_rollup_reset()
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM retry_outcome_rollup;
    DELETE FROM retry_outcome_recovery_time;
$$;

-- Rows of both tables that differ from what the log and the outcomes say below `up_to` (a
-- row of zero is the same as no row). `key` names the row.
CREATE OR REPLACE FUNCTION retry_outcome_rollup_drift(up_to xid8)
RETURNS TABLE (tablename text, key text, stored bigint, expected bigint)
LANGUAGE sql STABLE AS $$
    SELECT 'retry_outcome_rollup',
           concat_ws(' ', to_char(coalesce(s.hour, e.hour) AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD HH24":00Z"'),
                     coalesce(s.dimension, e.dimension) || '=' || coalesce(s.value, e.value),
                     coalesce(s.outcome, e.outcome)),
           s.retries, e.retries
      FROM (SELECT * FROM retry_outcome_rollup WHERE retries <> 0) s
      FULL JOIN retry_outcome_rollup_delta('1', up_to) e
        ON (s.dimension, s.hour, s.value, s.outcome) = (e.dimension, e.hour, e.value, e.outcome)
     WHERE s.retries IS DISTINCT FROM e.retries
       -- The hours before the archive horizon keep what the archived events made them.
       AND coalesce(s.hour, e.hour) >= retry_archive_horizon()
    UNION ALL
    SELECT 'retry_outcome_recovery_time',
           concat_ws(' ', to_char(coalesce(s.day, e.day) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                     coalesce(s.dimension, e.dimension) || '=' || coalesce(s.value, e.value),
                     'ttr_ms=' || coalesce(s.ttr_ms, e.ttr_ms)),
           s.recovered, e.recovered
      FROM (SELECT * FROM retry_outcome_recovery_time WHERE recovered <> 0) s
      FULL JOIN (SELECT * FROM retry_outcome_recovery_time_delta('1', up_to)
                  WHERE recovered <> 0) e
        ON (s.dimension, s.day, s.value, s.ttr_ms) = (e.dimension, e.day, e.value, e.ttr_ms)
     WHERE s.recovered IS DISTINCT FROM e.recovered
       AND coalesce(s.day, e.day) >= retry_archive_horizon()
$$;

-- Every outcome that disagrees with the log or the notes, and every retry the log says was
-- followed by another of its target without being decided: what verify reports.
CREATE OR REPLACE FUNCTION retry_outcome_problems()
RETURNS TABLE (seq bigint, job_id uuid, job_variants_id uuid, problem text)
LANGUAGE sql STABLE AS $$
    -- Each event with the next of its stream: one pass in stream order, no self-join.
    WITH streams AS (
        SELECT h.seq, h.job_id, h.job_variants_id, h.attempt,
               lead(h.seq) OVER w AS next_seq, lead(h.attempt) OVER w AS next_attempt
          FROM retry_history h
        WINDOW w AS (PARTITION BY h.job_id, h.job_variants_id ORDER BY h.attempt)
    )
    SELECT r.seq, NULL::uuid, NULL::uuid,
           'outcome ' || r.outcome || ' is for event seq ' || r.seq || ', which is not in the log'
      FROM retry_outcome r
     WHERE NOT EXISTS (SELECT 1 FROM retry_history h WHERE h.seq = r.seq)
    UNION ALL
    SELECT r.seq, h.job_id, h.job_variants_id,
           'outcome ' || r.outcome || ' of attempt ' || h.attempt || ' (seq ' || r.seq
           || ') resolves at ' || r.resolved_at || ', before the retry occurred at '
           || h.occurred_at
      FROM retry_outcome r JOIN retry_history h ON h.seq = r.seq
     WHERE r.resolved_at < h.occurred_at
    UNION ALL
    SELECT r.seq, h.job_id, h.job_variants_id,
           'attempt ' || h.attempt || ' (seq ' || r.seq || ') is retried_again, but event seq '
           || coalesce(r.evidence ->> 'next_seq', '(none)')
           || ' is not the next attempt of its target'
      FROM retry_outcome r
      JOIN streams h ON h.seq = r.seq
     WHERE r.outcome = 'retried_again'
       AND (h.next_seq IS NULL OR h.next_attempt <> h.attempt + 1
            OR h.next_seq::text IS DISTINCT FROM r.evidence ->> 'next_seq')
    UNION ALL
    SELECT r.seq, h.job_id, h.job_variants_id,
           'attempt ' || h.attempt || ' (seq ' || r.seq || ') gave up, but note seq '
           || coalesce(r.evidence ->> 'note_seq', '(none)') || ' is not a note of its target'
      FROM retry_outcome r JOIN retry_history h ON h.seq = r.seq
     WHERE r.outcome = 'gave_up'
       AND NOT EXISTS (
           SELECT 1 FROM retry_intervention i
            WHERE i.seq = CASE WHEN r.evidence ->> 'note_seq' ~ '^[0-9]{1,18}$'
                               THEN (r.evidence ->> 'note_seq')::bigint END
              AND i.job_id = h.job_id
              AND i.job_variants_id IS NOT DISTINCT FROM h.job_variants_id)
    UNION ALL
    SELECT h.seq, h.job_id, h.job_variants_id,
           'attempt ' || h.attempt || ' (seq ' || h.seq || ') was followed by attempt '
           || h.next_attempt || ' (seq ' || h.next_seq || ') but has no outcome'
      FROM streams h
     WHERE h.next_seq IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM retry_outcome r WHERE r.seq = h.seq)
$$;
