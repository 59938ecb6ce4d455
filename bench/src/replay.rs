//! Replay, the second half of `retrylog-bench appends`: the retry_counts replay (`retrylog
//! replay --projection retry_counts`) over a uniform generated log against a hand-written
//! set-based recount, from two starting states (counts wiped, counts already correct); then
//! the replay of every projection, for scale. Median of `REPEATS` each.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::event::RetryReason;
use retrylog::{projection, replay};

use crate::figures::{median, thousands, Goal, Line, Unit};
use crate::log::{load_log, outcomes_from_log, EventKind, GeneratedLog, PlannedEvent, Stream};
use crate::pipeline::{PipelineRows, STEP, VARIANTS_PER_JOB};
use crate::progress;

/// The shape of the generated log for replay: every job has `VARIANTS_PER_JOB` variants with
/// up to `EVENTS_PER_VARIANT` events each, and up to `EVENTS_PER_JOB` job-level events.
const EVENTS_PER_VARIANT: i32 = 10;
const EVENTS_PER_JOB: i32 = 2;

/// The generated log's events occurred over this many days.
const LOG_SPAN_DAYS: u32 = 30;

/// Each replay timing is taken this many times; the median is reported.
const REPEATS: usize = 3;

/// The hand-written set-based recount replay is compared with. Like replay, it writes only
/// the counts that are wrong: a count whose stream has events and differs from their number,
/// and a non-zero count whose stream has none. So from counts already correct both write
/// nothing, and from counts wiped both write exactly the rows that have events: equal work.
const HAND_RECOUNT: [&str; 4] = [
    "UPDATE jobs_variants v SET retry_count = c.n
       FROM (SELECT job_variants_id, count(*) n FROM retry_history
              WHERE job_variants_id IS NOT NULL GROUP BY 1) c
      WHERE v.job_variants_id = c.job_variants_id AND v.retry_count <> c.n",
    "UPDATE jobs_variants v SET retry_count = 0
      WHERE v.retry_count <> 0
        AND NOT EXISTS (SELECT 1 FROM retry_history h
                         WHERE h.job_variants_id = v.job_variants_id)",
    "UPDATE jobs j SET retry_count = c.n
       FROM (SELECT job_id, count(*) n FROM retry_history
              WHERE job_variants_id IS NULL GROUP BY 1) c
      WHERE j.job_id = c.job_id AND j.retry_count <> c.n",
    "UPDATE jobs j SET retry_count = 0
      WHERE j.retry_count <> 0
        AND NOT EXISTS (SELECT 1 FROM retry_history h
                         WHERE h.job_id = j.job_id AND h.job_variants_id IS NULL)",
];

/// Replay against the hand recount from one starting state, medians of `REPEATS`.
#[derive(Debug, Clone)]
pub struct ReplayFigure {
    condition: &'static str,
    /// What the replay rebuilt.
    projections: &'static str,
    events: i64,
    ours: Duration,
    hand: Duration,
    /// Whether the goal (at least the hand recount) applies: only where both do the same work.
    goal: bool,
}

