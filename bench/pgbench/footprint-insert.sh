#!/bin/bash
# The pipeline's insert of a job with four variants, with retrylog installed against a twin
# without it (docs/performance.md, "Footprint"): a pgbench cross-check of `retrylog-bench
# footprint` with a C client. Two scratch databases: rl_fp_with (`retrylog migrate`: the BRIN
# indexes of 0010, the failure triggers of 0007) and rl_fp_without (migration 0001 only: the
# counter-only schema), each seeded with the same 10,000 jobs × 4 variants and vacuumed (so
# the BRIN ranges are summarized: the inserts that land in a summarized range widen it).
# Rounds alternate (with, without; without, with; …); prints clients, round, side, tps.
#   DATABASE_URL is not read: the server is postgres@127.0.0.1:5432; run from the checkout
#   after `cargo build --release`. ROUNDS (6) and SECONDS_PER (5) set the length.
HERE=$(cd "$(dirname "$0")" && pwd)
U=postgres://postgres@127.0.0.1:5432
for DB in rl_fp_with rl_fp_without; do
  psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
done
DATABASE_URL=$U/rl_fp_with $HERE/../../target/release/retrylog migrate >/dev/null
psql $U/rl_fp_without -q -f $HERE/../../migrations/0001_pipeline_tables.sql
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
for clients in 1 4 16; do
  for round in $(seq ${ROUNDS:-6}); do
    if [ $((round % 2)) = 1 ]; then order="with without"; else order="without with"; fi
    for side in $order; do
      tps=$(pgbench -n -c $clients -j $((clients < 2 ? 1 : 2)) -T ${SECONDS_PER:-5} \
              -f $HERE/footprint-insert.pgb $U/rl_fp_$side 2>/dev/null \
            | grep -oP 'tps = \K[0-9.]+(?= \(without)')
      echo "$clients $round $side $tps"
    done
  done
done
for DB in rl_fp_with rl_fp_without; do
  psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
done
