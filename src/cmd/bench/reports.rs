//! `retrylog bench reports`: the reports over a realistic log of millions of events, each
//! figure beside a baseline measured in the same run, in the scratch database of `bench`.
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
//! The log: jobs of 4 variants created over the last 30 UTC days, every variant retried 1–8
//! times (about 3.9 on average), a fifth of the jobs retried at job level too; each retry
//! some minutes to hours after the previous one; reasons, steps and scenarios varied the way
//! the watchdog and operators produce them. Events are in `occurred_at` order within a stage
//! and loaded by COPY in transactions of `LOAD_TRANSACTION_EVENTS`, so the projector cuts
//! batches the way it does on a live log.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    figure_table, fresh_database, load_log, median, print_server, spinner, thousands, EventKind,
    GeneratedLog, Goal, Line, PipelineRows, PlannedEvent, Stream, Unit, BENCH_DATABASE,
};
use crate::cli::FormatArg;
use crate::cmd::EXIT_MISMATCH;
use crate::connect::Connected;
use crate::event::{RetryReason, Target};
use crate::projector::{self, ProjectorSettings};
use crate::report::{self, Bucket, GroupBy, Moment, Trend, TrendQuery, NO_VALUE};
use crate::store::{self, HistoryFilter};
use crate::{projection, scratch};

/// `retrylog bench reports`.
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

/// Events per COPY transaction when loading: the projector cuts its batches between
/// transactions, so these must be well below a batch.
const LOAD_TRANSACTION_EVENTS: usize = 1_000;

/// The trend window every figure uses (`--since 30d`), and the generated log's span: the
/// current UTC day and the 29 before it, all inside the window.
const WINDOW_DAYS: i64 = 30;

/// Goals: the trend from the rollup at least this many times as fast as the GROUP BY; its
/// time at the last stage at least this fraction of the speed at the first (a cost
/// proportional to the log would be first ÷ last events, 0.2× for 1M → 5M); a variant's
/// history under this many milliseconds at p99.
const TREND_SPEEDUP: f64 = 100.0;
const TREND_FLAT: f64 = 0.67;
const HISTORY_P99_MS: f64 = 2.0;

/// The shape of the generated log: events per variant stream 1..=8 with these weights (mean
/// 3.88); the share of jobs with job-level events, and how many (1 or 2).
const VARIANT_EVENTS_WEIGHTS: [u32; 8] = [14, 17, 17, 15, 13, 10, 8, 6];
const JOBS_WITH_JOB_EVENTS: f64 = 0.2;

