-- The targets list's `scenario` filter (issue 22) reads the head row, as `step` and `reason`
-- do, instead of probing each walked head row's last event for its detail: the head row keeps
-- its last retry's `detail.scenario` (a text of at most 200 characters, checked by the append).
-- record_retry and record_retries write it with the rest of the head row; verify --full
-- compares it with the log (retry_stream_head_drift()); a last retry that was archived leaves
-- it NULL, as its stream's base (retry_stream_base) has no detail.
--
-- The column is added without a default (no rewrite of the table), then filled from each head
-- row's last event, found by its seq within its partition: one pass over the head rows, whose
-- row locks an append to the same stream waits for until this migration commits (2.3 s for
-- 265,000 streams of a 1,000,000-event log; docs/operations.md, "Upgrade").
ALTER TABLE retry_stream_head ADD COLUMN last_scenario text;

UPDATE retry_stream_head hd
   SET last_scenario = h.detail ->> 'scenario'
  FROM retry_history h
 WHERE h.seq = hd.last_seq AND h.recorded_at = hd.last_recorded_at
   AND h.detail ? 'scenario';
