-- The log, partitioned by time, with the two things a partitioned table cannot enforce by
-- itself kept beside it: a head row per stream and a table of event ids.
--
-- Why the partition key is recorded_at, taken by record_retry with clock_timestamp() after
-- it holds the target's row lock (and never below the stream's previous one): within one
-- stream the appends are serialised by that lock, so attempt n+1 takes its time after attempt
-- n committed, and attempt order is partition order. Archiving whole old partitions then
-- always removes a *prefix* of each stream, whose last hash and attempt become the base of
-- what stays. now() (transaction start) would not do: a transaction that waited for the lock
-- started before the one it waited for, and its event could land in the earlier month. The
-- events carried over below keep their recorded_at (transaction start, as recorded before),
-- raised where needed to the stream's previous one, so the rule holds for them too; the
-- raised value still lies within the recording transaction, which ran until after the
-- previous event committed.
--
-- Why a head row and an event-id table: a unique index on a partitioned table must contain
-- the partition key, so neither (stream, attempt) nor event_id can be unique on the log any
-- more. The head row (one per stream, written under the target lock) holds the last attempt
-- and hash: the next attempt is head + 1, gapless; the event-id table's primary key keeps an
-- event id once across all partitions, also for two concurrent appends to different targets.
--
-- This migration runs in one transaction and takes an ACCESS EXCLUSIVE lock on the log (the
-- rename below) until it commits: appends and reads of the log wait for the whole copy
-- (docs/architecture.md gives the time per million events).

-- 1. The settings: the span of a partition and how far ahead they are created.
ALTER TABLE retrylog_settings
    ADD COLUMN partition_span text NOT NULL DEFAULT 'month'
        CHECK (partition_span IN ('day', 'week', 'month')),
    ADD COLUMN partitions_ahead integer NOT NULL DEFAULT 2
        CHECK (partitions_ahead BETWEEN 1 AND 366);

-- 2. The old log steps aside with its indexes (their names are the new log's) and its
--    function: record_retry returns its row type; migrate installs it again afterwards.
ALTER TABLE retry_history RENAME TO retry_history_unpartitioned;
ALTER TABLE retry_history_unpartitioned
    DROP CONSTRAINT retry_history_event_id_key,
    DROP CONSTRAINT retry_history_stream_attempt_key;
DROP INDEX retry_history_txid;
DROP INDEX IF EXISTS retry_history_occurred_at_seq;
DROP FUNCTION IF EXISTS record_retry(uuid, text, uuid, text, text, jsonb, uuid, timestamptz, text, text,
                           integer, integer, boolean);

-- 3. The log: the same columns in the same order (record_retry returns this row type).
CREATE TABLE retry_history (
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    event_id        uuid NOT NULL,
    job_id          uuid NOT NULL,
    job_variants_id uuid,
    reason          retry_reason NOT NULL,
    step            text,
    from_status     text,
    to_status       text,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    actor           text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at     timestamptz NOT NULL,
    -- The partition key (see the header): set by record_retry after the target lock.
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    hash            bytea NOT NULL CHECK (octet_length(hash) = 32),
    db_role         text
) PARTITION BY RANGE (recorded_at);

-- Each index exists on every partition. seq is unique by its identity sequence; the stream
-- index serves a target's history and the fallback probe of a stream without a head row;
-- txid the projector's tailing; (occurred_at, seq) the Targets page (0015).
CREATE INDEX retry_history_seq ON retry_history (seq);
CREATE INDEX retry_history_stream ON retry_history (job_id, job_variants_id, attempt);
CREATE INDEX retry_history_txid ON retry_history (txid);
CREATE INDEX retry_history_occurred_at_seq ON retry_history (occurred_at, seq);

-- Row triggers on the parent are cloned onto every partition; statement triggers are not, so
-- each partition gets its own TRUNCATE guard (here and in retry_history_maintain()).
CREATE TRIGGER retry_history_append_only
    BEFORE UPDATE OR DELETE ON retry_history
    FOR EACH ROW EXECUTE FUNCTION retrylog_refuse_change();
CREATE TRIGGER retry_history_no_truncate
    BEFORE TRUNCATE ON retry_history
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();

-- 4. The partitions the old log needs, through partitions_ahead past the current one, and a
--    DEFAULT partition: the safety net that no append fails for want of a partition
--    (retry_history_maintain() moves what lands there into the partition it creates).
DO $$
DECLARE
    lower_bound timestamptz;
    upper_bound timestamptz;
    last_bound  timestamptz := date_trunc('month', now() + interval '3 months', 'UTC');
    name        text;
BEGIN
    SELECT date_trunc('month', coalesce(min(recorded_at), now()), 'UTC')
      INTO lower_bound FROM retry_history_unpartitioned;
    WHILE lower_bound < last_bound LOOP
        upper_bound := date_trunc('month', lower_bound + interval '1 month', 'UTC');
        name := 'retry_history_p' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I PARTITION OF retry_history FOR VALUES FROM (%L) TO (%L)',
                       name, lower_bound, upper_bound);
        EXECUTE format('CREATE TRIGGER retry_history_no_truncate BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change()', name);
        lower_bound := upper_bound;
    END LOOP;
