-- record_retries: the batch door. One call appends many retries in the caller's transaction,
-- each by the rules of record_retry (the one implementation of the rules). A batch whose every
-- row record_retry would append as it stands (the common case: each target once, every row
-- valid, under its limit) is appended in a few set statements by record_retries_set (below),
-- which stores exactly what record_retry would; any other batch, and any refusal, goes row by
-- row through record_retry itself, which says what is wrong. This function reads the batch,
-- orders the locks and names the row of an error. The Rust `store::append_many`, the
-- watchdog's batches and the bulk recover call it; so can any client.
--
-- Input: one jsonb array, `retries`, of at most 1000 objects. Each object has record_retry's
-- parameter names as keys (job_id and reason required; the others optional, null or absent
-- meaning record_retry's default): job_id, job_variants_id, event_id (JSON strings holding
-- uuids), reason, step, actor, from_status, to_status, occurred_at (JSON strings; occurred_at
-- as a timestamptz literal, ISO 8601 with an offset), detail (a JSON object, up to 16 KiB as
-- for record_retry), expected_attempt, max_retries (JSON numbers), force (a JSON boolean). A
-- key of no parameter, or a value of the wrong JSON type, is refused (22023) naming the row
-- and the key. jsonb because every language can build it; parallel arrays of 13 columns would
-- not say which value belongs to which retry.
--
-- Output: the stored events, one per row, in the order of the rows (`WITH ORDINALITY` numbers
-- them); a row whose event_id is already recorded for its target returns the stored event.
--
-- Contract:
--   * All or nothing: the first refused row raises, and the call (with whatever the caller's
--     transaction did) writes nothing; there is no partial success to reconcile. A caller that
--     wants to go on without a refused row leaves it out and calls again, or calls inside a
--     savepoint of its own.
--   * An error keeps record_retry's SQLSTATE, HINT, COLUMN and CONSTRAINT (docs/architecture.md
--     has the table) and names the row: `row 37 (variant <id>): retry limit reached: ...`.
--     Rows count from 0, as the array's own indexes do: row 37 is `retries -> 37`.
--   * Rows are appended in the caller's order, so several rows of one target get consecutive
--     attempts in that order, each chained to the one before.
--   * Deadlock-free against other batches and single appends: before any append, the call
--     locks every target of the batch (the row record_retry locks: the job's for a job, the
--     variant's for a variant) in one global order, the jobs by job_id, then the variants by
--     job_variants_id (record_retries_lock, below; a bulk recovery locks in that order too).
--     Two batches over overlapping targets therefore queue on the first target they share and
--     never hold each other's; record_retry then takes locks this transaction already holds.
--     The order of the appends (the caller's) is separate from the order of the locks
--     (global), which is how a stream keeps its events in the caller's order. The set path
--     takes the same locks inside its own subtransaction, so a batch it declines has released
--     them before the row-by-row path takes them again, in the same order.
--
-- Installed by migrate like record_retry, after it (src/migrate.rs), under the same rules (see
-- sql/record_retry.sql's header: CREATE OR REPLACE cannot change the signature; attributes
-- live here). It runs as its owner (SECURITY DEFINER), with the search_path that
-- sql/privileges.sql pins, and EXECUTE is the writer capability's, as for record_retry: the
-- events still record session_user, and `force` still needs the operator capability.

CREATE OR REPLACE FUNCTION record_retries(retries jsonb)
RETURNS SETOF retry_history
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    most_rows constant integer := 1000;
    rows_given integer;
    at         integer;        -- the row being read, locked or appended (for the error)
    bad        record;
    r          jsonb;
    ev         retry_history;
    e_state    text;
    e_message  text;
    e_detail   text;
    e_hint     text;
    e_column   text;
    e_constraint text;
    e_table    text;
    e_schema   text;
    message    text;
    written    retry_history[];
    uuid_form  constant text :=
        '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';
BEGIN
    -- 1. The batch's shape.
    IF retries IS NULL OR jsonb_typeof(retries) <> 'array' THEN
        RAISE EXCEPTION 'retries must be a JSON array of objects, got %',
            coalesce('a JSON ' || jsonb_typeof(retries), 'NULL') USING ERRCODE = '22023';
    END IF;
    rows_given := jsonb_array_length(retries);
    IF rows_given > most_rows THEN
        RAISE EXCEPTION 'retries has % rows, over the limit of % per call', rows_given, most_rows
            USING ERRCODE = '22023', HINT = 'split the batch: each call is its own all-or-nothing unit';
    END IF;
    -- Each row an object, each key a parameter, each value of its JSON type: one pass over
    -- the whole batch, the first offence raised.
    SELECT e.i - 1 AS i, e.r, f.key, jsonb_typeof(f.value) AS got, t.expected INTO bad
      FROM jsonb_array_elements(retries) WITH ORDINALITY e(r, i)
      LEFT JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(e.r) = 'object' THEN e.r END) f
             ON true
      LEFT JOIN (VALUES ('job_id', 'string'), ('job_variants_id', 'string'),
                        ('event_id', 'string'), ('reason', 'string'), ('step', 'string'),
                        ('actor', 'string'), ('from_status', 'string'),
                        ('to_status', 'string'), ('occurred_at', 'string'),
                        ('detail', NULL), ('expected_attempt', 'number'),
                        ('max_retries', 'number'), ('force', 'boolean')) t(key, expected)
             ON t.key = f.key
     WHERE jsonb_typeof(e.r) <> 'object'
        OR (f.key IS NOT NULL AND t.key IS NULL)
        OR (t.expected IS NOT NULL AND jsonb_typeof(f.value) NOT IN (t.expected, 'null'))
     ORDER BY e.i
     LIMIT 1;
    IF FOUND THEN
        IF jsonb_typeof(bad.r) <> 'object' THEN
            RAISE EXCEPTION 'row % is a JSON %, not an object of record_retry''s parameters',
                bad.i, jsonb_typeof(bad.r) USING ERRCODE = '22023';
        ELSIF bad.expected IS NULL THEN
            RAISE EXCEPTION 'row % (%): unknown key % (expected record_retry''s parameters: '
                            'job_id, reason, job_variants_id, step, actor, detail, event_id, '
                            'occurred_at, from_status, to_status, expected_attempt, '
                            'max_retries, force)',
                bad.i, record_retries_target(bad.r), retrylog_excerpt(bad.key)
                USING ERRCODE = '22023';
        ELSE
            RAISE EXCEPTION 'row % (%): % must be a JSON % or null, got a JSON %',
                bad.i, record_retries_target(bad.r), bad.key, bad.expected, bad.got
                USING ERRCODE = '22023';
        END IF;
    END IF;

    -- 2. The ids: a cast raises on a malformed one, naming the first row of the value (ids in
    --    the canonical form cannot raise, so they skip the row-by-row cast).
    BEGIN
        at := NULL;
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(retries) e(item)
                    WHERE item ->> 'job_id' !~ uuid_form
                       OR item ->> 'job_variants_id' !~ uuid_form)
        THEN
            FOR at, r IN
                SELECT e.i - 1, e.r FROM jsonb_array_elements(retries) WITH ORDINALITY e(r, i)
                 ORDER BY e.i
            LOOP
                PERFORM (r ->> 'job_id')::uuid, (r ->> 'job_variants_id')::uuid;
            END LOOP;
        END IF;

        -- 3. The set path (record_retries_set, below): the whole batch in a few statements,
        --    when every row is one record_retry would append as it stands. It locks the
        --    targets itself; a batch it declines it has neither written nor kept locked.
        at := NULL;
        written := record_retries_set(retries);
        IF written IS NOT NULL THEN
            RETURN QUERY SELECT * FROM unnest(written);
            RETURN;
        END IF;

        -- 4. Row by row. First every target locked in the global order (see the header); a
        --    target that does not exist locks nothing, and its first row raises below.
        PERFORM record_retries_lock(retries);

        --    Then the appends, in the caller's order, each by the rules of record_retry.
        FOR at, r IN
            SELECT e.i - 1, e.r FROM jsonb_array_elements(retries) WITH ORDINALITY e(r, i)
             ORDER BY e.i
        LOOP
            SELECT * INTO ev FROM record_retry(
                job_id           => (r ->> 'job_id')::uuid,
                reason           => r ->> 'reason',
                job_variants_id  => (r ->> 'job_variants_id')::uuid,
                step             => r ->> 'step',
                actor            => r ->> 'actor',
                detail           => nullif(r -> 'detail', 'null'::jsonb),
                event_id         => (r ->> 'event_id')::uuid,
                occurred_at      => (r ->> 'occurred_at')::timestamptz,
                from_status      => r ->> 'from_status',
                to_status        => r ->> 'to_status',
                expected_attempt => (r ->> 'expected_attempt')::integer,
                max_retries      => (r ->> 'max_retries')::integer,
                force            => coalesce((r ->> 'force')::boolean, false));
            RETURN NEXT ev;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        -- Name the row, keep everything else the caller's door reads. An empty field would
        -- still be sent (as an empty HINT, say), so each RAISE passes only the fields the
        -- error has.
        GET STACKED DIAGNOSTICS
            e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
            e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT,
            e_column = COLUMN_NAME, e_constraint = CONSTRAINT_NAME,
            e_table = TABLE_NAME, e_schema = SCHEMA_NAME;
        message := CASE WHEN at IS NULL THEN e_message
                        ELSE format('row %s (%s): %s', at,
                                    record_retries_target(retries -> at), e_message) END;
        IF e_constraint <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = message, DETAIL = e_detail,
                CONSTRAINT = e_constraint, TABLE = e_table, SCHEMA = e_schema;
        ELSIF e_hint <> '' AND e_column <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = message, HINT = e_hint,
                COLUMN = e_column;
        ELSIF e_hint <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = message, HINT = e_hint;
        ELSIF e_column <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = message, COLUMN = e_column;
        ELSE
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = message;
        END IF;
    END;
