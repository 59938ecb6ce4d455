-- record_retry: the one implementation of the append rules. The Rust `store::append`, the
-- CLI and any other client (psql, Python/asyncpg) all call it inside their own transaction,
-- so the event commits together with the state change it records, or not at all.
--
-- Errors carry their own SQLSTATE so every door can tell the caller's mistake from a fault
-- (docs/architecture.md has the table, with the Rust error and CLI exit of each):
--   22023  invalid input (reason, step, actor, status, detail, occurred_at, force, ...)
--   42501  force by a role without the operator capability
--   RL001  unknown target (no such job or variant); when the id names a target of the other
--          kind, the message says so and COLUMN names the parameter it belongs in
--   RL002  the variant belongs to another job
--   RL004  the target reached the retry limit (the shared one or the caller's)
--   RL005  event_id already recorded for another target
--   RL009  conflict: expected_attempt is not the stream's next attempt
--   RL010  retry_history is append-only (the guard trigger of migrations/0002)
--
-- This file is the function's only definition. retrylog installs it on every migrate, after
-- the migrations, in the advisory-locked transaction that installs projections/ too
-- (src/migrate.rs). CREATE OR REPLACE keeps the function's owner and its grants, but:
--   * it cannot change the argument names or types or the return type: such a change needs
--     a migration that drops the old signature first (as 0005 dropped the one without
--     `force`), and then the new definition here;
--   * it resets every attribute to what is written here (SECURITY DEFINER, SET ...): one set
--     with ALTER FUNCTION would not survive the next migrate, so it belongs in this file.

-- It runs as its owner (SECURITY DEFINER): a caller needs EXECUTE on it (the writer
-- capability), never a right on the log or the counts, so the only way to append is through
-- these rules. sql/privileges.sql pins its search_path to (pg_catalog, retrylog's schema,
-- pg_temp last) after every install, so no object of the caller's (a temporary
-- retrylog_settings, say) can stand in for one of ours. `force` is for the operator
-- capability only (42501 otherwise). The event records session_user, the database role that
-- made the append, in db_role, covered by the hash (retrylog-event-v2).
--
-- Text fields follow the one rule of sql/retrylog_text.sql, checked after the defaults are
-- filled in (a defaulted step is checked like a given one), and so is detail.scenario, a key
-- of the trend rollup. occurred_at lies between 2000-01-01 UTC and five minutes from now.

