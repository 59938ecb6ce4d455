# Sourced by the scripts that measure on a log `retrylog-bench scale --keep` left
# (scale-cache.sh, event-id-order.sh, head-hot.sh): the database (SCALE_DB, retrylog_bench),
# a work directory removed on exit (after `at_exit`, which a script may redefine), the 10,000
# targets they append to (scale-targets.sql), and the timed appends two of them share.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
U=postgres://postgres@127.0.0.1:5432
DB=${SCALE_DB:-retrylog_bench}
WORK=$(mktemp -d)
at_exit() { :; }
trap 'at_exit; rm -rf "$WORK"' EXIT

psql $U/$DB -q -f "$HERE/scale-targets.sql"

# A pgbench script appending one retry through record_retry to a random target, with `$1`
# (", event_id => …", or nothing) after its arguments.
append_script() {
    cat <<PGB
\set n random(1, 10000)
BEGIN;
SELECT r.seq FROM bench_targets t, record_retry(job_id => t.job_id, job_variants_id => t.job_variants_id, reason => 'stuck', actor => 'retrylog-bench'$1) r WHERE t.n = :n;
COMMIT;
PGB
}

# The cluster's WAL position and full-page images written so far.
wal_counters() {
    psql $U/$DB -AtF' ' -c "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, wal_fpi FROM pg_stat_wal"
}

# Right after a CHECKPOINT, RUN_SECONDS (45) of the pgbench script `$1` at 16 clients; prints
# appends/s, WAL bytes and full-page images per append.
appends_after_checkpoint() {
    local wal0 fpi0 wal1 fpi1 out done tps
    psql $U/$DB -qc CHECKPOINT
    read -r wal0 fpi0 < <(wal_counters)
    out=$(pgbench -n -M prepared -c 16 -j 16 -T "${RUN_SECONDS:-45}" -f "$1" $U/$DB 2>/dev/null)
    # The backends report their counters once they have exited.
    sleep 2
    read -r wal1 fpi1 < <(wal_counters)
    done=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
    tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out")
    awk -v t="$tps" -v n="$done" -v w=$((wal1 - wal0)) -v f=$((fpi1 - fpi0)) \
        'BEGIN {printf "%.0f %.0f %.3f\n", t, w / n, f / n}'
}
