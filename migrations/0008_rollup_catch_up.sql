-- The rollup's catch-up pays for its batch, not for its streams' history (issue 10).
--
-- Until now each batch re-read every stream it touched, whole, to tell which of its events is
-- the first of its target in a bucket and group: one new event on a target with 23,700 events
-- cost a quarter of a second. This table keeps, per stream and rollup row, the lowest attempt
-- the rollup has applied there: the compact state of "what this target already contributed".
-- A batch then decides its flags from the cells of the weeks it touches (projections/
-- retry_rollup.sql), at most 168 hours' worth per stream, whatever the stream's length.
--
-- It is derived like the rollup and kept by the same apply, in the projector's transaction:
-- retry_rollup_reset() empties it, replay rebuilds it, verify (retry_rollup_drift) compares it
-- with the log.
CREATE TABLE retry_rollup_cell (
    job_id        uuid NOT NULL,
    -- job_variants_id; the nil uuid for the job-level stream (the key needs a value).
    variant       uuid NOT NULL,
    -- The rollup row: its hour, kind, reason, step and scenario (step and scenario cut to
    -- 200 characters, as the rollup's key).
    hour          timestamptz NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('job', 'variant')),
    reason        retry_reason NOT NULL,
    step          text NOT NULL,
    scenario      text NOT NULL,
    -- The lowest attempt of this stream applied in that row.
    first_attempt integer NOT NULL,
    PRIMARY KEY (job_id, variant, hour, kind, reason, step, scenario)
);
-- The primary key serves the catch-up: a batch reads the cells of each stream it touches in
-- each UTC week it touches, one range of (job_id, variant, hour).

-- What the rollup holds already: every event below its checkpoint.
INSERT INTO retry_rollup_cell
SELECT h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
       date_trunc('hour', h.occurred_at, 'UTC'),
       CASE WHEN h.job_variants_id IS NULL THEN 'job' ELSE 'variant' END,
       h.reason, left(coalesce(h.step, ''), 200), left(coalesce(h.detail ->> 'scenario', ''), 200),
       min(h.attempt)
  FROM retry_history h
 WHERE h.txid < (SELECT position FROM projection_checkpoint WHERE projection = 'retry_rollup')
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- Rights as the rollup's: the operator keeps it, a reader reads it.
REVOKE ALL ON retry_rollup_cell FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON retry_rollup_cell TO retrylog_operator;
GRANT SELECT ON retry_rollup_cell TO retrylog_reader;
