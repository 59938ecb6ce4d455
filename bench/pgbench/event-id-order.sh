#!/bin/bash
# What the order of event ids does to an append on a large log (docs/scale.md, "Event ids in
# time order"): on a database `retrylog-bench scale --keep` left, appends at 16 clients with
# the event id a random UUID (what record_retry generated before) and with a time-ordered one
# (version 7, as retrylog_event_id() generates now), alternating. Both pass the id as the
# caller's, so the two differ in nothing but where the id lands in retry_event_id's key. Each
# run starts right after a CHECKPOINT and reports appends/s, and the WAL bytes and full-page
# images per append; under each wal_compression of COMPRESSION in turn (it compresses those
# images), reset to the server's own setting at the end.
#   SCALE_DB (retrylog_bench), ROUNDS (2), RUN_SECONDS (45), COMPRESSION ("off").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
U=postgres://postgres@127.0.0.1:5432
DB=${SCALE_DB:-retrylog_bench}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

psql $U/$DB -q -f "$HERE/scale-targets.sql"

# The one append of both runs; $1 is the event id's expression.
append() {
    cat <<PGB
\set n random(1, 10000)
BEGIN;
SELECT r.seq FROM bench_targets t, record_retry(job_id => t.job_id, job_variants_id => t.job_variants_id, reason => 'stuck', actor => 'retrylog-bench', event_id => $1) r WHERE t.n = :n;
COMMIT;
PGB
}
append "gen_random_uuid()" > "$WORK/random.pgb"
# retrylog_event_id()'s expression (sql/record_retry.sql), written out so that the script
# runs on a database migrated before it existed.
append "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid" \
    > "$WORK/ordered.pgb"

# The cluster's WAL position and full-page images written so far.
counters() {
    psql $U/$DB -AtF' ' -c "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, wal_fpi FROM pg_stat_wal"
}

compression() {
    psql $U/postgres -qAtc "ALTER SYSTEM $1" -c "SELECT pg_reload_conf()" >/dev/null
}
trap 'compression "RESET wal_compression"; rm -rf "$WORK"' EXIT

echo "wal_compression event_ids appends/s wal_bytes/append full_pages/append"
for setting in ${COMPRESSION:-off}; do
    compression "SET wal_compression = '$setting'"
    for _ in $(seq "${ROUNDS:-2}"); do
        for kind in random ordered; do
            psql $U/$DB -qc CHECKPOINT
            read -r wal0 fpi0 < <(counters)
            out=$(pgbench -n -M prepared -c 16 -j 16 -T "${RUN_SECONDS:-45}" -f "$WORK/$kind.pgb" $U/$DB 2>/dev/null)
            sleep 1
            read -r wal1 fpi1 < <(counters)
            done=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
            tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out")
            awk -v s="$setting" -v k="$kind" -v t="$tps" -v n="$done" -v w=$((wal1 - wal0)) \
                -v f=$((fpi1 - fpi0)) 'BEGIN {printf "%s %s %.0f %.0f %.3f\n", s, k, t, w / n, f / n}'
        done
    done
done
