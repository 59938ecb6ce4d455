-- The targets the scripts that run on a kept scale log append to (kept-log.sh runs it for
-- them): 10,000 random variants numbered 1..10000 for pgbench's `random(1, 10000)`, with the
-- retry limit lifted so that none is refused.
UPDATE retrylog_settings SET max_retries = NULL;
DROP TABLE IF EXISTS bench_targets;
CREATE TABLE bench_targets AS
  SELECT row_number() OVER ()::int AS n, job_id, job_variants_id
    FROM (SELECT job_id, job_variants_id FROM jobs_variants ORDER BY random() LIMIT 10000) v;
ALTER TABLE bench_targets ADD PRIMARY KEY (n);
ANALYZE bench_targets;
