-- The result of every retry: did the target move on, was it retried again, did the limit stop
-- it? An outcome is observed after the retry, recorded once and never changed.
--
--   recovered      the target moved past the retried step: a variant's step advanced in the
--                  managed order, or the variant is done and so is its job (the final step
--                  evaluates a job's variants together); a job reached done. Observed by the
--                  watchdog (retry_outcome_observe, projections/retry_outcomes.sql).
--   retried_again  the same target was retried again before it moved on: decided by
--                  record_retry, in the next retry's own transaction.
--   gave_up        the limit stopped the target and the watchdog noted it as needing
--                  intervention: decided by the note's insert (the trigger below).
--   open           nothing yet: no row here. A retry whose target is deleted or never moves
--                  stays open.
--
-- Who decides is whoever removes the target's row from retry_open, the one open retry per
-- target: the delete takes the row's lock, so of a concurrent observation, a next retry and a
-- note exactly one wins and the others find no open retry. The primary key makes a second
-- decision for one retry an error, never a silent overwrite.

CREATE TYPE retry_outcome_kind AS ENUM ('recovered', 'retried_again', 'gave_up');

CREATE TABLE retry_outcome (
    -- The retry event (retry_history.seq) this is the outcome of.
    seq         bigint PRIMARY KEY,
    outcome     retry_outcome_kind NOT NULL,
    -- When the result happened as far as the database shows it: for recovered the target
    -- row's updated_at (at least the retry's time, at most the observation's), for
    -- retried_again the next retry's occurred_at, for gave_up the note's noted_at. Time to
    -- result = resolved_at - the retry's occurred_at.
    resolved_at timestamptz NOT NULL,
    -- When retrylog saw it: `--as-of T` counts the outcomes observed by T.
    observed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The watchdog instance, or the role whose retry or note decided it.
    observed_by text NOT NULL,
    -- What was seen: the target's status and step (recovered), the next retry's seq and
    -- attempt (retried_again), the note's seq (gave_up).
    evidence    jsonb NOT NULL,
    -- The deciding transaction, so the projector tails outcomes like it tails the log.
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CHECK (observed_at >= resolved_at)
);
CREATE INDEX retry_outcome_txid ON retry_outcome (txid);
CREATE TRIGGER retry_outcome_append_only
    BEFORE UPDATE OR DELETE ON retry_outcome
    FOR EACH ROW EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_outcome_no_truncate
    BEFORE TRUNCATE ON retry_outcome
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();

-- The open retry of each target: its latest retry while it has no outcome. Derived from the
-- log and the outcomes (replay rebuilds it, verify compares it), kept inline by the three
-- deciders, and small: what the observation joins to the pipeline's rows by primary key.
CREATE TABLE retry_open (
    job_id          uuid NOT NULL,
    -- The nil uuid for a job-level stream, so the key has no NULL.
    stream          uuid NOT NULL,
    job_variants_id uuid,
    seq             bigint NOT NULL UNIQUE,
    step            text,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (job_id, stream)
);

-- The reports' projection, kept by the projector in the rollup's batches (replay rebuilds it,
-- verify compares it), one row per value of each dimension a report groups by (kind, reason,
-- step, scenario, attempt) rather than per combination, so a report reads one dimension's few
-- rows:
--   * retry_outcome_rollup: retries per UTC hour of the retry, dimension, value and outcome
--     ('open' until decided): the outcomes report's counts and the trend's recovered series;
--   * retry_outcome_recovery_time: recovered retries per UTC day of the retry, dimension, value
--     and time to recover, rounded down to two significant figures of the millisecond count
--     (retry_outcome_ttr_bucket): the median and p90, a few hundred rows per day and value.
CREATE TABLE retry_outcome_rollup (
    dimension text NOT NULL,
    hour      timestamptz NOT NULL,
    value     text NOT NULL,
    outcome   text NOT NULL,
    retries   bigint NOT NULL,
    PRIMARY KEY (dimension, hour, value, outcome)
);
CREATE TABLE retry_outcome_recovery_time (
    dimension text NOT NULL,
    day       timestamptz NOT NULL,
    value     text NOT NULL,
    ttr_ms    bigint NOT NULL,
    recovered bigint NOT NULL,
    PRIMARY KEY (dimension, day, value, ttr_ms)
);

-- A note of the limit decides the target's open retry: gave up. A trigger, so every way a
-- note is written decides it in the note's own transaction.
CREATE FUNCTION retry_outcome_gave_up() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    WITH decided AS (
        DELETE FROM retry_open o
         WHERE o.job_id = NEW.job_id
           AND o.stream = coalesce(NEW.job_variants_id, '00000000-0000-0000-0000-000000000000')
        RETURNING o.seq, o.occurred_at
    )
    INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_at, observed_by, evidence)
    SELECT d.seq, 'gave_up', greatest(d.occurred_at, NEW.noted_at),
           greatest(d.occurred_at, NEW.noted_at, clock_timestamp()), NEW.actor,
           jsonb_build_object('note_seq', NEW.seq, 'retry_count', NEW.retry_count,
                              'max_retries', NEW.max_retries)
      FROM decided d;
    RETURN NULL;
