#!/bin/bash
# append-cpu-pair.sh V1 V2 [ROUNDS] [CALLS]: two variants at once (one backend each, disjoint
# targets), so they share whatever else loads the machine; prints the CPU us/call of each
# (/proc/<pid>/schedstat). Runs on the database `KEEP=1 append-cpu.sh ...` leaves behind
# (rl_append_cpu, with its record_retry_<NAME> copies); a, b and null are the baselines.
# On a 2-core machine shared with builds, paired runs vary less than sequential ones.
U=postgres://postgres@127.0.0.1:5432/rl_append_cpu
R=$(cd "$(dirname "$0")" && pwd)/append-cpu-read.sh
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
C=${4:-20000}
mk() { # name lo hi
  local body
  case $1 in
    b) body="INSERT INTO bench_naive_log (job_id, job_variants_id, attempt, reason, actor, detail, occurred_at)
  SELECT job_id, job_variants_id, retry_count + 1, 'stuck', 'bench', '{}', now() FROM jobs_variants WHERE job_variants_id = :v FOR UPDATE;
UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now() WHERE job_variants_id = :v;";;
    a) body="UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now() WHERE job_variants_id = :v;";;
    null) body="";;
    *) body="SELECT seq, event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt, actor, db_role, detail, occurred_at, recorded_at, hash FROM record_retry_$1(job_id => :j, job_variants_id => :v, reason => 'stuck', actor => 'bench', detail => '{}');";;
  esac
  cat > $T/pair_$1_$4.pgb <<PGB
\set i :i + 1
\if :i = 1
SELECT pg_backend_pid() AS pid \gset
\shell $R :pid $T/pair_$1_$4.start
\endif
\set n random($2, $3)
BEGIN;
SELECT job_id AS j, job_variants_id AS v FROM bench_targets WHERE n = :n \gset
$body
COMMIT;
\if :i = :total
\shell $R :pid $T/pair_$1_$4.end
\endif
PGB
}
res() { read -r a _ < $T/pair_$1_$2.start; read -r b _ < $T/pair_$1_$2.end; echo "scale=1; ($b - $a) / $C / 1000" | bc; }
for r in $(seq ${3:-4}); do
  if [ $((r % 2)) = 1 ]; then lo1=1 hi1=5000 lo2=5001 hi2=10000; else lo1=5001 hi1=10000 lo2=1 hi2=5000; fi
  case $1 in a|b|null) lo1=$((lo1+10000)); hi1=$((hi1+10000));; esac
  case $2 in a|b|null) lo2=$((lo2+10000)); hi2=$((hi2+10000));; esac
  mk $1 $lo1 $hi1 x; mk $2 $lo2 $hi2 y
  PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c1 -t $C -D i=0 -D total=$C -f $T/pair_$1_x.pgb $U >/dev/null 2>&1 &
  PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -c1 -t $C -D i=0 -D total=$C -f $T/pair_$2_y.pgb $U >/dev/null 2>&1 &
  wait
  echo "$r $1 $(res $1 x) $2 $(res $2 y)"
done