/// Variant retries: reason, scenario (the detail as PostgreSQL prints it), the status the
/// variant was retried from, and how often, out of 100.
const VARIANT_RETRIES: [(RetryReason, &str, &str, u32); 4] = [
    (RetryReason::Stuck, r#"{"scenario": "lagging"}"#, "done", 40),
    (RetryReason::Stuck, r#"{"scenario": "stale"}"#, "done", 15),
    (
        RetryReason::Failed,
        r#"{"scenario": "failed"}"#,
        "failed",
        35,
    ),
    // An operator's re-run: no scenario.
    (RetryReason::ManualRecovery, "{}", "failed", 10),
];
/// The steps variants are retried at, and how often, out of 100.
const VARIANT_STEPS: [(&str, u32); 3] = [("prepare", 20), ("generate", 50), ("segment", 30)];
/// Job-level retries: the watchdog's final-step recovery, or an operator's re-run of the job
/// (no step, no scenario); how often, out of 100.
const JOB_RETRIES: [(EventKind, u32); 2] = [
    (
        EventKind {
            reason: RetryReason::ManualRecovery,
            step: Some("iou_eval"),
            from_status: "running",
            to_status: "done",
            detail: r#"{"scenario": "final_step"}"#,
        },
        70,
    ),
    (
        EventKind {
            reason: RetryReason::ManualRecovery,
            step: None,
            from_status: "failed",
            to_status: "running",
            detail: "{}",
        },
        30,
    ),
];

/// Retry gaps, in seconds: the first retry of a target this long after its creation, each
/// later one this long after the previous (the watchdog's stuck threshold is 5 minutes).
const FIRST_GAP: std::ops::Range<i64> = 300..7_200;
const NEXT_GAP: std::ops::Range<i64> = 300..14_400;

/// The trend of one grouping at one stage.
#[derive(Debug)]
struct TrendFigure {
    by: GroupBy,
    /// Medians: `report::trend` from the rollup; the GROUP BY over the log.
    rollup: Duration,
    group_by: Duration,
    /// Rollup rows in the window, buckets and groups of the answer.
    rollup_rows: i64,
    buckets: usize,
    groups: usize,
    /// Where the two answers differ (empty: equal).
    mismatches: Vec<String>,
}

/// A variant's history at one stage.
#[derive(Debug)]
struct HistoryFigure {
    variants: usize,
    /// Events read in all, over the sample.
    events: usize,
    ours: [Duration; 2],
    stream: [Duration; 2],
}

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
    history: HistoryFigure,
}

pub async fn run(connected: &Connected, args: ReportsArgs) -> anyhow::Result<ExitCode> {
    let options = scratch::options(connected, BENCH_DATABASE, "retrylog bench reports")?;
    let outcome = measure(connected, &options, &args).await;
    scratch::release(connected, BENCH_DATABASE, args.keep).await;
    let stages = outcome?;

    let lines = figure_lines(&args, &stages);
    figure_table(&lines, args.format.format, &["events", "unit"]).print(args.format.format)?;
    let mismatched: Vec<&String> = stages
        .iter()
        .flat_map(|stage| &stage.trends)
        .flat_map(|trend| &trend.mismatches)
        .collect();
    if !mismatched.is_empty() {
        for mismatch in mismatched.iter().take(10) {
            eprintln!("retrylog bench: trend: {mismatch}");
        }
        eprintln!("retrylog bench: the trend from the rollup differs from the log's");
        return Ok(ExitCode::from(EXIT_MISMATCH));
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
        "retrylog bench: reports at {} events; trends by {} (median of {}), history of {} \
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
            "retrylog bench: loaded {} events of {} jobs and {} variants (log now {}): \
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

        let catch_up = catch_up(&pool, args.batch_events, added).await?;
        let rebuild = if args.skip_rebuild {
            None
        } else {
            Some(rebuild(&pool).await?)
        };
        eprintln!(
            "retrylog bench: catch-up of {} events in {:.1} s{}",
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
        sqlx::raw_sql("VACUUM ANALYZE retry_rollup, retry_rollup_created")
            .execute(&pool)
            .await?;

        let mut trends = Vec::new();
        for &by in &args.by {
            trends.push(measure_trend(&pool, by, args.repeats).await?);
        }
        let history = measure_history(&pool, args.variants).await?;
        stages.push(Stage {
            events: size,
            added,
            catch_up,
            rebuild,
            trends,
            history,
        });
    }
    pool.close().await;
    Ok(stages)
}

// ---------------------------------------------------------------------------------------------
// The log

/// `total` events of new jobs created over the current UTC day and the 29 before it, up to
/// `end`, in `occurred_at` order (see the module's documentation for the shape).
fn realistic_log(total: u64, end: DateTime<Utc>, rng: &mut StdRng) -> anyhow::Result<GeneratedLog> {
    let start = Bucket::Day.start_of(end) - chrono::Duration::days(WINDOW_DAYS - 1);
    let (start, end) = (start.timestamp_micros(), end.timestamp_micros());

    // Kinds 0.. are the variant retries, scenario-major; the job retries follow.
    let mut kinds = Vec::new();
    for (reason, detail, from_status, _) in VARIANT_RETRIES {
        for (step, _) in VARIANT_STEPS {
            kinds.push(EventKind {
                reason,
                step: Some(step),
                from_status,
                to_status: "done",
                detail,
            });
        }
    }
    let job_kinds = kinds.len();
    kinds.extend(JOB_RETRIES.iter().map(|(kind, _)| *kind));
    let retries = WeightedIndex::new(VARIANT_RETRIES.map(|(.., weight)| weight))?;
    let steps = WeightedIndex::new(VARIANT_STEPS.map(|(_, weight)| weight))?;
    let job_retries = WeightedIndex::new(JOB_RETRIES.map(|(_, weight)| weight))?;
    let lengths = WeightedIndex::new(VARIANT_EVENTS_WEIGHTS)?;

    let mut rows = PipelineRows::default();
    let mut planner = Planner {
        total,
        end,
        streams: Vec::new(),
        events: Vec::with_capacity(total as usize),
    };
    while !planner.full() {
        let job_id = Uuid::new_v4();
        let created = rng.gen_range(start..end);
        rows.jobs.push(job_id);
        rows.job_created.push(micros(created)?);
        for order in 0..super::VARIANTS_PER_JOB {
            let variant = Uuid::new_v4();
            let variant_created = (created + rng.gen_range(0..60_000_000)).min(end);
            rows.variants.push(variant);
            rows.owners.push(job_id);
            rows.orders.push(order as i32);
            rows.variant_created.push(micros(variant_created)?);
            let wanted = lengths.sample(rng) + 1;
            planner.stream(
                rng,
                Stream::new(job_id, Some(variant)),
                variant_created,
                wanted,
                |rng| retries.sample(rng) * VARIANT_STEPS.len() + steps.sample(rng),
            )?;
        }
        if rng.gen_bool(JOBS_WITH_JOB_EVENTS) {
            let wanted = rng.gen_range(1..=2);
            planner.stream(rng, Stream::new(job_id, None), created, wanted, |rng| {
                job_kinds + job_retries.sample(rng)
            })?;
        }
    }
    // Log order is time order; a stream's events keep their attempt order (their times
    // strictly increase).
    let Planner {
        streams,
        mut events,
        ..
    } = planner;
    events.sort_unstable();
    Ok(GeneratedLog {
        rows,
        streams,
        kinds,
        events,
    })
}

/// The streams and events of a log being generated.
struct Planner {
    /// Events wanted in all.
    total: u64,
    /// No event occurs after this (microseconds).
    end: i64,
    streams: Vec<Stream>,
    events: Vec<PlannedEvent>,
}

impl Planner {
    fn full(&self) -> bool {
        self.events.len() as u64 >= self.total
    }

    /// Adds a stream of `wanted` events (fewer if the log is full before), the first some
    /// time after `created`, each later one some time after the previous; `kind` picks what
    /// each event says.
    fn stream(
        &mut self,
        rng: &mut StdRng,
        stream: Stream,
        created: i64,
        wanted: usize,
        mut kind: impl FnMut(&mut StdRng) -> usize,
    ) -> anyhow::Result<()> {
        let wanted = wanted.min((self.total - self.events.len() as u64) as usize);
        if wanted == 0 {
            return Ok(());
        }
        let index = u32::try_from(self.streams.len()).context("too many streams")?;
        self.streams.push(stream);
        let mut at = created;
        for attempt in 1..=wanted {
            let gap = if attempt == 1 { FIRST_GAP } else { NEXT_GAP };
            let mut next = at + rng.gen_range(gap) * 1_000_000 + rng.gen_range(0..1_000_000);
            if next > self.end {
                // Near the end of the window: squeeze the rest in before it.
                next = at + (self.end - at) / 2;
            }
            at = next.max(at + 1);
            self.events.push(PlannedEvent {
                occurred_micros: at,
                stream: index,
                attempt: u16::try_from(attempt)?,
                kind: u16::try_from(kind(rng))?,
            });
        }
        Ok(())
    }
}

fn micros(at: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(at).context("timestamp out of range")
}

// ---------------------------------------------------------------------------------------------
// Catch-up and rebuild

/// Times `projector::catch_up` over everything the rollup has not applied yet, which must be
/// the `added` events.
async fn catch_up(pool: &PgPool, batch_events: i64, added: u64) -> anyhow::Result<Duration> {
    let progress = spinner();
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
    let progress = spinner();
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
// Trend

/// A trend's group as an expression over `retry_history`, written here rather than taken
/// from `report`, so that the baseline checks the rollup against an independent definition.
fn log_group(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Kind => "CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END",
        GroupBy::Reason => "reason::text",
        GroupBy::Step => "coalesce(step, '')",
        GroupBy::Scenario => "coalesce(detail ->> 'scenario', '')",
    }
}

/// The trend's answer from the raw log: (day, group, retries, targets retried) and (day,
/// kind, targets created).
type LogTrend = (
    Vec<(DateTime<Utc>, String, i64, i64)>,
    Vec<(DateTime<Utc>, String, i64)>,
);

/// The baseline: what a plain GROUP BY over the log and the pipeline tables answers for the
/// days from `from` on.
async fn log_trend(
    conn: &mut PgConnection,
    by: GroupBy,
    from: DateTime<Utc>,
) -> Result<LogTrend, sqlx::Error> {
    let retried = sqlx::query_as(&format!(
        "SELECT date_trunc('day', occurred_at, 'UTC'), {group}, count(*),
                count(DISTINCT (job_id, job_variants_id))
           FROM retry_history
          WHERE occurred_at >= $1
          GROUP BY 1, 2",
        group = log_group(by)
    ))
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    let created = sqlx::query_as(
        "SELECT date_trunc('day', created_at, 'UTC'), 'job', count(*)
           FROM jobs WHERE created_at >= $1 GROUP BY 1
         UNION ALL
         SELECT date_trunc('day', created_at, 'UTC'), 'variant', count(*)
           FROM jobs_variants WHERE created_at >= $1 GROUP BY 1",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    Ok((retried, created))
}

/// Where the rollup's trend and the log's answer differ; empty when they are equal.
fn compare(trend: &Trend, (retried, created): &LogTrend) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let by = trend.query.by;
    let mut expected: HashMap<(DateTime<Utc>, String), (i64, i64)> = HashMap::new();
    for (bucket, group, retries, targets) in retried {
        let group = if group.is_empty() {
            NO_VALUE.to_string()
        } else {
            group.clone()
        };
        expected.insert((*bucket, group), (*retries, *targets));
    }
    let mut created_by_kind: HashMap<(DateTime<Utc>, &str), i64> = HashMap::new();
    let mut created_all: HashMap<DateTime<Utc>, i64> = HashMap::new();
    for (bucket, kind, count) in created {
        *created_by_kind.entry((*bucket, kind.as_str())).or_default() += count;
        *created_all.entry(*bucket).or_default() += count;
    }

    let mut mismatches = Vec::new();
    let mut shown: HashSet<(DateTime<Utc>, String)> = HashSet::new();
    let mut buckets: HashSet<DateTime<Utc>> = HashSet::new();
    for row in &trend.rows {
        let key = (row.bucket, row.group.clone());
        let (retries, targets) = expected.get(&key).copied().unwrap_or((0, 0));
        let targets_created = match by {
            GroupBy::Kind => created_by_kind
                .get(&(row.bucket, row.group.as_str()))
                .copied()
                .unwrap_or(0),
            _ => created_all.get(&row.bucket).copied().unwrap_or(0),
        };
        let got = (row.retries, row.targets_retried, row.targets_created);
        let want = (retries, targets, targets_created);
        if got != want {
            mismatches.push(format!(
                "--by {by} {} {}: the rollup says (retries, targets retried, targets created) \
                 = {got:?}, the log {want:?}",
                row.bucket.format("%Y-%m-%d"),
                row.group
            ));
        }
        shown.insert(key);
        buckets.insert(row.bucket);
    }
    for (key, counts) in &expected {
        if !shown.contains(key) {
            mismatches.push(format!(
                "--by {by} {} {}: the log has {counts:?}, the rollup's trend has no such row",
                key.0.format("%Y-%m-%d"),
                key.1
            ));
        }
    }
    for bucket in created_all.keys() {
        if !buckets.contains(bucket) {
            mismatches.push(format!(
                "--by {by} {}: targets were created that day, the rollup's trend has no row",
                bucket.format("%Y-%m-%d")
            ));
        }
    }
    mismatches.sort();
    mismatches
}

/// Times the trend by `by` from the rollup and by GROUP BY, `repeats` times each, taking
/// turns (rotating which goes first); compares the two answers of the first round.
async fn measure_trend(pool: &PgPool, by: GroupBy, repeats: u32) -> anyhow::Result<TrendFigure> {
    let now = Utc::now();
    let moment = Moment::Now(now);
    let query = TrendQuery {
        bucket: Bucket::Day,
        by,
        since: now - chrono::Duration::days(WINDOW_DAYS),
    };
    let from = Bucket::Day.start_of(query.since);
    let mut conn = pool.acquire().await?;
    let rollup_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_rollup WHERE hour >= $1")
        .bind(from)
        .fetch_one(&mut *conn)
        .await?;
    let progress = spinner();
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let mut answer = None;
    let mut mismatches = Vec::new();
    for repeat in 0..repeats {
        progress.set_message(format!(
            "trend --by {by}: rollup and GROUP BY {}/{repeats}",
            repeat + 1
        ));
        let mut rollup_trend = None;
        let mut log_answer = None;
        for turn in 0..2 {
            if (turn + repeat) % 2 == 0 {
                let started = Instant::now();
                let trend = report::trend(&mut conn, query, moment).await?;
                ours.push(started.elapsed());
                rollup_trend = Some(trend);
            } else {
                let started = Instant::now();
                let log = log_trend(&mut conn, by, from).await?;
                baseline.push(started.elapsed());
                log_answer = Some(log);
            }
        }
        if repeat == 0 {
            let trend = rollup_trend.expect("both took their turn");
            mismatches = compare(&trend, &log_answer.expect("both took their turn"));
            answer = Some(trend);
        }
    }
    progress.finish_and_clear();
    let answer = answer.context("no trend was measured")?;
    let buckets = answer
        .rows
        .iter()
        .map(|row| row.bucket)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(TrendFigure {
        by,
        rollup: median(ours),
        group_by: median(baseline),
        rollup_rows,
        buckets,
        groups: answer.rows.len() / buckets.max(1),
        mismatches,
    })
}

// ---------------------------------------------------------------------------------------------
// History

/// Reads the history of `count` random variants, each timed on its own, through the
/// command's function and through one SELECT of the stream, taking turns on one connection.
async fn measure_history(pool: &PgPool, count: u32) -> anyhow::Result<HistoryFigure> {
    let mut conn = pool.acquire().await?;
    let sample: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT job_variants_id, job_id FROM jobs_variants ORDER BY random() LIMIT $1",
    )
    .bind(i64::from(count))
    .fetch_all(&mut *conn)
    .await?;
    anyhow::ensure!(!sample.is_empty(), "no variant to read the history of");
    let filter = HistoryFilter::default();
    // Untimed: prepares both statements on this connection.
    let (variant, job) = sample[0];
    store::load_variant_history_filtered(&mut conn, variant, &filter).await?;
    store::load_stream(
        &mut conn,
        Target::Variant {
            job_id: job,
            job_variants_id: variant,
        },
    )
    .await?;

    let progress = spinner();
    progress.set_message(format!("history of {} random variants", sample.len()));
    let mut ours = Vec::with_capacity(sample.len());
    let mut stream = Vec::with_capacity(sample.len());
    let mut events = 0;
    for (index, &(variant, job)) in sample.iter().enumerate() {
        let mut read = [Vec::new(), Vec::new()];
        for turn in 0..2 {
            if (turn + index) % 2 == 0 {
                let started = Instant::now();
                read[0] = store::load_variant_history_filtered(&mut conn, variant, &filter).await?;
                ours.push(started.elapsed());
            } else {
                let started = Instant::now();
                read[1] = store::load_stream(
                    &mut conn,
                    Target::Variant {
                        job_id: job,
                        job_variants_id: variant,
                    },
                )
                .await?;
                stream.push(started.elapsed());
            }
        }
        anyhow::ensure!(
            read[0] == read[1],
            "the history of variant {variant} differs from its stream"
        );
        events += read[0].len();
    }
    progress.finish_and_clear();
    Ok(HistoryFigure {
        variants: sample.len(),
        events,
        ours: [percentile(&mut ours, 0.50), percentile(&mut ours, 0.99)],
        stream: [percentile(&mut stream, 0.50), percentile(&mut stream, 0.99)],
    })
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `samples`.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// Output

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

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
            catch_up = catch_up.baseline(
                format!(
                    "full rebuild (rebuild_rollup, one transaction) of {} events",
                    thousands(applied as f64)
                ),
                applied as f64 / took.as_secs_f64(),
            );
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
            lines.push(Line {
                figure: "trend answers",
                condition: format!(
                    "rollup = GROUP BY, log {events} (days × groups: {}){}",
                    shapes.join(", "),
                    if mismatches == 0 {
                        String::new()
                    } else {
                        format!(": {mismatches} row(s) differ")
                    }
                ),
                connections: None,
                events: Some(stage.events),
                unit: Unit::Millis,
                ours: None,
                baseline: None,
                goal: Some(Goal::Holds("equal")),
                clean: Some(mismatches == 0),
            });
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::report::{TrendRow, TrendSource};

    #[test]
    fn the_realistic_log_has_the_promised_shape() {
        let end = DateTime::parse_from_rfc3339("2026-11-26T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let log = realistic_log(50_000, end, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!(log.events.len(), 50_000);
        assert_eq!(
            log.rows.variants.len(),
            log.rows.jobs.len() * super::super::VARIANTS_PER_JOB
        );
        let created: HashMap<Uuid, DateTime<Utc>> = log
            .rows
            .variants
            .iter()
            .copied()
            .zip(log.rows.variant_created.iter().copied())
            .chain(
                log.rows
                    .jobs
                    .iter()
                    .copied()
                    .zip(log.rows.job_created.iter().copied()),
            )
            .collect();
        let start = Bucket::Day.start_of(end) - chrono::Duration::days(WINDOW_DAYS - 1);
        let mut last_attempt = vec![0u16; log.streams.len()];
        let mut variant_events = 0;
        for pair in log.events.windows(2) {
            assert!(pair[0].occurred_micros <= pair[1].occurred_micros);
        }
        for event in &log.events {
            let stream = &log.streams[event.stream as usize];
            // Attempts 1, 2, ... in log order.
            assert_eq!(event.attempt, last_attempt[event.stream as usize] + 1);
            last_attempt[event.stream as usize] = event.attempt;
            let at = micros(event.occurred_micros).unwrap();
            let target = stream.job_variants_id.unwrap_or(stream.job_id);
            assert!(
                at > created[&target],
                "an event before its target was created"
            );
            assert!(at >= start && at <= end + chrono::Duration::seconds(1));
            // Job-level events are at the final step or at none; variants' at the others.
            let kind = log.kinds[usize::from(event.kind)];
            let job_level = kind.step == Some("iou_eval") || kind.step.is_none();
            assert_eq!(job_level, stream.job_variants_id.is_none());
            if stream.job_variants_id.is_some() {
                variant_events += 1;
            }
        }
        assert!(last_attempt.iter().all(|&n| (1..=8).contains(&n)));
        let variant_streams = log
            .streams
            .iter()
            .filter(|s| s.job_variants_id.is_some())
            .count();
        let mean = variant_events as f64 / variant_streams as f64;
        assert!((3.6..4.2).contains(&mean), "mean events per variant {mean}");
        // Every reason, step and scenario occurs.
        let used: std::collections::BTreeSet<u16> = log.events.iter().map(|e| e.kind).collect();
        assert_eq!(used.len(), log.kinds.len());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_millis(99));
        assert_eq!(
            percentile(&mut samples[..1], 0.99),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn compare_finds_every_difference() {
        let day = |d: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-11-0{d}T00:00:00Z"))
                .unwrap()
                .with_timezone(&Utc)
        };
        let row = |d: u32, group: &str, retries, targets, created| TrendRow {
            bucket: day(d),
            group: group.to_string(),
            retries,
            targets_retried: targets,
            targets_created: created,
            retry_rate: None,
        };
        let trend = Trend {
            query: TrendQuery {
                bucket: Bucket::Day,
                by: GroupBy::Step,
                since: day(1),
            },
            from: day(1),
            to: day(2),
            source: TrendSource::Rollup,
            rows: vec![
                row(1, "(none)", 3, 2, 5),
                row(1, "segment", 0, 0, 5),
                row(2, "(none)", 0, 0, 0),
                row(2, "segment", 1, 1, 0),
            ],
        };
        let log: LogTrend = (
            vec![
                (day(1), String::new(), 3, 2),
                (day(2), "segment".into(), 1, 1),
            ],
            vec![(day(1), "job".into(), 1), (day(1), "variant".into(), 4)],
        );
        assert!(compare(&trend, &log).is_empty());

        let mut differs = log.clone();
        differs.0[1].3 = 2;
        differs.0.push((day(2), "prepare".into(), 1, 1));
        differs.1.push((day(3), "job".into(), 1));
        let mismatches = compare(&trend, &differs);
        assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    }
}
