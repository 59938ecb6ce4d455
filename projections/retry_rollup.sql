-- Projection retry_rollup: retries per UTC hour x kind x reason x step x scenario, and the
-- targets created per hour, for `retrylog report trend`.
--
-- Kept asynchronously by the projector (src/projector.rs), which tails the log by
-- transaction id: a range is [from_txid, to_txid), and to_txid never passes the oldest
-- running transaction, so no event that commits late is skipped.
--
-- retry_rollup_delta is the one definition of what a range contributes:
--   * catch-up  retry_rollup_apply(from, to) adds the delta and is called by the projector in
--               the same transaction that moves its checkpoint;
--   * replay    retry_rollup_reset() empties the rollup, then apply('1', horizon);
--   * verify    retry_rollup_drift(checkpoint) compares the table with delta('1', checkpoint).
--
-- An event is "first" in a bucket and group when no earlier attempt of the same target falls
-- in the same bucket with the same group value. Earlier attempts always commit before later
-- ones (record_retry locks the target), so they are visible whenever the event is, and the
-- flag does not depend on how the log is cut into ranges.

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
    -- 1. The streams the range touches, whole: an event's earlier attempts may lie outside
    --    the range. (The nil uuid stands for "job-level", so one join covers both kinds and
    --    still uses the stream index's leading job_id.)
    WITH touched AS (
        SELECT DISTINCT h.job_id,
               coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000') AS stream
          FROM retry_history h
         WHERE h.txid >= from_txid AND h.txid < to_txid
    ), events AS (
        SELECT h.txid, h.job_id, t.stream, h.job_variants_id, h.attempt, h.reason,
               -- Bounded key parts: record_retry refuses longer ones since migration 0006;
               -- an event stored before is cut here rather than jam the rollup's index.
               left(coalesce(h.step, ''), 200) AS step,
               left(coalesce(h.detail ->> 'scenario', ''), 200) AS scenario,
               date_trunc('hour', h.occurred_at, 'UTC') AS hour,
               date_trunc('day', h.occurred_at, 'UTC') AS day,
               date_trunc('week', h.occurred_at, 'UTC') AS week
          FROM touched t
          JOIN retry_history h
            ON h.job_id = t.job_id
           AND coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000') = t.stream
    -- 2. First in a bucket and group = the lowest attempt of its stream there.
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
    -- 3. Only the range's own events are counted.
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
     WHERE f.txid >= from_txid AND f.txid < to_txid
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

-- Add a range's events and creations to the rollup; returns the number of events applied.
CREATE OR REPLACE FUNCTION retry_rollup_apply(from_txid xid8, to_txid xid8)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    applied bigint;
BEGIN
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

    INSERT INTO retry_rollup_created AS r
    SELECT * FROM retry_rollup_created_delta(from_txid, to_txid)
    ON CONFLICT (hour, kind) DO UPDATE SET created = r.created + excluded.created;

    RETURN applied;
END
$$;

-- Empty the rollup (replay then applies everything below its horizon).
CREATE OR REPLACE FUNCTION retry_rollup_reset()
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM retry_rollup;
    DELETE FROM retry_rollup_created;
$$;

-- Rollup rows that differ from what the log (and the creations) say below `up_to`.
CREATE OR REPLACE FUNCTION retry_rollup_drift(up_to xid8)
RETURNS TABLE (hour timestamptz, kind text, reason retry_reason, step text, scenario text,
               stored_retries bigint, expected_retries bigint, problem text)
LANGUAGE sql STABLE AS $$
    WITH expected AS (
        SELECT * FROM retry_rollup_delta('1', up_to)
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
$$;
