-- Bulk recovery (issue 22, "Act on many": `retrylog recover --state …`,
-- POST /api/v1/recover/bulk, the Targets page's bulk form) is idempotent by its request id:
-- one row per request that ran, holding the request as it was asked and the result it gave.
--
--   * The row is inserted when the request starts, in the transaction the whole request runs
--     in (every target's state change and event, then the result): a duplicate sent
--     meanwhile waits on the primary key, then finds the row committed and answers its
--     result; only one of them recovers anything. A request that fails rolls back whole.
--   * `request` is compared whole (jsonb equality): the same request id with another filter,
--     note, max, selection or actor is refused, naming request_id.
--   * A dry run or a refused request (more matches than max) writes no row.
CREATE TABLE retrylog_bulk_recovery (
    request_id  text PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 200),
    request     jsonb NOT NULL,
    result      jsonb,
    actor       text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

-- The operator capability recovers (with the pipeline capability for the targets' rows);
-- readers may read what was done.
GRANT SELECT, INSERT, UPDATE ON retrylog_bulk_recovery TO retrylog_operator;
GRANT SELECT ON retrylog_bulk_recovery TO retrylog_reader;
