-- Trust under real privileges (docs/security.md): the three capabilities as PostgreSQL roles,
-- the database role of every append recorded in the event, a projector lease no reader or
-- writer can take, and the stamp that lets read commands tell a current schema without
-- migrating.
--
-- The functions' attributes (SECURITY DEFINER, the pinned search_path) and their EXECUTE
-- grants are not set here: sql/privileges.sql re-applies them after every install, because
-- CREATE OR REPLACE resets what a migration would set once.

-- 1. The capabilities: NOLOGIN group roles. Roles are cluster-wide, so another database of
--    the cluster may have created them already, or be creating them right now (a concurrent
--    CREATE ROLE ends in unique_violation once the other commits): both mean "exists".
DO $$
DECLARE
    capability text;
BEGIN
    FOREACH capability IN ARRAY ARRAY['retrylog_writer', 'retrylog_operator', 'retrylog_reader']
    LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = capability);
        IF NOT (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE EXCEPTION 'role % does not exist and % may not create it', capability,
                current_user USING ERRCODE = '42501',
                HINT = 'create the three roles once per cluster as a superuser: CREATE ROLE '
                       'retrylog_writer NOLOGIN; CREATE ROLE retrylog_operator NOLOGIN; '
                       'CREATE ROLE retrylog_reader NOLOGIN; then run retrylog migrate again';
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', capability);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
    -- The operator can do what a writer and a reader can. Membership is cluster-wide too.
    IF NOT pg_has_role('retrylog_operator', 'retrylog_writer', 'MEMBER') THEN
        BEGIN
            GRANT retrylog_writer TO retrylog_operator;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF NOT pg_has_role('retrylog_operator', 'retrylog_reader', 'MEMBER') THEN
        BEGIN
            GRANT retrylog_reader TO retrylog_operator;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- 2. Who appended: the database role (session_user) of the append, next to the free-text
--    actor. Covered by the hash from now on (format retrylog-event-v2); events recorded
--    before this version keep NULL here and verify under v1, as they were hashed.
ALTER TABLE retry_history ADD COLUMN db_role text;

-- 3. The projector's lease: the one runner of each asynchronous projection. Only roles with
--    UPDATE on this table (the owner and the operator capability) can take it, unlike an
--    advisory lock, which any connected role can take and hold.
CREATE TABLE projector_lease (
    projection  text PRIMARY KEY REFERENCES projection_checkpoint (projection),
    -- The holder's backend and role; NULL when free.
    holder_pid  integer,
    holder_role text,
    -- What the holder calls itself (application_name), for status.
    holder_name text,
    taken_at    timestamptz,
    -- Renewed by every batch and poll; a lease not renewed for its ttl may be taken over.
    renewed_at  timestamptz,
    ttl         interval NOT NULL DEFAULT interval '30 seconds',
    -- The last failure of a batch, kept until a batch succeeds: `verify` and `status` show a
    -- projection that cannot advance, with the event it stops at.
    failed_at   timestamptz,
    failure     text
);
INSERT INTO projector_lease (projection) SELECT projection FROM projection_checkpoint;

-- 4. What migrate installed after the migrations (sql/, projections/): a checksum of those
--    files, so a read command knows the database is current without running anything.
CREATE TABLE retrylog_install (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sql_checksum text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    installed_by text NOT NULL DEFAULT session_user
);

-- 5. The pipeline's triggers run with the rights of whoever writes jobs: they now run as
--    their owner, so the pipeline's role needs no right on retrylog's tables.
ALTER FUNCTION retrylog_count_created() SECURITY DEFINER;
ALTER FUNCTION retrylog_notify_change() SECURITY DEFINER;
-- The projector's horizon sees other roles' transactions only with pg_read_all_stats; as its
-- owner's, an operator's projector gets this database's horizon (when the owner has that
-- right) instead of the cluster-wide fallback. It returns a transaction id, nothing else.
ALTER FUNCTION retrylog_horizon() SECURITY DEFINER;

-- 6. Table rights. Nobody but the owner writes the log, the counts or the settings; the
--    operator may write the derived, rebuildable rollup and its checkpoint and lease.
REVOKE ALL ON retry_history, retry_opening_balance, retry_intervention, retrylog_settings,
              projection_checkpoint, projector_lease, retry_rollup, retry_rollup_created,
              retry_target_created, retrylog_install FROM PUBLIC;
DO $$
BEGIN
    -- The schema retrylog is installed in: the one these migrations run in.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO retrylog_writer, retrylog_reader',
                   current_schema());
END
$$;
GRANT SELECT ON retry_history, retry_opening_balance, retry_intervention, retrylog_settings,
                projection_checkpoint, projector_lease, retry_rollup, retry_rollup_created,
                retry_target_created, retrylog_install, jobs, jobs_variants
    TO retrylog_reader;
GRANT SELECT ON _sqlx_migrations, retrylog_install TO retrylog_writer, retrylog_reader;

-- 7. A writer reads its own rows: the events its database role appended. Row-level security
--    on the log, with a policy per capability; the owner (and so record_retry, which runs as
--    the owner) is not subject to it, a reader sees every row. A role given SELECT on the log
--    directly, outside the capabilities, sees no row: grant it `reader` instead.
ALTER TABLE retry_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY retry_history_reader ON retry_history FOR SELECT TO retrylog_reader
    USING (true);
CREATE POLICY retry_history_writer_own ON retry_history FOR SELECT TO retrylog_writer
    USING (db_role = session_user);
GRANT SELECT ON retry_history TO retrylog_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON retry_rollup, retry_rollup_created TO retrylog_operator;
GRANT SELECT, UPDATE ON projection_checkpoint, projector_lease TO retrylog_operator;
