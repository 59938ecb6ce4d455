-- Who may run what (docs/security.md). retrylog installs this file last on every migrate,
-- after sql/ and projections/, because CREATE OR REPLACE FUNCTION resets a function's SET
-- clauses and a new function starts with EXECUTE granted to PUBLIC.
--
-- 1. Pinned search_path on every function a non-owner can reach, directly or as a trigger:
--    pg_catalog, the schema retrylog is installed in (the one migrate runs in), then pg_temp
--    — named last, because an unnamed pg_temp is searched first for tables, which would let
--    a caller's temporary table stand in for one of ours. The small SQL helpers (hash,
--    canonical bytes, deltas, the text rule) stay unpinned so the planner can still inline
--    them, and so does retry_counts_apply, which runs in every append and only ever inside
--    record_retry (EXECUTE is the owner's alone): each SET costs every call. They run only
--    inside the pinned functions, or for a reader who can fool nobody but themselves.
-- 2. EXECUTE revoked from PUBLIC on every function of retrylog, then granted per capability
--    (the pipeline capability holds none; see 3):
--    writer: record_retry and record_retries; operator: the rebuilds, the rollups' apply and reset and the
--    watchdog's observation of outcomes (the operator is also a writer and a reader); reader:
--    what verify, status and the reports call. The owner keeps everything.
DO $$
DECLARE
    pinned constant text[] := ARRAY[
        'record_retry', 'record_retries', 'retry_counts_rebuild', 'retry_counts_expected',
        'retry_counts_drift', 'retry_rollup_apply', 'retry_rollup_reset', 'retry_rollup_drift',
        'retrylog_horizon', 'retry_rollup_count_created', 'retrylog_notify_change',
        'retrylog_refuse_change', 'retry_outcome_gave_up', 'retry_outcome_observe',
        'retry_open_rebuild', 'retry_open_drift', 'retry_outcome_rollup_apply',
        'retry_outcome_rollup_reset', 'retry_outcome_rollup_drift', 'retry_outcome_problems',
        'retry_stream_head_drift', 'retry_stream_head_rebuild', 'retry_history_maintain',
        'retry_open_write', 'record_retries_set', 'record_retries_lock'];
    unpinned constant text[] := ARRAY[
        'retry_event_canonical', 'retry_event_canonical_v2', 'retry_event_hash',
        'retry_counts_apply', 'retry_counts_delta', 'retry_rollup_keyed', 'retry_rollup_cells_of',
        'retry_rollup_lowest_of', 'retry_rollup_delta', 'retry_rollup_expected',
        'retry_rollup_created_expected', 'retrylog_excerpt', 'retrylog_check_text',
        'retrylog_refused_characters', 'retry_outcome_ttr_bucket', 'retry_open_expected',
        'retry_outcome_changes', 'retry_outcome_rollup_delta',
        'retry_outcome_recovery_time_delta', 'retry_stream_head_expected',
        'record_retries_target', 'retry_archive_horizon', 'retrylog_event_id'];
    grants constant text[][] := ARRAY[
        ['record_retry', 'retrylog_writer'],
        ['record_retries', 'retrylog_writer'],
        ['retry_counts_rebuild', 'retrylog_operator'],
        ['retry_rollup_apply', 'retrylog_operator'],
        ['retry_rollup_reset', 'retrylog_operator'],
        ['retry_rollup_count_created', 'retrylog_operator'],
        ['retry_counts_delta', 'retrylog_reader'],
        ['retry_counts_expected', 'retrylog_reader'],
        ['retry_counts_drift', 'retrylog_reader'],
        ['retry_rollup_keyed', 'retrylog_reader'],
        ['retry_rollup_cells_of', 'retrylog_reader'],
        ['retry_rollup_lowest_of', 'retrylog_reader'],
        ['retry_rollup_delta', 'retrylog_reader'],
        ['retry_rollup_expected', 'retrylog_reader'],
        ['retry_rollup_created_expected', 'retrylog_reader'],
        ['retry_rollup_drift', 'retrylog_reader'],
        ['retrylog_horizon', 'retrylog_reader'],
        ['retry_outcome_observe', 'retrylog_operator'],
        ['retry_open_rebuild', 'retrylog_operator'],
        ['retry_outcome_rollup_apply', 'retrylog_operator'],
        ['retry_outcome_rollup_reset', 'retrylog_operator'],
        ['retry_outcome_ttr_bucket', 'retrylog_reader'],
        ['retry_open_expected', 'retrylog_reader'],
        ['retry_open_drift', 'retrylog_reader'],
        ['retry_outcome_changes', 'retrylog_reader'],
        ['retry_outcome_rollup_delta', 'retrylog_reader'],
        ['retry_outcome_recovery_time_delta', 'retrylog_reader'],
        ['retry_outcome_rollup_drift', 'retrylog_reader'],
        ['retry_archive_horizon', 'retrylog_reader'],
        ['retry_outcome_problems', 'retrylog_reader'],
        ['retry_stream_head_expected', 'retrylog_reader'],
        ['retry_stream_head_drift', 'retrylog_reader'],
        ['retry_stream_head_rebuild', 'retrylog_operator'],
        ['retry_history_maintain', 'retrylog_operator']];
    fn    regprocedure;
    pair  text[];
BEGIN
    FOR fn IN
        SELECT p.oid FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace
           AND p.proname = ANY (pinned || unpinned)
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        IF (SELECT proname FROM pg_proc WHERE oid = fn) = ANY (pinned) THEN
            EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
                           fn, current_schema());
        END IF;
    END LOOP;
    FOREACH pair SLICE 1 IN ARRAY grants LOOP
        FOR fn IN
            SELECT p.oid FROM pg_proc p
             WHERE p.pronamespace = current_schema()::regnamespace AND p.proname = pair[1]
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, pair[2]);
        END LOOP;
    END LOOP;
END
$$;

-- 3. The pipeline capability (migrations/0014): on jobs and jobs_variants, SELECT; INSERT of
--    every column but retry_count (it starts at its default, 0); UPDATE of every column but
--    retry_count and the columns that say which row it is and when it was created (job_id,
--    job_variants_id, created_at: the log's streams and the created counts read them). No
--    DELETE: deleting a target and inserting it again would set its count back to 0 and
--    reopen the limit. Recomputed from the columns there are now, after every migrate;
--    revoking the table's privileges revokes its column privileges too.
DO $$
DECLARE
    pipeline_table text;
    insertable     text;
    updatable      text;
BEGIN
    FOREACH pipeline_table IN ARRAY ARRAY['jobs', 'jobs_variants'] LOOP
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                   FILTER (WHERE attname <> 'retry_count'),
               string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                   FILTER (WHERE attname NOT IN ('retry_count', 'job_id', 'job_variants_id',
                                                 'created_at'))
          INTO insertable, updatable
          FROM pg_attribute
         WHERE attrelid = format('%I.%I', current_schema(), pipeline_table)::regclass
           AND attnum > 0 AND NOT attisdropped;
        EXECUTE format('REVOKE ALL ON %I FROM retrylog_pipeline', pipeline_table);
        EXECUTE format('GRANT SELECT ON %I TO retrylog_pipeline', pipeline_table);
        EXECUTE format('GRANT INSERT (%s) ON %I TO retrylog_pipeline', insertable,
                       pipeline_table);
        EXECUTE format('GRANT UPDATE (%s) ON %I TO retrylog_pipeline', updatable,
                       pipeline_table);
    END LOOP;
END
$$;
