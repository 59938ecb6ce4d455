//! `retrylog-bench targets`: the targets list (`retrylog targets`, `GET /api/v1/targets`, the
//! Targets page) over a realistic log, each filter the page offers on the first page and on a
//! later one, at p50 and p99, beside the same page written naively in the same run.
//!
//! The log is the reports benchmark's (`reports/realistic_log.rs`: jobs of 4 variants, 1–8
//! retries per variant, a fifth of the jobs retried at job level, the outcomes decided as the
//! watchdog would), topped up with jobs never retried to `--jobs` jobs of 4 variants. The
//! pipeline's rows are then varied so every state has members: some jobs failed or a step
//! ahead of their variants (lagging, so `stuck`), some variants failed, some of those noted at
//! the retry limit (`needs_intervention`), and the variants idle since they were created. One
//! in 100 retried variants then gets an operator's forced re-run whose error text `q` finds
//! (an OOM; one in 1,000 a CUDA error), recorded through the batch door.
//!
//! Each case is what the page sends (its query parameters), read through
//! `cmd::targets::listing` — the page's query and its bounded count, as the API runs them.
//! "later page" is page `--later-page`, reached by following the `next` cursors. The baseline
//! is the same page the way it is usually first written: every target's last retry by
//! `DISTINCT ON` over the whole log, the same filter, `ORDER BY` the sort key and `OFFSET` to
//! the page, with an unbounded `count(*)`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Args, FromArgMatches};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use retrylog::cli::{FormatArg, TargetsArgs};
use retrylog::config::Steps;
use retrylog::connect::Connected;
use retrylog::targets::{StuckCensus, StuckRule};

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{figure_table, median, ms, percentile, thousands, Goal, Line, Unit};
use crate::log::load_log;
use crate::progress;
use crate::reports::outcomes::decide_outcomes;
use crate::reports::realistic_log::realistic_log;

/// `retrylog-bench targets`.
///
/// Runs in its own database, `retrylog_bench`, created (dropped first if it exists) and dropped
/// at the end. Prints, for each filter, the first and a later page at p50 and p99 beside the
/// naive page's median.
#[derive(Debug, Args)]
pub struct TargetsBenchArgs {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events: u64,

    /// Jobs in the pipeline (of 4 variants each): the log's, topped up with jobs never
    /// retried.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub jobs: u64,

    /// Timed reads of each page (p50 and p99 are reported).
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub runs: u32,

    /// Timed reads of each naive page (the median is reported): each one reads the whole log.
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub baseline_runs: u32,

    /// Cancels each naive statement after this many seconds (statement_timeout) and counts
    /// it as taking that long: at the full size one naive page sorts the whole log on disk,
    /// a minute or more. The figure is then a lower bound, and says so.
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub baseline_timeout: Option<u32>,

    /// The later page measured: this many `next` cursors from the first.
    #[arg(long, default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub later_page: u32,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl TargetsBenchArgs {
    /// `--smoke`: 3,000 events, 1,000 jobs, five reads of each page, one naive.
    pub fn smoke(&mut self) {
        self.events = 3_000;
        self.jobs = 1_000;
        self.runs = 5;
        self.baseline_runs = 1;
        self.later_page = 2;
    }
}

/// The goal (issue 22): every page under this many milliseconds at p99.
const PAGE_P99_MS: f64 = 50.0;

/// Rows per page: the page's default.
const LIMIT: i64 = 50;

