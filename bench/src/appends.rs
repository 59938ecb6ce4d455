//! `retrylog-bench appends`: appends and replay against hand-written baselines, measured in
//! one run in a scratch database.
//!
//! Every figure is printed beside a baseline measured in the same run, on the same machine,
//! with the same transaction shape, so the ratio is what matters, not the absolute number.
//! docs/performance.md explains each figure and records a run.
//!
//! 1. **Appends** — transactions per second at each `--connections` count, for
//!    `store::append` and two baselines: (a) the counter-only change, a bare `UPDATE ...
//!    SET retry_count = retry_count + 1`; (b) a naive hand-written event append, `INSERT ...
//!    SELECT ... FOR UPDATE` into a plain log table plus that UPDATE. The baselines run in the
//!    twin database without any retrylog object (`twin.rs`), the real "before"; store::append
//!    in the bench database. Each approach has its own pool of variants (same size), each
//!    worker picks random targets from it, and the three take turns slice by slice per
//!    connection count. Then `verify` must be clean.
//!    Beside them, **batches**: `store::append_many` (the SQL door `record_retries`), 100
//!    distinct random targets per transaction, in events per second against `store::append`'s in the
//!    same run; and the **WAL per event** of each approach, measured alone on one connection
//!    after the throughput slices (`appends/wal.rs`).
//! 2. **Replay** (`replay.rs`) — the retry_counts replay (`retrylog replay --projection
//!    retry_counts`) over `--replay-events` events (generated in Rust with valid hash chains,
//!    loaded with COPY) against a hand-written set-based recount, from two starting states:
//!    counts wiped, and counts already correct; then the replay of every projection, for
//!    scale. Median of three each. Then `verify`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rand::Rng;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::connect::Connected;
use retrylog::event::{NewRetry, RetryReason};
use retrylog::store;

use crate::database::{fresh_database, in_bench_database, print_server, timed_verify};
use crate::figures::{figure_table, Goal, Line, Unit, VerifyFigure};
use crate::pipeline::{insert_pipeline_rows, PipelineRows, VARIANTS_PER_JOB};
use crate::replay::{self, ReplayFigure};
use crate::slices::{count_commits, open_pool, SliceArgs};
use crate::twin::{fresh_twin, holds_retrylog_objects, release_twin, twin_options};
use crate::{progress, stuck_retry, ACTOR};

mod wal;

/// `retrylog-bench appends`.
///
/// Runs in its own database, `retrylog_bench`, created (dropped first if it exists) on the same
/// server as the configured database and dropped at the end; the configured database is never
/// touched. Prints every figure beside its baseline, the ratio and the goal.
#[derive(Debug, Args)]
pub struct AppendsArgs {
    #[command(flatten)]
    pub slices: SliceArgs,

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

impl AppendsArgs {
    /// `--smoke`: one second at 2 connections, no warm-up, a replay of 2,000 events.
    pub fn smoke(&mut self) {
        self.slices.smoke();
        self.replay_events = 2_000;
    }
}

/// Variants each approach picks its targets from (in jobs of `VARIANTS_PER_JOB`).
const APPEND_VARIANTS: usize = 10_000;

/// The connection count the append goals are set at.
const GOAL_CONNECTIONS: u32 = 16;

/// Retries per `store::append_many` call in the batch approach (issue 24's batches of 100).
const BATCH_ROWS: usize = 100;

/// What a batch must reach against single appends, in events per second, at 1 and at
/// `GOAL_CONNECTIONS` connections.
const BATCH_GOAL: f64 = 10.0;

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

/// One way of recording a retry, measured against the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approach {
    /// `store::append`: record_retry with its projection, in the caller's transaction.
    Append,
    /// (a) the counter-only change.
    BareUpdate,
    /// (b) a naive hand-written event append.
    NaiveEvent,
    /// `store::append_many`: `BATCH_ROWS` retries of random targets in one transaction.
    Batch,
}

impl Approach {
    const ALL: [Approach; 4] = [
        Approach::Append,
        Approach::BareUpdate,
        Approach::NaiveEvent,
        Approach::Batch,
    ];

    /// Events one transaction of the approach records.
    fn events(self) -> u64 {
        match self {
            Approach::Batch => BATCH_ROWS as u64,
            _ => 1,
        }
    }

    /// Whether it runs in the bench database (retrylog's) rather than the twin.
    fn retrylog(self) -> bool {
        matches!(self, Approach::Append | Approach::Batch)
    }

