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

-- 1. The old row triggers. Their function, retrylog_notify_change() (0005), stays: it sends
--    the small JSON payload of the row on the configured channel, and the triggers below
--    call it only for a transition into failed (its check for an unchanged status, step and
--    updated_at never holds for those). pg_notify folds identical payloads within a
--    transaction, and a failure rolled back sends nothing.
DROP TRIGGER IF EXISTS jobs_notify_change ON jobs;
DROP TRIGGER IF EXISTS jobs_variants_notify_change ON jobs_variants;

-- 2. Only transitions into failed fire it.
CREATE TRIGGER jobs_notify_failure
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION retrylog_notify_change();
CREATE TRIGGER jobs_inserted_failed
    AFTER INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed')
    EXECUTE FUNCTION retrylog_notify_change();
CREATE TRIGGER jobs_variants_notify_failure
    AFTER UPDATE OF status ON jobs_variants
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed')
    EXECUTE FUNCTION retrylog_notify_change();
CREATE TRIGGER jobs_variants_inserted_failed
    AFTER INSERT ON jobs_variants
    FOR EACH ROW
    WHEN (NEW.status = 'failed')
    EXECUTE FUNCTION retrylog_notify_change();
