-- record_retries: the batch door. One call appends many retries, each by record_retry (the one
-- implementation of the rules: this function only reads the batch, orders the locks and names
-- the row of an error), in the caller's transaction. The Rust `store::append_many` and the
-- watchdog's batches call it; so can any client.
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
--     variant's for a variant) in one global order, (job_id, job_variants_id) with the job
--     first, one target at a time. Two batches over overlapping targets therefore queue on the
--     first target they share and never hold each other's; record_retry then takes locks this
--     transaction already holds. The order of the appends (the caller's) is separate from the
--     order of the locks (global), which is how a stream keeps its events in the caller's
--     order.
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
    lock_on    record;
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

    BEGIN
        -- 2. Lock every target in the global order (see the header), before any append. A
        --    target that does not exist locks nothing; its first row raises in step 3. The
        --    casts raise on a malformed id, naming the first row of the value.
        at := NULL;
        FOR at, r IN
            SELECT e.i - 1, e.r FROM jsonb_array_elements(retries) WITH ORDINALITY e(r, i)
             ORDER BY e.i
        LOOP
            PERFORM (r ->> 'job_id')::uuid, (r ->> 'job_variants_id')::uuid;
        END LOOP;
        FOR lock_on IN
            SELECT min(e.i) - 1 AS i, (e.r ->> 'job_id')::uuid AS job_id,
                   (e.r ->> 'job_variants_id')::uuid AS job_variants_id
              FROM jsonb_array_elements(retries) WITH ORDINALITY e(r, i)
             WHERE e.r ->> 'job_id' IS NOT NULL
             GROUP BY 2, 3
             ORDER BY 2, 3 NULLS FIRST
        LOOP
            at := lock_on.i;
            IF lock_on.job_variants_id IS NULL THEN
                PERFORM 1 FROM jobs j WHERE j.job_id = lock_on.job_id FOR NO KEY UPDATE;
            ELSE
                PERFORM 1 FROM jobs_variants v
                 WHERE v.job_variants_id = lock_on.job_variants_id FOR NO KEY UPDATE;
            END IF;
        END LOOP;

        -- 3. The appends, in the caller's order, each by the rules of record_retry.
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