/// Each filter the page offers: its query parameters, and the same condition in the naive
/// query (over `h` the last retry, `t` the target, `o` the outcome).
const CASES: &[(&str, &str)] = &[
    ("", "true"),
    ("sort=retry_count", "true"),
    ("state=failed", "t.status = 'failed'"),
    ("state=running", "t.status = 'running'"),
    ("state=stuck", "STUCK"),
    (
        "state=retrying",
        "EXISTS (SELECT 1 FROM retry_open r WHERE r.seq = h.seq)",
    ),
    (
        "state=needs_intervention",
        "EXISTS (SELECT 1 FROM retry_intervention i WHERE i.job_id = t.job_id
                   AND i.retry_count = t.retry_count
                   AND i.job_variants_id IS NOT DISTINCT FROM h.job_variants_id)",
    ),
    ("state=recovered", "o.outcome = 'recovered'"),
    ("state=gave_up", "o.outcome = 'gave_up'"),
    ("kind=job", "h.job_variants_id IS NULL"),
    ("kind=variant", "h.job_variants_id IS NOT NULL"),
    ("step=segment", "h.step = 'segment'"),
    ("reason=manual_recovery", "h.reason = 'manual_recovery'"),
    ("scenario=stale", "h.detail->>'scenario' = 'stale'"),
    ("actor=retrylog-bench", "h.actor = 'retrylog-bench'"),
    ("since=1d", "h.occurred_at >= now() - interval '1 day'"),
    (
        "since=20d&until=10d",
        "h.occurred_at BETWEEN now() - interval '20 days' AND now() - interval '10 days'",
    ),
    ("min_retries=6", "t.retry_count >= 6"),
    (
        "q=oom",
        "concat_ws(' ', h.detail->>'error', h.detail->>'message', h.detail->>'note') ILIKE '%oom%'",
    ),
    (
        "q=cuda error",
        "concat_ws(' ', h.detail->>'error', h.detail->>'message', h.detail->>'note')
             ILIKE '%cuda error%'",
    ),
    (
        "q=no such text",
        "concat_ws(' ', h.detail->>'error', h.detail->>'message', h.detail->>'note')
             ILIKE '%no such text%'",
    ),
    (
        "state=failed&kind=variant&reason=failed",
        "t.status = 'failed' AND h.job_variants_id IS NOT NULL AND h.reason = 'failed'",
    ),
    (
        "state=recovered&sort=retry_count&min_retries=3",
        "o.outcome = 'recovered' AND t.retry_count >= 3",
    ),
];

/// One case measured.
#[derive(Debug)]
struct CaseFigure {
    query: &'static str,
    /// Targets matching (at most the bound), and whether the later page exists.
    count: String,
    first: [Duration; 2],
    later: Option<[Duration; 2]>,
    naive_first: Duration,
    naive_later: Duration,
}

pub async fn run(connected: &Connected, args: TargetsBenchArgs) -> anyhow::Result<ExitCode> {
    let (figures, events) = in_bench_database(
        connected,
        "retrylog-bench targets",
        args.keep,
        async |options| measure(connected, options, &args).await,
    )
    .await?;
    let lines = figure_lines(&args, &figures, events);
    let format = args.format.format;
    figure_table(&lines, format, &["events", "unit"]).print(format)?;
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &TargetsBenchArgs,
) -> anyhow::Result<(Vec<CaseFigure>, u64)> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let end = Utc::now() - chrono::Duration::minutes(1);
    let mut rng = StdRng::from_entropy();
    let log = realistic_log(args.events, end, &mut rng)?;
    let (jobs, variants) = (log.rows.jobs.len(), log.rows.variants.len());
    load_log(&pool, log, Some(1_000)).await?;
    decide_outcomes(&pool).await?;
    eprintln!(
        "retrylog-bench: loaded {} events of {} jobs and {} variants",
        thousands(args.events as f64),
        thousands(jobs as f64),
        thousands(variants as f64)
    );
    vary_pipeline(&pool, args.jobs.saturating_sub(jobs as u64)).await?;
    let steps: Steps = retrylog::config::DEFAULT_STEPS
        .parse()
        .expect("valid steps");

    // The stuck census the Targets page reads (`retrylog::targets::census`), taken before
    // the pages are timed, as a server that shows them has; the time it takes is its own line.
    let census = Arc::new(StuckCensus::default());
    let rule = StuckRule {
        steps: steps.clone(),
        stuck_after: targets_args("state=stuck", None)?.filter.stuck_after,
    };
    let started = Instant::now();
    let stuck = census.get(&pool, &rule).await?.len();
    let census_took = started.elapsed();
    eprintln!(
        "retrylog-bench: the stuck census found {} targets in {:.2} s",
        thousands(stuck as f64),
        census_took.as_secs_f64()
    );

    let progress = progress::spinner();
    let mut figures = Vec::new();
    for &(query, naive_condition) in CASES {
        progress.set_message(format!("targets page: {}", label(query)));
        figures.push(measure_case(&pool, &steps, &census, args, query, naive_condition).await?);
    }
    progress.finish_and_clear();
    pool.close().await;
    Ok((figures, args.events))
}

