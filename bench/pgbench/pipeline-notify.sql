-- The pipeline's own change trigger of the footprint's "pipeline notifies" world: a per-row
-- NOTIFY on every insert and update, the shape a pipeline whose workers listen for their rows'
-- changes uses to react to a touch.
-- `retrylog-bench footprint` (bench/src/footprint.rs) and footprint.sh (PIPELINE_NOTIFY=1)
-- both install this file.
CREATE FUNCTION pipeline_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pipeline_changes',
        json_build_object('table', TG_TABLE_NAME, 'job_id', NEW.job_id,
                          'status', NEW.status, 'step', NEW.current_step)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_pipeline_notify AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION pipeline_notify_change();
CREATE TRIGGER jobs_variants_pipeline_notify AFTER INSERT OR UPDATE ON jobs_variants
    FOR EACH ROW EXECUTE FUNCTION pipeline_notify_change();
