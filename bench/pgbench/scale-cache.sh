#!/bin/bash
# What the server's cache does to a large log (docs/scale.md, "The cache at 10M"): on a
# database `retrylog-bench scale --keep` left, the same appends and history reads under each
# shared_buffers of SETTINGS, alternating. Each setting: the cluster restarted with it, every
# index read once (pg_prewarm), a checkpoint, WARM seconds of appends unmeasured, then
# RUN_SECONDS of appends at 16 clients (the rate, WAL bytes and blocks read into
# shared_buffers per append) and RUN_SECONDS of a random variant's history at 1 client (mean
# and p99 latency).
#   Restarts this machine's own cluster (pg_ctlcluster), and resets shared_buffers at the end.
#   SCALE_DB (retrylog_bench), SETTINGS ("8GB 128MB 8GB 128MB"), WARM (20), RUN_SECONDS (60).
. "$(dirname "$0")/kept-log.sh"
CLUSTER=$(ls /etc/postgresql | sort -V | tail -1)
cat > "$WORK/history.pgb" <<'PGB'
\set n random(1, 10000)
SELECT h.* FROM bench_targets t
  JOIN retry_history h ON h.job_id = t.job_id AND h.job_variants_id = t.job_variants_id
 WHERE t.n = :n ORDER BY h.attempt;
PGB

# Restarts the cluster with shared_buffers at $1, or at its default for "DEFAULT".
restart() {
    if [ "$1" = DEFAULT ]; then
        psql $U/postgres -qc "ALTER SYSTEM RESET shared_buffers"
    else
        psql $U/postgres -qc "ALTER SYSTEM SET shared_buffers = '$1'"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$CLUSTER" main restart
    until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.5; done
}

# The database's blocks read into shared_buffers so far, and the cluster's WAL position and
# full-page images written (pgbench's backends have reported their counters once they exited).
counters() {
    psql $U/$DB -AtF' ' -c "SELECT blks_read, (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, wal_fpi
                              FROM pg_stat_database, pg_stat_wal WHERE datname = current_database()"
}

echo "shared_buffers appends/s wal_bytes/append full_pages/append blocks_read/append history_mean_ms history_p99_ms"
for setting in ${SETTINGS:-8GB 128MB 8GB 128MB}; do
    restart "$setting"
    # Every index read once, through shared_buffers into the OS's cache as well: what stays in
    # shared_buffers is then what the setting holds, and the rest is a read from memory.
    psql $U/$DB -qAtc "CREATE EXTENSION IF NOT EXISTS pg_prewarm" \
        -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'i' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')" >/dev/null
    psql $U/$DB -qc CHECKPOINT
    pgbench -n -M prepared -c 16 -j 16 -T "${WARM:-20}" -f "$HERE/append-store-like.pgb" $U/$DB >/dev/null 2>&1
    sleep 1
    read -r blocks0 wal0 fpi0 < <(counters)
    out=$(pgbench -n -M prepared -c 16 -j 16 -T "${RUN_SECONDS:-60}" -f "$HERE/append-store-like.pgb" $U/$DB 2>/dev/null)
    sleep 1
    read -r blocks1 wal1 fpi1 < <(counters)
    done=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
    tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out")
    (cd "$WORK" && rm -f pgbench_log.* &&
        pgbench -n -M prepared -c 1 -j 1 -T "${RUN_SECONDS:-60}" -l -f "$WORK/history.pgb" $U/$DB >/dev/null 2>&1)
    history=$(cat "$WORK"/pgbench_log.* | awk '{print $3 / 1000}' | sort -n |
        awk '{v[NR] = $1; s += $1} END {printf "%.3f %.3f", s / NR, v[int(NR * 0.99)]}')
    awk -v s="$setting" -v t="$tps" -v n="$done" -v w=$((wal1 - wal0)) -v f=$((fpi1 - fpi0)) \
        -v b=$((blocks1 - blocks0)) -v h="$history" \
        'BEGIN {printf "%s %.0f %.0f %.3f %.3f %s\n", s, t, w / n, f / n, b / n, h}'
done
restart DEFAULT
