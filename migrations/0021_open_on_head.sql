-- The open retry of each stream moves onto the stream's head row (issue 24).
--
-- A stream's open retry (migrations/0009) is always its latest retry, while nothing decided
-- it: record_retry's step 9 replaced it with the new retry on every append, and the deciders
-- only ever removed it. So it is the head row's last event plus one flag, `last_open`, and the
-- append that already updates the head row in place now sets the flag in the same UPDATE
-- instead of a DELETE and an INSERT of retry_open (two heap rows and four index entries less
-- per append). The head row keeps only its primary key indexed, so the update stays HOT when
-- the page has room.
--
-- retry_open stays, as a view over the head rows with the columns and rights the table had,
-- so every reader keeps working unchanged. Writing to it (the archive's and tests' DELETE, a
-- loader's INSERT) goes through retry_open_write() below, which sets or clears the flag of
-- the stream's head row; the deciders in the code (record_retry, the note trigger,
-- retry_outcome_observe, retry_open_rebuild) update the head row directly.
--
-- Who decides is still whoever takes the open state first: clearing the flag takes the head
-- row's lock, and a decider that finds the flag cleared, or the head at another event, when
-- it gets the lock decides nothing.

ALTER TABLE retry_stream_head ADD COLUMN last_open boolean NOT NULL DEFAULT false;

UPDATE retry_stream_head hd
   SET last_open = true
  FROM retry_open o
 WHERE o.job_id = hd.job_id AND o.stream = hd.stream AND o.seq = hd.last_seq;

DROP TABLE retry_open;

CREATE VIEW retry_open AS
SELECT hd.job_id, hd.stream, hd.job_variants_id, hd.last_seq AS seq, hd.last_step AS step,
       hd.last_occurred_at AS occurred_at
  FROM retry_stream_head hd
 WHERE hd.last_open;

-- Writes to the view: DELETE clears the flag (RETURNING sees the row it cleared), INSERT
-- sets it on the head row whose last event the row names (and refuses any other: an open
-- retry is always its stream's last event), UPDATE is refused. Only the owner can write to
-- the view at all (the rights below), so this runs as the owner.
CREATE FUNCTION retry_open_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE retry_stream_head hd
           SET last_open = false
         WHERE hd.job_id = OLD.job_id AND hd.stream = OLD.stream AND hd.last_seq = OLD.seq
           AND hd.last_open;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        RETURN OLD;
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE retry_stream_head hd
           SET last_open = true
         WHERE hd.job_id = NEW.job_id AND hd.stream = NEW.stream AND hd.last_seq = NEW.seq
           AND hd.last_step IS NOT DISTINCT FROM NEW.step
           AND hd.last_occurred_at = NEW.occurred_at;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'retry_open holds the last event of a stream only: seq % is not '
                            'the last event (with that step and occurred_at) of the head row '
                            'of job %, stream %', NEW.seq, NEW.job_id, NEW.stream
                USING ERRCODE = '22023',
                      HINT = 'retry_open is a view over retry_stream_head (migration 0021)';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'retry_open cannot be updated: delete the open retry, or insert the '
                    'stream''s last event' USING ERRCODE = '22023';
END
$$;
CREATE TRIGGER retry_open_write
    INSTEAD OF INSERT OR UPDATE OR DELETE ON retry_open
    FOR EACH ROW EXECUTE FUNCTION retry_open_write();

-- A note of the limit decides the target's open retry, as before (0009): now by clearing the
-- head row's flag. The retry it decides is the one open in the note's snapshot: a retry
-- appended meanwhile is not decided by a note that did not see it.
CREATE OR REPLACE FUNCTION retry_outcome_gave_up() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    WITH seen AS (
        SELECT hd.last_seq
          FROM retry_stream_head hd
         WHERE hd.job_id = NEW.job_id
           AND hd.stream = coalesce(NEW.job_variants_id, '00000000-0000-0000-0000-000000000000')
           AND hd.last_open
    ), decided AS (
        UPDATE retry_stream_head hd
           SET last_open = false
          FROM seen s
         WHERE hd.job_id = NEW.job_id
           AND hd.stream = coalesce(NEW.job_variants_id, '00000000-0000-0000-0000-000000000000')
           AND hd.last_seq = s.last_seq AND hd.last_open
        RETURNING hd.last_seq AS seq, hd.last_occurred_at AS occurred_at
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

-- The rights the table had (0009): a reader reads it; only the owner writes.
REVOKE ALL ON retry_open FROM PUBLIC;
GRANT SELECT ON retry_open TO retrylog_reader;
