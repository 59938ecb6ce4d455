//! The drift checks of a plain `verify`, which cost what is new (issue 23): each one reads
//! either one row per target (the counts, the head rows) or the events and outcomes since the
//! position (the event ids, the outcomes, the open retries), never the whole log. `verify
//! --full` runs the whole-log checks instead (`replay::projection_mismatches`); what each
//! catches is in docs/security.md, "What verify catches".
//!
//! 1. **Counts from the head rows.** Attempts are gapless from 1 (the chain walk checks it),
//!    so a stream's events, archived ones included, are its head row's attempt: a target's
//!    `retry_count` must be its opening balance + that attempt. One row per target.
//! 2. **Head rows from the verified chains.** After the walk, each stream's verified head
//!    (this run's last event, else `verify_stream_head`, else its archive base, whichever is
//!    furthest) must be the head row `record_retry` keeps (`retry_stream_head`): its attempt,
//!    hash and seq. This is what ties check 1 to the hash chains. One row per stream.
//! 3. **What is new, by txid.** The event ids of the events since the position; the outcomes
//!    recorded since it and the retries those events follow; and the open retry of each
//!    stream that a new event or a new outcome touched. An outcome, like an event, carries
//!    the txid of its transaction, so the same horizon splits them into verified and new.
//!
//! All run in the caller's REPEATABLE READ snapshot, the one the walk read. Every probe of a
//! table as big as the log (the log, its event ids, the outcomes) is a LATERAL subquery with
//! a LIMIT, which the planner keeps as an index probe per row: as a join (or `NOT EXISTS`,
//! an anti-join) it may hash the whole table when it misjudges how few rows are new. A
//! stream's job-level events have a NULL `job_variants_id`, which `IS NOT DISTINCT FROM`
//! would match but no index can: the two cases are two index probes instead.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::event::Target;
use crate::projection::{CountDrift, OutcomeDrift};
use crate::replay::Mismatch;

/// The run's verified heads, as columns: (job_id, job_variants_id, attempt, hash, seq).
pub struct RunHeads {
    pub job_ids: Vec<Uuid>,
    pub job_variants_ids: Vec<Option<Uuid>>,
    pub attempts: Vec<i32>,
    pub hashes: Vec<Vec<u8>>,
    pub seqs: Vec<i64>,
}

/// Every drift a plain run checks, since the txid horizon `since`, given the heads the walk
/// reached.
pub async fn new_mismatches(
    conn: &mut PgConnection,
    since: i64,
    heads: &RunHeads,
) -> Result<Vec<Mismatch>, sqlx::Error> {
    let mut mismatches: Vec<Mismatch> = count_drift_by_heads(&mut *conn)
        .await?
        .into_iter()
        .map(Mismatch::Count)
        .collect();
    mismatches.extend(
        outcome_problems_since(&mut *conn, since)
            .await?
            .into_iter()
            .chain(open_drift_since(&mut *conn, since).await?)
            .map(Mismatch::Outcome),
    );
    mismatches.extend(
        head_drift(&mut *conn, heads)
            .await?
            .into_iter()
            .chain(event_id_drift_since(&mut *conn, since).await?)
            .map(Mismatch::StreamHead),
    );
    Ok(mismatches)
}

