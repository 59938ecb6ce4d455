-- Where a plain `verify`'s rotation got to (issue 23; src/verify_state/rotation.rs,
-- docs/security.md "What verify catches").
--
-- 1. A plain verify checks the counts and head rows of the streams its new events touched,
--    and of one slice of the others: the next streams by the head rows' key (job_id, stream)
--    after this cursor, a fixed number per run, so its cost does not grow with the targets.
--    The targets without a head row in the slice's key range are checked with it.
-- 2. The cursor is the last key the last clean plain verify checked; NULL starts from the
--    lowest key. A slice that reaches the end wraps it to NULL: every target is checked
--    again within ceil(streams / slice) clean runs.
-- 3. Only a clean run moves it, in the same guarded UPDATE as the position: a slice that
--    found a mismatch is checked again by the next run, so what it found stays found.
ALTER TABLE verify_state
    ADD COLUMN rotation_job_id uuid,
    ADD COLUMN rotation_stream uuid,
    ADD COLUMN rotation_rounds bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT verify_state_rotation_key
        CHECK ((rotation_job_id IS NULL) = (rotation_stream IS NULL));

COMMENT ON COLUMN verify_state.rotation_job_id IS
    'The last head-row key (job_id, stream) a clean plain verify checked; NULL: the lowest next';
COMMENT ON COLUMN verify_state.rotation_rounds IS
    'Whole rounds of the rotation completed by clean plain verifies';