pub async fn measure(pool: &PgPool, events: u64) -> anyhow::Result<Vec<ReplayFigure>> {
    load_log(pool, uniform_log(events)?, None).await?;
    outcomes_from_log(pool).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await?;
    let counts = projection::find("retry_counts").map_err(anyhow::Error::msg)?;

    let progress = progress::spinner();
    let mut figures = Vec::new();
    for (condition, wiped) in [("counts wiped", true), ("counts already correct", false)] {
        let mut ours = Vec::new();
        let mut hand = Vec::new();
        for repeat in 1..=REPEATS {
            // Each from the same starting state; the order alternates, hand recount first on
            // odd repeats, replay first on even ones, so neither always runs on a warmer cache.
            for hand_turn in [repeat % 2 == 1, repeat % 2 == 0] {
                prepare_counts(pool, wiped).await?;
                if hand_turn {
                    progress.set_message(format!(
                        "replay, {condition}: hand-written recount {repeat}/{REPEATS}"
                    ));
                    let started = Instant::now();
                    hand_recount(pool).await?;
                    hand.push(started.elapsed());
                    check_counts(pool).await?;
                } else {
                    progress.set_message(format!("replay, {condition}: replay {repeat}/{REPEATS}"));
                    let started = Instant::now();
                    let report =
                        replay::replay_projections(pool, std::slice::from_ref(counts), false)
                            .await?;
                    ours.push(started.elapsed());
                    check_replay(pool, &report, events).await?;
                }
            }
        }
        figures.push(ReplayFigure {
            condition,
            projections: "retry_counts",
            events,
            ours: median(ours),
            hand: median(hand),
            goal: true,
        });
    }

    // The whole of `retrylog replay`: every projection, the asynchronous rollup included,
    // from counts already correct. The hand recount only counts, so this row has no goal.
    let mut full = Vec::new();
    for repeat in 1..=REPEATS {
        progress.set_message(format!("replay of every projection {repeat}/{REPEATS}"));
        prepare_counts(pool, false).await?;
        let started = Instant::now();
        let report = replay::replay(pool, false).await?;
        full.push(started.elapsed());
        check_replay(pool, &report, events).await?;
    }
    let hand_from_correct = figures
        .last()
        .map(|figure| figure.hand)
        .expect("both conditions were measured");
    figures.push(ReplayFigure {
        condition: "counts already correct",
        projections: "every projection (retry_counts, retry_rollup)",
        events,
        ours: median(full),
        hand: hand_from_correct,
        goal: false,
    });
    progress.finish_and_clear();
    Ok(figures)
}

/// A timed replay must have seen the whole log and left no count drifting (checked outside
/// the timed region).
async fn check_replay(
    pool: &PgPool,
    report: &replay::ReplayReport,
    events: i64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        report.events == events,
        "replay saw {} events, the log has {events}",
        report.events
    );
    anyhow::ensure!(
        report.unsettled.is_empty(),
        "{} count(s) did not settle during replay",
        report.unsettled.len()
    );
    check_counts(pool).await
}

/// No count differs from the log (after a replay or a hand recount, outside the timed region).
async fn check_counts(pool: &PgPool) -> anyhow::Result<()> {
    let drift: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_counts_drift()")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        drift == 0,
        "{drift} count(s) still differ after the recount"
    );
    Ok(())
}

/// Sets the starting state of a timed replay or recount, outside the timed region: every
/// count zero (`wiped`) or every count right; then vacuums the pipeline tables and
/// checkpoints, so that neither the dead rows of the previous run nor a checkpoint falls
/// into the next one.
async fn prepare_counts(pool: &PgPool, wiped: bool) -> anyhow::Result<()> {
    if wiped {
        sqlx::raw_sql(
            "UPDATE jobs_variants SET retry_count = 0 WHERE retry_count <> 0;
             UPDATE jobs SET retry_count = 0 WHERE retry_count <> 0;",
        )
        .execute(pool)
        .await?;
    } else {
        sqlx::query("SELECT retry_counts_rebuild()")
            .execute(pool)
            .await?;
    }
    sqlx::raw_sql("VACUUM jobs, jobs_variants")
        .execute(pool)
        .await?;
    // CHECKPOINT needs superuser or pg_checkpoint; without it the run is only noisier.
    let _ = sqlx::raw_sql("CHECKPOINT").execute(pool).await;
    Ok(())
}

