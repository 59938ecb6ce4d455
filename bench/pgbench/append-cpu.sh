#!/bin/bash
# Server CPU per append (docs/performance.md, "Appends" -> "What limits the figures"):
# record_retry as of one or more git revisions, and the two baselines of `retrylog-bench
# appends` ((a) the bare counter UPDATE, (b) the naive INSERT ... SELECT ... FOR UPDATE into a
# plain log table plus that UPDATE), each measured on ONE backend: pgbench -c1 -M prepared,
# synchronous_commit off, N transactions, the backend's CPU read from /proc/<pid>/schedstat
# (and utime+stime from /proc/<pid>/stat) before the first and after the last one. Rounds
# alternate the order of the variants so drift and noise show.
#
#   bench/pgbench/append-cpu.sh [REV ...]      (default: HEAD; WT = the working tree; a path
#   to an .sql file NAME.sql = a self-contained copy defining record_retry_NAME)
#   ROUNDS (4), CALLS (20000) per measurement, JOBS (100000), KEEP=1 keeps rl_append_cpu.
# Each REV's sql/record_retry.sql and projections/retry_counts.sql are installed under
# suffixed names (record_retry_r1, retry_counts_apply_r1, ...) next to the real ones.
# The schema comes from $RETRYLOG (default target/release/retrylog, or target/debug) migrate, else from psql
# applying migrations/, sql/, projections/ and sql/privileges.sql in migrate's order.
# Every transaction (every variant, baselines too) is BEGIN; look the target up in
# bench_targets; the append; COMMIT. "null" is that without the append: the harness's own cost.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DB=rl_append_cpu
U=postgres://postgres@127.0.0.1:5432
CALLS=${CALLS:-20000}
ROUNDS=${ROUNDS:-4}
REVS=("$@"); [ ${#REVS[@]} = 0 ] && REVS=(HEAD)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
BIN=${RETRYLOG:-$ROOT/target/release/retrylog}; [ -x "$BIN" ] || BIN=$ROOT/target/debug/retrylog
if [ -x "$BIN" ]; then
  DATABASE_URL=$U/$DB "$BIN" migrate >/dev/null
else
  echo "no retrylog binary: installing with psql" >&2
  psql $U/$DB -qc "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY)"
  for f in "$ROOT"/migrations/*.sql "$ROOT"/sql/retry_event_hash.sql "$ROOT"/sql/retrylog_text.sql \
           "$ROOT"/sql/record_retry.sql "$ROOT"/projections/retry_counts.sql \
           "$ROOT"/projections/retry_rollup.sql "$ROOT"/projections/retry_outcomes.sql \
           "$ROOT"/sql/privileges.sql; do
    psql $U/$DB -q -v ON_ERROR_STOP=1 -1 -f "$f" >/dev/null
  done
fi
# JOBS (100,000) jobs x 4 variants: targets 1-10,000 for the record_retry variants, 10,001-20,000 for
# the baselines (they move counters without events, as in the bench's twin database).
psql $U/$DB -q -v ON_ERROR_STOP=1 -v jobs=${JOBS:-100000} <<'SQL'
UPDATE retrylog_settings SET max_retries = NULL;
INSERT INTO jobs (job_id, status, current_step) SELECT gen_random_uuid(), 'running', 'generate' FROM generate_series(1, :jobs);
INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
  SELECT gen_random_uuid(), j.job_id, o, 'done', 'generate' FROM jobs j, generate_series(0, 3) o;
CREATE TABLE bench_targets AS SELECT row_number() OVER ()::int AS n, job_id, job_variants_id FROM jobs_variants;
ALTER TABLE bench_targets ADD PRIMARY KEY (n);
-- Baseline (b)'s table, as bench/src/appends.rs (NAIVE_LOG_DDL) creates it in the twin.
CREATE TABLE bench_naive_log (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid NOT NULL,
    job_variants_id uuid NOT NULL,
    attempt         integer NOT NULL,
    reason          text NOT NULL,
    actor           text NOT NULL,
    detail          jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL);
VACUUM ANALYZE;
SQL

# One pgbench script per variant: $1 name, $2 the statements of the append.
script() {
  cat > "$TMP/$1.pgb" <<PGB
\set i :i + 1
\if :i = 1
SELECT pg_backend_pid() AS pid \gset
\shell $HERE/append-cpu-read.sh :pid $TMP/$1.start
\endif
\set n random($3, $4)
BEGIN;
SELECT job_id AS j, job_variants_id AS v FROM bench_targets WHERE n = :n \gset
$2
COMMIT;
\if :i = :total
\shell $HERE/append-cpu-read.sh :pid $TMP/$1.end
\endif
PGB
}
NAMES=()
for k in "${!REVS[@]}"; do
  rev=${REVS[$k]}; sfx=r$((k + 1))
  if [ -f "$rev" ]; then
    # A file of SQL defining record_retry_<its basename> (and whatever that calls) itself.
    sfx=$(basename "$rev" .sql)
    psql $U/$DB -q -v ON_ERROR_STOP=1 -f "$rev" \
         -c "ALTER FUNCTION record_retry_$sfx SET search_path = pg_catalog, public, pg_temp"
    script $sfx "SELECT seq, event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt, actor, db_role, detail, occurred_at, recorded_at, hash FROM record_retry_$sfx(job_id => :j, job_variants_id => :v, reason => 'stuck', actor => 'bench', detail => '{}');" 1 10000
    NAMES+=($sfx); echo "$sfx = $rev"
    continue
  fi
  if [ "$rev" = WT ]; then cat "$ROOT/sql/record_retry.sql" "$ROOT/projections/retry_counts.sql"
  else git -C "$ROOT" show "$rev:sql/record_retry.sql" "$rev:projections/retry_counts.sql"; fi \
    | python3 -c '
import re, sys
sfx = sys.argv[1]
s = sys.stdin.read()
s = re.sub(r"\b(retry_counts_\w+)\(", r"\1_" + sfx + "(", s)
s = re.sub(r"\brecord_retry([(.])", r"record_retry_" + sfx + r"\1", s)
print(s)' $sfx > "$TMP/$sfx.sql"
  psql $U/$DB -q -v ON_ERROR_STOP=1 -f "$TMP/$sfx.sql" \
       -c "ALTER FUNCTION record_retry_$sfx SET search_path = pg_catalog, public, pg_temp"
  script $sfx "SELECT seq, event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt, actor, db_role, detail, occurred_at, recorded_at, hash FROM record_retry_$sfx(job_id => :j, job_variants_id => :v, reason => 'stuck', actor => 'bench', detail => '{}');" 1 10000
  NAMES+=($sfx); echo "$sfx = $rev ($(git -C "$ROOT" rev-parse --short "${rev/WT/HEAD}")${rev/#WT/ + working tree})" | sed 's/ + working treeHEAD//'
done
script a "UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now() WHERE job_variants_id = :v;" 10001 20000
script b "INSERT INTO bench_naive_log (job_id, job_variants_id, attempt, reason, actor, detail, occurred_at)
  SELECT job_id, job_variants_id, retry_count + 1, 'stuck', 'bench', '{}', now() FROM jobs_variants WHERE job_variants_id = :v FOR UPDATE;
UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now() WHERE job_variants_id = :v;" 10001 20000
script null "" 1 20000
NAMES+=(a b null)

# Warm-up: every variant once, briefly.
for name in "${NAMES[@]}"; do
  PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c1 -t 2000 -D i=0 -D total=2000 -f "$TMP/$name.pgb" $U/$DB >/dev/null 2>&1
done
echo "round variant us_per_txn(schedstat) us_per_txn(utime+stime) tps"
for round in $(seq "$ROUNDS"); do
  order=("${NAMES[@]}")
  if [ $((round % 2)) = 0 ]; then order=($(printf '%s\n' "${NAMES[@]}" | tac)); fi
  for name in "${order[@]}"; do
    tps=$(PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c1 -t "$CALLS" -D i=0 -D total="$CALLS" \
            -f "$TMP/$name.pgb" $U/$DB 2>&1 | grep -oP 'tps = \K[0-9.]+(?= \(without)')
    read -r ns0 t0 < "$TMP/$name.start"; read -r ns1 t1 < "$TMP/$name.end"
    awk -v r=$round -v n=$name -v c=$CALLS -v ns=$((ns1 - ns0)) -v t=$((t1 - t0)) -v tps="$tps" \
        'BEGIN { printf "%d %s %.1f %.1f %s\n", r, n, ns / c / 1000, t * 10000 / c, tps }'
  done
done
[ -n "$KEEP" ] || psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
