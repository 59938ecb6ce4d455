-- The hash chain in SQL: record_retry (sql/record_retry.sql) computes every stored hash with
-- these two functions; `verify` rebuilds the same bytes in Rust (event::CanonicalEvent) and
-- compares, so a bug in either shows as a mismatch.
--
-- The bytes are frozen: every hash already in retry_history was computed from them, so an
-- edit here would make verify report every later event as a broken link. A new encoding
-- needs a new tag (retrylog-event-v2) that verify knows too, never an edit of v1.
--
-- retrylog installs this file (CREATE OR REPLACE) on every migrate, after the migrations and
-- before record_retry; see sql/record_retry.sql for what CREATE OR REPLACE keeps and what it
-- cannot change.

-- The exact bytes an event's hash covers (docs/architecture.md spells them out). Fields are
-- joined by a newline; none of them can contain one (record_retry refuses control characters
-- and jsonb's text form escapes them), and empty text is stored as NULL, so the encoding is
-- unambiguous. Declared STABLE, not IMMUTABLE, because the text casts it uses are only stable;
-- that lets the planner inline it into record_retry's INSERT instead of calling it.
CREATE OR REPLACE FUNCTION retry_event_canonical(
    event_id uuid, job_id uuid, job_variants_id uuid, reason retry_reason, step text,
    from_status text, to_status text, attempt integer, actor text, detail jsonb,
    occurred_at timestamptz
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT concat_ws(E'\n',
        'retrylog-event-v1',
        event_id::text,
        job_id::text,
        coalesce(job_variants_id::text, ''),
        reason::text,
        coalesce(step, ''),
        coalesce(from_status, ''),
        coalesce(to_status, ''),
        attempt::text,
        actor,
        (extract(epoch FROM occurred_at) * 1000000)::bigint::text,
        detail::text)
$$;

-- The hash of an event given the previous hash of its stream (32 zero bytes for attempt 1).
-- STABLE (convert_to is) so that it inlines too.
CREATE OR REPLACE FUNCTION retry_event_hash(previous bytea, canonical text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(previous || convert_to(canonical, 'UTF8'))
$$;

-- Version 2 (migrations/0006 onwards): the v1 fields under the tag retrylog-event-v2, then
-- the database role that made the append (session_user, the column db_role). Built from v1's
-- own text, so the two can never disagree on a shared field. Every event recorded since 0006
-- has a db_role and is hashed with this; events recorded before keep a NULL db_role and their
-- v1 hash. Rust builds the same bytes (event::CanonicalEvent).
CREATE OR REPLACE FUNCTION retry_event_canonical_v2(
    event_id uuid, job_id uuid, job_variants_id uuid, reason retry_reason, step text,
    from_status text, to_status text, attempt integer, actor text, detail jsonb,
    occurred_at timestamptz, db_role text
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'retrylog-event-v2'
        || substr(retry_event_canonical(event_id, job_id, job_variants_id, reason, step,
                                        from_status, to_status, attempt, actor, detail,
                                        occurred_at),
                  length('retrylog-event-v1') + 1)
        || E'\n' || db_role
$$;