/// Tops the pipeline up with `extra` jobs never retried, and varies the rows so every state has
/// members (see the module's documentation); then ANALYZE.
async fn vary_pipeline(pool: &PgPool, extra: u64) -> anyhow::Result<()> {
    let spinner = progress::spinner();
    spinner.set_message("topping up and varying the pipeline");
    sqlx::query(
        "WITH new_jobs AS (
             INSERT INTO jobs (job_id, status, current_step, created_at, updated_at)
             SELECT gen_random_uuid(), 'running', 'generate', now() - interval '1 day',
                    now() - interval '1 day'
               FROM generate_series(1, $1::bigint)
             RETURNING job_id)
         INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status,
                                    current_step, created_at, updated_at)
         SELECT gen_random_uuid(), j.job_id, o, 'done', 'generate', now() - interval '1 day',
                now() - interval '1 day'
           FROM new_jobs j CROSS JOIN generate_series(0, 3) o",
    )
    .bind(extra as i64)
    .execute(pool)
    .await?;
    sqlx::raw_sql(
        "UPDATE jobs SET status = 'failed' WHERE abs(hashtext(job_id::text)) % 100 < 3;
         UPDATE jobs SET current_step = 'segment'
          WHERE status = 'running' AND abs(hashtext(job_id::text)) % 100 BETWEEN 3 AND 12;
         UPDATE jobs_variants SET status = 'failed', updated_at = created_at
          WHERE abs(hashtext(job_variants_id::text)) % 100 < 5;
         UPDATE jobs_variants SET updated_at = created_at
          WHERE abs(hashtext(job_variants_id::text)) % 100 >= 5;
         INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         SELECT job_id, job_variants_id, retry_count, retry_count, 'failed', 'failed',
                current_step, status, 'retrylog-bench', '{}'
           FROM jobs_variants
          WHERE status = 'failed' AND retry_count > 0
            AND abs(hashtext(job_variants_id::text)) % 5 = 0;",
    )
    .execute(pool)
    .await?;
    // Error text for `q` to find: an operator's forced re-run of 1 in 100 retried variants
    // with an OOM error, 1 in 1,000 of them a CUDA one, through the batch door (the head rows,
    // outcomes and counts kept as an append keeps them).
    sqlx::raw_sql(
        "DO $$
         DECLARE
             batch jsonb;
         BEGIN
             FOR batch IN
                 SELECT jsonb_agg(jsonb_build_object(
                            'job_id', job_id, 'job_variants_id', job_variants_id,
                            'reason', 'manual_recovery', 'actor', 'cli:bench-operator',
                            'step', current_step, 'force', true,
                            'detail', jsonb_build_object('error', CASE
                                WHEN abs(hashtext(job_variants_id::text)) % 1000 = 7
                                THEN 'CUDA error: device-side assert triggered'
                                ELSE 'worker OOM killed at ' || current_step END)))
                   FROM (SELECT job_id, job_variants_id, current_step,
                                row_number() OVER (ORDER BY job_variants_id) / 1000 AS chunk
                           FROM jobs_variants
                          WHERE retry_count > 0
                            AND abs(hashtext(job_variants_id::text)) % 100 = 7) v
                  GROUP BY chunk
             LOOP
                 PERFORM record_retries(batch);
             END LOOP;
         END
         $$",
    )
    .execute(pool)
    .await?;
    // On its own: several statements in one call share a transaction, and VACUUM refuses one.
    sqlx::raw_sql(
        "VACUUM ANALYZE jobs, jobs_variants, retry_intervention, retry_open, retry_outcome,
                        retry_stream_head, retry_history",
    )
    .execute(pool)
    .await?;
    spinner.finish_and_clear();
    Ok(())
}

