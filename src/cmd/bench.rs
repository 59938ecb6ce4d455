//! `retrylog bench`: appends and replay against hand-written baselines, measured in one run
//! in a scratch database.
//!
//! Every figure is printed beside a baseline measured in the same run, on the same machine,
//! with the same transaction shape, so the ratio is what matters, not the absolute number.
//! docs/performance.md explains each figure and records a run.
//!
//! 1. **Appends** — transactions per second at each `--connections` count, for
//!    `store::append` and two baselines: (a) the counter-only change, a bare `UPDATE ...
//!    SET retry_count = retry_count + 1`; (b) a naive hand-written event append, `INSERT ...
//!    SELECT ... FOR UPDATE` into a plain log table plus that UPDATE. Each approach has its own
//!    pool of variants (same size, same table), each worker picks random targets from it, and
//!    the three take turns slice by slice per connection count. Then `verify` must be clean.
//! 2. **Replay** — the retry_counts replay (`retrylog replay --projection retry_counts`) over
//!    `--replay-events` events (generated in Rust with valid hash chains, loaded with COPY)
//!    against a hand-written set-based recount, from two starting states: counts wiped, and
//!    counts already correct; then the replay of every projection, for scale. Median of three
//!    each. Then `verify`.
//!
//! `retrylog bench reports` (`bench/reports.rs`) measures the reports over a realistic log of
//! millions of events instead: the trend from the rollup against a GROUP BY over the log, a
//! variant's history, and the projector's catch-up. Both share the scratch database, the
//! COPY loader of hash-chained events (`load_log`) and the figure table (`Line`).
//!
//! `retrylog bench recovery` (`bench/recovery.rs`) measures the recovery watchdog over a
//! seeded pipeline of 100,000 jobs: its detection plans, a sweep of every seeded condition
//! against the counter-only listener's plain UPDATEs, and the steady-state sweep.

mod recovery;
mod reports;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use super::{stderr_is_terminal, EXIT_MISMATCH};
use crate::cli::FormatArg;
use crate::connect::Connected;
use crate::event::{CanonicalEvent, NewRetry, RetryReason, Target, GENESIS_HASH};
use crate::output::{Format, Rows};
use crate::{projection, replay, scratch, store};

/// `retrylog bench`.
///
/// Runs in its own database, `retrylog_bench`, created (dropped first if it exists) on the same
/// server as the configured database and dropped at the end; the configured database is never
/// touched. Prints every figure beside its baseline, the ratio and the goal.
///
/// Without a subcommand: the retry log itself (appends and replay); `reports`: the reports;
/// `recovery`: the recovery watchdog.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// What to measure instead of appends and replay (their flags then do not apply).
    #[command(subcommand)]
    pub kind: Option<BenchKind>,

    /// Seconds each append measurement counts transactions, per approach and connection count
    /// (after the warm-up).
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,

    /// Seconds of warm-up before an approach's first slice at each connection count (not
    /// counted).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup: u64,

    /// Cut each append measurement into this many slices and interleave the approaches slice
    /// by slice (rotating their order), so a burst of machine noise hits all three alike.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub slices: u32,

    /// Connection counts to measure appends at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16", value_name = "N,N,...",
          value_parser = clap::value_parser!(u32).range(1..=500))]
    pub connections: Vec<u32>,

    /// Events in the log for the replay measurement.
    #[arg(long, default_value_t = 1_000_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub replay_events: u64,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    /// Skip the append measurements.
    #[arg(long)]
    pub skip_appends: bool,

    /// Skip the replay measurements.
    #[arg(long, conflicts_with = "skip_appends")]
    pub skip_replay: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

/// The other benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// The reports over a realistic log of millions of events: trend from the rollup against
    /// a GROUP BY over the log, a variant's history, the projector's catch-up.
    Reports(reports::ReportsArgs),
    /// The recovery watchdog over 100,000 jobs × 4 variants: detection plans, a sweep of
    /// every seeded condition against the counter-only listener, the steady-state sweep.
    Recovery(recovery::RecoveryArgs),
}

/// The scratch database every measurement runs in.
pub const BENCH_DATABASE: &str = "retrylog_bench";

/// Variants each append approach picks its targets from, and how many share one job.
const APPEND_VARIANTS: usize = 10_000;
const VARIANTS_PER_JOB: usize = 4;

/// The shape of the generated log for replay: every job has `VARIANTS_PER_JOB` variants with
/// up to `EVENTS_PER_VARIANT` events each, and up to `EVENTS_PER_JOB` job-level events.
const EVENTS_PER_VARIANT: i32 = 10;
const EVENTS_PER_JOB: i32 = 2;

/// The connection count the append goals are set at.
const GOAL_CONNECTIONS: u32 = 16;

/// The uncounted pause before every slice but an approach's first.
const SETTLE: Duration = Duration::from_millis(250);

