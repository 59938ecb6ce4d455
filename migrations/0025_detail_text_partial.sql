-- The trigram index on the text the targets list's `q` searches (migration 0020,
-- retry_history_detail_text) holds only the retries that have such text: those whose detail
-- has an `error`, a `message` or a `note` key. The others' text is empty, which no `q`
-- matches (an empty `q` is no filter), yet each of their appends wrote an empty entry into
-- the index's pending list: 166 bytes of WAL an append, about 8% of one, and the watchdog's
-- retries, most of a pipeline's, carry none of the three keys (their detail is the scenario
-- and its facts). The search names the same condition (`targets::push_text_match`), so the
-- planner still reads this index for it.
--
-- Where pg_trgm was not installed there is no index, and nothing to do. Otherwise the index
-- is dropped and built again on every partition: appends wait for the build, which reads the
-- whole log (docs/operations.md, "Upgrade", has what it cost on a 1,000,000-event log).
DO $$
DECLARE
    trgm_schema text;
BEGIN
    IF to_regclass('retry_history_detail_text') IS NULL THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO trgm_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    DROP INDEX retry_history_detail_text;
    EXECUTE format(
        'CREATE INDEX retry_history_detail_text ON retry_history USING gin (
             (substr(coalesce('' '' || (detail->>''error''), '''')
                     || coalesce('' '' || (detail->>''message''), '''')
                     || coalesce('' '' || (detail->>''note''), ''''), 2))
             %I.gin_trgm_ops)
         WHERE detail ?| ARRAY[''error'', ''message'', ''note'']', trgm_schema);
END
$$;
