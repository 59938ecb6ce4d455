-- What `verify` has verified, so that a plain `verify` reads only what is new (issue 23,
-- item 3; src/verify_state.rs, docs/security.md "What verify catches").
--
-- 1. The position is a transaction-id horizon, as the projector's checkpoint is: every event
--    with txid below it was verified. An event appended by a transaction that commits after a
--    later one has a txid at or above the horizon of any verify that could not see it, so it
--    is read by the next verify instead of skipped. Read through the log's parent table by
--    txid: nothing here depends on how the log is stored or partitioned.
-- 2. Each stream's verified head (its last verified attempt and hash): a plain verify
--    continues the stream's chain from there, and skips an event at or below it that its
--    txid range shows again.
-- 3. Only a clean verify advances them; one that finds a mismatch records how many (and bumps
--    the generation, so a clean verify that started before it cannot advance past it): a
--    tamper found stays found (one that only --full finds stands until a --full is clean). Writing needs the operator capability; a reader's verify
--    checks the same and writes nothing.
-- 4. A lease row elects the one `serve --verify-every` instance that verifies on schedule: a
--    row with an expiry, not a session advisory lock, which a pooler in transaction mode or
--    a Citus coordinator would not keep.

CREATE TABLE verify_state (
    -- One row.
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Every event with txid below this was verified by a clean verify.
    horizon          xid8 NOT NULL DEFAULT '0',
    -- Bumped by every verify that writes here: a clean one advances only if no other verify
    -- wrote since it read the state.
    generation       bigint NOT NULL DEFAULT 0,
    -- Events verified so far (the sum of the clean runs' new events; a full run resets it).
    events           bigint NOT NULL DEFAULT 0,
    -- The last clean verify, and the last clean --full.
    verified_at      timestamptz,
    full_verified_at timestamptz,
    -- The last verify that recorded itself, clean or not, and the mismatches it found.
    checked_at       timestamptz,
    mismatches       integer NOT NULL DEFAULT 0 CHECK (mismatches >= 0),
    -- What the last --full found, standing until a --full is clean: a plain verify, which
    -- does not re-read those events, fails while it stands.
    full_mismatches  integer NOT NULL DEFAULT 0 CHECK (full_mismatches >= 0),
    -- Who ran it: the session role.
    checked_by       text
);
INSERT INTO verify_state DEFAULT VALUES;

-- Per stream, the last verified event. A per-target table: keyed by job_id first, like the log.
CREATE TABLE verify_stream_head (
    job_id          uuid NOT NULL,
    -- NULL for the job-level stream.
    job_variants_id uuid,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    hash            bytea NOT NULL CHECK (octet_length(hash) = 32),
    seq             bigint NOT NULL,
    CONSTRAINT verify_stream_head_key UNIQUE NULLS NOT DISTINCT (job_id, job_variants_id)
);

CREATE TABLE verify_lease (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The instance holding it (`serve`'s random instance id and host); NULL when free.
    holder      text,
    -- Free to take once past.
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO verify_lease DEFAULT VALUES;

REVOKE ALL ON verify_state, verify_stream_head, verify_lease FROM PUBLIC;
GRANT SELECT ON verify_state, verify_stream_head, verify_lease TO retrylog_reader;
GRANT SELECT, UPDATE ON verify_state, verify_lease TO retrylog_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON verify_stream_head TO retrylog_operator;
