//! The rotation of a plain `verify` (issue 23, migration 0023): the counts and head rows of
//! the streams the new events touched, and of one slice of the others, so that a plain run
//! costs the same at 10M events as at 1M; `verify --full` still checks every target.
//!
//! 1. **A slice is a key range.** The next `size` head rows after the cursor, in the head
//!    rows' primary-key order (job_id, stream): one index range scan. The range runs from
//!    the cursor (exclusive) to the slice's last key (inclusive), or to the end when fewer
//!    rows are left, so every key, a target's without a head row too, falls in one slice of
//!    a round. A round takes ceil(streams / size) clean runs; the last wraps the cursor.
//! 2. **The same checks, on fewer rows.** Check 1 and check 2 of [`super::drift`], for the
//!    keys walked by this run and the keys of the slice, each row by an index probe (LATERAL
//!    with a LIMIT: a join may hash a whole table when the planner misjudges the key count).
//! 3. **Moved by clean runs only** (`super::record`): a slice that found something is checked
//!    again, so what it found stays found until it is put right.

use sqlx::PgConnection;
use uuid::Uuid;

use super::drift::RunHeads;
use crate::event::Target;
use crate::projection::{problem_drifts, CountDrift, OutcomeDrift, ProblemRow};

/// Streams a plain verify re-checks per run besides those its new events touched: at about
/// 25 µs a stream, half a second, whatever the log's size.
pub const DEFAULT_SLICE: i64 = 20_000;

/// The nil uuid: the job-level stream's key, and the lowest key.
const NIL: Uuid = Uuid::nil();
/// The highest key, the end of the last slice.
const MAX: Uuid = Uuid::max();

/// A head-row key, (job_id, stream).
pub type Key = (Uuid, Uuid);

/// One run's slice of the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Slice {
    /// Checked from after this key; `None`: from the lowest.
    pub after: Option<Key>,
    /// Checked up to this key (inclusive); `None`: to the end, and the cursor wraps.
    pub through: Option<Key>,
    /// Head rows in the slice.
    pub streams: i64,
    /// Head rows in all, as the planner's statistics estimate them (no count of the table
    /// once it has statistics).
    pub streams_estimate: i64,
    /// The budget per run.
    pub size: i64,
}

impl Slice {
    /// Where the next run starts: this slice's last key, or the lowest after a wrap.
    pub fn next_cursor(&self) -> Option<Key> {
        self.through
    }

    /// Clean runs a whole round takes at this size.
    pub fn runs_per_round(&self) -> i64 {
        let streams = self.streams_estimate.max(self.streams).max(1);
        (streams + self.size - 1) / self.size
    }

    /// The bounds as bind values: a missing one is the lowest or the highest key.
    fn bounds(&self) -> (Key, Key) {
        (
            self.after.unwrap_or((NIL, NIL)),
            self.through.unwrap_or((MAX, MAX)),
        )
    }

    /// The operator of the lower bound: the cursor's key was checked by the last slice.
    fn lower(&self) -> &'static str {
        if self.after.is_some() {
            ">"
        } else {
            ">="
        }
    }
}

/// The slice after `cursor`: up to `size` head rows, by an index range scan of their key.
pub async fn take(
    conn: &mut PgConnection,
    cursor: Option<Key>,
    size: i64,
) -> Result<Slice, sqlx::Error> {
    let size = size.max(1);
    let (after, op) = match cursor {
        Some(key) => (key, ">"),
        None => ((NIL, NIL), ">="),
    };
    // One more than the slice: whether any is left after it.
    let keys: Vec<Key> = sqlx::query_as(&format!(
        "SELECT job_id, stream FROM retry_stream_head
          WHERE (job_id, stream) {op} ($1, $2)
          ORDER BY job_id, stream
          LIMIT $3"
    ))
    .bind(after.0)
    .bind(after.1)
    .bind(size + 1)
    .fetch_all(&mut *conn)
    .await?;
    // The statistics' row count; a table never analyzed (-1) is counted, which is cheap
    // while it is young, the only time it has no statistics.
    let streams_estimate: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
                     ELSE (SELECT count(*) FROM retry_stream_head) END
           FROM pg_class c WHERE c.oid = 'retry_stream_head'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    let full = keys.len() as i64 > size;
    Ok(Slice {
        after: cursor,
        through: full.then(|| keys[size as usize - 1]),
        streams: (keys.len() as i64).min(size),
        streams_estimate,
        size,
    })
}