/// The generated log's events occurred over this many days.
const LOG_SPAN_DAYS: u32 = 30;

/// Each replay timing is taken this many times; the median is reported.
const REPEATS: usize = 3;

/// The actor every benchmark event carries.
const ACTOR: &str = "retrylog-bench";

/// The step of the generated rows and events.
const STEP: &str = "generate";

/// Baseline (a), the original change: bump the counter in place.
const BARE_UPDATE: &str = "UPDATE jobs_variants SET retry_count = retry_count + 1, \
     updated_at = now() WHERE job_variants_id = $1";

/// The plain log table of baseline (b): what a hand-written event log would start as.
const NAIVE_LOG_DDL: &str = "CREATE TABLE bench_naive_log (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid NOT NULL,
    job_variants_id uuid NOT NULL,
    attempt         integer NOT NULL,
    reason          text NOT NULL,
    actor           text NOT NULL,
    detail          jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL)";

/// Baseline (b), first statement: the event, numbered from the locked row's counter.
const NAIVE_INSERT: &str = "INSERT INTO bench_naive_log
        (job_id, job_variants_id, attempt, reason, actor, detail, occurred_at)
    SELECT job_id, job_variants_id, retry_count + 1, $2, $3, $4, now()
      FROM jobs_variants WHERE job_variants_id = $1 FOR UPDATE";

/// The hand-written set-based recount replay is compared with.
const HAND_RECOUNT: [&str; 4] = [
    "UPDATE jobs_variants SET retry_count = 0",
    "UPDATE jobs SET retry_count = 0",
    "UPDATE jobs_variants v SET retry_count = c.n
       FROM (SELECT job_variants_id, count(*) n FROM retry_history
              WHERE job_variants_id IS NOT NULL GROUP BY 1) c
      WHERE v.job_variants_id = c.job_variants_id",
    "UPDATE jobs j SET retry_count = c.n
       FROM (SELECT job_id, count(*) n FROM retry_history
              WHERE job_variants_id IS NULL GROUP BY 1) c
      WHERE j.job_id = c.job_id",
];

/// One way of recording a retry, measured against the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approach {
    /// `store::append`: record_retry with its projection, in the caller's transaction.
    Append,
    /// (a) the counter-only change.
    BareUpdate,
    /// (b) a naive hand-written event append.
    NaiveEvent,
}

impl Approach {
    const ALL: [Approach; 3] = [Approach::Append, Approach::BareUpdate, Approach::NaiveEvent];

    fn label(self) -> &'static str {
        match self {
            Approach::Append => "store::append",
            Approach::BareUpdate => "(a) bare UPDATE",
            Approach::NaiveEvent => "(b) naive event append",
        }
    }
}

/// Appends per second of the three approaches at one connection count.
#[derive(Debug, Clone, Copy)]
struct AppendFigures {
    connections: u32,
    ours: f64,
    bare_update: f64,
    naive_event: f64,
}

/// A verify run: was it clean, and how fast.
#[derive(Debug, Clone, Copy)]
struct VerifyFigure {
    events: u64,
    streams: u64,
    mismatches: usize,
    seconds: f64,
}

/// Replay against the hand recount from one starting state, medians of `REPEATS`.
#[derive(Debug, Clone)]
struct ReplayFigure {
    condition: &'static str,
    /// What the replay rebuilt.
    projections: &'static str,
    events: i64,
    ours: Duration,
    hand: Duration,
    /// Whether the goal (at least the hand recount) applies: only where both do the same work.
    goal: bool,
}

