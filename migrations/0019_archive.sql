-- Retention that keeps the audit (`retrylog archive`, src/archive/): a whole old partition of
-- the log is written to a file, recorded here with its manifest, and dropped. What stays in
-- the database still verifies: each archived stream keeps a base (its last archived event),
-- from which its remaining chain, its next attempt and its retry_count go on.

-- 1. One row per archived partition: where its file went and what the file must hold. The
--    manifest column is the manifest file's content, as written; the other columns are the
--    parts of it that `verify --archive` and the reports ask for.
CREATE TABLE retry_archive (
    -- The partition's name (retry_history_pYYYYMMDD); archiving it twice is a no-op.
    partition        text PRIMARY KEY,
    range_from       timestamptz NOT NULL,
    range_to         timestamptz NOT NULL CHECK (range_to > range_from),
    -- The file's name (no directory: archives are moved, the name stays) and SHA-256 (hex).
    file             text NOT NULL,
    sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    events           bigint NOT NULL CHECK (events >= 0),
    first_seq        bigint,
    last_seq         bigint,
    first_recorded_at timestamptz,
    last_recorded_at timestamptz,
    manifest         jsonb NOT NULL,
    archived_at      timestamptz NOT NULL DEFAULT now(),
    archived_by      text NOT NULL DEFAULT session_user
);

-- 2. Each archived stream's base: its last archived event, the same columns as its head row
--    (retry_stream_head). The chain left in the log starts from `hash` at attempt + 1, the
--    count adds `attempt` archived retries (attempts are gapless from 1, so the archived
--    prefix holds exactly `attempt` events), and a stream with no event left keeps its head
--    from here. A later archive of the same stream moves its base forward.
CREATE TABLE retry_stream_base (
    job_id           uuid NOT NULL,
    stream           uuid NOT NULL,
    job_variants_id  uuid,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    hash             bytea NOT NULL CHECK (octet_length(hash) = 32),
    last_seq         bigint NOT NULL,
    last_reason      retry_reason NOT NULL,
    last_step        text,
    last_occurred_at timestamptz NOT NULL,
    last_recorded_at timestamptz NOT NULL,
    -- The archive the base was last moved by.
    archive          text NOT NULL REFERENCES retry_archive (partition),
    PRIMARY KEY (job_id, stream)
);

-- 3. Where the log begins now: the end of the newest archived range ('-infinity' before any
--    archive). Events recorded before it are in archive files only; the rollups' hours
--    before it are kept as they were when archived (verify compares the hours from it on).
CREATE FUNCTION retry_archive_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce(max(range_to), '-infinity') FROM retry_archive
$$;

-- 4. Rights: the owner writes both (archive is the owner's job: it detaches and drops a
--    partition); readers read them (verify, the reports' refusal, verify --archive).
REVOKE ALL ON retry_archive, retry_stream_base FROM PUBLIC;
GRANT SELECT ON retry_archive, retry_stream_base TO retrylog_reader;