/// Check 1: every target whose `retry_count` is not its opening balance + its head row's
/// attempt (0 without a head row).
pub async fn count_drift_by_heads(conn: &mut PgConnection) -> Result<Vec<CountDrift>, sqlx::Error> {
    type Row = (Uuid, Option<Uuid>, i32, i32, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT job_id, job_variants_id, retry_count, opening_balance, events
           FROM (SELECT j.job_id, NULL::uuid AS job_variants_id, j.retry_count,
                        coalesce(o.balance, 0) AS opening_balance,
                        coalesce(h.attempt, 0)::bigint AS events
                   FROM jobs j
                   LEFT JOIN retry_opening_balance o
                          ON o.job_id = j.job_id AND o.job_variants_id IS NULL
                   LEFT JOIN retry_stream_head h
                          ON h.job_id = j.job_id
                         AND h.stream = '00000000-0000-0000-0000-000000000000'
                 UNION ALL
                 SELECT v.job_id, v.job_variants_id, v.retry_count,
                        coalesce(o.balance, 0), coalesce(h.attempt, 0)::bigint
                   FROM jobs_variants v
                   LEFT JOIN retry_opening_balance o ON o.job_variants_id = v.job_variants_id
                   LEFT JOIN retry_stream_head h
                          ON h.job_id = v.job_id AND h.stream = v.job_variants_id) t
          WHERE retry_count <> opening_balance + events
          ORDER BY job_id, job_variants_id NULLS FIRST",
    )
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

/// Check 2: every head row that is not its stream's verified head, and every verified head
/// without a head row.
pub async fn head_drift(
    conn: &mut PgConnection,
    heads: &RunHeads,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    // Hash joins by the stream key and expressions, no sort: per head row, the verified head
    // is the furthest of the run's, the stored one and the base (`greatest` skips NULLs).
    let rows: Vec<(Uuid, Option<Uuid>, String)> = sqlx::query_as(
        "WITH run AS (
             SELECT r.job_id,
                    coalesce(r.job_variants_id, '00000000-0000-0000-0000-000000000000') AS stream,
                    r.job_variants_id, r.attempt, r.hash, r.seq
               FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::bytea[], $5::bigint[])
                    AS r (job_id, job_variants_id, attempt, hash, seq)
         ), stored AS (
             SELECT v.job_id,
                    coalesce(v.job_variants_id, '00000000-0000-0000-0000-000000000000') AS stream,
                    v.job_variants_id, v.attempt, v.hash, v.seq
               FROM verify_stream_head v
         ), compared AS (
             SELECT s.job_id, s.job_variants_id, s.attempt, s.hash, s.last_seq,
                    greatest(r.attempt, v.attempt, b.attempt) AS e_attempt,
                    CASE greatest(r.attempt, v.attempt, b.attempt)
                         WHEN r.attempt THEN r.hash WHEN v.attempt THEN v.hash ELSE b.hash
                    END AS e_hash,
                    CASE greatest(r.attempt, v.attempt, b.attempt)
                         WHEN r.attempt THEN r.seq WHEN v.attempt THEN v.seq ELSE b.last_seq
                    END AS e_seq
               FROM retry_stream_head s
               LEFT JOIN run r ON (r.job_id, r.stream) = (s.job_id, s.stream)
               LEFT JOIN stored v ON (v.job_id, v.stream) = (s.job_id, s.stream)
               LEFT JOIN retry_stream_base b ON (b.job_id, b.stream) = (s.job_id, s.stream)
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
           FROM (SELECT * FROM run UNION ALL SELECT * FROM stored) h
          WHERE NOT EXISTS (SELECT 1 FROM retry_stream_head s
                             WHERE (s.job_id, s.stream) = (h.job_id, h.stream))
          ORDER BY 1, 2",
    )
    .bind(&heads.job_ids)
    .bind(&heads.job_variants_ids)
    .bind(&heads.attempts)
    .bind(&heads.hashes)
    .bind(&heads.seqs)
    .fetch_all(conn)
    .await?;
    Ok(drifts(rows))
}

/// Check 3, event ids: every event since the position whose `retry_event_id` row is missing
/// or points elsewhere.
pub async fn event_id_drift_since(
    conn: &mut PgConnection,
    since: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<Uuid>, String)> = sqlx::query_as(
        "SELECT h.job_id, h.job_variants_id,
                CASE WHEN k.event_id IS NULL
                     THEN 'event seq ' || h.seq || ' (event_id ' || h.event_id
                          || ') has no row in retry_event_id'
                     ELSE 'retry_event_id holds event_id ' || k.event_id || ' at seq ' || k.seq
                          || ', the log has it at seq ' || h.seq END
           FROM retry_history h
           LEFT JOIN LATERAL (SELECT * FROM retry_event_id k WHERE k.event_id = h.event_id
                               LIMIT 1) k ON true
          WHERE h.txid >= $1::bigint::text::xid8
            AND (k.job_id, k.job_variants_id, k.seq, k.recorded_at)
                IS DISTINCT FROM (h.job_id, h.job_variants_id, h.seq, h.recorded_at)
          ORDER BY h.seq",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(drifts(rows))
}