pub async fn run(connected: &Connected, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.kind {
        Some(BenchKind::Reports(reports_args)) => {
            return reports::run(connected, reports_args).await
        }
        Some(BenchKind::Recovery(recovery_args)) => {
            return recovery::run(connected, recovery_args).await
        }
        None => {}
    }
    let options = scratch::options(connected, BENCH_DATABASE, "retrylog bench")?;
    let outcome = run_phases(connected, &options, &args).await;
    scratch::release(connected, BENCH_DATABASE, args.keep).await;
    let (appends, append_verify, replays, replay_verify) = outcome?;

    let rows = figure_rows(
        &args,
        &appends,
        append_verify.as_ref(),
        &replays,
        replay_verify.as_ref(),
    );
    rows.print(args.format.format)?;
    let dirty = [append_verify, replay_verify]
        .iter()
        .flatten()
        .any(|verify| verify.mismatches > 0);
    if dirty {
        eprintln!("retrylog bench: verify found mismatches in the bench database");
        return Ok(ExitCode::from(EXIT_MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

type Outcome = (
    Vec<AppendFigures>,
    Option<VerifyFigure>,
    Vec<ReplayFigure>,
    Option<VerifyFigure>,
);

/// Both phases, each in a freshly created bench database. On an error the pool is simply
/// dropped: the final `DROP DATABASE ... WITH (FORCE)` ends whatever it left open.
async fn run_phases(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &BenchArgs,
) -> anyhow::Result<Outcome> {
    let mut appends = Vec::new();
    let mut append_verify = None;
    let mut replays = Vec::new();
    let mut replay_verify = None;
    if !args.skip_appends {
        let pool = fresh_database(connected, options).await?;
        print_context(&pool, args).await?;
        appends = bench_appends(&pool, options, args).await?;
        append_verify = Some(timed_verify(&pool, "verifying the appended log").await?);
        pool.close().await;
    }
    if !args.skip_replay {
        let pool = fresh_database(connected, options).await?;
        if args.skip_appends {
            print_context(&pool, args).await?;
        }
        replays = bench_replay(&pool, args).await?;
        replay_verify = Some(timed_verify(&pool, "verifying the replayed log").await?);
        pool.close().await;
    }
    Ok((appends, append_verify, replays, replay_verify))
}

/// Drops and recreates the bench database, migrates it, and lifts the retry limit: the
/// benchmarks append far past it.
async fn fresh_database(
    connected: &Connected,
    options: &PgConnectOptions,
) -> anyhow::Result<PgPool> {
    let pool = scratch::create(connected, BENCH_DATABASE, options, 4).await?;
    sqlx::query("UPDATE retrylog_settings SET max_retries = NULL")
        .execute(&pool)
        .await
        .context("lifting the retry limit in the bench database")?;
    Ok(pool)
}

/// One line on stderr saying what the figures were measured on.
async fn print_context(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    print_server(pool).await?;
    if !args.skip_appends {
        eprintln!(
            "retrylog bench: appends: {} s per approach and connection count in {} interleaved \
             slice(s), after {} s warm-up; {APPEND_VARIANTS} variants of {} jobs per approach; \
             connections {:?}",
            args.seconds,
            args.slices,
            args.warmup,
            APPEND_VARIANTS / VARIANTS_PER_JOB,
            args.connections
        );
    }
    Ok(())
}

/// One line on stderr saying which server, configured how, on how many CPUs.
async fn print_server(pool: &PgPool) -> anyhow::Result<()> {
    let (version, shared_buffers, synchronous_commit, fsync): (String, String, String, String) =
        sqlx::query_as(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'),
                    current_setting('synchronous_commit'), current_setting('fsync')",
        )
        .fetch_one(pool)
        .await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "retrylog bench: PostgreSQL {version} (shared_buffers {shared_buffers}, \
         synchronous_commit {synchronous_commit}, fsync {fsync}), {cpus} CPU(s) for client and \
         server; database {BENCH_DATABASE}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Appends

/// The targets of one approach: (job_id, job_variants_id).
type Targets = Arc<Vec<(Uuid, Uuid)>>;

/// Creates `APPEND_VARIANTS` variants (in jobs of `VARIANTS_PER_JOB`) and returns them.
async fn create_targets(pool: &PgPool) -> anyhow::Result<Targets> {
    let mut rows = PipelineRows {
        jobs: (0..APPEND_VARIANTS.div_ceil(VARIANTS_PER_JOB))
            .map(|_| Uuid::new_v4())
            .collect(),
        ..PipelineRows::default()
    };
    for index in 0..APPEND_VARIANTS {
        rows.variants.push(Uuid::new_v4());
        rows.owners.push(rows.jobs[index / VARIANTS_PER_JOB]);
        rows.orders.push((index % VARIANTS_PER_JOB) as i32);
    }
    insert_pipeline_rows(pool, &rows).await?;
    Ok(Arc::new(
        rows.owners.into_iter().zip(rows.variants).collect(),
    ))
}

/// Jobs and their variants to create.
#[derive(Debug, Default)]
struct PipelineRows {
    jobs: Vec<Uuid>,
    /// Each job's `created_at`; empty: now().
    job_created: Vec<DateTime<Utc>>,
    variants: Vec<Uuid>,
    /// Each variant's job.
    owners: Vec<Uuid>,
    /// Each variant's `creation_order`.
    orders: Vec<i32>,
    /// Each variant's `created_at`; empty: now().
    variant_created: Vec<DateTime<Utc>>,
}

/// Rows one INSERT statement creates at most.
const PIPELINE_CHUNK: usize = 100_000;

/// Inserts running jobs and done variants at `STEP`, set-based, in one transaction. The
/// `retry_target_created` trigger counts them per statement and hour, as it does for the
/// pipeline's own inserts.
async fn insert_pipeline_rows(pool: &PgPool, rows: &PipelineRows) -> anyhow::Result<()> {
    // The part of an optional column (empty: every row gets the default) for rows `range`.
    fn part<T>(column: &[T], range: std::ops::Range<usize>) -> &[T] {
        if column.is_empty() {
            &[]
        } else {
            &column[range]
        }
    }
    let mut tx = pool.begin().await?;
    for start in (0..rows.jobs.len()).step_by(PIPELINE_CHUNK) {
        let range = start..(start + PIPELINE_CHUNK).min(rows.jobs.len());
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step, created_at)
             SELECT id, 'running', $2, coalesce(created, now())
               FROM unnest($1::uuid[], $3::timestamptz[]) AS t(id, created)",
        )
        .bind(&rows.jobs[range.clone()])
        .bind(STEP)
        .bind(part(&rows.job_created, range))
        .execute(&mut *tx)
        .await
        .context("creating the bench jobs")?;
    }
    for start in (0..rows.variants.len()).step_by(PIPELINE_CHUNK) {
        let range = start..(start + PIPELINE_CHUNK).min(rows.variants.len());
        sqlx::query(
            "INSERT INTO jobs_variants
                    (job_variants_id, job_id, creation_order, status, current_step, created_at)
             SELECT v, j, o, 'done', $4, coalesce(created, now())
               FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $5::timestamptz[])
                    AS t(v, j, o, created)",
        )
        .bind(&rows.variants[range.clone()])
        .bind(&rows.owners[range.clone()])
        .bind(&rows.orders[range.clone()])
        .bind(STEP)
        .bind(part(&rows.variant_created, range))
        .execute(&mut *tx)
        .await
        .context("creating the bench variants")?;
    }
    tx.commit().await?;
    Ok(())
}

async fn bench_appends(
    pool: &PgPool,
    options: &PgConnectOptions,
    args: &BenchArgs,
) -> anyhow::Result<Vec<AppendFigures>> {
    // Each approach gets its own variants: the baselines change retry_count without events,
    // which must not touch the rows whose counts verify checks afterwards.
    let mut targets = Vec::new();
    for _ in Approach::ALL {
        targets.push(create_targets(pool).await?);
    }
    sqlx::raw_sql(NAIVE_LOG_DDL).execute(pool).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;

    let progress = spinner();
    let warmup = Duration::from_secs(args.warmup);
    let seconds = Duration::from_secs(args.seconds);
    let mut figures = Vec::new();
    for &connections in &args.connections {
        // The pool is sized to the connection count and shared by the three approaches, so no
        // worker ever waits for a connection and every connection is equally warm.
        let workers = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .context("opening the benchmark pool")?;
        let mut counted = [0u64; 3];
        let slice = seconds / args.slices;
        for round in 0..args.slices as usize {
            for offset in 0..Approach::ALL.len() {
                let index = (round + offset) % Approach::ALL.len();
                let approach = Approach::ALL[index];
                progress.set_message(format!(
                    "appends: {}, {connections} connection(s), slice {}/{}",
                    approach.label(),
                    round + 1,
                    args.slices
                ));
                // A full warm-up before an approach's first slice; before the others only a
                // moment for the previous approach's last transactions to clear.
                let settle = if round == 0 {
                    warmup
                } else {
                    warmup.min(SETTLE)
                };
                counted[index] += measure(
                    &workers,
                    approach,
                    &targets[index],
                    connections,
                    settle,
                    slice,
                )
                .await
                .with_context(|| format!("measuring {}", approach.label()))?;
            }
        }
        workers.close().await;
        let total_seconds = (slice * args.slices).as_secs_f64();
        figures.push(AppendFigures {
            connections,
            ours: counted[0] as f64 / total_seconds,
            bare_update: counted[1] as f64 / total_seconds,
            naive_event: counted[2] as f64 / total_seconds,
        });
    }
    progress.finish_and_clear();

    // The baselines' counters moved without events; put them back so verify checks exactly
    // the rows store::append wrote.
    for baseline in &targets[1..] {
        let variants: Vec<Uuid> = baseline.iter().map(|&(_, variant)| variant).collect();
        sqlx::query("UPDATE jobs_variants SET retry_count = 0 WHERE job_variants_id = ANY($1)")
            .bind(&variants)
            .execute(pool)
            .await?;
    }
    Ok(figures)
}

/// Runs `connections` workers for `warmup` + `seconds`; returns the transactions that
/// committed inside the counted `seconds`.
async fn measure(
    pool: &PgPool,
    approach: Approach,
    targets: &Targets,
    connections: u32,
    warmup: Duration,
    seconds: Duration,
) -> anyhow::Result<u64> {
    let start = Instant::now() + warmup;
    let end = start + seconds;
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(pool.clone(), approach, targets.clone(), start, end)))
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await??;
    }
    Ok(total)
}

