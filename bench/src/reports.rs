//! `retrylog-bench reports`: the reports over a realistic log of millions of events, each
//! figure beside a baseline measured in the same run, in the bench database.
//!
//! The log grows in stages (by default 1,000,000 events, then 4,000,000 more), and at every
//! stage the bench measures:
//!
//! 1. **Catch-up** — `projector::catch_up` with the projector's batch size over the events
//!    the stage added (from an empty rollup at the first stage), in events per second;
//!    beside it the full rebuild `replay --projection retry_rollup` makes
//!    (`projection::rebuild_rollup` in one transaction) over the whole log.
//! 2. **Trend** — `report::trend` (what `retrylog report trend --since 30d --bucket day`
//!    runs) from the rollup, against the same answer computed by a plain GROUP BY over the
//!    raw log and the pipeline tables; median of `--repeats` each, and the two answers must be
//!    equal. Across stages: the trend's time at the last stage against the first (flat as the
//!    log grows).
//! 3. **History** — `store::load_variant_history_filtered` (what `retrylog history
//!    --variant-id` runs) for `--variants` random variants, each timed on its own on one
//!    connection: p50 and p99, beside one indexed SELECT of the stream (`store::load_stream`).
//!
//! The log (`realistic_log.rs`): jobs of 4 variants created over the last 30 UTC days, every
//! variant retried 1–8 times (about 3.9 on average), a fifth of the jobs retried at job level
//! too; each retry some minutes to hours after the previous one; reasons, steps and scenarios
//! varied the way the watchdog and operators produce them. Events are in `occurred_at` order
//! within a stage and loaded by COPY in transactions of `LOAD_TRANSACTION_EVENTS`, so the
//! projector cuts batches the way it does on a live log. The trend is measured in
//! `trend.rs`, the history in `history.rs`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::connect::Connected;
use retrylog::projection;
use retrylog::projector::{self, ProjectorSettings};
use retrylog::report::{GroupBy, OutcomeGroupBy};

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{figure_table, ms, thousands, Goal, Line, Unit};
use crate::log::load_log;
use crate::progress;

mod history;
pub(crate) mod outcomes;
pub(crate) mod realistic_log;
mod trend;

use history::{measure_history, HistoryFigure};
use outcomes::{decide_outcomes, measure_outcomes, OutcomesFigure};
use realistic_log::realistic_log;
use trend::{measure_trend, TrendFigure};

/// `retrylog-bench reports`.
///
/// Runs in its own database, `retrylog_bench`, created (dropped first if it exists) on the
/// same server as the configured database and dropped at the end; the configured database is
/// never touched. Prints every figure beside its baseline, the ratio and the goal.
#[derive(Debug, Args)]
pub struct ReportsArgs {
    /// Events in the log at the last measurement.
    #[arg(long, default_value_t = 5_000_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events: u64,

    /// Measure on the way up too, when the log holds this many events (0, or not below
    /// --events: measure only at --events).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub first_events: u64,

    /// Timed runs of each trend, from the rollup and by GROUP BY alike; the median is
    /// reported.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,

    /// What the timed trends are split by, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kind,reason,step,scenario",
        value_name = "BY,BY,..."
    )]
    pub by: Vec<GroupBy>,

    /// Timed runs of each outcomes report (p50 and p99 are reported).
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub outcome_runs: u32,

    /// Random variants whose history is read, each read timed on its own.
    #[arg(long, default_value_t = 1_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub variants: u32,

    /// Events per projector batch (one transaction) in the catch-up; the default is the
    /// projector's.
    #[arg(long, default_value_t = ProjectorSettings::default().batch_events, value_name = "N",
          value_parser = clap::value_parser!(i64).range(1..))]
    pub batch_events: i64,

    /// Skip the full rebuild of the rollup (the catch-up's baseline), which reads the whole
    /// log once more at every stage.
    #[arg(long)]
    pub skip_rebuild: bool,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl ReportsArgs {
    /// `--smoke`: 1,000 events, then 2,000; one run of each trend, five of each outcomes
    /// report; 20 histories.
    pub fn smoke(&mut self) {
        self.events = 2_000;
        self.first_events = 1_000;
        self.repeats = 1;
        self.outcome_runs = 5;
        self.variants = 20;
    }
}

/// Events per COPY transaction when loading: the projector cuts its batches between
/// transactions, so these must be well below a batch.
const LOAD_TRANSACTION_EVENTS: usize = 1_000;