/// Check 1 on the walked streams and the slice: every target whose `retry_count` is not its
/// opening balance + its head row's attempt (0 without a head row).
pub async fn count_drift(
    conn: &mut PgConnection,
    heads: &RunHeads,
    slice: &Slice,
) -> Result<Vec<CountDrift>, sqlx::Error> {
    type Row = (Uuid, Option<Uuid>, i32, i32, i64);
    let ((low_job, low_stream), (high_job, high_stream)) = slice.bounds();
    let op = slice.lower();
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "WITH keys AS (
             SELECT job_id, job_variants_id FROM unnest($5::uuid[], $6::uuid[])
                    AS r (job_id, job_variants_id)
             UNION
             SELECT j.job_id, NULL::uuid FROM jobs j
              WHERE j.job_id BETWEEN $1 AND $3
                AND (j.job_id, '{NIL}'::uuid) {op} ($1, $2)
                AND (j.job_id, '{NIL}'::uuid) <= ($3, $4)
             UNION
             SELECT v.job_id, v.job_variants_id FROM jobs_variants v
              WHERE v.job_id BETWEEN $1 AND $3
                AND (v.job_id, v.job_variants_id) {op} ($1, $2)
                AND (v.job_id, v.job_variants_id) <= ($3, $4)
         )
         SELECT k.job_id, k.job_variants_id, t.retry_count, coalesce(o.balance, 0),
                coalesce(h.attempt, 0)::bigint
           FROM keys k
           JOIN LATERAL ((SELECT j.retry_count FROM jobs j
                           WHERE k.job_variants_id IS NULL AND j.job_id = k.job_id)
                         UNION ALL
                         (SELECT v.retry_count FROM jobs_variants v
                           WHERE v.job_variants_id = k.job_variants_id)
                         LIMIT 1) t ON true
           LEFT JOIN LATERAL ((SELECT o.balance FROM retry_opening_balance o
                                WHERE o.job_id = k.job_id
                                  AND o.job_variants_id = k.job_variants_id)
                              UNION ALL
                              (SELECT o.balance FROM retry_opening_balance o
                                WHERE k.job_variants_id IS NULL
                                  AND o.job_id = k.job_id AND o.job_variants_id IS NULL)
                              LIMIT 1) o ON true
           LEFT JOIN LATERAL (SELECT h.attempt FROM retry_stream_head h
                               WHERE h.job_id = k.job_id
                                 AND h.stream = coalesce(k.job_variants_id, '{NIL}')
                               LIMIT 1) h ON true
          WHERE t.retry_count <> coalesce(o.balance, 0) + coalesce(h.attempt, 0)
          ORDER BY k.job_id, k.job_variants_id NULLS FIRST"
    ))
    .bind(low_job)
    .bind(low_stream)
    .bind(high_job)
    .bind(high_stream)
    .bind(&heads.job_ids)
    .bind(&heads.job_variants_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(job_id, job_variants_id, retry_count, opening_balance, events)| CountDrift {
                target: Target::from_columns(job_id, job_variants_id),
                retry_count,
                expected: i64::from(opening_balance) + events,
                opening_balance,
                events,
            },
        )
        .collect())
}