/// One connection's loop: a random target, BEGIN, the approach's statements, COMMIT.
async fn worker(
    pool: PgPool,
    approach: Approach,
    targets: Targets,
    start: Instant,
    end: Instant,
) -> anyhow::Result<u64> {
    let mut rng = StdRng::from_entropy();
    let detail = Value::Object(Default::default());
    let mut counted = 0;
    while Instant::now() < end {
        let (job_id, job_variants_id) = targets[rng.gen_range(0..targets.len())];
        let mut tx = pool.begin().await?;
        match approach {
            Approach::Append => {
                let retry = NewRetry::new(
                    Target::Variant {
                        job_id,
                        job_variants_id,
                    },
                    RetryReason::Stuck,
                    ACTOR,
                );
                store::append(&mut tx, &retry).await?;
            }
            Approach::BareUpdate => {
                sqlx::query(BARE_UPDATE)
                    .bind(job_variants_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Approach::NaiveEvent => {
                sqlx::query(NAIVE_INSERT)
                    .bind(job_variants_id)
                    .bind(RetryReason::Stuck.as_ref())
                    .bind(ACTOR)
                    .bind(&detail)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BARE_UPDATE)
                    .bind(job_variants_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        let committed = Instant::now();
        if committed >= start && committed <= end {
            counted += 1;
        }
    }
    Ok(counted)
}

// ---------------------------------------------------------------------------------------------
// Replay

async fn bench_replay(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<Vec<ReplayFigure>> {
    load_log(pool, uniform_log(args.replay_events)?, None).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await?;
    let counts = projection::find("retry_counts").map_err(anyhow::Error::msg)?;

    let progress = spinner();
    let mut figures = Vec::new();
    for (condition, wiped) in [("counts wiped", true), ("counts already correct", false)] {
        let mut ours = Vec::new();
        let mut hand = Vec::new();
        for repeat in 1..=REPEATS {
            // The hand recount first, then replay, each from the same starting state.
            progress.set_message(format!(
                "replay, {condition}: hand-written recount {repeat}/{REPEATS}"
            ));
            prepare_counts(pool, wiped).await?;
            let started = Instant::now();
            hand_recount(pool).await?;
            hand.push(started.elapsed());

            progress.set_message(format!("replay, {condition}: replay {repeat}/{REPEATS}"));
            prepare_counts(pool, wiped).await?;
            let started = Instant::now();
            let report =
                replay::replay_projections(pool, std::slice::from_ref(counts), false).await?;
            ours.push(started.elapsed());
            check_replay(pool, &report, events).await?;
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
    let drift: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_counts_drift()")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(drift == 0, "{drift} count(s) still differ after replay");
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
// The generated log

/// One event stream of a generated log.
#[derive(Debug)]
struct Stream {
    job_id: Uuid,
    job_variants_id: Option<Uuid>,
    /// Events written so far: the last attempt.
    events: i32,
    previous_hash: [u8; 32],
}

impl Stream {
    fn new(job_id: Uuid, job_variants_id: Option<Uuid>) -> Self {
        Stream {
            job_id,
            job_variants_id,
            events: 0,
            previous_hash: GENESIS_HASH,
        }
    }
}

/// What an event says besides its target, attempt and time.
#[derive(Debug, Clone, Copy)]
struct EventKind {
    reason: RetryReason,
    step: Option<&'static str>,
    from_status: &'static str,
    to_status: &'static str,
    /// The detail as PostgreSQL prints the stored jsonb (`detail::text`, keys sorted, `": "`
    /// and `", "` between them): the canonical text the hash covers.
    detail: &'static str,
}

/// One event of a generated log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PlannedEvent {
    /// `occurred_at`, in microseconds since the Unix epoch (what timestamptz stores, so the
    /// hash Rust computes is the one verify recomputes).
    occurred_micros: i64,
    /// Index into [`GeneratedLog::streams`].
    stream: u32,
    /// Checked against the stream: each stream's events come in attempt order.
    attempt: u16,
    /// Index into [`GeneratedLog::kinds`].
    kind: u16,
}

/// A log to load: the pipeline rows of its targets, its streams, and its events in log order.
#[derive(Debug)]
struct GeneratedLog {
    rows: PipelineRows,
    streams: Vec<Stream>,
    kinds: Vec<EventKind>,
    events: Vec<PlannedEvent>,
}

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

/// Where a load's time went.
#[derive(Debug, Clone, Copy)]
struct LoadTimes {
    /// Inserting the jobs and variants.
    rows: Duration,
    /// Hashing and COPYing the events.
    copy: Duration,
    /// `retry_counts_rebuild()` and `VACUUM ANALYZE`.
    settle: Duration,
}

/// Loads a generated log: creates its pipeline rows, computes every event's hash along its
/// stream, COPYs the events into `retry_history` — in transactions of `per_transaction`
/// events, or all in one — then sets the counts and vacuums.
async fn load_log(
    pool: &PgPool,
    mut log: GeneratedLog,
    per_transaction: Option<usize>,
) -> anyhow::Result<LoadTimes> {
    let total = log.events.len() as u64;
    let started = Instant::now();
    insert_pipeline_rows(pool, &log.rows).await?;
    let rows = started.elapsed();
    // Quiet tables: autovacuum would otherwise wake up in the middle of a timed run. Every
    // timed run is preceded by an explicit VACUUM instead.
    sqlx::raw_sql(
        "ALTER TABLE jobs SET (autovacuum_enabled = off);
         ALTER TABLE jobs_variants SET (autovacuum_enabled = off);
         ALTER TABLE retry_history SET (autovacuum_enabled = off);",
    )
    .execute(pool)
    .await?;

    let progress = if stderr_is_terminal() {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "loading {bar:40} {pos}/{len} events ({per_sec}) [{elapsed}]",
            )
            .expect("the template is valid"),
        )
    } else {
        ProgressBar::hidden()
    };
    // The detail as a CSV field: quoted, with its quotes doubled, when it holds any.
    let details: Vec<String> = log
        .kinds
        .iter()
        .map(|kind| {
            if kind.detail.contains(['"', ',']) {
                format!("\"{}\"", kind.detail.replace('"', "\"\""))
            } else {
                kind.detail.to_string()
            }
        })
        .collect();
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut written = 0u64;
    let mut copied = 0u64;
    let per_transaction = per_transaction.unwrap_or(log.events.len()).max(1);
    for transaction in log.events.chunks(per_transaction) {
        let mut copy = conn
            .copy_in_raw(
                "COPY retry_history (event_id, job_id, job_variants_id, reason, step,
                                     from_status, to_status, attempt, actor, detail,
                                     occurred_at, hash)
                 FROM STDIN (FORMAT csv)",
            )
            .await?;
        for planned in transaction {
            let stream = &mut log.streams[planned.stream as usize];
            let attempt = stream.events + 1;
            anyhow::ensure!(
                i32::from(planned.attempt) == attempt,
                "generated events out of attempt order"
            );
            let kind = log.kinds[usize::from(planned.kind)];
            let occurred_at = DateTime::<Utc>::from_timestamp_micros(planned.occurred_micros)
                .context("event timestamp out of range")?;
            let event = CanonicalEvent {
                event_id: Uuid::new_v4(),
                job_id: stream.job_id,
                job_variants_id: stream.job_variants_id,
                reason: kind.reason,
                step: kind.step,
                from_status: Some(kind.from_status),
                to_status: Some(kind.to_status),
                attempt,
                actor: ACTOR,
                occurred_at,
                detail_text: kind.detail,
            };
            let hash = event.hash(&stream.previous_hash);
            writeln!(
                buffer,
                "{},{},{},{},{},{},{},{attempt},{ACTOR},{},{},\\x{}",
                event.event_id,
                event.job_id,
                event
                    .job_variants_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                kind.reason.as_ref(),
                kind.step.unwrap_or_default(),
                kind.from_status,
                kind.to_status,
                details[usize::from(planned.kind)],
                occurred_at.format("%Y-%m-%d %H:%M:%S%.6f+00"),
                hex::encode(hash),
            )?;
            stream.previous_hash = hash;
            stream.events = attempt;
            written += 1;
            if buffer.len() >= 1 << 20 {
                copy.send(std::mem::take(&mut buffer)).await?;
                buffer.reserve(1 << 20);
                progress.set_position(written);
            }
        }
        if !buffer.is_empty() {
            copy.send(std::mem::take(&mut buffer)).await?;
            buffer.reserve(1 << 20);
        }
        copied += copy
            .finish()
            .await
            .context("loading the generated events")?;
        progress.set_position(written);
    }
    drop(conn);
    anyhow::ensure!(copied == total, "COPY stored {copied} of {total} events");
    debug_assert_eq!(
        log.streams.iter().map(|s| s.events as u64).sum::<u64>(),
        total
    );

    let copy = started.elapsed();

    progress.set_message("");
    progress.finish_and_clear();
    let started = Instant::now();
    let settle = spinner();
    settle.set_message("setting the counts and vacuuming the loaded log");
    sqlx::query("SELECT retry_counts_rebuild()")
        .execute(pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    settle.finish_and_clear();
    Ok(LoadTimes {
        rows,
        copy,
        settle: started.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Verify, output, helpers

async fn timed_verify(pool: &PgPool, message: &'static str) -> anyhow::Result<VerifyFigure> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await?;
    let progress = if stderr_is_terminal() {
        ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template(&format!(
                "{message} {{bar:40}} {{pos}}/{{len}} events [{{elapsed}}]"
            ))
            .expect("the template is valid"),
        )
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let report = replay::verify(pool, |done| progress.set_position(done)).await?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    for mismatch in report.mismatches.iter().take(10) {
        eprintln!("retrylog bench: verify: {mismatch}");
    }
    Ok(VerifyFigure {
        events: report.events,
        streams: report.streams,
        mismatches: report.mismatches.len(),
        seconds,
    })
}

/// A spinner on stderr when it is a terminal, nothing otherwise.
fn spinner() -> ProgressBar {
    if stderr_is_terminal() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// How a figure is counted: both ways, a higher ratio is better for retrylog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Something per second; the ratio is retrylog ÷ baseline.
    PerSecond,
    /// A time in milliseconds; the ratio is baseline ÷ retrylog ("times as fast").
    Millis,
}

/// What a line has to show to meet its goal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    /// The ratio is at least this.
    AtLeast(f64),
    /// retrylog's figure is below this, in the line's unit.
    Under(f64),
    /// A check holds (the line's `clean`): verify is clean, two answers are equal.
    Holds(&'static str),
}

/// One line of the output, before it is formatted.
#[derive(Debug, Clone)]
struct Line {
    figure: &'static str,
    /// What was measured, for people (the table's only description of the line).
    condition: String,
    connections: Option<u32>,
    events: Option<u64>,
    unit: Unit,
    /// retrylog's figure (`None` for a line that only checks something).
    ours: Option<f64>,
    /// The baseline's name and figure.
    baseline: Option<(String, f64)>,
    goal: Option<Goal>,
    /// For a check (verify, equal answers): whether it held.
    clean: Option<bool>,
}

impl Line {
    /// A line with a figure, no baseline and no goal yet.
    fn new(figure: &'static str, condition: String, unit: Unit, ours: f64) -> Self {
        Line {
            figure,
            condition,
            connections: None,
            events: None,
            unit,
            ours: Some(ours),
            baseline: None,
            goal: None,
            clean: None,
        }
    }

    fn baseline(mut self, name: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((name.into(), value));
        self
    }

    fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    fn events(mut self, events: u64) -> Self {
        self.events = Some(events);
        self
    }

    /// How many times better than the baseline retrylog is.
    fn ratio(&self) -> Option<f64> {
        let ours = self.ours?;
        let (_, baseline) = self.baseline.as_ref()?;
        Some(match self.unit {
            Unit::PerSecond => ours / baseline,
            Unit::Millis => baseline / ours,
        })
    }

    fn met(&self) -> Option<bool> {
        match (self.goal?, self.ratio(), self.ours) {
            (Goal::AtLeast(minimum), Some(ratio), _) => Some(ratio >= minimum),
            (Goal::Under(limit), _, Some(ours)) => Some(ours < limit),
            (Goal::Holds(_), _, _) => self.clean,
            _ => None,
        }
    }
}

/// The figures as rows: formatted for people in a table; plain numbers in JSON and CSV, with
/// `machine_columns` (connections, events, unit) as columns of their own after the condition.
fn figure_table(lines: &[Line], format: Format, machine_columns: &[&'static str]) -> Rows {
    let table = format == Format::Table;
    let mut columns = vec!["figure", "condition"];
    if !table {
        columns.extend_from_slice(machine_columns);
    }
    columns.extend_from_slice(&[
        "retrylog",
        "baseline",
        "baseline_value",
        "ratio",
        "goal",
        "met",
    ]);
    let value = |unit: Unit, value: f64| match (unit, table) {
        (Unit::PerSecond, true) => Value::from(format!("{}/s", thousands(value))),
        (Unit::PerSecond, false) => Value::from((value * 10.0).round() / 10.0),
        (Unit::Millis, true) => Value::from(millis(value)),
        (Unit::Millis, false) => Value::from((value * 1000.0).round() / 1000.0),
    };
    let mut rows = Rows::new(&columns);
    for line in lines {
        let ratio = line.ratio();
        let met = line.met();
        let cells = columns
            .iter()
            .map(|column| match *column {
                "figure" => Value::from(line.figure),
                "condition" => Value::from(line.condition.clone()),
                "connections" => line.connections.map_or(Value::Null, Value::from),
                "events" => line.events.map_or(Value::Null, Value::from),
                "unit" => match (line.ours, line.unit) {
                    (None, _) => Value::Null,
                    (Some(_), Unit::PerSecond) => Value::from("per second"),
                    (Some(_), Unit::Millis) => Value::from("ms"),
                },
                "retrylog" => line.ours.map_or(Value::Null, |ours| value(line.unit, ours)),
                "baseline" => line
                    .baseline
                    .as_ref()
                    .map_or(Value::Null, |(name, _)| Value::from(name.clone())),
                "baseline_value" => line
                    .baseline
                    .as_ref()
                    .map_or(Value::Null, |&(_, baseline)| value(line.unit, baseline)),
                "ratio" => match ratio {
                    Some(ratio) if table => Value::from(format!("{ratio:.2}×")),
                    Some(ratio) => Value::from((ratio * 1000.0).round() / 1000.0),
                    None => Value::Null,
                },
                "goal" => match line.goal {
                    Some(Goal::AtLeast(minimum)) if table => {
                        Value::from(format!("≥ {}×", short(minimum)))
                    }
                    Some(Goal::AtLeast(minimum)) => Value::from(minimum),
                    Some(Goal::Under(limit)) => match line.unit {
                        Unit::Millis => Value::from(format!("< {} ms", short(limit))),
                        Unit::PerSecond => Value::from(format!("< {}/s", short(limit))),
                    },
                    Some(Goal::Holds(what)) => Value::from(what),
                    None => Value::Null,
                },
                "met" => match met {
                    Some(yes) if table => Value::from(if yes { "yes" } else { "NO" }),
                    Some(yes) => Value::from(yes),
                    None => Value::Null,
                },
                _ => Value::Null,
            })
            .collect();
        rows.push(cells);
    }
    rows
}

/// The figures of `retrylog bench` as lines.
fn figure_rows(
    args: &BenchArgs,
    appends: &[AppendFigures],
    append_verify: Option<&VerifyFigure>,
    replays: &[ReplayFigure],
    replay_verify: Option<&VerifyFigure>,
) -> Rows {
    let mut lines = Vec::new();
    for figure in appends {
        let condition = format!(
            "{} connection{}",
            figure.connections,
            if figure.connections == 1 { "" } else { "s" }
        );
        for (baseline, value, minimum) in [
            (Approach::BareUpdate, figure.bare_update, 0.5),
            (Approach::NaiveEvent, figure.naive_event, 1.0),
        ] {
            let mut line = Line::new("appends/s", condition.clone(), Unit::PerSecond, figure.ours)
                .baseline(baseline.label(), value);
            line.connections = Some(figure.connections);
            if figure.connections == GOAL_CONNECTIONS {
                line = line.goal(Goal::AtLeast(minimum));
            }
            lines.push(line);
        }
    }
    let verify_line = |condition: &str, verify: &VerifyFigure| {
        let mut line = Line::new(
            "verify events/s",
            format!(
                "{condition}: {} events in {} streams, {}",
                thousands(verify.events as f64),
                thousands(verify.streams as f64),
                if verify.mismatches == 0 {
                    "clean".to_string()
                } else {
                    format!("{} mismatch(es)", verify.mismatches)
                }
            ),
            Unit::PerSecond,
            verify.events as f64 / verify.seconds,
        )
        .events(verify.events)
        .goal(Goal::Holds("clean"));
        line.clean = Some(verify.mismatches == 0);
        line
    };
    if let Some(verify) = append_verify {
        lines.push(verify_line("after the appends", verify));
    }
    for figure in replays {
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
    if let Some(verify) = replay_verify {
        lines.push(verify_line("after the replays", verify));
    }
    figure_table(&lines, args.format.format, &["connections", "events"])
}

/// 2.0 → "2.0", 0.67 → "0.67", 100.0 → "100.0": at least one decimal, at most two.
fn short(value: f64) -> String {
    let text = format!("{value:.2}");
    match text.strip_suffix('0') {
        Some(shorter) => shorter.to_string(),
        None => text,
    }
}

/// A time for people: "0.253 ms", "4.21 ms", "42.1 ms", "4,512 ms".
fn millis(value: f64) -> String {
    if value >= 100.0 {
        format!("{} ms", thousands(value))
    } else if value >= 10.0 {
        format!("{value:.1} ms")
    } else if value >= 1.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.3} ms")
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn median_takes_the_middle_sample() {
        let samples = [3, 1, 2].map(Duration::from_secs).to_vec();
        assert_eq!(median(samples), Duration::from_secs(2));
    }

    #[test]
    fn goals_and_times_print_short() {
        assert_eq!(short(1.0), "1.0");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(0.67), "0.67");
        assert_eq!(short(100.0), "100.0");
        assert_eq!(millis(0.2534), "0.253 ms");
        assert_eq!(millis(4.214), "4.21 ms");
        assert_eq!(millis(42.14), "42.1 ms");
        assert_eq!(millis(4512.3), "4,512 ms");
    }

    #[test]
    fn ratios_favour_retrylog_in_both_units() {
        let rate = Line::new("x", String::new(), Unit::PerSecond, 300.0).baseline("b", 100.0);
        assert_eq!(rate.ratio(), Some(3.0));
        let time = Line::new("x", String::new(), Unit::Millis, 2.0)
            .baseline("b", 200.0)
            .goal(Goal::AtLeast(100.0));
        assert_eq!(time.ratio(), Some(100.0));
        assert_eq!(time.met(), Some(true));
        let slow = Line::new("x", String::new(), Unit::Millis, 2.5).goal(Goal::Under(2.0));
        assert_eq!(slow.met(), Some(false));
    }

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