/// The trend window every figure uses (`--since 30d`), and the generated log's span: the
/// current UTC day and the 29 before it, all inside the window.
pub const WINDOW_DAYS: i64 = 30;

/// Goals: the trend from the rollup at least this many times as fast as the GROUP BY; its
/// time at the last stage at least this fraction of the speed at the first (a cost
/// proportional to the log would be first ÷ last events, 0.2× for 1M → 5M); a variant's
/// history under this many milliseconds at p99.
const TREND_SPEEDUP: f64 = 100.0;
const TREND_FLAT: f64 = 0.67;
const HISTORY_P99_MS: f64 = 2.0;
/// The outcomes report from its rollup under this many milliseconds at p99 (issue 10).
const OUTCOMES_P99_MS: f64 = 50.0;
/// The projector's catch-up, batch by batch, at least this fraction of the speed of the
/// one-transaction rebuild of the same events (issue 10).
const CATCH_UP_OF_REBUILD: f64 = 0.8;

/// Everything measured when the log held `events`.
#[derive(Debug)]
struct Stage {
    events: u64,
    /// Events this stage added (the catch-up's work).
    added: u64,
    catch_up: Duration,
    /// The full rebuild's time and the events it applied.
    rebuild: Option<(Duration, i64)>,
    trends: Vec<TrendFigure>,
    outcomes: Vec<OutcomesFigure>,
    history: HistoryFigure,
}

