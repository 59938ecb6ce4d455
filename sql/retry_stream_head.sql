-- The append's own state beside the partitioned log (migrations/0016): the head row of each
-- stream and the event-id table. record_retry keeps both in the event's transaction; both
-- derive from the log, so replay rebuilds them and verify compares them here. A missing or
-- wrong head row would let an append reuse an attempt or chain from a wrong hash; a missing
-- event id would let an event id be stored twice.
--
-- retrylog installs this file (CREATE OR REPLACE) on every migrate, after record_retry.

-- What retry_stream_head should hold: each stream's last event, in the log or, for a stream
-- whose events were all archived, its base (retry_stream_base, migration 0019; a base keeps no
-- detail, so its last_scenario is NULL, which the archive sets on the head row). last_open, the
-- open state of the last retry (migration 0021), is false here: it derives from the outcomes
-- too, and retry_open_expected()/retry_open_drift() (projections/retry_outcomes.sql) are where
-- it is computed and compared, through the retry_open view.
CREATE OR REPLACE FUNCTION retry_stream_head_expected()
RETURNS SETOF retry_stream_head
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (h.job_id, h.job_variants_id)
           h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
           h.job_variants_id, h.attempt, h.hash, h.seq, h.reason, h.step, h.occurred_at,
           h.recorded_at, false, h.scenario
      FROM (SELECT l.job_id, l.job_variants_id, l.attempt, l.hash, l.seq, l.reason, l.step,
                   l.occurred_at, l.recorded_at, l.detail ->> 'scenario' AS scenario
              FROM retry_history l
            UNION ALL
            SELECT b.job_id, b.job_variants_id, b.attempt, b.hash, b.last_seq, b.last_reason,
                   b.last_step, b.last_occurred_at, b.last_recorded_at, NULL
              FROM retry_stream_base b) h
     ORDER BY h.job_id, h.job_variants_id, h.attempt DESC, h.seq DESC
$$;

-- Every head row and event id that differs from the log, each named: `problem` says what the
-- table holds and what the log says.
CREATE OR REPLACE FUNCTION retry_stream_head_drift()
RETURNS TABLE (job_id uuid, job_variants_id uuid, problem text)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.job_id, e.job_id), coalesce(s.job_variants_id, e.job_variants_id),
           'retry_stream_head holds '
           || coalesce('attempt ' || s.attempt || ' (seq ' || s.last_seq || ')', 'no row')
           || ', the log says '
           || coalesce('attempt ' || e.attempt || ' (seq ' || e.last_seq || ')', 'no event')
           || CASE WHEN s.attempt = e.attempt AND s.last_seq = e.last_seq
                   THEN ' with other values (hash, reason, step, scenario or times)' ELSE '' END
      FROM retry_stream_head s
      FULL JOIN retry_stream_head_expected() e ON (s.job_id, s.stream) = (e.job_id, e.stream)
     WHERE (s.job_variants_id, s.attempt, s.hash, s.last_seq, s.last_reason, s.last_step,
            s.last_occurred_at, s.last_recorded_at, s.last_scenario)
           IS DISTINCT FROM
           (e.job_variants_id, e.attempt, e.hash, e.last_seq, e.last_reason, e.last_step,
            e.last_occurred_at, e.last_recorded_at, e.last_scenario)
    UNION ALL
    SELECT coalesce(h.job_id, k.job_id), coalesce(h.job_variants_id, k.job_variants_id),
           CASE WHEN h.seq IS NULL
                THEN 'retry_event_id holds event_id ' || k.event_id || ' at seq ' || k.seq
                     || ', which is not in the log'
                WHEN k.event_id IS NULL
                THEN 'event seq ' || h.seq || ' (event_id ' || h.event_id
                     || ') has no row in retry_event_id'
                ELSE 'retry_event_id holds event_id ' || k.event_id || ' at seq ' || k.seq
                     || ', the log has it at seq ' || h.seq END
      FROM retry_event_id k
      FULL JOIN retry_history h ON h.event_id = k.event_id
     WHERE (k.job_id, k.job_variants_id, k.seq, k.recorded_at)
           IS DISTINCT FROM (h.job_id, h.job_variants_id, h.seq, h.recorded_at)
$$;

-- Rebuilds both from the log; returns how many rows were wrong. Both tables are locked
-- first, so no append changes them meanwhile (appends wait for the rebuild's commit), in the
-- order an append writes them (event id, then head), so an append that holds one cannot wait
-- for this rebuild while it waits for the other. A head row that stays at its last event
-- keeps its open state (last_open); one that moves to another event, or is new, starts
-- closed: retry_open_rebuild() sets the open state from the outcomes afterwards.
CREATE OR REPLACE FUNCTION retry_stream_head_rebuild()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    wrong bigint;
BEGIN
    LOCK TABLE retry_event_id, retry_stream_head IN EXCLUSIVE MODE;
    SELECT count(*) INTO wrong FROM retry_stream_head_drift();
    IF wrong > 0 THEN
        CREATE TEMPORARY TABLE retry_stream_head_rebuilt ON COMMIT DROP AS
        SELECT * FROM retry_stream_head_expected();
        UPDATE retry_stream_head_rebuilt e
           SET last_open = true
          FROM retry_stream_head hd
         WHERE (hd.job_id, hd.stream, hd.last_seq) = (e.job_id, e.stream, e.last_seq)
           AND hd.last_open;
        DELETE FROM retry_stream_head;
        INSERT INTO retry_stream_head SELECT * FROM retry_stream_head_rebuilt;
        DROP TABLE retry_stream_head_rebuilt;
        DELETE FROM retry_event_id;
        -- A log whose event id was changed by hand may hold it twice: the first keeps it.
        INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
        SELECT DISTINCT ON (h.event_id) h.event_id, h.job_id, h.job_variants_id, h.seq,
               h.recorded_at
          FROM retry_history h
         ORDER BY h.event_id, h.seq;
    END IF;
    RETURN wrong;
END
$$;
