-- The targets list (issue 22: `retrylog targets`, GET /api/v1/targets, the Targets page) reads
-- each target's last retry from its stream's head row (retry_stream_head, migration 0016) by
-- key, instead of finding it in the log. What that needs (docs/queries.md, "Targets"):
--
--   * retry_stream_head (last_occurred_at, last_seq): the last-retry order (most recent first,
--     ties by seq) and the since/until window, one entry per target. A page walks it from its
--     cursor and joins each target by primary key. The cost is paid by the appends, not the
--     pipeline: the head row's update changes last_occurred_at, so it is no longer a HOT
--     update and writes an entry here and in the head's key (docs/performance.md, "Targets").
--   * retry_history_detail_text: a trigram index (pg_trgm) on the text `q` searches, the
--     last retry's detail.error, detail.message and detail.note joined by a space (the
--     expression `targets::DETAIL_TEXT` writes, with immutable operators only). Only when
--     pg_trgm is installed or this role may install it (a trusted extension: CREATE on the
--     database suffices); otherwise `q` is checked on each candidate row, and the docs say
--     what that costs.
--
-- The other states need nothing new: failed and running read the pipeline's own
-- idx_*_status_retry_count, retrying reads retry_open's key, needs_intervention
-- retry_intervention's (job_id, job_variants_id, retry_count) key, recovered
-- retry_outcome's key; no index is added to jobs or jobs_variants (invariant 10).
CREATE INDEX IF NOT EXISTS retry_stream_head_last_retry
    ON retry_stream_head (last_occurred_at, last_seq);
--   * the same for the jobs' own streams alone (`kind=job`: a few in a hundred head rows,
--     which the whole index would read past); written by job-level appends only.
CREATE INDEX IF NOT EXISTS retry_stream_head_last_job_retry
    ON retry_stream_head (last_occurred_at, last_seq) WHERE job_variants_id IS NULL;
--   * retry_outcome (seq) WHERE outcome = 'gave_up': the retries that gave up, each then
--     found in the log by seq and kept if it is its stream's last (`state=gave_up`).
CREATE INDEX IF NOT EXISTS retry_outcome_gave_up
    ON retry_outcome (seq) WHERE outcome = 'gave_up';

DO $$
DECLARE
    trgm_schema text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm not installed (%): `retrylog targets --q` reads without '
                         'its index; see docs/performance.md, "Targets"', SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO trgm_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS retry_history_detail_text ON retry_history USING gin (
                 (substr(coalesce('' '' || (detail->>''error''), '''')
                         || coalesce('' '' || (detail->>''message''), '''')
                         || coalesce('' '' || (detail->>''note''), ''''), 2))
                 %I.gin_trgm_ops)', trgm_schema);
    END IF;
END
$$;
