//! The drift checks of a plain `verify`, which cost what is new (issue 23): each one reads
//! either the rows of the streams walked and of one slice of the rotation (the counts, the
//! head rows: [`super::rotation`]) or the events and outcomes since the position (the event
//! ids, the outcomes, the open retries), never the whole log nor every target. `verify
//! --full` runs the whole-log checks instead (`replay::projection_mismatches`); what each
//! catches is in docs/security.md, "What verify catches".
//!
//! 1. **Counts from the head rows.** Attempts are gapless from 1 (the chain walk checks it),
//!    so a stream's events, archived ones included, are its head row's attempt: a target's
//!    `retry_count` must be its opening balance + that attempt. For the targets walked and
//!    those of the run's slice.
//! 2. **Head rows from the verified chains.** After the walk, each stream's verified head
//!    (this run's last event, else `verify_stream_head`, else its archive base, whichever is
//!    furthest) must be the head row `record_retry` keeps (`retry_stream_head`): its attempt,
//!    hash and seq. This is what ties check 1 to the hash chains. For the streams walked and
//!    those of the run's slice.
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

use super::rotation::{self, Slice};
use crate::projection::{problem_drifts, OutcomeDrift, ProblemRow};
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
/// reached and the run's slice of the rotation.
pub async fn new_mismatches(
    conn: &mut PgConnection,
    since: i64,
    heads: &RunHeads,
    slice: &Slice,
) -> Result<Vec<Mismatch>, sqlx::Error> {
    let mut mismatches: Vec<Mismatch> = rotation::count_drift(&mut *conn, heads, slice)
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
        rotation::head_drift(&mut *conn, heads, slice)
            .await?
            .into_iter()
            .chain(event_id_drift_since(&mut *conn, since).await?)
            .map(Mismatch::StreamHead),
    );
    Ok(mismatches)
}

/// Check 3, event ids: every event since the position whose `retry_event_id` row is missing
/// or points elsewhere.
pub async fn event_id_drift_since(
    conn: &mut PgConnection,
    since: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<ProblemRow> = sqlx::query_as(
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
    Ok(problem_drifts(rows))
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
    Ok(problem_drifts(rows))
}

/// Check 3, open retries: for each stream a new event or a new outcome touched, its
/// `retry_open` row against its latest event in the log unless that one has an outcome (as
/// `retry_open_drift()` compares every stream).
pub async fn open_drift_since(
    conn: &mut PgConnection,
    since: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<crate::projection::OpenRow> = sqlx::query_as(
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
    Ok(crate::projection::open_drifts(rows))
}
