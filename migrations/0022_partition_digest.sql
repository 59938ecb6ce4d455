-- A digest of each closed partition of the log (issue 23): recorded by the maintenance step
-- once the partition's range is over (`retrylog maintain`, `serve`'s leased step), compared
-- by `verify --full` while the partition is still in the database (src/verify_state/digest.rs,
-- docs/security.md "What verify catches").
--
-- 1. What it covers: every event of the range, in seq order, by its stored hash — an event
--    added to or removed from a closed month, or a hash rewritten there (say, a whole stream
--    rehashed to hide a change), no longer matches. The chain walk of `--full` is what
--    notices a changed event whose hash was left alone; the two together leave a tamperer
--    who can write the log nothing to change in a closed month but this table too.
-- 2. When: only a range that ended more than a day ago. An event's partition key is taken
--    inside its transaction, which may commit later than the key says; a day is far longer
--    than any append's transaction runs (a transaction open that long would be reported as a
--    digest mismatch on --full, and the row deleted by the owner would be recorded again).
-- 3. Archived partitions leave the database with their digest row's purpose: the archive's
--    own manifest (SHA-256 of the file, seq range, chain heads) takes over, checked by
--    `verify --archive`. The rows stay, as a record.

CREATE TABLE retry_partition_digest (
    partition   text PRIMARY KEY,
    range_from  timestamptz NOT NULL,
    range_to    timestamptz NOT NULL CHECK (range_to > range_from),
    events      bigint NOT NULL CHECK (events >= 0),
    first_seq   bigint,
    last_seq    bigint,
    -- SHA-256 (hex) of the events' stored hashes concatenated in seq order.
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    recorded_by text NOT NULL DEFAULT session_user
);

-- What a range of the log holds now, in the digest's terms. Runs as the owner, so that the
-- rows a writer may not see (row security on the log) are counted too.
CREATE FUNCTION retry_partition_digest_of(range_from timestamptz, range_to timestamptz)
RETURNS TABLE (events bigint, first_seq bigint, last_seq bigint, sha256 text)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT count(*), min(h.seq), max(h.seq),
           encode(sha256(coalesce(string_agg(h.hash, ''::bytea ORDER BY h.seq), ''::bytea)),
                  'hex')
      FROM retry_history h
     WHERE h.recorded_at >= range_from AND h.recorded_at < range_to
$$;

-- Records the digest of every partition whose range ended a day or more before `at` and has
-- none yet; returns their names. Safe to run any number of times, also concurrently.
CREATE FUNCTION retry_partition_digest_record(at timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT p.name, p.range_from, p.range_to
          FROM (SELECT c.relname::text AS name,
                       substring(pg_get_expr(c.relpartbound, c.oid)
                                 FROM 'FROM \(''([^'']+)''\)')::timestamptz AS range_from,
                       substring(pg_get_expr(c.relpartbound, c.oid)
                                 FROM 'TO \(''([^'']+)''\)')::timestamptz AS range_to
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'retry_history'::regclass
                   AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT') p
         WHERE p.range_to <= at - interval '1 day'
           AND NOT EXISTS (SELECT 1 FROM retry_partition_digest d WHERE d.partition = p.name)
         ORDER BY p.range_from
    LOOP
        INSERT INTO retry_partition_digest
               (partition, range_from, range_to, events, first_seq, last_seq, sha256)
        SELECT part.name, part.range_from, part.range_to, d.events, d.first_seq, d.last_seq,
               d.sha256
          FROM retry_partition_digest_of(part.range_from, part.range_to) d
        ON CONFLICT (partition) DO NOTHING;
        IF FOUND THEN
            RETURN NEXT part.name;
        END IF;
    END LOOP;
END
$$;

-- Rights: the functions run as the owner with a pinned search_path (as sql/privileges.sql
-- pins the others); the operator records (the maintenance step), a reader compares (verify
-- --full reads the table and recomputes through retry_partition_digest_of).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION retry_partition_digest_of(timestamptz, timestamptz) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION retry_partition_digest_record(timestamptz) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
REVOKE ALL ON FUNCTION retry_partition_digest_of(timestamptz, timestamptz),
                       retry_partition_digest_record(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION retry_partition_digest_of(timestamptz, timestamptz)
    TO retrylog_reader;
GRANT EXECUTE ON FUNCTION retry_partition_digest_record(timestamptz) TO retrylog_operator;
REVOKE ALL ON retry_partition_digest FROM PUBLIC;
GRANT SELECT ON retry_partition_digest TO retrylog_reader;
