#!/bin/bash
# A pipeline statement with retrylog installed against a twin without it (docs/performance.md,
# "Footprint"): a pgbench cross-check of `retrylog-bench footprint` with a C client. STATEMENT
# picks it: insert (a job with four variants, the default), status (running <-> done) or
# counter (the original counter bump), on a random seeded variant. Two scratch databases: rl_fp_with (`retrylog migrate`: the BRIN
# indexes of 0010, the failure triggers of 0007) and rl_fp_without (migration 0001 only: the
# counter-only schema), each seeded with the same 10,000 jobs × 4 variants and vacuumed (so
# the BRIN ranges are summarized: the inserts that land in a summarized range widen it).
# Rounds alternate (with, without; without, with; …); prints clients, round, side, tps.
#   DATABASE_URL is not read: the server is postgres@127.0.0.1:5432; run from the checkout
#   after `cargo build --release`. ROUNDS (6) and SECONDS_PER (5) set the length, CLIENTS
#   ("1 4 16") the client counts. Attribution runs: WITHOUT_BRIN=1 drops retrylog's BRIN
#   indexes in rl_fp_with (what is left of retrylog on the pipeline's writes is the failure
#   triggers' WHEN); WITH=brin makes rl_fp_with the counter-only schema plus those two BRIN
#   indexes and nothing else. PIPELINE_NOTIFY=1 gives both databases the pipeline's own
#   per-row NOTIFY trigger (the bench's "pipeline notifies" world); SERVE=1 runs
#   `retrylog serve --no-http` (the watchdog and the projector) on rl_fp_with throughout.
HERE=$(cd "$(dirname "$0")" && pwd)
U=postgres://postgres@127.0.0.1:5432
for DB in rl_fp_with rl_fp_without; do
  psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
done
if [ "${WITH:-retrylog}" = brin ]; then
  # Attribution: the counter-only schema plus 0010's two BRIN indexes, nothing else.
  psql $U/rl_fp_with -q -f $HERE/../../migrations/0001_pipeline_tables.sql
  sed -n '/^CREATE INDEX IF NOT EXISTS retrylog_/,/;$/p' \
      $HERE/../../migrations/0010_created_without_triggers.sql | psql $U/rl_fp_with -q
else
  DATABASE_URL=$U/rl_fp_with $HERE/../../target/release/retrylog migrate >/dev/null
fi
psql $U/rl_fp_without -q -f $HERE/../../migrations/0001_pipeline_tables.sql
if [ "${WITHOUT_BRIN:-0}" = 1 ]; then
  psql $U/rl_fp_with -qc "DROP INDEX retrylog_jobs_created_at" -c "DROP INDEX retrylog_jobs_variants_created_at"
fi
for DB in rl_fp_with rl_fp_without; do
  psql $U/$DB -q <<SQL
INSERT INTO jobs (job_id, status, current_step)
  SELECT md5('seed' || i)::uuid, 'running', 'generate' FROM generate_series(1, 10000) i;
INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
  SELECT md5('seed' || i || '-' || o)::uuid, md5('seed' || i)::uuid, o, 'done', 'generate'
    FROM generate_series(1, 10000) i, generate_series(0, 3) o;
VACUUM ANALYZE;
SQL
done
if [ "${PIPELINE_NOTIFY:-0}" = 1 ]; then
  for DB in rl_fp_with rl_fp_without; do
    psql $U/$DB -q -f $HERE/pipeline-notify.sql
  done
fi
if [ "${SERVE:-0}" = 1 ]; then
  DATABASE_URL=$U/rl_fp_with $HERE/../../target/release/retrylog serve --no-http 2>/dev/null &
  SERVE_PID=$!
  sleep 2
fi
for clients in ${CLIENTS:-1 4 16}; do
  for round in $(seq ${ROUNDS:-6}); do
    if [ $((round % 2)) = 1 ]; then order="with without"; else order="without with"; fi
    for side in $order; do
      tps=$(pgbench -n -c $clients -j $((clients < 2 ? 1 : 2)) -T ${SECONDS_PER:-5} \
              -f $HERE/footprint-${STATEMENT:-insert}.pgb $U/rl_fp_$side 2>/dev/null \
            | grep -oP 'tps = \K[0-9.]+(?= \(without)')
      echo "$clients $round $side $tps"
    done
  done
done
[ -n "${SERVE_PID:-}" ] && kill -INT $SERVE_PID && wait $SERVE_PID
for DB in rl_fp_with rl_fp_without; do
  psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
done
