//! The outcomes report measured: `report::outcomes` from its rollup, p50 and p99 over many
//! runs, against the same answer from the raw log and the outcomes (what `--as-of` now reads);
//! the two answers must be equal.
//!
//! The generated log is COPYed straight into `retry_history`, past record_retry, so its
//! outcomes are decided here the way the three deciders would have, by a fixed rule on each
//! event's id (reproducible, spread over every group): a retry followed by another of its
//! target was retried again (or, one in four, recovered before it was retried again); a
//! target's latest retry recovered (seven in ten), gave up (one in ten) or is still open, and
//! an open one goes into `retry_open`. Times to recover spread from a second to two hours.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use retrylog::report::{self, OutcomeGroupBy, OutcomesQuery};
use retrylog::window::Moment;

use super::WINDOW_DAYS;
use crate::figures::percentile;
use crate::progress;

/// The outcomes report of one grouping at one stage.
#[derive(Debug)]
pub struct OutcomesFigure {
    pub by: OutcomeGroupBy,
    /// p50 and p99 of `report::outcomes` from the rollup.
    pub rollup: [Duration; 2],
    /// Median of the same answer from the log and the outcomes.
    pub log: Duration,
    /// Rows of the two projection tables the report reads (its dimension, the window).
    pub rollup_rows: i64,
    /// Retries counted (must be every event of the window).
    pub retries: i64,
    /// Whether the two answers are equal.
    pub equal: bool,
}

/// Decides an outcome for every event loaded since the last call, by the rule in the
/// module's header. Returns how many it decided.
pub async fn decide_outcomes(pool: &PgPool) -> anyhow::Result<u64> {
    let spinner = progress::spinner();
    spinner.set_message("deciding the loaded retries' outcomes");
    let decided = sqlx::raw_sql(
        "WITH streams AS (
             -- Each event with the next of its stream: one pass in stream-index order.
             SELECT h.seq, h.occurred_at, abs(hashtext(h.event_id::text)) % 100 AS dice,
                    lead(h.seq) OVER w AS next_seq, lead(h.attempt) OVER w AS next_attempt,
                    lead(h.occurred_at) OVER w AS next_at
               FROM retry_history h
             WINDOW w AS (PARTITION BY h.job_id, h.job_variants_id ORDER BY h.attempt)
         ), undecided AS (
             -- A stage loads new jobs only, after every earlier event was decided: the
             -- undecided ones are those past the last decided. (A NOT EXISTS on retry_open
             -- here re-read the rows the same statement inserts, once per event.)
             SELECT s.* FROM streams s
              WHERE s.seq > (SELECT coalesce(max(seq), 0)
                               FROM (SELECT seq FROM retry_outcome
                                     UNION ALL SELECT seq FROM retry_open) d)
         ), decided AS (
             SELECT u.seq,
                    CASE WHEN u.next_seq IS NOT NULL AND u.dice < 25 THEN 'recovered'
                         WHEN u.next_seq IS NOT NULL THEN 'retried_again'
                         WHEN u.dice < 70 THEN 'recovered'
                         WHEN u.dice < 80 THEN 'gave_up'
                    END::retry_outcome_kind AS outcome,
                    CASE WHEN u.next_seq IS NOT NULL AND u.dice >= 25
                         THEN greatest(u.occurred_at, u.next_at)
                         ELSE u.occurred_at + make_interval(secs => 1 + (u.dice * 73) % 7200)
                    END AS resolved_at,
                    u.next_seq, u.next_attempt
               FROM undecided u
         ), open AS (
             INSERT INTO retry_open (job_id, stream, job_variants_id, seq, step, occurred_at)
             SELECT h.job_id, coalesce(h.job_variants_id, '00000000-0000-0000-0000-000000000000'),
                    h.job_variants_id, h.seq, h.step, h.occurred_at
               FROM decided d JOIN retry_history h ON h.seq = d.seq
              WHERE d.outcome IS NULL
         )
         INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_at, observed_by, evidence)
         SELECT d.seq, d.outcome, least(d.resolved_at, now()), now(),
                'retrylog-bench',
                CASE WHEN d.outcome = 'retried_again'
                     THEN jsonb_build_object('next_seq', d.next_seq, 'attempt', d.next_attempt)
                     ELSE '{}'::jsonb END
           FROM decided d
          WHERE d.outcome IS NOT NULL",
    )
    .execute(pool)
    .await?
    .rows_affected();
    spinner.finish_and_clear();
    Ok(decided)
}

/// Times `report::outcomes --since 30d --by BY` from the rollup `runs` times (p50, p99), and
/// the same answer as of now from the log a few times; compares the two.
pub async fn measure_outcomes(
    pool: &PgPool,
    by: OutcomeGroupBy,
    runs: u32,
) -> anyhow::Result<OutcomesFigure> {
    let spinner = progress::spinner();
    spinner.set_message(format!("report outcomes --by {by}, {runs} runs"));
    let mut conn = pool.acquire().await?;
    let now = chrono::Utc::now();
    let query = OutcomesQuery {
        by,
        since: now - chrono::Duration::days(WINDOW_DAYS),
    };
    let mut samples = Vec::with_capacity(runs as usize);
    let mut answer = None;
    for _ in 0..runs {
        let started = Instant::now();
        let outcomes = report::outcomes(&mut conn, query, Moment::Now(now)).await?;
        samples.push(started.elapsed());
        answer = Some(outcomes.rows);
    }
    let mut log_samples = Vec::new();
    let mut from_log = None;
    for _ in 0..3 {
        let started = Instant::now();
        let outcomes = report::outcomes(&mut conn, query, Moment::AsOf(now)).await?;
        log_samples.push(started.elapsed());
        from_log = Some(outcomes.rows);
    }
    let rollup_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM retry_outcome_rollup
                  WHERE dimension = $1 AND hour >= date_trunc('day', $2, 'UTC'))
              + (SELECT count(*) FROM retry_outcome_recovery_time
                  WHERE dimension = $1 AND day >= date_trunc('day', $2, 'UTC'))",
    )
    .bind(by.as_ref())
    .bind(query.since)
    .fetch_one(&mut *conn)
    .await?;
    spinner.finish_and_clear();
    let answer = answer.unwrap_or_default();
    Ok(OutcomesFigure {
        by,
        rollup: [
            percentile(&mut samples, 0.50),
            percentile(&mut samples, 0.99),
        ],
        log: percentile(&mut log_samples, 0.50),
        rollup_rows,
        retries: answer.iter().map(|row| row.retries).sum(),
        equal: Some(&answer) == from_log.as_ref(),
    })
}
