-- Partition maintenance of the log (migrations/0016): retrylog's own DDL rather than
-- pg_partman, so nothing more is installed and one function holds the rules
-- (docs/architecture.md says why). `retrylog maintain` (for cron) and the leased step of
-- `serve` call it; migrate leaves the current partition and `partitions_ahead` more.
--
-- retrylog installs this file (CREATE OR REPLACE) on every migrate.

-- Creates the range partitions that cover `at` through `partitions_ahead` spans after its own
-- (retrylog_settings), each starting where the last one ends, and returns their names. Safe
-- to run any number of times, also concurrently (the first locks the log's parent; the
-- others then find the partitions there).
--
-- A new partition is made empty and attached (ATTACH takes SHARE UPDATE EXCLUSIVE on the
-- log, so appends and reads go on; CREATE ... PARTITION OF would take ACCESS EXCLUSIVE). The
-- DEFAULT partition catches an append for which no partition exists yet; when a new range
-- covers events that landed there, they are moved into it under an ACCESS EXCLUSIVE lock (a
-- rare repair, named in the result), keeping their seq, times, txid and hash.
CREATE OR REPLACE FUNCTION retry_history_maintain(at timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    span        text;
    ahead       integer;
    lower_bound timestamptz;
    upper_bound timestamptz;
    horizon     timestamptz;
    part        text;
    stranded    boolean;
    -- The log's schema: new tables go there, not into pg_catalog, which leads the pinned
    -- search_path (sql/privileges.sql).
    home        text := (SELECT n.nspname FROM pg_class c
                           JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = 'retry_history'::regclass);
BEGIN
    SELECT s.partition_span, s.partitions_ahead INTO span, ahead FROM retrylog_settings s;
    horizon := date_trunc(span, at, 'UTC') + (ahead + 1) * ('1 ' || span)::interval;
    -- One maintainer at a time: a second waits here, then sees the first one's partitions.
    LOCK TABLE retry_history IN SHARE UPDATE EXCLUSIVE MODE;
    SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')
                   ::timestamptz)
      INTO lower_bound
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'retry_history'::regclass
       AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT';
    lower_bound := coalesce(lower_bound, date_trunc(span, at, 'UTC'));
    WHILE lower_bound < horizon LOOP
        upper_bound := date_trunc(span, lower_bound + ('1 ' || span)::interval, 'UTC');
        part := 'retry_history_p' || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYYMMDD');
        SELECT EXISTS (SELECT 1 FROM retry_history_default d
                        WHERE d.recorded_at >= lower_bound AND d.recorded_at < upper_bound)
          INTO stranded;
        IF stranded THEN
            -- The default partition is rebuilt around the new one: detached, set aside,
            -- replaced, its events routed again, then dropped (DROP, not DELETE: the guard).
            ALTER TABLE retry_history DETACH PARTITION retry_history_default;
            ALTER TABLE retry_history_default RENAME TO retry_history_default_moving;
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF retry_history '
                           'FOR VALUES FROM (%L) TO (%L)', home, part, lower_bound, upper_bound);
            EXECUTE format('CREATE TABLE %I.retry_history_default PARTITION OF retry_history '
                           'DEFAULT', home);
            CREATE TRIGGER retry_history_no_truncate
                BEFORE TRUNCATE ON retry_history_default
                FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change();
            INSERT INTO retry_history OVERRIDING SYSTEM VALUE
            SELECT * FROM retry_history_default_moving ORDER BY seq;
            DROP TABLE retry_history_default_moving;
            part := part || ' (events moved from retry_history_default)';
        ELSE
            EXECUTE format('CREATE TABLE %I.%I (LIKE retry_history INCLUDING DEFAULTS '
                           'INCLUDING CONSTRAINTS, CHECK (recorded_at >= %L AND recorded_at < %L))',
                           home, part, lower_bound, upper_bound);
            EXECUTE format('ALTER TABLE retry_history ATTACH PARTITION %I '
                           'FOR VALUES FROM (%L) TO (%L)', part, lower_bound, upper_bound);
        END IF;
        EXECUTE format('CREATE TRIGGER retry_history_no_truncate BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION retrylog_refuse_change()',
                       split_part(part, ' ', 1));
        RETURN NEXT part;
        lower_bound := upper_bound;
    END LOOP;
END
$$;