/// Check 3, outcomes: the outcomes recorded since the position, checked against the log and
/// the notes as `retry_outcome_problems()` checks every one, and each event since the position
/// whose previous attempt (still in the log) has no outcome.
pub async fn outcome_problems_since(
    conn: &mut PgConnection,
    since: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<(Option<Uuid>, Option<Uuid>, String)> = sqlx::query_as(
        "SELECT job_id, job_variants_id, problem FROM (
         WITH fresh AS (
             SELECT r.*, h.job_id, h.job_variants_id, h.attempt, h.occurred_at,
                    h.seq IS NOT NULL AS in_log
               FROM retry_outcome r
               LEFT JOIN LATERAL (SELECT l.job_id, l.job_variants_id, l.attempt, l.occurred_at,
                                         l.seq
                                    FROM retry_history l WHERE l.seq = r.seq LIMIT 1) h ON true
              WHERE r.txid >= $1::bigint::text::xid8
         )
         SELECT r.seq, NULL::uuid, NULL::uuid,
                'outcome ' || r.outcome || ' is for event seq ' || r.seq
                || ', which is not in the log'
           FROM fresh r WHERE NOT r.in_log
         UNION ALL
         SELECT r.seq, r.job_id, r.job_variants_id,
                'outcome ' || r.outcome || ' of attempt ' || r.attempt || ' (seq ' || r.seq
                || ') resolves at ' || r.resolved_at || ', before the retry occurred at '
                || r.occurred_at
           FROM fresh r WHERE r.in_log AND r.resolved_at < r.occurred_at
         UNION ALL
         SELECT r.seq, r.job_id, r.job_variants_id,
                'attempt ' || r.attempt || ' (seq ' || r.seq || ') is retried_again, but event seq '
                || coalesce(r.evidence ->> 'next_seq', '(none)')
                || ' is not the next attempt of its target'
           FROM fresh r
          WHERE r.in_log AND r.outcome = 'retried_again'
            AND (SELECT n.seq FROM retry_history n
                  WHERE n.job_id = r.job_id AND n.job_variants_id = r.job_variants_id
                    AND n.attempt = r.attempt + 1
                  UNION ALL
                  SELECT n.seq FROM retry_history n
                  WHERE r.job_variants_id IS NULL
                    AND n.job_id = r.job_id AND n.job_variants_id IS NULL
                    AND n.attempt = r.attempt + 1
                  LIMIT 1)::text IS DISTINCT FROM r.evidence ->> 'next_seq'
         UNION ALL
         SELECT r.seq, r.job_id, r.job_variants_id,
                'attempt ' || r.attempt || ' (seq ' || r.seq || ') gave up, but note seq '
                || coalesce(r.evidence ->> 'note_seq', '(none)') || ' is not a note of its target'
           FROM fresh r
          WHERE r.in_log AND r.outcome = 'gave_up'
            AND NOT EXISTS (
                SELECT 1 FROM retry_intervention i
                 WHERE i.seq = CASE WHEN r.evidence ->> 'note_seq' ~ '^[0-9]{1,18}$'
                                    THEN (r.evidence ->> 'note_seq')::bigint END
                   AND i.job_id = r.job_id
                   AND i.job_variants_id IS NOT DISTINCT FROM r.job_variants_id)
         UNION ALL
         SELECT p.seq, p.job_id, p.job_variants_id,
                'attempt ' || p.attempt || ' (seq ' || p.seq || ') was followed by attempt '
                || h.attempt || ' (seq ' || h.seq || ') but has no outcome'
           FROM retry_history h
           JOIN LATERAL (SELECT l.seq, l.job_id, l.job_variants_id, l.attempt
                           FROM retry_history l
                          WHERE l.job_id = h.job_id AND l.job_variants_id = h.job_variants_id
                            AND l.attempt = h.attempt - 1
                          UNION ALL
                          SELECT l.seq, l.job_id, l.job_variants_id, l.attempt
                           FROM retry_history l
                          WHERE h.job_variants_id IS NULL
                            AND l.job_id = h.job_id AND l.job_variants_id IS NULL
                            AND l.attempt = h.attempt - 1
                          LIMIT 1) p ON true
           LEFT JOIN LATERAL (SELECT r.seq FROM retry_outcome r WHERE r.seq = p.seq
                               LIMIT 1) o ON true
          WHERE h.txid >= $1::bigint::text::xid8 AND o.seq IS NULL
         ) found (seq, job_id, job_variants_id, problem)
          ORDER BY seq",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, job_variants_id, problem)| OutcomeDrift {
            target: job_id.map(|job_id| Target::from_columns(job_id, job_variants_id)),
            problem,
        })
        .collect())
}

