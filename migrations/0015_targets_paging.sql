-- The targets list (issue 22, Browse: `retrylog targets`, GET /api/v1/targets, the Targets
-- page) pages by keyset in two orders; each order reads one index from its start, so the first
-- page and the thousandth cost the same.
--
--   * retry_history (occurred_at, seq): the last-retry order (most recent first, ties by seq),
--     and the since/until window on the last retry. The page walks the log backwards in time
--     and keeps each retry that is the latest of its stream (a probe of the stream key).
--   * jobs (retry_count, job_id), jobs_variants (retry_count, job_variants_id): the
--     retry-count order (ties by id), the two tables merged in order. The existing
--     idx_*_retry_count indexes stay as they are (the pipeline's own queries plan onto them
--     by name); retry_count was indexed already, so the pipeline's updates of other columns
--     stay HOT.
CREATE INDEX IF NOT EXISTS retry_history_occurred_at_seq ON retry_history (occurred_at, seq);
CREATE INDEX IF NOT EXISTS retrylog_jobs_retry_count_id ON jobs (retry_count, job_id);
CREATE INDEX IF NOT EXISTS retrylog_jobs_variants_retry_count_id
    ON jobs_variants (retry_count, job_variants_id);
