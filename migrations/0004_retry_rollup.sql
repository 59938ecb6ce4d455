-- What the asynchronous projector needs: a way to tail the log without gaps, a checkpoint per
-- projection, the rollup table, and a record of when targets were created (the denominator of
-- the retry rate).

-- Tailing by transaction id: every event with txid below the oldest running transaction is
-- visible or never will be, so a reader that moves its horizon there never skips an event that
-- commits after a later one.
CREATE INDEX retry_history_txid ON retry_history (txid);

-- The tailing horizon: the oldest transaction of this database still running (or prepared),
-- else the next transaction id. Every event with a smaller txid is visible to any statement
-- that starts afterwards, or never will be. pg_snapshot_xmin alone would do, but it is
-- cluster-wide: a long transaction in another database would stall every projector here,
-- and transactions there cannot write to this log.
CREATE FUNCTION retrylog_horizon() RETURNS xid8
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- 1. Every transaction below xmax has ended or is listed in xip.
    snapshot pg_snapshot := pg_current_snapshot();
    oldest   xid8;
BEGIN
    -- Without the right to see other roles' sessions, their xids read as NULL: fall back to
    -- the cluster-wide horizon, which is always safe.
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') THEN
        RETURN pg_snapshot_xmin(snapshot);
    END IF;
    -- 2. Of those listed, keep the ones of this database that still run; the activity view
    --    is read after the snapshot (and afresh), so a listed transaction that has ended
    --    meanwhile is simply visible by now. Backends show 32-bit xids: compare the low bits.
    PERFORM pg_stat_clear_snapshot();
    SELECT min(x) INTO oldest
      FROM pg_snapshot_xip(snapshot) AS x
     WHERE (x::text::bigint % 4294967296) IN (
               SELECT a.backend_xid::text::bigint
                 FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
               UNION ALL
               SELECT p.transaction::text::bigint
                 FROM pg_prepared_xacts p
                WHERE p.database = current_database());
    RETURN coalesce(oldest, pg_snapshot_xmax(snapshot));
END
$$;

-- One row per asynchronous projection: every event with txid < position has been applied.
-- Written in the same transaction as the projection's rows (exactly-once effect).
CREATE TABLE projection_checkpoint (
    projection     text PRIMARY KEY,
    position       xid8 NOT NULL,
    events_applied bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_checkpoint (projection, position) VALUES ('retry_rollup', '1');

-- Projection retry_rollup: retries per UTC hour x target kind x reason x step x scenario.
-- The first_* columns count events that are their target's first in that bucket and group,
-- so "distinct targets retried" sums exactly across hours into days and weeks.
CREATE TABLE retry_rollup (
    hour                 timestamptz NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('job', 'variant')),
    reason               retry_reason NOT NULL,
    -- '' when the event names no step / its detail no scenario
    step                 text NOT NULL,
    scenario             text NOT NULL,
    retries              bigint NOT NULL,
    first_hour_kind      bigint NOT NULL,
    first_hour_reason    bigint NOT NULL,
    first_hour_step      bigint NOT NULL,
    first_hour_scenario  bigint NOT NULL,
    first_day_kind       bigint NOT NULL,
    first_day_reason     bigint NOT NULL,
    first_day_step       bigint NOT NULL,
    first_day_scenario   bigint NOT NULL,
    first_week_kind      bigint NOT NULL,
    first_week_reason    bigint NOT NULL,
    first_week_step      bigint NOT NULL,
    first_week_scenario  bigint NOT NULL,
    PRIMARY KEY (hour, kind, reason, step, scenario)
);

-- Targets created per UTC hour and kind: the rollup's denominator, folded from
-- retry_target_created by the projector with the same checkpoint.
CREATE TABLE retry_rollup_created (
    hour    timestamptz NOT NULL,
    kind    text NOT NULL CHECK (kind IN ('job', 'variant')),
    created bigint NOT NULL,
    PRIMARY KEY (hour, kind)
);

-- Targets created, one row per inserting statement and UTC hour: insert-only, so recording a
-- creation never contends with another (no counter row to lock).
CREATE TABLE retry_target_created (
    hour    timestamptz NOT NULL,
    kind    text NOT NULL CHECK (kind IN ('job', 'variant')),
    created bigint NOT NULL,
    txid    xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX retry_target_created_txid ON retry_target_created (txid);

INSERT INTO retry_target_created (hour, kind, created)
SELECT date_trunc('hour', created_at, 'UTC'), 'job', count(*) FROM jobs GROUP BY 1;
INSERT INTO retry_target_created (hour, kind, created)
SELECT date_trunc('hour', created_at, 'UTC'), 'variant', count(*) FROM jobs_variants GROUP BY 1;

CREATE FUNCTION retrylog_count_created() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retry_target_created (hour, kind, created)
    SELECT date_trunc('hour', created_at, 'UTC'), TG_ARGV[0], count(*)
      FROM created_rows
     GROUP BY 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_created
    AFTER INSERT ON jobs REFERENCING NEW TABLE AS created_rows
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_count_created('job');
CREATE TRIGGER jobs_variants_count_created
    AFTER INSERT ON jobs_variants REFERENCING NEW TABLE AS created_rows
    FOR EACH STATEMENT EXECUTE FUNCTION retrylog_count_created('variant');