/// Check 3, open retries: for each stream a new event or a new outcome touched, its
/// `retry_open` row against its latest event in the log unless that one has an outcome (as
/// `retry_open_drift()` compares every stream).
pub async fn open_drift_since(
    conn: &mut PgConnection,
    since: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    type Row = (Uuid, Option<Uuid>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH touched AS (
             SELECT DISTINCT job_id,
                    coalesce(job_variants_id, '00000000-0000-0000-0000-000000000000') AS stream,
                    job_variants_id
               FROM (SELECT h.job_id, h.job_variants_id FROM retry_history h
                      WHERE h.txid >= $1::bigint::text::xid8
                     UNION ALL
                     SELECT l.job_id, l.job_variants_id
                       FROM retry_outcome r
                       JOIN LATERAL (SELECT l.job_id, l.job_variants_id FROM retry_history l
                                      WHERE l.seq = r.seq LIMIT 1) l ON true
                      WHERE r.txid >= $1::bigint::text::xid8) t
         ), expected AS (
             -- Each stream's latest event in the log (by the stream index, backwards).
             SELECT t.job_id, t.stream, t.job_variants_id, e.seq, e.step, e.occurred_at
               FROM touched t
               JOIN LATERAL ((SELECT l.seq, l.step, l.occurred_at FROM retry_history l
                               WHERE l.job_id = t.job_id
                                 AND l.job_variants_id = t.job_variants_id
                               ORDER BY l.attempt DESC LIMIT 1)
                             UNION ALL
                             (SELECT l.seq, l.step, l.occurred_at FROM retry_history l
                               WHERE t.job_variants_id IS NULL
                                 AND l.job_id = t.job_id AND l.job_variants_id IS NULL
                               ORDER BY l.attempt DESC LIMIT 1)
                             LIMIT 1) e ON true
               LEFT JOIN LATERAL (SELECT r.seq FROM retry_outcome r WHERE r.seq = e.seq
                                   LIMIT 1) o ON true
              WHERE o.seq IS NULL
         )
         SELECT t.job_id, t.job_variants_id, s.seq, e.seq
           FROM touched t
           LEFT JOIN retry_open s ON (s.job_id, s.stream) = (t.job_id, t.stream)
           LEFT JOIN expected e ON (e.job_id, e.stream) = (t.job_id, t.stream)
          WHERE (s.seq, s.step, s.occurred_at) IS DISTINCT FROM (e.seq, e.step, e.occurred_at)
          ORDER BY 1, 2",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    let seq = |seq: Option<i64>| seq.map_or("none".to_string(), |seq| format!("seq {seq}"));
    Ok(rows
        .into_iter()
        .map(|(job_id, job_variants_id, stored, expected)| OutcomeDrift {
            target: Some(Target::from_columns(job_id, job_variants_id)),
            problem: format!(
                "retry_open holds {}, the log and the outcomes say {}",
                seq(stored),
                seq(expected)
            ),
        })
        .collect())
}

/// Rows of (job_id, job_variants_id, problem) as drifts of their target.
fn drifts(rows: Vec<(Uuid, Option<Uuid>, String)>) -> Vec<OutcomeDrift> {
    rows.into_iter()
        .map(|(job_id, job_variants_id, problem)| OutcomeDrift {
            target: Some(Target::from_columns(job_id, job_variants_id)),
            problem,
        })
        .collect()
}