END
$$;

-- record_retries_lock: locks every target the rows name (the row record_retry locks) in the
-- global order of the header: the jobs by job_id, then the variants by job_variants_id, each
-- set in one statement that finds the rows by key and locks them as they come out of its
-- sort. A target that does not exist locks nothing. The ids are already known to cast (record_retries' step 2).
CREATE OR REPLACE FUNCTION record_retries_lock(retries jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM jobs j
     WHERE j.job_id = ANY ((SELECT array_agg((e.item ->> 'job_id')::uuid)
                              FROM jsonb_array_elements(retries) e(item)
                             WHERE e.item ->> 'job_variants_id' IS NULL)::uuid[])
     ORDER BY j.job_id
       FOR NO KEY UPDATE OF j;
    PERFORM 1 FROM jobs_variants v
     WHERE v.job_variants_id = ANY ((SELECT array_agg((e.item ->> 'job_variants_id')::uuid)
                                       FROM jsonb_array_elements(retries) e(item))::uuid[])
     ORDER BY v.job_variants_id
       FOR NO KEY UPDATE OF v;
END
$$;

-- The target a row names, as errors say it: `variant <id>`, `job <id>`, or what is missing.
-- An id that does not look like a uuid is quoted through retrylog_excerpt, since a refused
-- row may hold anything.
CREATE OR REPLACE FUNCTION record_retries_target(r jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_typeof(r) IS DISTINCT FROM 'object' THEN 'not an object'
        WHEN r ->> 'job_variants_id' IS NOT NULL THEN 'variant ' || shown.variant
        WHEN r ->> 'job_id' IS NOT NULL THEN 'job ' || shown.job
        ELSE 'no job_id'
    END
      FROM (SELECT CASE WHEN r ->> 'job_id' ~ '^[0-9a-fA-F-]{32,36}$' THEN r ->> 'job_id'
                        ELSE retrylog_excerpt(r ->> 'job_id') END AS job,
                   CASE WHEN r ->> 'job_variants_id' ~ '^[0-9a-fA-F-]{32,36}$'
                        THEN r ->> 'job_variants_id'
                        ELSE retrylog_excerpt(r ->> 'job_variants_id') END AS variant) shown
$$;

-- record_retries_set: the batch in a few set statements instead of one record_retry per row,
-- for the batch whose every row record_retry would accept as it stands. It returns the stored
-- events in the order of the rows, or NULL when it declines: then it has written nothing and
-- record_retries appends the rows one by one, so every refusal, every idempotent return and
-- every rare case (two rows of one target, a stream without a head row but with events, a
-- head row whose open retry was decided meanwhile) keeps record_retry's exact behaviour and
-- message. Its verdict restates record_retry's checks only to decide whether to decline (no
-- message of its own); what it writes is what record_retry writes (the event, its hash chained
-- to the head, the event id, the head row, the previous retry's retried_again outcome, the
-- count), which verify checks like any other append. tests/retrylog/batch.rs holds the two
-- together: the same rows both ways compared column by column, and every kind of row
-- record_retry refuses declined here.
--
-- It runs inside record_retries, as the owner (EXECUTE is the owner's alone), and first locks
-- the targets in the global order (so the target rows it reads cannot change under it).
-- A race it cannot settle in one statement (an event id taken by another target meanwhile, an
-- open retry decided meanwhile) shows as fewer rows written than expected, and the block's
-- subtransaction undoes the whole attempt before it declines.
CREATE OR REPLACE FUNCTION record_retries_set(retries jsonb)
RETURNS retry_history[]
LANGUAGE plpgsql AS $$
DECLARE
    detail_limit constant integer := 16384;
    nil          constant uuid := '00000000-0000-0000-0000-000000000000';
    genesis      constant bytea :=
        '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    settings_limit integer;
    may_force    boolean;
    accepted     boolean;
    written      retry_history[];
    rows_given   integer;
    heads_kept   integer;
    heads_updated integer;
    heads_new    integer;
    ids_written  integer;
    counted      integer;
BEGIN
    SELECT s.max_retries INTO settings_limit FROM retrylog_settings s;
    -- As in record_retry: the operator capability or the owner (current_user here) may force.
    may_force := pg_has_role(session_user, 'retrylog_operator', 'MEMBER')
                 OR pg_has_role(session_user, current_user, 'MEMBER');
    BEGIN
        -- The locks inside this block: a declined batch leaves none behind, and the updates
        -- below change rows this subtransaction locked (a row locked by an enclosing one and
        -- updated here would need a multixact per row).
        PERFORM record_retries_lock(retries);
        WITH given AS (
            SELECT g.ord, g.job_id, g.job_variants_id, g.reason,
                   coalesce(g.job_variants_id, nil) AS stream,
                   nullif(btrim(g.step), '') AS step,
                   nullif(btrim(g.from_status), '') AS from_status,
                   nullif(btrim(g.to_status), '') AS to_status,
                   coalesce(nullif(btrim(g.actor), ''), session_user::text) AS actor,
                   coalesce(g.detail, '{}'::jsonb) AS detail,
                   coalesce(g.occurred_at, now()) AS occurred_at,
                   g.event_id IS NOT NULL AS event_given,
                   coalesce(g.event_id, retrylog_event_id()) AS event_id,
                   g.expected_attempt, g.max_retries,
                   least(settings_limit, g.max_retries) AS retry_limit,
                   coalesce(g.force, false) AS force
              FROM ROWS FROM (jsonb_to_recordset(retries) AS (
                       job_id uuid, job_variants_id uuid, event_id uuid, reason text,
                       step text, actor text, from_status text, to_status text,
                       occurred_at timestamptz, detail jsonb, expected_attempt integer,
                       max_retries integer, force boolean))
                   WITH ORDINALITY AS g(job_id, job_variants_id, event_id, reason, step,
                                        actor, from_status, to_status, occurred_at, detail,
                                        expected_attempt, max_retries, force, ord)
        ),
        -- Each row with its target's row (locked by record_retries), its head and what the
        -- append would store.
        batch AS (
            SELECT g.*,
                   coalesce(v.job_id = g.job_id, j.job_id IS NOT NULL) AS target_found,
                   coalesce(v.status, j.status) AS cur_status,
                   coalesce(v.retry_count, j.retry_count) AS cur_count,
                   coalesce(g.step, v.current_step, j.current_step) AS stored_step,
                   coalesce(g.from_status, v.status, j.status) AS stored_from_status,
                   hd.job_id IS NOT NULL AS has_head,
                   coalesce(hd.attempt, 0) + 1 AS attempt,
                   coalesce(hd.hash, genesis) AS prev_hash,
                   hd.last_recorded_at, hd.last_open, hd.last_seq, hd.last_occurred_at,
                   hd.job_id IS NULL AND CASE
                       WHEN g.job_variants_id IS NULL THEN EXISTS (
                           SELECT 1 FROM retry_history h
                            WHERE h.job_id = g.job_id AND h.job_variants_id IS NULL OFFSET 0)
                       ELSE EXISTS (
                           SELECT 1 FROM retry_history h
                            WHERE h.job_id = g.job_id
                              AND h.job_variants_id = g.job_variants_id OFFSET 0) END
                       AS events_without_head,
                   -- OFFSET 0: a probe per row, never the log or the ids read whole and hashed.
                   g.event_given AND EXISTS (
                       SELECT 1 FROM retry_event_id k WHERE k.event_id = g.event_id OFFSET 0)
                       AS event_known
              FROM given g
              -- Each by its key, a probe per row (LIMIT 1 keeps it one: joined as tables, a
              -- small pipeline table was read whole and hashed for every batch).
              LEFT JOIN LATERAL (SELECT j.job_id, j.status, j.current_step, j.retry_count
                                   FROM jobs j
                                  WHERE g.job_variants_id IS NULL AND j.job_id = g.job_id
                                  LIMIT 1) j ON true
              LEFT JOIN LATERAL (SELECT v.job_id, v.status, v.current_step, v.retry_count
                                   FROM jobs_variants v
                                  WHERE v.job_variants_id = g.job_variants_id
                                  LIMIT 1) v ON true
              LEFT JOIN LATERAL (SELECT hd.*
                                   FROM retry_stream_head hd
                                  WHERE hd.job_id = g.job_id AND hd.stream = g.stream
                                  LIMIT 1) hd ON true
        ),
        -- Whether record_retry would append every row as it stands (its steps 1 to 7).
        verdict AS (
            SELECT count(*) = count(DISTINCT (b.job_id, b.stream))
                   AND count(*) FILTER (WHERE b.event_given)
                       = count(DISTINCT b.event_id) FILTER (WHERE b.event_given)
                   -- Each row's condition NULL-proof: bool_and skips a NULL.
                   AND coalesce(bool_and(coalesce(
                       b.job_id IS NOT NULL
                       AND b.reason IN ('stuck', 'failed', 'manual_recovery')
                       AND jsonb_typeof(b.detail) = 'object'
                       AND octet_length(b.detail::text) <= detail_limit
                       AND NOT jsonb_path_exists(b.detail, 'strict $.**{64}')
                       AND coalesce(length(b.actor) <= 200, true)
                       AND coalesce(length(b.to_status) <= 64, true)
                       AND coalesce(length(b.detail ->> 'scenario') <= 200, true)
                       AND coalesce(length(b.stored_step) <= 200, true)
                       AND coalesce(length(b.stored_from_status) <= 64, true)
                       AND concat(b.actor, b.to_status, b.detail ->> 'scenario', b.stored_step,
                                  b.stored_from_status) !~ retrylog_refused_characters()
                       AND isfinite(b.occurred_at)
                       AND b.occurred_at >= timestamptz '2000-01-01 00:00:00+00'
                       AND b.occurred_at <= now() + interval '5 minutes'
                       AND coalesce(b.max_retries >= 0, true)
                       AND (NOT b.force OR (b.reason = 'manual_recovery' AND may_force))
                       AND b.target_found
                       AND NOT b.event_known
                       AND NOT b.events_without_head
                       AND coalesce(b.expected_attempt = b.attempt, true)
                       AND (b.force OR b.retry_limit IS NULL OR b.cur_count < b.retry_limit),
                       false)), false) AS accepted
              FROM batch b
        ),
        stored AS (
            SELECT b.*,
                   CASE WHEN b.retry_limit IS NOT NULL AND b.cur_count >= b.retry_limit
                        THEN b.detail || jsonb_build_object('forced_past_limit', b.retry_limit)
                        ELSE b.detail END AS stored_detail
              FROM batch b, verdict
             WHERE verdict.accepted
        ),
        -- The events in the order of the rows, so seq follows it.
        appended AS (
            INSERT INTO retry_history (
                event_id, job_id, job_variants_id, reason, step, from_status, to_status,
                attempt, actor, detail, occurred_at, recorded_at, db_role, hash)
            SELECT s.event_id, s.job_id, s.job_variants_id, s.reason::retry_reason,
                   s.stored_step, s.stored_from_status, s.to_status, s.attempt, s.actor,
                   s.stored_detail, s.occurred_at,
                   greatest(clock_timestamp(), s.last_recorded_at), session_user,
                   retry_event_hash(s.prev_hash, retry_event_canonical_v2(
                       s.event_id, s.job_id, s.job_variants_id, s.reason::retry_reason,
                       s.stored_step, s.stored_from_status, s.to_status, s.attempt, s.actor,
                       s.stored_detail, s.occurred_at, session_user))
              FROM stored s
             ORDER BY s.ord
            RETURNING *
        ),
        events AS (
            SELECT a AS event, s.ord, s.stream, s.event_given, s.has_head, s.last_open,
                   s.last_seq, s.last_occurred_at
              FROM appended a JOIN stored s ON s.event_id = a.event_id
        ),
        ids_generated AS (
            INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
            SELECT (e.event).event_id, (e.event).job_id, (e.event).job_variants_id,
                   (e.event).seq, (e.event).recorded_at
              FROM events e WHERE NOT e.event_given
            RETURNING 1
        ),
        ids_given AS (
            INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
            SELECT (e.event).event_id, (e.event).job_id, (e.event).job_variants_id,
                   (e.event).seq, (e.event).recorded_at
              FROM events e WHERE e.event_given
            ON CONFLICT DO NOTHING
            RETURNING 1
        ),
        -- Only if its open retry is as read: one decided meanwhile makes the count short.
        heads_updated AS (
            UPDATE retry_stream_head hd
               SET attempt = (e.event).attempt, hash = (e.event).hash,
                   last_seq = (e.event).seq, last_reason = (e.event).reason,
                   last_step = (e.event).step, last_occurred_at = (e.event).occurred_at,
                   last_recorded_at = (e.event).recorded_at, last_open = true,
                   last_scenario = (e.event).detail ->> 'scenario'
              FROM events e
             WHERE e.has_head AND hd.job_id = (e.event).job_id AND hd.stream = e.stream
               AND hd.last_open = e.last_open
               -- The batch's jobs by the key's first column: the head rows found by index.
               AND hd.job_id = ANY ((SELECT array_agg((e2.event).job_id) FROM events e2)::uuid[])
            RETURNING 1
        ),
        heads_new AS (
            INSERT INTO retry_stream_head (job_id, stream, job_variants_id, attempt, hash,
                                           last_seq, last_reason, last_step, last_occurred_at,
                                           last_recorded_at, last_open, last_scenario)
            SELECT (e.event).job_id, e.stream, (e.event).job_variants_id, (e.event).attempt,
                   (e.event).hash, (e.event).seq, (e.event).reason, (e.event).step,
                   (e.event).occurred_at, (e.event).recorded_at, true,
                   (e.event).detail ->> 'scenario'
              FROM events e WHERE NOT e.has_head
            RETURNING 1
        ),
        outcomes AS (
            INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_at, observed_by,
                                       evidence)
            SELECT e.last_seq, 'retried_again',
                   greatest(e.last_occurred_at, (e.event).occurred_at),
                   greatest(e.last_occurred_at, (e.event).occurred_at, clock_timestamp()),
                   session_user,
                   jsonb_build_object('next_seq', (e.event).seq, 'attempt', (e.event).attempt)
              FROM events e WHERE e.has_head AND e.last_open
            RETURNING 1
        ),
        -- By their keys, each target once (the verdict), its job checked there.
        jobs_counted AS (
            UPDATE jobs j SET retry_count = j.retry_count + 1
             WHERE j.job_id = ANY ((SELECT array_agg(s.job_id) FROM stored s
                                     WHERE s.job_variants_id IS NULL)::uuid[])
            RETURNING 1
        ),
        variants_counted AS (
            UPDATE jobs_variants v SET retry_count = v.retry_count + 1
             WHERE v.job_variants_id = ANY ((SELECT array_agg(s.job_variants_id)
                                               FROM stored s)::uuid[])
            RETURNING 1
        )
        SELECT verdict.accepted,
               (SELECT array_agg(e.event ORDER BY e.ord) FROM events e),
               (SELECT count(*) FROM stored s WHERE s.has_head),
               (SELECT count(*) FROM heads_updated),
               (SELECT count(*) FROM heads_new),
               (SELECT count(*) FROM ids_generated) + (SELECT count(*) FROM ids_given),
               (SELECT count(*) FROM jobs_counted) + (SELECT count(*) FROM variants_counted)
          INTO accepted, written, heads_kept, heads_updated, heads_new, ids_written, counted
          FROM verdict;
        IF NOT accepted THEN
            RETURN NULL;
        END IF;
        rows_given := jsonb_array_length(retries);
        IF heads_updated <> heads_kept OR heads_new <> rows_given - heads_kept
           OR ids_written <> rows_given OR counted <> rows_given
           OR coalesce(array_length(written, 1), 0) <> rows_given THEN
            RAISE EXCEPTION 'record_retries_set: raced, declining' USING ERRCODE = 'RL0FB';
        END IF;
        RETURN written;
    EXCEPTION WHEN OTHERS THEN
        -- Anything the rows hold that record_retry would refuse, or a race: none of it
        -- written (the block is a subtransaction); record_retry, row by row, says what.
        RETURN NULL;
    END;
END
$$;
