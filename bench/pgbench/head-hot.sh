#!/bin/bash
# What the Targets page's index on the head row's last retry costs an append on a large log
# (docs/scale.md, "Event ids in time order"): on a database `retrylog-bench scale --keep` left,
# appends at 16 clients (record_retry on 10,000 random variants, generated event ids) with
# retry_stream_head_last_retry and _last_job_retry (migration 0020) in place, then with both
# dropped, so the head row's update is HOT again; the indexes are rebuilt after each round.
# Each run starts right after a CHECKPOINT and reports appends/s, the WAL bytes and full-page
# images per append, and the head row's HOT updates of all its updates.
#   SCALE_DB (retrylog_bench), ROUNDS (2), RUN_SECONDS (45).
. "$(dirname "$0")/kept-log.sh"

append_script "" > "$WORK/append.pgb"

# The head rows' updates and HOT updates so far.
head_updates() {
    psql $U/$DB -AtF' ' -c "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                             WHERE relid = 'retry_stream_head'::regclass"
}

run() {
    local upd0 hot0 upd1 hot1 appends
    read -r upd0 hot0 < <(head_updates)
    appends=$(appends_after_checkpoint "$WORK/append.pgb")
    read -r upd1 hot1 < <(head_updates)
    echo "$1 $appends $((hot1 - hot0))/$((upd1 - upd0))"
}

echo "head_indexes appends/s wal_bytes/append full_pages/append hot/updates"
for _ in $(seq "${ROUNDS:-2}"); do
    run with
    psql $U/$DB -qc "DROP INDEX retry_stream_head_last_retry" -c "DROP INDEX retry_stream_head_last_job_retry"
    run without
    psql $U/$DB -qc "CREATE INDEX retry_stream_head_last_retry ON retry_stream_head (last_occurred_at, last_seq)" \
        -c "CREATE INDEX retry_stream_head_last_job_retry ON retry_stream_head (last_occurred_at, last_seq)
             WHERE job_variants_id IS NULL"
done
