-- The pipeline's own tables, as retrylog needs them.
--
-- They are created when missing and never dropped. On a database where the pipeline already
-- runs, only what retrylog needs is added: `retry_count` (the counter-only era added it as a
-- nullable `INTEGER DEFAULT 0`; it becomes NOT NULL) and the five indexes the original change
-- defined, under exactly those names, so existing queries and dashboards keep their plans.

CREATE TABLE IF NOT EXISTS jobs (
    job_id       uuid PRIMARY KEY,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    current_step text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS jobs_variants (
    job_variants_id uuid PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    creation_order  integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    current_step    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retry_count integer NOT NULL DEFAULT 0;
UPDATE jobs SET retry_count = 0 WHERE retry_count IS NULL;
ALTER TABLE jobs
    ALTER COLUMN retry_count SET DEFAULT 0,
    ALTER COLUMN retry_count SET NOT NULL;

ALTER TABLE jobs_variants ADD COLUMN IF NOT EXISTS retry_count integer NOT NULL DEFAULT 0;
UPDATE jobs_variants SET retry_count = 0 WHERE retry_count IS NULL;
ALTER TABLE jobs_variants
    ALTER COLUMN retry_count SET DEFAULT 0,
    ALTER COLUMN retry_count SET NOT NULL;

CREATE INDEX IF NOT EXISTS idx_jobs_retry_count ON jobs (retry_count);
CREATE INDEX IF NOT EXISTS idx_jobs_status_retry_count ON jobs (status, retry_count);
CREATE INDEX IF NOT EXISTS idx_jobs_variants_retry_count ON jobs_variants (retry_count);
CREATE INDEX IF NOT EXISTS idx_jobs_variants_status_retry_count
    ON jobs_variants (status, retry_count);
CREATE INDEX IF NOT EXISTS idx_jobs_variants_job_id_retry_count
    ON jobs_variants (job_id, retry_count);