-- retrylog_event_id: the id of an event whose caller gave none, for record_retry and
-- record_retries. A UUID of version 7 (RFC 9562): its first 48 bits are the milliseconds of
-- the clock, the other 74 random (gen_random_uuid's, with the version bits set to 7).
-- Why not gen_random_uuid() itself: retry_event_id's key holds every event id of the log in
-- one B-tree (the log's partitions cannot). A random key puts each append on a random leaf,
-- and the first change to a page after a checkpoint writes the whole page to the WAL, so the
-- larger the log, the more full pages an append writes (docs/scale.md). Ids in time order
-- are inserted at the right edge of the key, onto the few leaves the last appends touched. A
-- caller's own event ids are kept as given, of any version.
CREATE OR REPLACE FUNCTION retrylog_event_id() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                     * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE OR REPLACE FUNCTION record_retry(
    job_id           uuid,
    reason           text,
    job_variants_id  uuid        DEFAULT NULL,
    step             text        DEFAULT NULL,
    actor            text        DEFAULT NULL,
    detail           jsonb       DEFAULT NULL,
    event_id         uuid        DEFAULT NULL,
    occurred_at      timestamptz DEFAULT NULL,
    from_status      text        DEFAULT NULL,
    to_status        text        DEFAULT NULL,
    expected_attempt integer     DEFAULT NULL,
    max_retries      integer     DEFAULT NULL,
    force            boolean     DEFAULT false
) RETURNS retry_history
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    detail_limit constant integer := 16384;
    target       text;
    owner_job    uuid;
    cur_status   text;
    cur_step     text;
    cur_count    integer;
    prev_hash    bytea;
    next_attempt integer;
    ev           retry_history;
    known        retry_event_id;
    head_stream  uuid;
    has_head     boolean;
    counted      boolean := false;  -- step 2 took the lock by adding the event to the count
    was_open     boolean;      -- the head's last retry is still open (step 7, the head)
    open_seq     bigint;
    open_at      timestamptz;
    prev_recorded timestamptz;
    retry_limit  integer;
    -- Whether the caller gave these, before the defaults fill them in (an error says which).
    step_given   constant boolean := record_retry.step IS NOT NULL;
    from_given   constant boolean := record_retry.from_status IS NOT NULL;
    event_given  constant boolean := record_retry.event_id IS NOT NULL;
BEGIN
    -- 1. Validate everything before touching anything: bad input writes nothing.
    IF record_retry.job_id IS NULL THEN
        RAISE EXCEPTION 'job_id is required' USING ERRCODE = '22023';
    END IF;
    IF record_retry.reason IS NULL
       OR record_retry.reason NOT IN ('stuck', 'failed', 'manual_recovery') THEN
        RAISE EXCEPTION 'unknown retry reason % (expected stuck, failed or manual_recovery)',
            retrylog_excerpt(record_retry.reason) USING ERRCODE = '22023';
    END IF;
    step        := nullif(btrim(record_retry.step), '');
    from_status := nullif(btrim(record_retry.from_status), '');
    to_status   := nullif(btrim(record_retry.to_status), '');
    actor       := coalesce(nullif(btrim(record_retry.actor), ''), session_user::text);
    detail := coalesce(record_retry.detail, '{}'::jsonb);
    IF jsonb_typeof(detail) <> 'object' THEN
        RAISE EXCEPTION 'detail must be a JSON object, got a JSON %', jsonb_typeof(detail)
            USING ERRCODE = '22023';
    END IF;
    IF octet_length(detail::text) > detail_limit THEN
        RAISE EXCEPTION 'detail is % bytes, over the limit of % bytes',
            octet_length(detail::text), detail_limit USING ERRCODE = '22023';
    END IF;
    -- Every reader decodes detail with a nesting limit (serde_json's is 128): bound it well
    -- below, so what is accepted can always be read back.
    IF jsonb_path_exists(detail, 'strict $.**{64}') THEN
        RAISE EXCEPTION 'detail nests deeper than 63 levels' USING ERRCODE = '22023';
    END IF;
    -- The one text rule (sql/retrylog_text.sql) on the given fields, and on the scenario, a key
    -- of the trend rollup. Fast path: the bounds and one match over all of them; only a value
    -- that fails goes through retrylog_check_text, which names the field and quotes it.
    IF length(actor) > 200 OR length(to_status) > 64 OR length(detail ->> 'scenario') > 200
       OR concat(actor, to_status, detail ->> 'scenario') ~ retrylog_refused_characters() THEN
        PERFORM retrylog_check_text('actor', actor, 200);
        PERFORM retrylog_check_text('to_status', to_status, 64);
        PERFORM retrylog_check_text('detail.scenario', detail ->> 'scenario', 200);
    END IF;
    occurred_at := coalesce(record_retry.occurred_at, now());
    IF NOT isfinite(occurred_at) OR occurred_at < timestamptz '2000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'occurred_at % is outside the accepted window (2000-01-01 UTC to five '
                        'minutes from now)', occurred_at USING ERRCODE = '22023';
    END IF;
    IF occurred_at > now() + interval '5 minutes' THEN
        RAISE EXCEPTION 'occurred_at % is in the future', occurred_at USING ERRCODE = '22023';
    END IF;
    IF expected_attempt < 1 THEN
        RAISE EXCEPTION 'expected_attempt must be 1 or more, got %', expected_attempt
            USING ERRCODE = '22023';
    END IF;
    IF max_retries < 0 THEN
        RAISE EXCEPTION 'max_retries must be 0 or more, got %', max_retries
            USING ERRCODE = '22023';
    END IF;
    IF coalesce(force, false) AND record_retry.reason <> 'manual_recovery' THEN
        RAISE EXCEPTION 'force is only for an operator''s manual_recovery, not for reason %',
            record_retry.reason USING ERRCODE = '22023',
            HINT = 'automatic retries stop at the limit; record the recovery as manual_recovery';
    END IF;
    -- The operator capability, or the function's owner (current_user here), may force; the
    -- role is the session's, not the free-text actor.
    IF coalesce(force, false)
       AND NOT pg_has_role(session_user, 'retrylog_operator', 'MEMBER')
       AND NOT pg_has_role(session_user, current_user, 'MEMBER') THEN
        RAISE EXCEPTION 'force is for the operator capability: role % is not a member of '
                        'retrylog_operator', session_user USING ERRCODE = '42501',
            HINT = 'retrylog grant operator ROLE, run as the schema owner';
    END IF;

    -- 2. Lock the target's row. Every writer of a stream queues here, so attempts are gapless
    --    without retries on conflict; the lock also proves the target exists. Without an
    --    event_id (nothing to find already recorded, step 3) the lock is the count's own
    --    update (step 8, taken early): one row version and no separate lock record. Every
    --    refusal below raises, which undoes it with the rest of the statement.
    IF record_retry.event_id IS NULL AND record_retry.job_variants_id IS NULL THEN
        UPDATE jobs j SET retry_count = j.retry_count + 1
         WHERE j.job_id = record_retry.job_id
        RETURNING j.status, j.current_step, j.retry_count - 1
             INTO cur_status, cur_step, cur_count;
        counted := FOUND;
    ELSIF record_retry.event_id IS NULL THEN
        UPDATE jobs_variants v SET retry_count = v.retry_count + 1
         WHERE v.job_variants_id = record_retry.job_variants_id
           AND v.job_id = record_retry.job_id
        RETURNING v.job_id, v.status, v.current_step, v.retry_count - 1
             INTO owner_job, cur_status, cur_step, cur_count;
        counted := FOUND;
    END IF;
    IF counted THEN
        target := coalesce('variant ' || record_retry.job_variants_id,
                           'job ' || record_retry.job_id);
    ELSIF record_retry.job_variants_id IS NULL THEN
        target := 'job ' || record_retry.job_id;
        SELECT j.status, j.current_step, j.retry_count
          INTO cur_status, cur_step, cur_count
          FROM jobs j WHERE j.job_id = record_retry.job_id
           FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            -- A variant's id passed as job_id: say so (only on this error path, so no append
            -- pays for it). COLUMN names the parameter the id belongs in, for every door.
            SELECT v.job_id INTO owner_job
              FROM jobs_variants v WHERE v.job_variants_id = record_retry.job_id;
            IF FOUND THEN
                RAISE EXCEPTION '% is a variant of job %, not a job', record_retry.job_id,
                    owner_job USING ERRCODE = 'RL001', COLUMN = 'job_variants_id',
                    HINT = 'pass it as job_variants_id, and its job as job_id';
            END IF;
            RAISE EXCEPTION 'unknown job %', record_retry.job_id USING ERRCODE = 'RL001';
        END IF;
    ELSE
        target := 'variant ' || record_retry.job_variants_id;
        SELECT v.job_id, v.status, v.current_step, v.retry_count
          INTO owner_job, cur_status, cur_step, cur_count
          FROM jobs_variants v WHERE v.job_variants_id = record_retry.job_variants_id
           FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            -- A job's id passed as job_variants_id: say so, as above.
            IF EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = record_retry.job_variants_id) THEN
                RAISE EXCEPTION '% is a job, not a variant', record_retry.job_variants_id
                    USING ERRCODE = 'RL001', COLUMN = 'job_id',
                    HINT = 'pass it as job_id, with job_variants_id NULL';
            END IF;
            RAISE EXCEPTION 'unknown variant %', record_retry.job_variants_id
                USING ERRCODE = 'RL001';
        END IF;
        IF owner_job <> record_retry.job_id THEN
            RAISE EXCEPTION 'variant % belongs to job %, not to job %',
                record_retry.job_variants_id, owner_job, record_retry.job_id
                USING ERRCODE = 'RL002';
        END IF;
    END IF;

    -- 3. Idempotency: a known event_id returns the stored event. Checked under the target
    --    lock, so two concurrent appends of one event_id to this target cannot both pass; the
    --    event-id table's key settles two appends of one event_id to different targets (7).
    IF record_retry.event_id IS NOT NULL THEN
        SELECT * INTO known FROM retry_event_id k WHERE k.event_id = record_retry.event_id;
        IF FOUND THEN
            IF known.job_id = record_retry.job_id
               AND known.job_variants_id IS NOT DISTINCT FROM record_retry.job_variants_id THEN
                SELECT * INTO ev FROM retry_history h
                 WHERE h.seq = known.seq AND h.recorded_at = known.recorded_at;
                RETURN ev;
            END IF;
            RAISE EXCEPTION 'event_id % is already recorded for %', record_retry.event_id,
                CASE WHEN known.job_variants_id IS NULL THEN 'job ' || known.job_id
                     ELSE 'variant ' || known.job_variants_id END
                USING ERRCODE = 'RL005';
        END IF;
    END IF;

    -- 4. The stream's head: its last attempt and hash, from its head row (kept by every
    --    append under the target lock). A stream without one (its first append, or events
    --    written before the head rows) reads its last event from the stream index instead.
    head_stream := coalesce(record_retry.job_variants_id,
                            '00000000-0000-0000-0000-000000000000');
    SELECT hd.attempt, hd.hash, hd.last_recorded_at, hd.last_open, hd.last_seq,
           hd.last_occurred_at
      INTO next_attempt, prev_hash, prev_recorded, was_open, open_seq, open_at
      FROM retry_stream_head hd
     WHERE hd.job_id = record_retry.job_id AND hd.stream = head_stream;
    has_head := FOUND;
    IF NOT has_head AND record_retry.job_variants_id IS NULL THEN
        SELECT h.attempt, h.hash, h.recorded_at INTO next_attempt, prev_hash, prev_recorded
          FROM retry_history h
         WHERE h.job_id = record_retry.job_id AND h.job_variants_id IS NULL
         ORDER BY h.attempt DESC LIMIT 1;
    ELSIF NOT has_head THEN
        SELECT h.attempt, h.hash, h.recorded_at INTO next_attempt, prev_hash, prev_recorded
          FROM retry_history h
         WHERE h.job_id = record_retry.job_id
           AND h.job_variants_id = record_retry.job_variants_id
         ORDER BY h.attempt DESC LIMIT 1;
    END IF;
    next_attempt := coalesce(next_attempt, 0) + 1;
    prev_hash := coalesce(prev_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);

    -- 5. Optimistic concurrency for callers that decided to retry on what they read earlier.
    IF expected_attempt IS NOT NULL AND expected_attempt <> next_attempt THEN
        RAISE EXCEPTION 'conflict on %: expected attempt %, but the next attempt is %',
            target, expected_attempt, next_attempt USING ERRCODE = 'RL009';
    END IF;

    -- 6. The retry limit, on the count the operators see (opening balance included): the
    --    shared limit in retrylog_settings, or the caller's if that is lower. `force` lets an
    --    operator's manual_recovery past it, and the event says so.
    SELECT s.max_retries INTO retry_limit FROM retrylog_settings s;
    retry_limit := least(retry_limit, record_retry.max_retries);
    IF retry_limit IS NOT NULL AND cur_count >= retry_limit THEN
        IF NOT coalesce(force, false) THEN
            -- The hint is for SQL callers: the documented way (recover, which changes the
            -- status and records the event together), and the forced append for a state
            -- change made elsewhere. The CLI and the API say their own way instead.
            RAISE EXCEPTION 'retry limit reached: % has % retries (limit %)',
                target, cur_count, retry_limit USING ERRCODE = 'RL004',
                HINT = format('an operator recovers it by hand: retrylog recover --%s-id %s '
                              '--note ''why''; from SQL, record_retry(..., reason => '
                              '''manual_recovery'', force => true) by a member of '
                              'retrylog_operator records a recovery made elsewhere',
                              split_part(target, ' ', 1), split_part(target, ' ', 2));
        END IF;
        detail := detail || jsonb_build_object('forced_past_limit', retry_limit);
    END IF;

    -- 7. Append, its hash chained to the stream's previous event.
    event_id    := coalesce(record_retry.event_id, retrylog_event_id());
    step        := coalesce(step, cur_step);
    from_status := coalesce(from_status, cur_status);
    -- The defaults come from the target's row: checked by the same rule as a given value.
    IF length(step) > 200 OR length(from_status) > 64
       OR concat(step, from_status) ~ retrylog_refused_characters() THEN
        PERFORM retrylog_check_text(
            CASE WHEN step_given THEN 'step' ELSE 'step (the target''s current_step)' END,
            step, 200);
        PERFORM retrylog_check_text(
            CASE WHEN from_given THEN 'from_status' ELSE 'from_status (the target''s status)' END,
            from_status, 64);
    END IF;
    -- The partition key, after the target lock and never below the stream's previous one,
    -- so that attempt order is partition order (migrations/0016).
    INSERT INTO retry_history (
        event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt,
        actor, detail, occurred_at, recorded_at, db_role, hash)
    VALUES (
        event_id, record_retry.job_id, record_retry.job_variants_id,
        record_retry.reason::retry_reason, step, from_status, to_status, next_attempt,
        actor, detail, occurred_at, greatest(clock_timestamp(), prev_recorded), session_user,
        retry_event_hash(prev_hash, retry_event_canonical_v2(
            event_id, record_retry.job_id, record_retry.job_variants_id,
            record_retry.reason::retry_reason, step, from_status, to_status, next_attempt,
            actor, detail, occurred_at, session_user)))
    RETURNING * INTO ev;
    -- The event id, once across the log. A concurrent append of the same id to another
    -- target waits here for that one to end; if it committed, this one is refused. An id
    -- generated here is new: a plain insert (no speculative insertion and its confirmation
    -- record), its key still the backstop.
    IF NOT event_given THEN
        INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
        VALUES (ev.event_id, ev.job_id, ev.job_variants_id, ev.seq, ev.recorded_at);
    ELSE
        INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
        VALUES (ev.event_id, ev.job_id, ev.job_variants_id, ev.seq, ev.recorded_at)
        ON CONFLICT DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        SELECT * INTO known FROM retry_event_id k WHERE k.event_id = ev.event_id;
        RAISE EXCEPTION 'event_id % is already recorded for %', ev.event_id,
            CASE WHEN known.job_variants_id IS NULL THEN 'job ' || known.job_id
                 ELSE 'variant ' || known.job_variants_id END
            USING ERRCODE = 'RL005';
    END IF;
    -- The stream's new head, in place, with its open retry (migration 0021): this one is
    -- open until something decides it. Outcomes (migrations/0009): the stream's previous
    -- retry, if still open, was retried again before it moved on. Taking the open state
    -- decides: an observation or a note that cleared the flag first already did. Only they
    -- change the head row without the target's lock, and only to clear the flag, so the
    -- update below finds the flag as step 4 read it, or cleared: then it is read again under
    -- the row's lock. An occurred_at given out of order never makes a result precede its
    -- retry.
    IF has_head THEN
        UPDATE retry_stream_head hd
           SET attempt = ev.attempt, hash = ev.hash, last_seq = ev.seq,
               last_reason = ev.reason, last_step = ev.step,
               last_occurred_at = ev.occurred_at, last_recorded_at = ev.recorded_at,
               last_open = true, last_scenario = ev.detail ->> 'scenario'
         WHERE hd.job_id = ev.job_id AND hd.stream = head_stream
           AND hd.last_open = was_open;
        IF NOT FOUND THEN
            SELECT hd.last_open INTO was_open
              FROM retry_stream_head hd
             WHERE hd.job_id = ev.job_id AND hd.stream = head_stream
               FOR NO KEY UPDATE;
            UPDATE retry_stream_head hd
               SET attempt = ev.attempt, hash = ev.hash, last_seq = ev.seq,
                   last_reason = ev.reason, last_step = ev.step,
                   last_occurred_at = ev.occurred_at, last_recorded_at = ev.recorded_at,
                   last_open = true, last_scenario = ev.detail ->> 'scenario'
             WHERE hd.job_id = ev.job_id AND hd.stream = head_stream;
        END IF;
        IF was_open THEN
            INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_at, observed_by,
                                       evidence)
            VALUES (open_seq, 'retried_again', greatest(open_at, ev.occurred_at),
                    greatest(open_at, ev.occurred_at, clock_timestamp()), session_user,
                    jsonb_build_object('next_seq', ev.seq, 'attempt', ev.attempt));
        END IF;
    ELSE
        INSERT INTO retry_stream_head (job_id, stream, job_variants_id, attempt, hash, last_seq,
                                       last_reason, last_step, last_occurred_at,
                                       last_recorded_at, last_open, last_scenario)
        VALUES (ev.job_id, head_stream, ev.job_variants_id, ev.attempt, ev.hash, ev.seq,
                ev.reason, ev.step, ev.occurred_at, ev.recorded_at, true,
                ev.detail ->> 'scenario');
    END IF;

    -- 8. The retry_count projection, inline: the count changes in the event's transaction.
    --    The event adds one to its own target's count (projections/retry_counts.sql's delta
    --    of this one event), on the row step 2 locked, found by its primary key (and job_id,
    --    the distribution column on Citus); step 2 already did when there is no event_id.
    IF counted THEN
        NULL;
    ELSIF record_retry.job_variants_id IS NULL THEN
        UPDATE jobs j SET retry_count = j.retry_count + 1
         WHERE j.job_id = record_retry.job_id;
    ELSE
        UPDATE jobs_variants v SET retry_count = v.retry_count + 1
         WHERE v.job_variants_id = record_retry.job_variants_id
           AND v.job_id = record_retry.job_id;
    END IF;
    RETURN ev;
END
$$;
