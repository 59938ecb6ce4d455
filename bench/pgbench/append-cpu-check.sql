-- After append-cpu.sh (KEEP=1) or append-cpu-pair.sh, on rl_append_cpu: is what the copies
-- appended consistent? Hash chain and gapless attempts of every stream, the counts of the
-- targets only record_retry copies touched (the baselines use n > 10000), retry_open.
--   psql postgres://postgres@127.0.0.1:5432/rl_append_cpu -f bench/pgbench/append-cpu-check.sql
-- chain: every event's hash recomputed from its predecessor in its stream; attempts gapless
WITH s AS (
  SELECT h.*, lag(hash) OVER w AS prev, row_number() OVER w AS rn
    FROM retry_history h
  WINDOW w AS (PARTITION BY job_id, job_variants_id ORDER BY attempt))
SELECT count(*) AS events,
       count(*) FILTER (WHERE hash <> retry_event_hash(coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
             retry_event_canonical_v2(event_id, job_id, job_variants_id, reason, step, from_status, to_status, attempt, actor, detail, occurred_at, db_role))) AS bad_hash,
       count(*) FILTER (WHERE attempt <> rn) AS bad_attempt
  FROM s;
-- counts of the targets that only retrylog appended to (baselines use n > 10000)
SELECT count(*) AS drifted FROM retry_counts_drift() d
 WHERE d.job_variants_id IS NULL OR d.job_variants_id IN (SELECT job_variants_id FROM bench_targets WHERE n <= 10000);
SELECT count(*) AS open_drift FROM retry_open_drift();
SELECT count(*) AS outcomes, count(*) FILTER (WHERE outcome = 'retried_again') AS retried_again FROM retry_outcome;
-- every event but each stream's last has an outcome; the last is open
SELECT count(*) AS streams, (SELECT count(*) FROM retry_open) AS open_rows FROM (SELECT DISTINCT job_id, job_variants_id FROM retry_history) x;
