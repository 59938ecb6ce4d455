#!/bin/bash
# The outcome bookkeeping's cost on the append (docs/performance.md, "Outcomes"):
# record_retry as installed (with its step 9, the outcomes) against the same function without
# step 9, in one scratch database, alternating, pgbench -T per round.
#   DATABASE_URL is not read: the server is postgres@127.0.0.1:5432; run from the checkout
#   after `cargo build --release`.
HERE=$(cd "$(dirname "$0")" && pwd)
WITHOUT=$(mktemp)
# The function without step 9: sql/record_retry.sql from CREATE on, renamed, step 9 cut out.
python3 - "$HERE/../../sql/record_retry.sql" > "$WITHOUT" <<'PY'
import sys
s = open(sys.argv[1]).read()
body = s[s.index("CREATE OR REPLACE FUNCTION record_retry("):]
a, b = body.index("    -- 9. Outcomes (migrations/0009)"), body.index("    RETURN ev;\nEND")
print((body[:a] + body[b:]).replace("record_retry(", "record_retry_without_outcomes(", 1)
      .replace("record_retry.", "record_retry_without_outcomes."))
PY
# The outcome bookkeeping's cost on the append: record_retry (with step 9) against the same
# function without step 9, in one database, alternating, pgbench -T per round.

DB=rl_oc_cost
U=postgres://postgres@127.0.0.1:5432
psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
DATABASE_URL=$U/$DB $HERE/../../target/release/retrylog migrate >/dev/null 2>&1 || DATABASE_URL=$U/$DB $HERE/../../target/debug/retrylog migrate >/dev/null
psql $U/$DB -q <<SQL
UPDATE retrylog_settings SET max_retries = NULL;
INSERT INTO jobs (job_id, status, current_step) SELECT gen_random_uuid(), 'running', 'generate' FROM generate_series(1, 2500);
INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
  SELECT gen_random_uuid(), j.job_id, o, 'done', 'generate' FROM jobs j, generate_series(0, 3) o;
CREATE TABLE bench_targets AS SELECT row_number() OVER ()::int AS n, job_id, job_variants_id FROM jobs_variants;
ALTER TABLE bench_targets ADD PRIMARY KEY (n);
\i $WITHOUT
ALTER FUNCTION record_retry_without_outcomes SET search_path = pg_catalog, public, pg_temp;
VACUUM ANALYZE;
SQL
for clients in 1 8; do
  for round in $(seq ${ROUNDS:-6}); do
    if [ $((round % 2)) = 1 ]; then order="with without"; else order="without with"; fi
    for side in $order; do
      tps=$(pgbench -n -M prepared -c $clients -j $clients -T ${SECONDS_PER:-8} -f $HERE/append-$side-outcomes.pgb $U/$DB 2>/dev/null | grep -oP 'tps = \K[0-9.]+(?= \(without)')
      echo "$clients $round $side $tps"
    done
  done
done
psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
rm -f "$WITHOUT"
