#!/bin/bash
# What the Targets page's index on the head row's last retry costs an append on a large log
# (docs/scale.md, "Event ids in time order"): on a database `retrylog-bench scale --keep` left,
# appends at 16 clients (record_retry on 10,000 random variants, generated event ids) with
# retry_stream_head_last_retry and _last_job_retry (migration 0020) in place, then with both
# dropped, so the head row's update is HOT again; the indexes are rebuilt after each round.
# Each run starts right after a CHECKPOINT and reports appends/s, the WAL bytes and full-page
# images per append, and the head row's HOT updates of all its updates.
#   SCALE_DB (retrylog_bench), ROUNDS (2), RUN_SECONDS (45).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
U=postgres://postgres@127.0.0.1:5432
DB=${SCALE_DB:-retrylog_bench}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

psql $U/$DB -q -f "$HERE/scale-targets.sql"
cat > "$WORK/append.pgb" <<'PGB'
\set n random(1, 10000)
BEGIN;
SELECT r.seq FROM bench_targets t, record_retry(job_id => t.job_id, job_variants_id => t.job_variants_id, reason => 'stuck', actor => 'retrylog-bench') r WHERE t.n = :n;
COMMIT;
PGB

# The WAL position, the full-page images, and the head rows' updates and HOT updates so far.
counters() {
    psql $U/$DB -AtF' ' -c "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, w.wal_fpi,
                                   t.n_tup_upd, t.n_tup_hot_upd
                              FROM pg_stat_wal w, pg_stat_user_tables t
                             WHERE t.relid = 'retry_stream_head'::regclass"
}

run() {
    psql $U/$DB -qc CHECKPOINT
    read -r wal0 fpi0 upd0 hot0 < <(counters)
    out=$(pgbench -n -M prepared -c 16 -j 16 -T "${RUN_SECONDS:-45}" -f "$WORK/append.pgb" $U/$DB 2>/dev/null)
    # The backends' counters are reported once they have exited.
    sleep 2
    read -r wal1 fpi1 upd1 hot1 < <(counters)
    done=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
    tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out")
    awk -v k="$1" -v t="$tps" -v n="$done" -v w=$((wal1 - wal0)) -v f=$((fpi1 - fpi0)) \
        -v u=$((upd1 - upd0)) -v h=$((hot1 - hot0)) \
        'BEGIN {printf "%s %.0f %.0f %.3f %d/%d\n", k, t, w / n, f / n, h, u}'
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