/// The listing's arguments for `query`, parsed as the API parses them.
fn targets_args(query: &str, cursor: Option<&str>) -> anyhow::Result<TargetsArgs> {
    let mut flags: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            format!("--{}={value}", name.replace('_', "-"))
        })
        .collect();
    if let Some(cursor) = cursor {
        flags.push(format!("--after={cursor}"));
    }
    let matches = TargetsArgs::augment_args(clap::Command::new("bench").no_binary_name(true))
        .try_get_matches_from(flags)?;
    Ok(TargetsArgs::from_arg_matches(&matches)?)
}

fn label(query: &str) -> &str {
    if query.is_empty() {
        "no filter"
    } else {
        query
    }
}

async fn measure_case(
    pool: &PgPool,
    steps: &Steps,
    census: &Arc<StuckCensus>,
    args: &TargetsBenchArgs,
    query: &'static str,
    naive_condition: &str,
) -> anyhow::Result<CaseFigure> {
    use retrylog::cmd::targets::{count_text, listing};
    // The cursor of the later page, by following `next`; untimed (it also warms the cache).
    let first_args = targets_args(query, None)?;
    let first = listing(pool, &first_args, steps, Some(census)).await?;
    let count = count_text(&first);
    let mut cursor = first.next.clone();
    for _ in 2..args.later_page {
        let Some(next) = cursor else { break };
        cursor = listing(
            pool,
            &targets_args(query, Some(&next))?,
            steps,
            Some(census),
        )
        .await?
        .next;
    }
    let later_args = cursor
        .as_deref()
        .map(|cursor| targets_args(query, Some(cursor)))
        .transpose()?;

    let runs = args.runs;
    let time = |page: TargetsArgs| async move {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            listing(pool, &page, steps, Some(census)).await?;
            samples.push(started.elapsed());
        }
        anyhow::Ok([
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99),
        ])
    };
    let first_times = time(first_args).await?;
    let later_times = match later_args {
        Some(later) => Some(time(later).await?),
        None => None,
    };

    let sort_retry_count = query.contains("sort=retry_count");
    let naive_first = naive(pool, naive_condition, sort_retry_count, 0, args, steps).await?;
    let naive_later = naive(
        pool,
        naive_condition,
        sort_retry_count,
        i64::from(args.later_page - 1) * LIMIT,
        args,
        steps,
    )
    .await?;
    Ok(CaseFigure {
        query,
        count,
        first: first_times,
        later: later_times,
        naive_first,
        naive_later,
    })
}