/// The hand-written recount, in one transaction.
async fn hand_recount(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in HAND_RECOUNT {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The uniform log

/// The replay benchmark's log: `total` events over jobs of `VARIANTS_PER_JOB` variants, every
/// variant with up to `EVENTS_PER_VARIANT` events and every job with up to `EVENTS_PER_JOB`,
/// all at `STEP` with detail `{}`, the reasons taking turns.
///
/// Streams are filled round-robin (attempt 1 of every stream, then attempt 2, ...), so the
/// log interleaves streams the way a running pipeline does; `occurred_at` spreads evenly over
/// the last `LOG_SPAN_DAYS`, ending a minute ago.
fn uniform_log(total: u64) -> anyhow::Result<GeneratedLog> {
    let per_job = (VARIANTS_PER_JOB as i32 * EVENTS_PER_VARIANT + EVENTS_PER_JOB) as u64;
    let job_count = total.div_ceil(per_job) as usize;
    let mut rows = PipelineRows::default();
    let mut streams = Vec::with_capacity(job_count * (VARIANTS_PER_JOB + 1));
    for _ in 0..job_count {
        let job_id = Uuid::new_v4();
        rows.jobs.push(job_id);
        streams.push(Stream::new(job_id, None));
        for order in 0..VARIANTS_PER_JOB {
            let variant = Uuid::new_v4();
            rows.variants.push(variant);
            rows.owners.push(job_id);
            rows.orders.push(order as i32);
            streams.push(Stream::new(job_id, Some(variant)));
        }
    }
    let kinds = [
        RetryReason::Stuck,
        RetryReason::Failed,
        RetryReason::ManualRecovery,
    ]
    .map(|reason| EventKind {
        reason,
        step: Some(STEP),
        from_status: if reason == RetryReason::Failed {
            "failed"
        } else {
            "done"
        },
        to_status: "done",
        detail: "{}",
    })
    .to_vec();

    let span_micros = i128::from(LOG_SPAN_DAYS) * 86_400_000_000;
    let first_micros = Utc::now().timestamp_micros() - 60_000_000 - span_micros as i64;
    let mut events = Vec::with_capacity(total as usize);
    'rounds: for attempt in 1..=EVENTS_PER_VARIANT.max(EVENTS_PER_JOB) {
        for (index, stream) in streams.iter().enumerate() {
            let written = events.len() as u64;
            if written == total {
                break 'rounds;
            }
            let limit = if stream.job_variants_id.is_some() {
                EVENTS_PER_VARIANT
            } else {
                EVENTS_PER_JOB
            };
            if attempt > limit {
                continue;
            }
            events.push(PlannedEvent {
                occurred_micros: first_micros
                    + (i128::from(written) * span_micros / i128::from(total)) as i64,
                stream: u32::try_from(index).context("too many streams")?,
                attempt: attempt as u16,
                kind: (written % 3) as u16,
            });
        }
    }
    Ok(GeneratedLog {
        rows,
        streams,
        kinds,
        events,
    })
}

// ---------------------------------------------------------------------------------------------
// Output

/// The replay figures as lines of the table.
pub fn lines(figures: &[ReplayFigure]) -> Vec<Line> {
    let mut lines = Vec::new();
    for figure in figures {
        let mut line = Line::new(
            "replay events/s",
            format!(
                "{}: {} events, {}, median of {REPEATS}",
                figure.projections,
                thousands(figure.events as f64),
                figure.condition
            ),
            Unit::PerSecond,
            figure.events as f64 / figure.ours.as_secs_f64(),
        )
        .events(figure.events as u64)
        .baseline(
            "hand-written recount",
            figure.events as f64 / figure.hand.as_secs_f64(),
        );
        if figure.goal {
            line = line.goal(Goal::AtLeast(1.0));
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uniform_log_fills_streams_round_robin() {
        let log = uniform_log(100).unwrap();
        let per_job = VARIANTS_PER_JOB * EVENTS_PER_VARIANT as usize + EVENTS_PER_JOB as usize;
        assert_eq!(log.events.len(), 100);
        assert_eq!(log.rows.jobs.len(), 100usize.div_ceil(per_job));
        assert_eq!(
            log.streams.len(),
            log.rows.jobs.len() * (VARIANTS_PER_JOB + 1)
        );
        // Attempt 1 of every stream first, in stream order, then attempt 2, ...; job streams
        // stop after EVENTS_PER_JOB. The reasons take turns; times never go back.
        let mut expected = Vec::new();
        for attempt in 1..=EVENTS_PER_VARIANT {
            for (index, stream) in log.streams.iter().enumerate() {
                if stream.job_variants_id.is_some() || attempt <= EVENTS_PER_JOB {
                    expected.push((index as u32, attempt as u16));
                }
            }
        }
        expected.truncate(100);
        let got: Vec<(u32, u16)> = log.events.iter().map(|e| (e.stream, e.attempt)).collect();
        assert_eq!(got, expected);
        for (index, event) in log.events.iter().enumerate() {
            assert_eq!(usize::from(event.kind), index % 3);
        }
        assert!(log
            .events
            .windows(2)
            .all(|pair| pair[0].occurred_micros <= pair[1].occurred_micros));
    }
}
