-- A rollup batch reads what its days and weeks hold, not every cell of its weeks (issue 10).
--
-- To decide the first-in-day and first-in-week flags a batch needs, per stream it touches and
-- per reason × step × scenario, the lowest attempt applied in each day and week it touches.
-- Until now it read them from every cell of the touched weeks (retry_rollup_cell, 0008): on
-- streams of 10,000 events, a batch at the end of a UTC week read 130,000 cells and caught
-- up at 0.22× its speed onto streams of 10 events (0.63× twenty hours into a week).
--
-- This table keeps, per stream, UTC day or week, and rollup row key, that lowest cell: its
-- hour and attempt. A batch reads the cells of its own hours, and a dozen of these per stream
-- and touched day or week (projections/retry_rollup.sql, retry_rollup_delta).
--
-- Derived and kept like the cells, by the same apply, in the projector's transaction:
-- retry_rollup_reset() empties it, replay rebuilds it, verify (retry_rollup_drift) compares it
-- with the log.
CREATE TABLE retry_rollup_lowest (
    job_id        uuid NOT NULL,
    -- job_variants_id; the nil uuid for the job-level stream, as in retry_rollup_cell.
    variant       uuid NOT NULL,
    -- The bucket: a UTC day or week, and the instant it starts.
    span          text NOT NULL CHECK (span IN ('day', 'week')),
    starts        timestamptz NOT NULL,
    -- The rollup row key without its hour (step and scenario cut to 200 characters).
    kind          text NOT NULL CHECK (kind IN ('job', 'variant')),
    reason        retry_reason NOT NULL,
    step          text NOT NULL,
    scenario      text NOT NULL,
    -- The cell holding the bucket's lowest attempt for that key: its hour and attempt.
    hour          timestamptz NOT NULL,
    first_attempt integer NOT NULL,
    PRIMARY KEY (job_id, variant, span, starts, kind, reason, step, scenario)
);

-- What the cells hold already: the lowest of each day and week.
INSERT INTO retry_rollup_lowest
SELECT DISTINCT ON (c.job_id, c.variant, s.span, s.starts, c.kind, c.reason, c.step, c.scenario)
       c.job_id, c.variant, s.span, s.starts, c.kind, c.reason, c.step, c.scenario,
       c.hour, c.first_attempt
  FROM retry_rollup_cell c
 CROSS JOIN LATERAL (VALUES ('day', date_trunc('day', c.hour, 'UTC')),
                            ('week', date_trunc('week', c.hour, 'UTC'))) AS s(span, starts)
 ORDER BY c.job_id, c.variant, s.span, s.starts, c.kind, c.reason, c.step, c.scenario,
          c.first_attempt;

-- Rights as the cells': the operator keeps it, a reader reads it.
REVOKE ALL ON retry_rollup_lowest FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON retry_rollup_lowest TO retrylog_operator;
GRANT SELECT ON retry_rollup_lowest TO retrylog_reader;