/// The naive page: every target's last retry by DISTINCT ON over the whole log, the filter,
/// ORDER BY and OFFSET; then an unbounded count. The median of `--baseline-runs`.
async fn naive(
    pool: &PgPool,
    condition: &str,
    sort_retry_count: bool,
    offset: i64,
    args: &TargetsBenchArgs,
    steps: &Steps,
) -> anyhow::Result<Duration> {
    let condition = if condition == "STUCK" {
        format!(
            "(t.job_id, h.job_variants_id) IN (SELECT s.job_id, s.job_variants_id FROM ({}) s)
             OR (h.job_variants_id IS NULL AND (t.job_id) IN (SELECT s.job_id FROM ({}) s
                                                            WHERE s.job_variants_id IS NULL))",
            retrylog::recovery::Scenario::candidates_sql(false),
            retrylog::recovery::Scenario::candidates_sql(false)
        )
    } else {
        // Binds $1 and $2 for the stuck case's sake: given a use here so both have a type.
        format!("({condition}) AND $1::text[] IS NOT NULL AND $2::float8 IS NOT NULL")
    };
    let order = if sort_retry_count {
        "t.retry_count DESC, t.id DESC"
    } else {
        "h.occurred_at DESC, h.seq DESC"
    };
    let matches = format!(
        "WITH last AS (
             SELECT DISTINCT ON (job_id, job_variants_id) *
               FROM retry_history ORDER BY job_id, job_variants_id, attempt DESC)
         SELECT t.kind, t.id, t.job_id, t.status, t.current_step, t.retry_count, h.seq,
                h.reason, o.outcome, h.occurred_at
           FROM last h
           JOIN (SELECT 'job' AS kind, job_id AS id, job_id, NULL::uuid AS variant, status,
                        current_step, retry_count FROM jobs
                 UNION ALL
                 SELECT 'variant', job_variants_id, job_id, job_variants_id, status,
                        current_step, retry_count FROM jobs_variants) t
             ON t.job_id = h.job_id AND t.variant IS NOT DISTINCT FROM h.job_variants_id
           LEFT JOIN retry_outcome o ON o.seq = h.seq
          WHERE {condition}"
    );
    let page = format!("{matches} ORDER BY {order} OFFSET $3 LIMIT {LIMIT}");
    let count = format!("SELECT count(*) FROM ({matches}) m WHERE $3::bigint IS NOT NULL");
    let mut conn = pool.acquire().await?;
    if let Some(seconds) = args.baseline_timeout {
        sqlx::query(&format!("SET statement_timeout = '{seconds}s'"))
            .execute(&mut *conn)
            .await?;
    }
    let mut samples = Vec::new();
    for _ in 0..args.baseline_runs {
        let mut took = Duration::ZERO;
        for sql in [&page, &count] {
            let started = Instant::now();
            let done = sqlx::query(sql)
                .bind(steps.names())
                .bind(300.0f64)
                .bind(offset)
                .fetch_all(&mut *conn)
                .await;
            match (done, args.baseline_timeout) {
                (Ok(_), _) => took += started.elapsed(),
                // Cancelled by statement_timeout: counted as the cap.
                (Err(sqlx::Error::Database(error)), Some(seconds))
                    if error.code().as_deref() == Some("57014") =>
                {
                    took += Duration::from_secs(u64::from(seconds));
                }
                (Err(error), _) => return Err(error.into()),
            }
        }
        samples.push(took);
    }
    if args.baseline_timeout.is_some() {
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
    }
    Ok(median(samples))
}

fn figure_lines(args: &TargetsBenchArgs, figures: &[CaseFigure], events: u64) -> Vec<Line> {
    let baseline_label = match args.baseline_timeout {
        Some(seconds) => {
            format!("DISTINCT ON + OFFSET + count(*), median, each statement capped at {seconds} s")
        }
        None => "DISTINCT ON + OFFSET + count(*), median".to_string(),
    };
    let mut lines = Vec::new();
    for figure in figures {
        let mut pages = vec![("first page", Some(figure.first), figure.naive_first)];
        pages.push(("later page", figure.later, figure.naive_later));
        for (which, times, baseline) in pages {
            let Some([p50, p99]) = times else {
                continue;
            };
            let where_ = if which == "first page" {
                which.to_string()
            } else {
                format!("page {}", args.later_page)
            };
            lines.push(
                Line::new(
                    "targets page p99",
                    format!(
                        "{}: {where_} of {LIMIT} + count ({} matching); p50 {:.1} ms, {} runs",
                        label(figure.query),
                        figure.count,
                        ms(p50),
                        args.runs
                    ),
                    Unit::Millis,
                    ms(p99),
                )
                .events(events)
                .baseline(baseline_label.clone(), ms(baseline))
                .goal(Goal::Under(PAGE_P99_MS)),
            );
        }
    }
    lines
}
