-- A fourth capability, for the pipeline's own roles (issue 21, finding 3).
--
-- docs/operations.md granted the pipeline INSERT on jobs and jobs_variants, retry_count
-- included: `INSERT ... retry_count = -1000` and the retries after it sailed past the limit
-- (verify flagged it afterwards; the limit did not hold). retrylog_pipeline gets exactly what
-- a pipeline's workers need on their two tables and no way to set retry_count: column
-- privileges, which sql/privileges.sql recomputes from the tables' columns after every
-- migrate (a column the pipeline adds later is covered at the next one). No trigger is added
-- to the pipeline's writes (they keep their speed).
--
-- Created like 0006's three: once per cluster, by whoever may.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'retrylog_pipeline') THEN
        IF NOT (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE EXCEPTION 'role retrylog_pipeline does not exist and % may not create it',
                current_user USING ERRCODE = '42501',
                HINT = 'create it once per cluster as a superuser: CREATE ROLE '
                       'retrylog_pipeline NOLOGIN; then run retrylog migrate again';
        END IF;
        BEGIN
            CREATE ROLE retrylog_pipeline NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO retrylog_pipeline', current_schema());
END
$$;