END
$$;
CREATE TRIGGER retry_intervention_gave_up
    AFTER INSERT ON retry_intervention
    FOR EACH ROW EXECUTE FUNCTION retry_outcome_gave_up();

-- A log that predates outcomes: every retry that was followed by another of its target was
-- retried again (as far as the log can tell; the evidence says it was read from the log), the
-- latest retry of a target the watchdog has since noted gave up, and the other latest ones
-- are open.
INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
SELECT l.seq, 'retried_again', greatest(l.occurred_at, l.next_at), session_user,
       jsonb_build_object('next_seq', l.next_seq, 'attempt', l.next_attempt, 'from_log', true)
  FROM (SELECT h.seq, h.occurred_at, lead(h.seq) OVER w AS next_seq,
               lead(h.attempt) OVER w AS next_attempt, lead(h.occurred_at) OVER w AS next_at
          FROM retry_history h
        WINDOW w AS (PARTITION BY h.job_id, h.job_variants_id ORDER BY h.attempt)) l
 WHERE l.next_seq IS NOT NULL;

INSERT INTO retry_open (job_id, stream, job_variants_id, seq, step, occurred_at)
SELECT DISTINCT ON (h.job_id, h.job_variants_id)
       h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
       h.job_variants_id, h.seq, h.step, h.occurred_at
  FROM retry_history h
 ORDER BY h.job_id, h.job_variants_id, h.attempt DESC;

WITH noted AS (
    -- The latest note of each target, if it came after the target's latest retry.
    SELECT DISTINCT ON (i.job_id, i.job_variants_id)
           i.seq, i.job_id, i.job_variants_id, i.retry_count, i.max_retries, i.actor, i.noted_at
      FROM retry_intervention i
     ORDER BY i.job_id, i.job_variants_id, i.seq DESC
), decided AS (
    DELETE FROM retry_open o
     USING noted n
     WHERE o.job_id = n.job_id
       AND o.stream = coalesce(n.job_variants_id, '00000000-0000-0000-0000-000000000000')
       AND n.noted_at >= o.occurred_at
    RETURNING o.seq, o.occurred_at, n.seq AS note_seq, n.retry_count, n.max_retries, n.actor,
              n.noted_at
)
INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
SELECT d.seq, 'gave_up', d.noted_at, d.actor,
       jsonb_build_object('note_seq', d.note_seq, 'retry_count', d.retry_count,
                          'max_retries', d.max_retries, 'from_log', true)
  FROM decided d;

-- Rights: only the owner writes outcomes and the open retries (through record_retry, the
-- note's trigger and retry_outcome_observe, which run as the owner); the operator may write
-- the rebuildable report projection, like the rollup; a reader reads them all.
REVOKE ALL ON retry_outcome, retry_open, retry_outcome_rollup, retry_outcome_recovery_time
    FROM PUBLIC;
GRANT SELECT ON retry_outcome, retry_open, retry_outcome_rollup, retry_outcome_recovery_time
    TO retrylog_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON retry_outcome_rollup, retry_outcome_recovery_time
    TO retrylog_operator;
