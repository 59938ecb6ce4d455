-- Wake-ups without LISTEN (issue 10, part 1).
--
-- PostgreSQL signals every backend that LISTENs in a database at the commit of every
-- transaction there that sent a NOTIFY, on any channel; the backend wakes, reads the queue
-- and skips what it does not listen to. In a pipeline that notifies on its own changes
-- (DESIGN.md: a per-row NOTIFY its workers listen on), the watchdog's listener was woken at
-- every one of the pipeline's writes, and those ran at 0.90-0.98x their speed without
-- retrylog (bench/pgbench/listener-cost.sh, 4 clients: an idle LISTEN on another channel of
-- the same database cost a notifying writer 2-13%).
--
-- A transition into failed now also leaves a row here, written by the failure trigger in the
-- failing transaction, so it appears exactly when the failure commits and not at all when it
-- rolls back. The watchdog polls this table (every 250 ms: DELETE ... RETURNING job_id) and
-- sweeps the jobs it names; a watchdog that was away finds what it missed here, and sweeps
-- everything when it starts anyway. It LISTENs only on a pipeline's own channel, and only when
-- told to (--pipeline-channel). The NOTIFY on retrylog_settings.notify_channel stays, for
-- anything else that reacts to failures; it costs only the failing transactions.
CREATE TABLE retry_failure_signal (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid NOT NULL,
    signalled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The trigger writes as the owner (SECURITY DEFINER): the pipeline's roles get no right on
-- the table. The operator (the watchdog) reads and deletes the signals, the reader sees them.
GRANT SELECT, DELETE ON retry_failure_signal TO retrylog_operator;
GRANT SELECT ON retry_failure_signal TO retrylog_reader;

-- The failure triggers of 0007 call this function only for a row going INTO failed, so the
-- check 0005 made for an update that changed nothing it watched is gone. sql/privileges.sql
-- pins its search_path after every migrate; SECURITY DEFINER is stated here because CREATE
-- OR REPLACE resets it.
CREATE OR REPLACE FUNCTION retrylog_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO retry_failure_signal (job_id) VALUES (NEW.job_id);
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