/// Check 2 on the walked streams and the slice: every head row that is not its stream's
/// verified head, and every verified head without a head row.
pub async fn head_drift(
    conn: &mut PgConnection,
    heads: &RunHeads,
    slice: &Slice,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let ((low_job, low_stream), (high_job, high_stream)) = slice.bounds();
    let op = slice.lower();
    // Per head row, the verified head is the furthest of the run's, the stored one and the
    // archive base (`greatest` skips NULLs).
    let rows: Vec<ProblemRow> = sqlx::query_as(&format!(
        "WITH run AS (
             SELECT r.job_id, coalesce(r.job_variants_id, '{NIL}') AS stream,
                    r.job_variants_id, r.attempt, r.hash, r.seq
               FROM unnest($5::uuid[], $6::uuid[], $7::int[], $8::bytea[], $9::bigint[])
                    AS r (job_id, job_variants_id, attempt, hash, seq)
         ), keys AS (
             SELECT job_id, stream FROM run
             UNION
             SELECT s.job_id, s.stream FROM retry_stream_head s
              WHERE (s.job_id, s.stream) {op} ($1, $2) AND (s.job_id, s.stream) <= ($3, $4)
         ), compared AS (
             SELECT s.job_id, s.job_variants_id, s.attempt, s.hash, s.last_seq,
                    greatest(r.attempt, v.attempt, b.attempt) AS e_attempt,
                    CASE greatest(r.attempt, v.attempt, b.attempt)
                         WHEN r.attempt THEN r.hash WHEN v.attempt THEN v.hash ELSE b.hash
                    END AS e_hash,
                    CASE greatest(r.attempt, v.attempt, b.attempt)
                         WHEN r.attempt THEN r.seq WHEN v.attempt THEN v.seq ELSE b.last_seq
                    END AS e_seq
               FROM keys k
               JOIN LATERAL (SELECT * FROM retry_stream_head s
                              WHERE s.job_id = k.job_id AND s.stream = k.stream LIMIT 1) s
                    ON true
               LEFT JOIN run r ON (r.job_id, r.stream) = (k.job_id, k.stream)
               LEFT JOIN LATERAL ((SELECT v.attempt, v.hash, v.seq FROM verify_stream_head v
                                    WHERE v.job_id = k.job_id
                                      AND v.job_variants_id = s.job_variants_id)
                                  UNION ALL
                                  (SELECT v.attempt, v.hash, v.seq FROM verify_stream_head v
                                    WHERE s.job_variants_id IS NULL
                                      AND v.job_id = k.job_id AND v.job_variants_id IS NULL)
                                  LIMIT 1) v ON true
               LEFT JOIN LATERAL (SELECT b.attempt, b.hash, b.last_seq FROM retry_stream_base b
                                   WHERE b.job_id = k.job_id AND b.stream = k.stream
                                   LIMIT 1) b ON true
         )
         SELECT job_id, job_variants_id,
                'retry_stream_head holds attempt ' || attempt || ' (seq ' || last_seq
                || '), the verified hash chain ends at '
                || coalesce('attempt ' || e_attempt || ' (seq ' || e_seq || ')', 'no event')
                || CASE WHEN attempt = e_attempt AND last_seq = e_seq
                        THEN ' with another hash' ELSE '' END
           FROM compared
          WHERE (attempt, hash, last_seq) IS DISTINCT FROM (e_attempt, e_hash, e_seq)
         UNION ALL
         SELECT h.job_id, h.job_variants_id,
                'retry_stream_head holds no row, the verified hash chain ends at attempt '
                || h.attempt || ' (seq ' || h.seq || ')'
           FROM (SELECT job_id, stream, job_variants_id, attempt, seq FROM run
                 UNION ALL
                 SELECT v.job_id, coalesce(v.job_variants_id, '{NIL}'), v.job_variants_id,
                        v.attempt, v.seq
                   FROM verify_stream_head v
                  WHERE v.job_id BETWEEN $1 AND $3
                    AND (v.job_id, coalesce(v.job_variants_id, '{NIL}')) {op} ($1, $2)
                    AND (v.job_id, coalesce(v.job_variants_id, '{NIL}')) <= ($3, $4)) h
           LEFT JOIN LATERAL (SELECT 1 AS found FROM retry_stream_head s
                               WHERE s.job_id = h.job_id AND s.stream = h.stream
                               LIMIT 1) s ON true
          WHERE s.found IS NULL
          ORDER BY 1, 2, 3"
    ))
    .bind(low_job)
    .bind(low_stream)
    .bind(high_job)
    .bind(high_stream)
    .bind(&heads.job_ids)
    .bind(&heads.job_variants_ids)
    .bind(&heads.attempts)
    .bind(&heads.hashes)
    .bind(&heads.seqs)
    .fetch_all(conn)
    .await?;
    let mut found = problem_drifts(rows);
    // A stream both walked and stored without a head row is found twice: once is enough.
    found.dedup_by(|a, b| a.target == b.target && a.problem == b.problem);
    Ok(found)
}
