-- What the recovery watchdog needs from the database: one retry limit every door enforces,
-- `force` for an operator's recovery past it, the record of targets that need a human, and
-- the notification that wakes the watchdog when the pipeline changes a row.

-- 1. Settings shared by every door and every instance: one row.
CREATE TABLE retrylog_settings (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The max-retry limit record_retry enforces on every door; NULL means no limit.
    max_retries    integer CHECK (max_retries >= 0),
    -- The channel the change trigger notifies and `serve` listens on.
    notify_channel text NOT NULL
                   CHECK (notify_channel ~ '^[a-z_][a-z0-9_]{0,62}$'),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text NOT NULL DEFAULT session_user
);
INSERT INTO retrylog_settings (max_retries, notify_channel) VALUES (3, 'retrylog_pipeline');

-- 2. Targets the watchdog stopped at the limit: one row per target and retry_count, so a
--    target is noted once however many sweeps see it, and again only after a new retry (an
--    operator's forced recovery) raised its count and the limit stopped it once more. A note
--    is open while the target's retry_count still equals the count it was noted at.
CREATE TABLE retry_intervention (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid NOT NULL,
    job_variants_id uuid,
    retry_count     integer NOT NULL,
    max_retries     integer NOT NULL,
    scenario        text NOT NULL,
    reason          retry_reason NOT NULL,
    step            text,
    status          text,
    actor           text NOT NULL,
    detail          jsonb NOT NULL,
    noted_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retry_intervention_target_count_key
        UNIQUE NULLS NOT DISTINCT (job_id, job_variants_id, retry_count)
);
CREATE TRIGGER retry_intervention_append_only
    BEFORE UPDATE OR DELETE ON retry_intervention
    FOR EACH ROW EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_intervention_no_truncate
    BEFORE TRUNCATE ON retry_intervention
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();

-- 3. Wake-ups: a row of jobs or jobs_variants inserted, or updated in status, step or
--    updated_at, notifies the configured channel with a small JSON payload. retry_count
--    changes (the projection) notify nothing. pg_notify delivers at commit and folds
--    duplicates within a transaction.
CREATE FUNCTION retrylog_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.status IS NOT DISTINCT FROM NEW.status
       AND OLD.current_step IS NOT DISTINCT FROM NEW.current_step
       AND OLD.updated_at IS NOT DISTINCT FROM NEW.updated_at THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(
        (SELECT notify_channel FROM retrylog_settings),
        json_build_object(
            'table', TG_TABLE_NAME,
            'job_id', NEW.job_id,
            'job_variants_id', CASE WHEN TG_TABLE_NAME = 'jobs_variants'
                                    THEN to_jsonb(NEW) ->> 'job_variants_id' END,
            'status', NEW.status,
            'step', NEW.current_step)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_change
    AFTER INSERT OR UPDATE OF status, current_step, updated_at ON jobs
    FOR EACH ROW EXECUTE FUNCTION retrylog_notify_change();
CREATE TRIGGER jobs_variants_notify_change
    AFTER INSERT OR UPDATE OF status, current_step, updated_at ON jobs_variants
    FOR EACH ROW EXECUTE FUNCTION retrylog_notify_change();

-- 4. record_retry learns the shared limit and `force`: a new argument, so a new signature.
--    Drop the one without `force` where a database still has it (a database migrated before
--    this version), or calls that leave `force` out would be ambiguous between the two. The
--    function itself is sql/record_retry.sql, which migrate installs after the migrations.
DROP FUNCTION IF EXISTS record_retry(uuid, text, uuid, text, text, jsonb, uuid, timestamptz,
                                     text, text, integer, integer);
