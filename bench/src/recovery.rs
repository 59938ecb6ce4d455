//! `retrylog-bench recovery`: the recovery watchdog (`recovery::sweep`) over a realistic
//! pipeline of 100,000 jobs × 4 variants, beside the counter-only listener it replaces,
//! measured in one run in the bench database.
//!
//! 1. **Seed** the pipeline tables set-based (`INSERT … SELECT … generate_series`, the notify
//!    triggers disabled meanwhile): most jobs done and old, some running with healthy
//!    variants, a few pending or failed at an unmanaged step, and about 1% of the targets in
//!    one of the four scenarios, as disjoint sets of the same shape: one for the watchdog,
//!    two halves for the baseline, whose jobs are parked as `pending` (in no scenario) until
//!    their turn. Some of the watchdog's targets are at the retry limit (3 retries appended
//!    through `record_retry`), so the intervention path is measured too. Then `VACUUM
//!    ANALYZE`.
//! 2. **Detection plans**: `EXPLAIN (ANALYZE, FORMAT JSON)` of each scenario's detection
//!    query with the watchdog's parameters, as a custom plan (what a connection's first five
//!    runs get) and as a generic plan (what the plan cache may switch to after that): which
//!    index reads which table, and the execution time.
//! 3. **Baseline, first half**: each condition of the half fixed the way the counter-only
//!    listener did it, one transaction with one plain `UPDATE … retry_count = retry_count +
//!    1` each, no log.
//! 4. **The first sweep**: one `recovery::sweep` of everything on a fresh connection (the
//!    start of `serve`): time, retries per scenario and per second, interventions noted;
//!    every seeded condition must have been retried exactly once and every target at the
//!    limit noted, not retried.
//! 5. **Baseline, second half**, right after: the two halves bracket the sweep, so that
//!    background load on the machine weighs on both sides of the ratio.
//! 6. **Steady sweeps** with nothing left to do: what a periodic sweep costs.
//! 7. **Verify**: the baseline's counts are set back (they have no events), then
//!    `replay::verify` over the bench database must be clean.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::config::WatchdogSettings;
use retrylog::connect::Connected;
use retrylog::recovery::{self, Scenario};

use crate::database::{fresh_database, in_bench_database, print_server, timed_verify};
use crate::figures::{figure_table, thousands, VerifyFigure};
use crate::ACTOR;

mod baseline;
mod lines;
mod plans;
mod seed;
mod sweeps;

use baseline::{arm, counter_only_baseline, restore_baseline_counts};
use lines::figure_lines;
use plans::{explain_detections, Detection};
use seed::{seed, Seeded, BASELINE_SETS, UNMANAGED_STEP};
use sweeps::{check_sweep, first_sweep, plan_cache, steady_sweeps, Check, FirstSweep, PlanCache};

/// `retrylog-bench recovery`.
///
/// Runs in its own database, `retrylog_bench`, created (dropped first if it exists) on the
/// same server as the configured database and dropped at the end; the configured database is
/// never touched. Prints every figure beside its baseline and the ratio.
#[derive(Debug, Args)]
pub struct RecoveryArgs {
    /// Jobs in the pipeline tables, each with 4 variants (the mix is fixed per thousand).
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    pub jobs: u64,

    /// Timed sweeps with nothing left to do after the first one, on the same connection:
    /// the steady-state cost of a periodic sweep.
    #[arg(long, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steady_sweeps: u32,

