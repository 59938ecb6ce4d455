-- The refusals (SQLSTATE, message, hint) and results of two copies of record_retry side by
-- side, every case rolled back; on rl_append_cpu (append-cpu.sh KEEP=1), e.g.
--   psql ... -v f1=record_retry_r1 -v f2=record_retry_r2 -f bench/pgbench/append-cpu-refusals.sql
-- (RL004's hint names the copy, so that one line differs by name only.)
CREATE OR REPLACE FUNCTION pg_temp.try(fn text, args text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE r record; msg text; st text; hint text;
BEGIN
  BEGIN
    EXECUTE format('SELECT attempt, step, from_status, to_status, actor, detail, reason FROM %s(%s)', fn, args) INTO r;
    RAISE EXCEPTION USING ERRCODE = 'ZZ999', MESSAGE = 'ok ' || r::text;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, st = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT;
    RETURN st || ' ' || msg || coalesce(' HINT ' || nullif(hint, ''), '');
  END;
END $f$;
WITH t AS (SELECT job_id j, job_variants_id v FROM bench_targets WHERE n = 3),
     o AS (SELECT job_id j2, job_variants_id v2 FROM bench_targets WHERE n = 9),
     cases(args) AS (
  SELECT unnest(ARRAY[
    format('NULL, %L', 'stuck'),
    format('%L, NULL, %L', j, v),
    format('%L, %L, %L', j, 'bogus'||chr(10), v),
    format('%L, %L, %L, detail => %L', j, 'stuck', v, '[1]'),
    format('%L, %L, %L, detail => %L', j, 'stuck', v, '"s"'),
    format('%L, %L, %L, detail => %L', j, 'stuck', v, json_build_object('x', repeat('a', 17000))),
    format('%L, %L, %L, detail => %L', j, 'stuck', v, repeat('{"a":', 70) || '1' || repeat('}', 70)),
    format('%L, %L, %L, actor => %L', j, 'stuck', v, repeat('x', 201)),
    format('%L, %L, %L, actor => %L', j, 'stuck', v, 'a' || chr(8238) || 'b'),
    format('%L, %L, %L, to_status => %L', j, 'stuck', v, repeat('x', 65)),
    format('%L, %L, %L, detail => %L', j, 'stuck', v, '{"scenario": "a\u0007"}'),
    format('%L, %L, %L, occurred_at => %L', j, 'stuck', v, 'infinity'),
    format('%L, %L, %L, occurred_at => %L', j, 'stuck', v, '1999-12-31 23:00Z'),
    format('%L, %L, %L, occurred_at => %L', j, 'stuck', v, now() + interval '1 hour'),
    format('%L, %L, %L, expected_attempt => 0', j, 'stuck', v),
    format('%L, %L, %L, expected_attempt => 99999', j, 'stuck', v),
    format('%L, %L, %L, max_retries => -1', j, 'stuck', v),
    format('%L, %L, %L, max_retries => 0', j, 'stuck', v),
    format('%L, %L, %L, max_retries => 0, force => true', j, 'stuck', v),
    format('%L, %L, %L, max_retries => 0, force => true', j, 'manual_recovery', v),
    format('%L, %L, %L, expected_attempt => 99999, max_retries => 0', j, 'stuck', v),
    format('%L, %L, %L', j, 'stuck', gen_random_uuid()),
    format('%L, %L, %L', j, 'stuck', v2),
    format('%L, %L', gen_random_uuid(), 'stuck'),
    format('%L, %L', j, 'failed'),
    format('%L, %L, %L, step => %L', j, 'stuck', v, repeat('s', 201)),
    format('%L, %L, %L, step => %L, from_status => %L, to_status => %L, actor => %L', j, 'stuck', v, '  ', ' ', '  x ', '  '),
    format('%L, %L, %L, step => %L', j, 'stuck', v, ' s '),
    format('%L, %L, %L, force => NULL', j, 'stuck', v),
    format('%L, %L, %L, event_id => %L', j, 'stuck', v, (SELECT event_id FROM retry_history WHERE job_variants_id = v LIMIT 1)),
    format('%L, %L, %L, event_id => %L', j2, 'stuck', v2, (SELECT event_id FROM retry_history WHERE job_variants_id = v LIMIT 1)),
    format('%L, %L, NULL, event_id => %L', j, 'stuck', (SELECT event_id FROM retry_history WHERE job_variants_id = v LIMIT 1))
  ]) FROM t, o)
SELECT CASE WHEN a = b THEN 'same' ELSE 'DIFF' END AS cmp, a AS cur, CASE WHEN a = b THEN '' ELSE b END AS other
  FROM (SELECT pg_temp.try(:'f1', args) a, pg_temp.try(:'f2', args) b FROM cases) x;