pub async fn run(connected: &Connected, args: ReportsArgs) -> anyhow::Result<ExitCode> {
    let stages = in_bench_database(
        connected,
        "retrylog-bench reports",
        args.keep,
        async |options| measure(connected, options, &args).await,
    )
    .await?;

    let lines = figure_lines(&args, &stages);
    let format = args.format.format;
    figure_table(&lines, format, &["events", "unit"]).print(format)?;
    let mismatched: Vec<&String> = stages
        .iter()
        .flat_map(|stage| &stage.trends)
        .flat_map(|trend| &trend.mismatches)
        .collect();
    if !mismatched.is_empty() {
        for mismatch in mismatched.iter().take(10) {
            eprintln!("retrylog-bench: trend: {mismatch}");
        }
        eprintln!("retrylog-bench: the trend from the rollup differs from the log's");
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    if stages
        .iter()
        .flat_map(|stage| &stage.outcomes)
        .any(|outcome| !outcome.equal)
    {
        eprintln!("retrylog-bench: the outcomes report from its rollup differs from the log's");
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

/// The log sizes measured at, in order.
fn stages(args: &ReportsArgs) -> Vec<u64> {
    if args.first_events > 0 && args.first_events < args.events {
        vec![args.first_events, args.events]
    } else {
        vec![args.events]
    }
}

/// Every stage, in a freshly created bench database. On an error the pool is simply dropped:
/// the final `DROP DATABASE ... WITH (FORCE)` ends whatever it left open.
async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &ReportsArgs,
) -> anyhow::Result<Vec<Stage>> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let (work_mem, parallel): (String, String) = sqlx::query_as(
        "SELECT current_setting('work_mem'),
                current_setting('max_parallel_workers_per_gather')",
    )
    .fetch_one(&pool)
    .await?;
    let sizes = stages(args);
    eprintln!(
        "retrylog-bench: reports at {} events; trends by {} (median of {}), history of {} \
         variants, catch-up in batches of {}; work_mem {work_mem}, \
         max_parallel_workers_per_gather {parallel}",
        sizes
            .iter()
            .map(|&n| thousands(n as f64))
            .collect::<Vec<_>>()
            .join(" and "),
        args.by
            .iter()
            .map(|by| by.as_ref())
            .collect::<Vec<_>>()
            .join(", "),
        args.repeats,
        args.variants,
        args.batch_events,
    );

    let end = Utc::now() - chrono::Duration::minutes(1);
    let mut rng = StdRng::from_entropy();
    let mut stages = Vec::new();
    let mut loaded = 0;
    for size in sizes {
        let added = size - loaded;
        let started = Instant::now();
        let log = realistic_log(added, end, &mut rng)?;
        let generated = started.elapsed();
        let (jobs, variants) = (log.rows.jobs.len(), log.rows.variants.len());
        let times = load_log(&pool, log, Some(LOAD_TRANSACTION_EVENTS)).await?;
        loaded = size;
        eprintln!(
            "retrylog-bench: loaded {} events of {} jobs and {} variants (log now {}): \
             generated in {:.1} s, rows inserted in {:.1} s, events hashed and copied in \
             {:.1} s ({}/s), counts set and VACUUM ANALYZE in {:.1} s",
            thousands(added as f64),
            thousands(jobs as f64),
            thousands(variants as f64),
            thousands(size as f64),
            generated.as_secs_f64(),
            times.rows.as_secs_f64(),
            times.copy.as_secs_f64(),
            thousands(added as f64 / times.copy.as_secs_f64()),
            times.settle.as_secs_f64(),
        );

        let decided = decide_outcomes(&pool).await?;
        eprintln!(
            "retrylog-bench: decided the outcomes of {} loaded retries",
            thousands(decided as f64)
        );
        let catch_up = catch_up(&pool, args.batch_events, added).await?;
        let rebuild = if args.skip_rebuild {
            None
        } else {
            Some(rebuild(&pool).await?)
        };
        eprintln!(
            "retrylog-bench: catch-up of {} events in {:.1} s{}",
            thousands(added as f64),
            catch_up.as_secs_f64(),
            rebuild.map_or(String::new(), |(took, applied)| format!(
                "; full rebuild of {} events in {:.1} s",
                thousands(applied as f64),
                took.as_secs_f64()
            )),
        );
        // The upserts and the rebuild left dead rows behind; autovacuum would remove them
        // in its own time, here it is done before anything reads the rollup.
        sqlx::raw_sql(
            "VACUUM ANALYZE retry_rollup, retry_rollup_created, retry_outcome_rollup,
                         retry_outcome_recovery_time",
        )
        .execute(&pool)
        .await?;

        let mut trends = Vec::new();
        for &by in &args.by {
            trends.push(measure_trend(&pool, by, args.repeats).await?);
        }
        let mut outcomes = Vec::new();
        for by in [
            OutcomeGroupBy::Reason,
            OutcomeGroupBy::Step,
            OutcomeGroupBy::Scenario,
            OutcomeGroupBy::Attempt,
        ] {
            outcomes.push(measure_outcomes(&pool, by, args.outcome_runs).await?);
        }
        let history = measure_history(&pool, args.variants).await?;
        stages.push(Stage {
            events: size,
            added,
            catch_up,
            rebuild,
            trends,
            outcomes,
            history,
        });
    }
    pool.close().await;
    Ok(stages)
}

// ---------------------------------------------------------------------------------------------
// Catch-up and rebuild

/// Times `projector::catch_up` over everything the rollup has not applied yet, which must be
/// the `added` events.
async fn catch_up(pool: &PgPool, batch_events: i64, added: u64) -> anyhow::Result<Duration> {
    let progress = progress::spinner();
    progress.set_message(format!(
        "projector catch-up of {} events",
        thousands(added as f64)
    ));
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let applied = projector::catch_up(&mut conn, batch_events).await?;
    let took = started.elapsed();
    progress.finish_and_clear();
    anyhow::ensure!(
        applied as u64 == added,
        "the catch-up applied {applied} events, the stage added {added}"
    );
    Ok(took)
}

/// Times the rollup's full rebuild, as `replay --projection retry_rollup` runs it:
/// `projection::rebuild_rollup` in one transaction, commit included. Returns the time and the
/// events applied.
async fn rebuild(pool: &PgPool) -> anyhow::Result<(Duration, i64)> {
    let progress = progress::spinner();
    progress.set_message("full rebuild of the rollup");
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let applied = projection::rebuild_rollup(&mut tx).await?;
    tx.commit().await?;
    let took = started.elapsed();
    progress.finish_and_clear();
    Ok((took, applied))
}

// ---------------------------------------------------------------------------------------------
// Output

/// Every figure as a line of the table, stage by stage, then the trend's growth.
fn figure_lines(args: &ReportsArgs, stages: &[Stage]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut previous: Option<&Stage> = None;
    for stage in stages {
        let events = thousands(stage.events as f64);
        let from = match previous {
            None => "an empty rollup".to_string(),
            Some(before) => format!("the rollup of {} events", thousands(before.events as f64)),
        };
        let mut catch_up = Line::new(
            "catch-up events/s",
            format!(
                "projector::catch_up from {from}: {} events added (log {events}), batches of {}",
                thousands(stage.added as f64),
                thousands(args.batch_events as f64),
            ),
            Unit::PerSecond,
            stage.added as f64 / stage.catch_up.as_secs_f64(),
        )
        .events(stage.events);
        if let Some((took, applied)) = stage.rebuild {
            catch_up = catch_up
                .baseline(
                    format!(
                        "full rebuild (rebuild_rollup, one transaction) of {} events",
                        thousands(applied as f64)
                    ),
                    applied as f64 / took.as_secs_f64(),
                )
                .goal(Goal::AtLeast(CATCH_UP_OF_REBUILD));
        }
        lines.push(catch_up);

        for trend in &stage.trends {
            lines.push(
                Line::new(
                    "trend",
                    format!(
                        "report::trend --since 30d --bucket day --by {}: log {events}, {} \
                         rollup rows read; median of {}",
                        trend.by,
                        thousands(trend.rollup_rows as f64),
                        args.repeats
                    ),
                    Unit::Millis,
                    ms(trend.rollup),
                )
                .events(stage.events)
                .baseline("GROUP BY over the log", ms(trend.group_by))
                .goal(Goal::AtLeast(TREND_SPEEDUP)),
            );
        }
        if !stage.trends.is_empty() {
            let mismatches: usize = stage.trends.iter().map(|t| t.mismatches.len()).sum();
            let shapes: Vec<String> = stage
                .trends
                .iter()
                .map(|t| format!("{} {}×{}", t.by, t.buckets, t.groups))
                .collect();
            lines.push(
                Line::check(
                    "trend answers",
                    format!(
                        "rollup = GROUP BY, log {events} (days × groups: {}){}",
                        shapes.join(", "),
                        if mismatches == 0 {
                            String::new()
                        } else {
                            format!(": {mismatches} row(s) differ")
                        }
                    ),
                    "equal",
                    mismatches == 0,
                )
                .events(stage.events),
            );
        }

        for outcome in &stage.outcomes {
            lines.push(
                Line::new(
                    "outcomes p99",
                    format!(
                        "report::outcomes --since 30d --by {}: log {events}, {} retries in the \
                         window, {} projection rows read; p50 {:.2} ms over {} runs",
                        outcome.by,
                        thousands(outcome.retries as f64),
                        thousands(outcome.rollup_rows as f64),
                        ms(outcome.rollup[0]),
                        args.outcome_runs,
                    ),
                    Unit::Millis,
                    ms(outcome.rollup[1]),
                )
                .events(stage.events)
                .baseline(
                    "the same from the log and the outcomes (--as-of now), median",
                    ms(outcome.log),
                )
                .goal(Goal::Under(OUTCOMES_P99_MS)),
            );
        }
        if !stage.outcomes.is_empty() {
            let unequal: Vec<String> = stage
                .outcomes
                .iter()
                .filter(|o| !o.equal)
                .map(|o| o.by.to_string())
                .collect();
            lines.push(
                Line::check(
                    "outcomes answers",
                    format!(
                        "rollup = log and outcomes, log {events}{}",
                        if unequal.is_empty() {
                            String::new()
                        } else {
                            format!(": --by {} differ", unequal.join(", "))
                        }
                    ),
                    "equal",
                    unequal.is_empty(),
                )
                .events(stage.events),
            );
        }

        let history = &stage.history;
        for (index, (name, goal)) in [
            ("history p50", None),
            ("history p99", Some(Goal::Under(HISTORY_P99_MS))),
        ]
        .into_iter()
        .enumerate()
        {
            let mut line = Line::new(
                name,
                format!(
                    "store::load_variant_history_filtered (history --variant-id), {} random \
                     variants ({} events), log {events}",
                    thousands(history.variants as f64),
                    thousands(history.events as f64)
                ),
                Unit::Millis,
                ms(history.ours[index]),
            )
            .events(stage.events)
            .baseline(
                "one SELECT of the stream (store::load_stream)",
                ms(history.stream[index]),
            );
            if let Some(goal) = goal {
                line = line.goal(goal);
            }
            lines.push(line);
        }
        previous = Some(stage);
    }

    if let (Some(first), Some(last)) = (stages.first(), stages.last()) {
        if stages.len() > 1 {
            for (before, after) in first.trends.iter().zip(&last.trends) {
                lines.push(
                    Line::new(
                        "trend as the log grows",
                        format!(
                            "--by {}: report::trend at {} events",
                            after.by,
                            thousands(last.events as f64)
                        ),
                        Unit::Millis,
                        ms(after.rollup),
                    )
                    .events(last.events)
                    .baseline(
                        format!("the same at {} events", thousands(first.events as f64)),
                        ms(before.rollup),
                    )
                    .goal(Goal::AtLeast(TREND_FLAT)),
                );
            }
        }
    }
    lines
}