    /// Timed EXPLAIN ANALYZE runs of each detection query, per plan; the median is reported.
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub explain_repeats: u32,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl RecoveryArgs {
    /// `--smoke`: 1,000 jobs, two steady sweeps, one EXPLAIN of each plan.
    pub fn smoke(&mut self) {
        self.jobs = 1_000;
        self.steady_sweeps = 2;
        self.explain_repeats = 1;
    }
}

/// The watchdog's limit in the bench: at this count a target is noted, not retried.
const MAX_RETRIES: i32 = 3;

/// The watchdog's idle threshold in the bench (its default).
const STUCK_AFTER: Duration = Duration::from_secs(300);

/// The watchdog's settings in the bench: the default steps, limit 3, idle after 5 minutes.
fn watchdog_settings() -> WatchdogSettings {
    WatchdogSettings {
        max_retries: MAX_RETRIES,
        stuck_after: STUCK_AFTER,
        instance: ACTOR.to_string(),
        ..WatchdogSettings::default()
    }
}

/// Everything `retrylog-bench recovery` measured and checked.
#[derive(Debug)]
struct Figures {
    jobs: i64,
    variants: i64,
    seeded: BTreeMap<Scenario, Seeded>,
    /// The baseline's time per scenario, both halves together.
    baseline: BTreeMap<Scenario, Duration>,
    detections: Vec<Detection>,
    first: FirstSweep,
    checks: BTreeMap<Scenario, Check>,
    /// Events of the watchdog on a target that was not seeded in its set.
    strays: i64,
    /// Each steady sweep's time and what it detected.
    steady: Vec<(Duration, usize)>,
    plan_cache: BTreeMap<Scenario, PlanCache>,
    verify: VerifyFigure,
}

impl Figures {
    fn clean(&self) -> bool {
        self.verify.mismatches == 0
            && self.strays == 0
            && self.first.summary.skipped == 0
            && self.first.summary.failed == 0
            && self.steady.iter().all(|&(_, detected)| detected == 0)
            && self
                .checks
                .values()
                .all(|check| check.retried_once() && check.noted_once())
    }
}

pub async fn run(connected: &Connected, args: RecoveryArgs) -> anyhow::Result<ExitCode> {
    let figures = in_bench_database(
        connected,
        "retrylog-bench recovery",
        args.keep,
        async |options| measure(connected, options, &args).await,
    )
    .await?;

    let lines = figure_lines(&args, &figures);
    let format = args.format.format;
    figure_table(&lines, format, &["unit"]).print(format)?;
    if !figures.clean() {
        eprintln!(
            "retrylog-bench: the watchdog did not retry every seeded condition exactly once, \
             or verify is not clean (see the table)"
        );
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything, in a freshly created bench database. On an error the pools are simply
/// dropped: the final `DROP DATABASE ... WITH (FORCE)` ends whatever they left open.
async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &RecoveryArgs,
) -> anyhow::Result<Figures> {
    let settings = watchdog_settings();
    anyhow::ensure!(
        settings.steps.names().len() >= 3,
        "the bench needs at least 3 managed steps, got \"{}\"",
        settings.steps
    );
    anyhow::ensure!(
        !settings.steps.names().iter().any(|s| s == UNMANAGED_STEP),
        "the managed steps \"{}\" include the bench's unmanaged step {UNMANAGED_STEP}",
        settings.steps
    );
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    eprintln!(
        "retrylog-bench: recovery over {} jobs × 4 variants; steps {}, max_retries \
         {MAX_RETRIES}, stuck_after {}",
        thousands(args.jobs as f64),
        settings.steps,
        humantime::format_duration(settings.stuck_after),
    );

    let seeded = seed(&pool, args.jobs, &settings).await?;
    let (jobs, variants): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM jobs_variants)")
            .fetch_one(&pool)
            .await?;
    // What `serve` does first: the limit every door enforces is the watchdog's.
    recovery::publish_settings(&pool, &settings).await?;
    let detections = explain_detections(&pool, &settings, args.explain_repeats).await?;

    // The watchdog's own connection, fresh: nothing prepared, nothing cached. One
    // connection is all a sweep uses (it handles one candidate at a time), and it lets the
    // plan cache of that connection be read afterwards.
    let watchdog = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .context("opening the watchdog's connection")?;
    // The baseline's halves right before and right after the sweep, each armed just before
    // its turn, outside the timing.
    let mut baseline = BTreeMap::new();
    let mut halves = Vec::new();
    let [before, after] = BASELINE_SETS;
    arm(&pool, before).await?;
    halves.push(counter_only_baseline(options, &pool, before, &mut baseline).await?);
    let first = first_sweep(&watchdog, &settings).await?;
    arm(&pool, after).await?;
    halves.push(counter_only_baseline(options, &pool, after, &mut baseline).await?);
    eprintln!(
        "retrylog-bench: counter-only baseline: {} conditions before the sweep in {:.2} s \
         ({}/s), {} after it in {:.2} s ({}/s)",
        thousands(halves[0].0 as f64),
        halves[0].1.as_secs_f64(),
        thousands(halves[0].0 as f64 / halves[0].1.as_secs_f64()),
        thousands(halves[1].0 as f64),
        halves[1].1.as_secs_f64(),
        thousands(halves[1].0 as f64 / halves[1].1.as_secs_f64()),
    );
    let (checks, strays) = check_sweep(&pool, &first).await?;
    let steady = steady_sweeps(&watchdog, &settings, args.steady_sweeps).await?;
    let plan_cache = plan_cache(&watchdog).await?;
    watchdog.close().await;

    restore_baseline_counts(&pool).await?;
    let verify = timed_verify(&pool, "verifying the bench log").await?;
    pool.close().await;
    Ok(Figures {
        jobs,
        variants,
        seeded,
        baseline,
        detections,
        first,
        checks,
        strays,
        steady,
        plan_cache,
        verify,
    })
}
