-- Light on the pipeline: the change trigger of 0005 notified on every insert and on every
-- change of status, step or updated_at. PostgreSQL serialises the commits of every
-- transaction that sent a NOTIFY (one cluster-wide lock), so the pipeline's own writes ran
-- at a third of their speed whether or not anything was ever retried.
--
-- Only a failure needs an immediate reaction: the watchdog's other scenarios (lagging,
-- stale, final step) need a row to have sat still for `stuck_after`, so a notification at the
-- moment it was touched could never make it a candidate; the periodic sweep finds them. From
-- here on retrylog notifies only when a row of jobs or jobs_variants goes INTO `failed`
-- (inserted failed, or updated from another status to failed). The trigger's WHEN clause is
-- checked by the executor before any function is called or any event is queued, and
-- `UPDATE OF status` skips statements that do not name the column at all: a heartbeat, a step
-- change, a counter bump or a status change to anything but failed runs no trigger code and
-- sends no NOTIFY.

-- 1. The old row trigger and its function.
DROP TRIGGER IF EXISTS jobs_notify_change ON jobs;
DROP TRIGGER IF EXISTS jobs_variants_notify_change ON jobs_variants;
DROP FUNCTION IF EXISTS retrylog_notify_change();

-- 2. The notification: the same small JSON payload as before, on the configured channel.
--    pg_notify folds identical payloads within a transaction, so a statement that fails
--    every variant of a job sends one notification per variant at most, and a failure rolled
--    back sends nothing.
CREATE FUNCTION retrylog_notify_failure() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

-- 3. Only transitions into failed fire it.
CREATE TRIGGER jobs_notify_failure
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION retrylog_notify_failure();
CREATE TRIGGER jobs_inserted_failed
    AFTER INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed')
    EXECUTE FUNCTION retrylog_notify_failure();
CREATE TRIGGER jobs_variants_notify_failure
    AFTER UPDATE OF status ON jobs_variants
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION retrylog_notify_failure();
CREATE TRIGGER jobs_variants_inserted_failed
    AFTER INSERT ON jobs_variants
    FOR EACH ROW
    WHEN (NEW.status = 'failed')
    EXECUTE FUNCTION retrylog_notify_failure();