    fn label(self) -> &'static str {
        match self {
            Approach::Append => "store::append",
            Approach::BareUpdate => "(a) bare UPDATE, no retrylog",
            Approach::NaiveEvent => "(b) naive event append, no retrylog",
            Approach::Batch => "store::append_many, batches of 100",
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
    /// Events per second of the batches.
    batch: f64,
}

pub async fn run(connected: &Connected, args: AppendsArgs) -> anyhow::Result<ExitCode> {
    let (appends, wal, append_verify, replays, replay_verify) = in_bench_database(
        connected,
        "retrylog-bench appends",
        args.keep,
        async |options| run_phases(connected, options, &args).await,
    )
    .await?;

    let mut lines = append_lines(&appends);
    lines.extend(wal::lines(wal.as_ref()));
    if let Some(verify) = &append_verify {
        lines.push(Line::verify("after the appends", verify));
    }
    lines.extend(replay::lines(&replays));
    if let Some(verify) = &replay_verify {
        lines.push(Line::verify("after the replays", verify));
    }
    let format = args.format.format;
    figure_table(&lines, format, &["connections", "events"]).print(format)?;
    let dirty = [append_verify, replay_verify]
        .iter()
        .flatten()
        .any(|verify| verify.mismatches > 0);
    if dirty {
        eprintln!("retrylog-bench: verify found mismatches in the bench database");
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

type Outcome = (
    Vec<AppendFigures>,
    Option<wal::WalFigures>,
    Option<VerifyFigure>,
    Vec<ReplayFigure>,
    Option<VerifyFigure>,
);

/// Both phases, each in a freshly created bench database. On an error the pool is simply
/// dropped: the final `DROP DATABASE ... WITH (FORCE)` ends whatever it left open.
async fn run_phases(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &AppendsArgs,
) -> anyhow::Result<Outcome> {
    let mut appends = Vec::new();
    let mut wal = None;
    let mut append_verify = None;
    let mut replays = Vec::new();
    let mut replay_verify = None;
    if !args.skip_appends {
        let pool = fresh_database(connected, options).await?;
        print_context(&pool, args).await?;
        let twin = fresh_twin(connected, options).await?;
        let measured = bench_appends(&pool, &twin, options, args).await;
        twin.close().await;
        release_twin(connected, args.keep).await;
        let (measured, measured_wal) = measured?;
        appends = measured;
        wal = Some(measured_wal);
        append_verify = Some(timed_verify(&pool, "verifying the appended log").await?);
        pool.close().await;
    }
    if !args.skip_replay {
        let pool = fresh_database(connected, options).await?;
        if args.skip_appends {
            print_context(&pool, args).await?;
        }
        replays = replay::measure(&pool, args.replay_events).await?;
        replay_verify = Some(timed_verify(&pool, "verifying the replayed log").await?);
        pool.close().await;
    }
    Ok((appends, wal, append_verify, replays, replay_verify))
}

/// One line on stderr saying what the figures were measured on.
async fn print_context(pool: &PgPool, args: &AppendsArgs) -> anyhow::Result<()> {
    print_server(pool).await?;
    if !args.skip_appends {
        eprintln!(
            "retrylog-bench: appends: {} s per approach and connection count in {} interleaved \
             slice(s), after {} s warm-up; {APPEND_VARIANTS} variants of {} jobs per approach; \
             connections {:?}",
            args.slices.seconds,
            args.slices.slices,
            args.slices.warmup,
            APPEND_VARIANTS / VARIANTS_PER_JOB,
            args.slices.connections
        );
    }
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

async fn bench_appends(
    pool: &PgPool,
    twin: &PgPool,
    options: &PgConnectOptions,
    args: &AppendsArgs,
) -> anyhow::Result<(Vec<AppendFigures>, wal::WalFigures)> {
    if holds_retrylog_objects(twin).await? {
        anyhow::bail!("the twin database holds retrylog objects; it must be the bare schema");
    }
    // store::append in the bench database; the baselines in the twin, each on variants of its
    // own (the bare UPDATE moves counters without events).
    let targets = [
        create_targets(pool).await?,
        create_targets(twin).await?,
        create_targets(twin).await?,
        create_targets(pool).await?,
    ];
    sqlx::raw_sql(NAIVE_LOG_DDL).execute(twin).await?;
    for database in [pool, twin] {
        sqlx::raw_sql("VACUUM ANALYZE").execute(database).await?;
    }

    let progress = progress::spinner();
    let timing = &args.slices;
    let mut figures = Vec::new();
    for &connections in &timing.connections {
        // One pool per database, sized to the connection count.
        let ours = open_pool(options.clone(), connections)
            .await
            .context("opening the benchmark pool")?;
        let before = open_pool(twin_options(options)?, connections)
            .await
            .context("opening the twin's benchmark pool")?;
        let mut counted = [0u64; Approach::ALL.len()];
        for round in 0..timing.slices as usize {
            for offset in 0..Approach::ALL.len() {
                let index = (round + offset) % Approach::ALL.len();
                let approach = Approach::ALL[index];
                progress.set_message(format!(
                    "appends: {}, {connections} connection(s), slice {}/{}",
                    approach.label(),
                    round + 1,
                    timing.slices
                ));
                let pool = if approach.retrylog() { &ours } else { &before };
                let (pool, targets) = (pool.clone(), targets[index].clone());
                counted[index] += count_commits(
                    connections,
                    timing.settle(round),
                    timing.slice(),
                    move || transaction(pool.clone(), approach, targets.clone()),
                )
                .await
                .with_context(|| format!("measuring {}", approach.label()))?
                    * approach.events();
            }
        }
        ours.close().await;
        before.close().await;
        figures.push(AppendFigures {
            connections,
            ours: timing.rate(counted[0]),
            bare_update: timing.rate(counted[1]),
            naive_event: timing.rate(counted[2]),
            batch: timing.rate(counted[3]),
        });
    }
    progress.set_message("appends: WAL per event");
    let wal = wal::measure(pool, twin, &targets).await?;
    progress.finish_and_clear();
    Ok((figures, wal))
}

/// One transaction of `approach` on a random target (`BATCH_ROWS` distinct ones for a batch):
/// BEGIN, the approach's statements, COMMIT.
async fn transaction(pool: PgPool, approach: Approach, targets: Targets) -> anyhow::Result<()> {
    let pick = || targets[rand::thread_rng().gen_range(0..targets.len())];
    let (job_id, job_variants_id) = pick();
    let mut tx = pool.begin().await?;
    match approach {
        Approach::Batch => {
            // Distinct targets, as a watchdog's sweep or a bulk recovery names them (a batch
            // naming one target twice goes row by row: docs/architecture.md).
            let rows = rand::seq::index::sample(&mut rand::thread_rng(), targets.len(), BATCH_ROWS);
            let batch: Vec<NewRetry> = rows
                .into_iter()
                .map(|row| {
                    let (job_id, job_variants_id) = targets[row];
                    stuck_retry(job_id, job_variants_id)
                })
                .collect();
            store::append_many(&mut tx, &batch).await?;
        }
        Approach::Append => {
            store::append(&mut tx, &stuck_retry(job_id, job_variants_id)).await?;
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
                .bind(Value::Object(Default::default()))
                .execute(&mut *tx)
                .await?;
            sqlx::query(BARE_UPDATE)
                .bind(job_variants_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output

/// The append figures as lines of the table: each connection count against each baseline.
fn append_lines(appends: &[AppendFigures]) -> Vec<Line> {
    let mut lines = Vec::new();
    for figure in appends {
        let condition = format!(
            "{} connection{}",
            figure.connections,
            if figure.connections == 1 { "" } else { "s" }
        );
        for (baseline, value, minimum) in [
            // Issue 24's goals: at least 0.6x the bare counter UPDATE, 0.8x the naive append.
            (Approach::BareUpdate, figure.bare_update, 0.6),
            (Approach::NaiveEvent, figure.naive_event, 0.8),
        ] {
            let mut line = Line::new("appends/s", condition.clone(), Unit::PerSecond, figure.ours)
                .baseline(baseline.label(), value)
                .connections(figure.connections);
            if figure.connections == GOAL_CONNECTIONS {
                line = line.goal(Goal::AtLeast(minimum));
            }
            lines.push(line);
        }
        let mut line = Line::new("events/s", condition, Unit::PerSecond, figure.batch)
            .baseline(Approach::Append.label(), figure.ours)
            .connections(figure.connections);
        if figure.connections == 1 || figure.connections == GOAL_CONNECTIONS {
            line = line.goal(Goal::AtLeast(BATCH_GOAL));
        }
        lines.push(line);
    }
    lines
}
