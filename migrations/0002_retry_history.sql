-- The retry log: one immutable row per retry of a job or of a variant.
--
-- A target's events form one stream: (job_id, NULL) for a job-level retry, (job_id, variant)
-- for a variant. Nothing here references the pipeline tables with a foreign key: the log
-- outlives the rows it describes, and stays shardable by job_id and partitionable by time.

CREATE TYPE retry_reason AS ENUM ('stuck', 'failed', 'manual_recovery');

CREATE TABLE retry_history (
    -- Global position in the log: the order replay and catch-up apply events in.
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Idempotency key: appending the same event_id twice stores one event.
    event_id        uuid NOT NULL,
    job_id          uuid NOT NULL,
    -- NULL for a job-level retry.
    job_variants_id uuid,
    reason          retry_reason NOT NULL,
    step            text,
    from_status     text,
    to_status       text,
    -- 1-based number of this retry within its target's stream; gapless.
    attempt         integer NOT NULL CHECK (attempt >= 1),
    -- Who retried: a service instance, an operator, an API client.
    actor           text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The appending transaction, so an asynchronous reader can tail the log without
    -- skipping an event whose transaction commits after a later one.
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- sha256(previous event's hash in the stream || canonical bytes of this event).
    hash            bytea NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT retry_history_event_id_key UNIQUE (event_id),
    -- The concurrency guard and the stream index at once: one row per (stream, attempt).
    -- NULLS NOT DISTINCT makes the job-level stream (variant NULL) unique too.
    CONSTRAINT retry_history_stream_attempt_key
        UNIQUE NULLS NOT DISTINCT (job_id, job_variants_id, attempt)
);

-- Retry counts from the counter-only era, captured once so that no replay loses them.
CREATE TABLE retry_opening_balance (
    job_id          uuid NOT NULL,
    job_variants_id uuid,
    balance         integer NOT NULL CHECK (balance <> 0),
    captured_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT retry_opening_balance_target_key
        UNIQUE NULLS NOT DISTINCT (job_id, job_variants_id)
);

INSERT INTO retry_opening_balance (job_id, job_variants_id, balance)
SELECT job_id, NULL, retry_count FROM jobs WHERE retry_count <> 0;

INSERT INTO retry_opening_balance (job_id, job_variants_id, balance)
SELECT job_id, job_variants_id, retry_count FROM jobs_variants WHERE retry_count <> 0;

-- Append-only: the database itself refuses to change or remove what was recorded.
CREATE FUNCTION retrylog_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'RL010',
              HINT = 'retrylog never updates or deletes recorded events; record a new one instead';
END
$$;

CREATE TRIGGER retry_history_append_only
    BEFORE UPDATE OR DELETE ON retry_history
    FOR EACH ROW EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_history_no_truncate
    BEFORE TRUNCATE ON retry_history
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_opening_balance_append_only
    BEFORE UPDATE OR DELETE ON retry_opening_balance
    FOR EACH ROW EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_opening_balance_no_truncate
    BEFORE TRUNCATE ON retry_opening_balance
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();