END
$$;
CREATE TABLE retry_history_default PARTITION OF retry_history DEFAULT;
CREATE TRIGGER retry_history_no_truncate
    BEFORE TRUNCATE ON retry_history_default
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();

-- 5. The events, in log order, each stream's recorded_at made non-decreasing (header).
INSERT INTO retry_history (
    seq, event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt,
    actor, detail, occurred_at, recorded_at, txid, hash, db_role)
OVERRIDING SYSTEM VALUE
SELECT h.seq, h.event_id, h.job_id, h.job_variants_id, h.reason, h.step, h.from_status,
       h.to_status, h.attempt, h.actor, h.detail, h.occurred_at,
       max(h.recorded_at) OVER (PARTITION BY h.job_id, h.job_variants_id ORDER BY h.attempt),
       h.txid, h.hash, h.db_role
  FROM retry_history_unpartitioned h
 ORDER BY h.seq;
SELECT setval(pg_get_serial_sequence('retry_history', 'seq'),
              coalesce((SELECT max(seq) FROM retry_history), 0) + 1, false);

-- 6. The event ids: an event id is stored once across the whole log. Its key is the one key
--    of a per-target table without job_id (docs/scale.md): an event id must be unique across
--    all targets (RL005) on one server. On Citus its key becomes (job_id, event_id), co-located
--    with the log, and an event id is then idempotent within its job only.
CREATE TABLE retry_event_id (
    event_id        uuid PRIMARY KEY,
    job_id          uuid NOT NULL,
    job_variants_id uuid,
    -- Where the event is: its seq and its partition key.
    seq             bigint NOT NULL,
    recorded_at     timestamptz NOT NULL
);
INSERT INTO retry_event_id (event_id, job_id, job_variants_id, seq, recorded_at)
SELECT event_id, job_id, job_variants_id, seq, recorded_at FROM retry_history;

-- 7. The head of each stream: its last event, updated in place by every append. Only the key
--    is indexed, so the update is HOT when the page has room (fillfactor). Derived from the
--    log: replay rebuilds it, verify compares it (retry_stream_head_drift()). Its last-retry
--    fields are what the Targets page shows per target.
CREATE TABLE retry_stream_head (
    job_id           uuid NOT NULL,
    -- The nil uuid for the job-level stream, so the key has no NULL (as in retry_open).
    stream           uuid NOT NULL,
    job_variants_id  uuid,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    hash             bytea NOT NULL CHECK (octet_length(hash) = 32),
    last_seq         bigint NOT NULL,
    last_reason      retry_reason NOT NULL,
    last_step        text,
    last_occurred_at timestamptz NOT NULL,
    -- The last event's partition key: the next one's is never lower.
    last_recorded_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, stream)
) WITH (fillfactor = 70);
INSERT INTO retry_stream_head
SELECT DISTINCT ON (h.job_id, h.job_variants_id)
       h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
       h.job_variants_id, h.attempt, h.hash, h.seq, h.reason, h.step, h.occurred_at,
       h.recorded_at
  FROM retry_history h
 ORDER BY h.job_id, h.job_variants_id, h.attempt DESC;

DROP TABLE retry_history_unpartitioned;

-- 8. Who maintains the partitions: one holder at a time of a lease with an expiry, a row
--    rather than a session advisory lock (a transaction-pooling pgbouncer or Citus cannot
--    keep a session lock). Only the owner and the operator take it.
CREATE TABLE retrylog_maintenance_lease (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    holder      text,
    taken_at    timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    -- The last maintenance: when it ran, and what it did or why it failed.
    last_run_at timestamptz,
    last_result text
);
INSERT INTO retrylog_maintenance_lease DEFAULT VALUES;

-- 9. Rights, as on the old log (0006): the owner writes, a reader reads every row, a writer
--    its own; the partitions are reached through the log only. The head rows and event ids
--    are written by record_retry (as the owner) alone.
REVOKE ALL ON retry_history, retry_event_id, retry_stream_head, retrylog_maintenance_lease
    FROM PUBLIC;
ALTER TABLE retry_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY retry_history_reader ON retry_history FOR SELECT TO retrylog_reader
    USING (true);
CREATE POLICY retry_history_writer_own ON retry_history FOR SELECT TO retrylog_writer
    USING (db_role = session_user);
GRANT SELECT ON retry_history TO retrylog_writer, retrylog_reader;
GRANT SELECT ON retry_event_id, retry_stream_head, retrylog_maintenance_lease
    TO retrylog_reader;
GRANT SELECT, UPDATE ON retrylog_maintenance_lease TO retrylog_operator;

-- 10. The append-only refusal names the log, not the partition a row lives in.
CREATE OR REPLACE FUNCTION retrylog_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused',
        coalesce((SELECT c.relname FROM pg_class c
                   WHERE c.oid = pg_partition_root(TG_RELID)), TG_TABLE_NAME), TG_OP
        USING ERRCODE = 'RL010',
              HINT = 'retrylog never updates or deletes recorded events; record a new one instead';
END
$$;
