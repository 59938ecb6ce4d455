//! `retrylog bench recovery`: the recovery watchdog (`recovery::sweep`) over a realistic
//! pipeline of 100,000 jobs × 4 variants, beside the counter-only listener it replaces,
//! measured in one run in the scratch database of `bench`.
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
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    figure_table, fresh_database, median, print_server, spinner, thousands, timed_verify, Goal,
    Line, Unit, VerifyFigure, ACTOR, BENCH_DATABASE,
};
use crate::cli::FormatArg;
use crate::cmd::EXIT_MISMATCH;
use crate::config::WatchdogSettings;
use crate::connect::Connected;
use crate::recovery::{self, Scenario, Scope, SweepSummary, DETECT_BATCH};
use crate::scratch;

/// `retrylog bench recovery`.
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

/// The watchdog's limit in the bench: at this count a target is noted, not retried.
const MAX_RETRIES: i32 = 3;

/// The watchdog's idle threshold in the bench (its default).
const STUCK_AFTER: Duration = Duration::from_secs(300);

/// The step of the old failed jobs: not a managed step, so the watchdog must leave them be.
const UNMANAGED_STEP: &str = "publish";

/// The actor of the retries seeded before the run (the watchdog's own are `ACTOR`).
const SEED_ACTOR: &str = "retrylog-bench-seed";

/// The disjoint sets of seeded conditions: the watchdog's, and the baseline's two halves.
const WATCHDOG_SET: &str = "watchdog";
const BASELINE_SETS: [&str; 2] = ["baseline_before", "baseline_after"];

/// The seeded targets that need a retry (or reached the limit), one row each: what the
/// checks after the sweep compare the log with.
const SEEDED_DDL: &str = "CREATE TABLE bench_recovery_seeded (
    set_name        text NOT NULL,
    scenario        text NOT NULL,
    job_id          uuid NOT NULL,
    job_variants_id uuid,
    -- The status the target's job has in its condition (a baseline job is parked as
    -- pending until its turn).
    job_status      text NOT NULL,
    -- Retries appended before the run (record_retry), so the target's retry_count.
    prior           integer NOT NULL,
    at_limit        boolean NOT NULL)";

/// The plan of every job, per thousand jobs (`slot` = i % 1000, `variety` = i / 1000 varies
/// steps, statuses, prior retries and times across the thousands):
///
/// | slots | jobs | state |
/// | --- | --- | --- |
/// | 0–9, 500–509 | 1% + 1% | failed: 2 variants `failed` at a managed step; the job `running` (its other variants running) or `failed` (its other variants done) |
/// | 10–17, 510–517 | 0.8% + 0.8% | lagging: job running; 2 variants done one step behind, idle 10–110 min |
/// | 18–23, 518–523 | 0.6% + 0.6% | stale: job running; 2 variants done at its step, idle 10–110 min; a third running one step ahead |
/// | 24–27, 524–527 | 0.4% + 0.4% | final step: job running at the last step, all 4 variants done there, nothing updated for 10+ min |
/// | 28–29 | 0.2% | at the limit: one target of one scenario (by variety), retry_count 3 |
/// | 30–879 (but 500–527) | 82.2% | done at the last step, created 1–30 days ago |
/// | 880–979 | 10% | running at a managed step; variants running or done at the job's step, updated in the last 3 minutes |
/// | 980–989 | 1% | pending, no step |
/// | 990–999 | 1% | failed at an unmanaged step (`publish`), one variant failed there |
///
/// Slots below 500 are the watchdog's set, 500–527 the baseline's: even jobs its first half,
/// odd ones its second (every scenario and step in both). Condition jobs were created 5–9
/// hours ago and last updated 20–80 minutes ago. Healthy rows never enter a
/// condition however long the run takes: no running job has a done variant behind it or
/// one ahead of another, or all its variants done at the last step.
///
/// `$1` jobs, `$2` the managed steps, `$3` the scenario names (in `Scenario::ALL` order),
/// `$4` the unmanaged step.
const JOB_PLAN: &str = "CREATE TEMP TABLE recovery_job_plan ON COMMIT DROP AS
WITH slots AS (
    SELECT i, i % 1000 AS slot, i / 1000 AS variety, cardinality($2::text[]) AS n
      FROM generate_series(0, $1 - 1) AS g(i)
), kinds AS (
    SELECT *,
           CASE WHEN slot % 500 < 28 OR slot IN (28, 29) THEN 'condition'
                WHEN slot < 880 THEN 'done'
                WHEN slot < 980 THEN 'running'
                WHEN slot < 990 THEN 'pending'
                ELSE 'failed_elsewhere' END AS kind,
           CASE WHEN slot % 500 < 10 THEN 1
                WHEN slot % 500 < 18 THEN 2
                WHEN slot % 500 < 24 THEN 3
                WHEN slot % 500 < 28 THEN 4
                WHEN slot IN (28, 29) THEN 1 + variety % 4 END AS scenario_no,
           slot IN (28, 29) AS at_limit,
           CASE WHEN slot % 500 < 28 AND slot >= 500
                THEN CASE WHEN i % 2 = 0 THEN 'baseline_before' ELSE 'baseline_after' END
                WHEN slot % 500 < 28 OR slot IN (28, 29) THEN 'watchdog' END AS set_name
      FROM slots
)
SELECT gen_random_uuid() AS job_id, i, variety, n, kind, scenario_no, at_limit, set_name,
       ($3::text[])[scenario_no] AS scenario,
       CASE WHEN kind = 'condition' AND scenario_no = 1 AND variety % 2 = 1 THEN 'failed'
            WHEN kind IN ('condition', 'running') THEN 'running'
            WHEN kind = 'failed_elsewhere' THEN 'failed'
            ELSE kind END AS job_status,
       CASE WHEN kind = 'done' THEN n
            WHEN kind = 'running' THEN 1 + variety % n
            WHEN kind = 'condition' THEN CASE scenario_no WHEN 1 THEN 1 + variety % n
                                                          WHEN 2 THEN 2 + variety % (n - 1)
                                                          WHEN 3 THEN 1 + variety % (n - 1)
                                                          ELSE n END END AS pos,
       CASE WHEN kind = 'failed_elsewhere' THEN $4 END AS other_step,
       -- Ages in seconds: created, and last updated.
       CASE WHEN kind IN ('done', 'failed_elsewhere') THEN 86400 + (i * 7919) % (29 * 86400)
            WHEN kind = 'pending' THEN (i * 31) % 600
            WHEN kind = 'running' THEN 3600 + (i * 7919) % 14400
            ELSE 18000 + (i * 7919) % 14400 END AS created_age,
       CASE WHEN kind IN ('done', 'failed_elsewhere') THEN -1
            WHEN kind = 'pending' THEN (i * 31) % 600
            WHEN kind = 'running' THEN (i * 13) % 120
            ELSE 1200 + (i * 17) % 3600 END AS updated_age
  FROM kinds";

/// Four variants per planned job (see `JOB_PLAN`); `target` marks the variants in a
/// scenario's condition (two per condition job, one at the limit).
const VARIANT_PLAN: &str = "CREATE TEMP TABLE recovery_variant_plan ON COMMIT DROP AS
SELECT gen_random_uuid() AS job_variants_id, t.job_id, t.k, t.target,
       t.created_age - t.k AS created_age,
       CASE WHEN t.kind = 'done' THEN 'done'
            WHEN t.kind = 'pending' THEN 'pending'
            WHEN t.kind = 'failed_elsewhere' THEN CASE WHEN t.k = 0 THEN 'failed' ELSE 'done' END
            WHEN t.kind = 'running' THEN CASE WHEN t.k % 2 = 0 THEN 'running' ELSE 'done' END
            WHEN t.scenario_no = 1 THEN CASE WHEN t.target THEN 'failed'
                                             WHEN t.job_status = 'running' THEN 'running'
                                             ELSE 'done' END
            WHEN t.scenario_no = 4 THEN 'done'
            WHEN t.target THEN 'done'
            ELSE 'running' END AS status,
       CASE WHEN t.kind IN ('done', 'running') THEN t.pos
            WHEN t.kind = 'condition' AND t.scenario_no = 2 AND t.target THEN t.pos - 1
            WHEN t.kind = 'condition' AND t.scenario_no = 3 AND t.k = 2 THEN t.pos + 1
            WHEN t.kind = 'condition' THEN t.pos END AS pos,
       t.other_step,
       CASE WHEN t.kind IN ('done', 'failed_elsewhere') THEN t.created_age - 3000 - 60 * t.k
            WHEN t.kind = 'pending' THEN t.created_age
            WHEN t.kind = 'running' THEN (t.i * 13 + 37 * t.k) % 180
            WHEN t.target OR t.scenario_no = 4 OR t.job_status = 'failed'
                THEN 600 + ((t.i + t.k) * 61) % 6000
            ELSE (t.i * 13 + 37 * t.k) % 120 END AS updated_age
  FROM (SELECT j.*, k,
               j.kind = 'condition' AND j.scenario_no <> 4
                   AND (k = 0 OR (k = 1 AND NOT j.at_limit)) AS target
          FROM recovery_job_plan j CROSS JOIN generate_series(0, 3) AS k) t";

/// `$1` the managed steps. The baseline's jobs are parked as pending: no scenario looks at a
/// pending job, so neither a detection nor a sweep sees them before `arm` sets their status.
const INSERT_JOBS: &str = "INSERT INTO jobs (job_id, status, current_step, created_at, updated_at)
SELECT job_id, CASE WHEN set_name LIKE 'baseline%' THEN 'pending' ELSE job_status END,
       coalesce(other_step, ($1::text[])[pos]),
       now() - make_interval(secs => created_age),
       now() - make_interval(secs => CASE WHEN updated_age < 0 THEN created_age - 3600
                                          ELSE updated_age END)
  FROM recovery_job_plan ORDER BY i";

/// `$1` the managed steps.
const INSERT_VARIANTS: &str = "INSERT INTO jobs_variants
       (job_variants_id, job_id, creation_order, status, current_step, created_at, updated_at)
SELECT job_variants_id, job_id, k, status, coalesce(other_step, ($1::text[])[pos]),
       now() - make_interval(secs => created_age), now() - make_interval(secs => updated_age)
  FROM recovery_variant_plan";

/// `$1` the limit: the prior retries of a target at the limit.
const INSERT_SEEDED: &str = "INSERT INTO bench_recovery_seeded
SELECT j.set_name, j.scenario, j.job_id, v.job_variants_id, j.job_status,
       CASE WHEN j.at_limit THEN $1 ELSE (j.variety + v.k) % 3 END, j.at_limit
  FROM recovery_variant_plan v JOIN recovery_job_plan j USING (job_id)
 WHERE v.target
UNION ALL
SELECT j.set_name, j.scenario, j.job_id, NULL, j.job_status,
       CASE WHEN j.at_limit THEN $1 ELSE j.variety % 3 END, j.at_limit
  FROM recovery_job_plan j
 WHERE j.kind = 'condition' AND j.scenario_no = 4";

/// Round `$1` of the prior retries: one `record_retry` for every seeded target with at least
/// `$1` of them, at its current step and status, with the scenario's reason and detail,
/// 3½, 3 and 2½ hours ago. `$2`/`$3` the scenario names and their reasons, `$4` the actor.
const PRIOR_RETRIES: &str = "SELECT count(*) FROM bench_recovery_seeded s
 CROSS JOIN LATERAL record_retry(
        job_id          => s.job_id,
        reason          => ($3::text[])[array_position($2::text[], s.scenario)],
        job_variants_id => s.job_variants_id,
        actor           => $4,
        detail          => jsonb_build_object('scenario', s.scenario),
        occurred_at     => now() - make_interval(mins => 240 - 30 * $1),
        to_status       => 'done') r
 WHERE s.prior >= $1";

/// How the counter-only listener made each scenario's state change: in place, with the
/// count bumped in the same statement and nothing else recorded (docs/migrating.md,
/// "Before"). `$1` the target's id.
fn counter_only_sql(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Failed => {
            "UPDATE jobs_variants SET status = 'done', updated_at = now(),
                    retry_count = retry_count + 1
              WHERE job_variants_id = $1"
        }
        Scenario::Lagging | Scenario::Stale => {
            "UPDATE jobs_variants SET updated_at = now(), retry_count = retry_count + 1
              WHERE job_variants_id = $1"
        }
        Scenario::FinalStep => {
            "UPDATE jobs SET status = 'done', updated_at = now(), retry_count = retry_count + 1
              WHERE job_id = $1"
        }
    }
}

/// The watchdog's settings in the bench: the default steps, limit 3, idle after 5 minutes.
fn watchdog_settings() -> WatchdogSettings {
    WatchdogSettings {
        max_retries: MAX_RETRIES,
        stuck_after: STUCK_AFTER,
        instance: ACTOR.to_string(),
        ..WatchdogSettings::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// How many targets of one scenario were seeded, per set.
#[derive(Debug, Clone, Default)]
struct Seeded {
    /// Needing a retry: the watchdog's set, and the baseline's two halves together.
    watchdog: i64,
    baseline: i64,
    /// The watchdog's targets at the limit.
    at_limit: i64,
}

/// One detection query's plans.
#[derive(Debug, Clone)]
struct Detection {
    scenario: Scenario,
    custom: PlanSummary,
    generic: PlanSummary,
}

/// The first sweep, and what the log says about it.
#[derive(Debug, Clone)]
struct FirstSweep {
    /// When it started, on the server's clock.
    began: DateTime<Utc>,
    took: Duration,
    summary: SweepSummary,
    /// Per scenario: retries, notes, and the sweep's time spent on it (from the server's
    /// timestamps of each retry and note, see `scenario_times`).
    scenarios: Vec<(Scenario, usize, i64, Duration)>,
}

/// The checks of one scenario after the first sweep.
#[derive(Debug, Clone, Default)]
struct Check {
    /// Seeded targets of the watchdog's set needing a retry, and at the limit.
    seeded: i64,
    at_limit: i64,
    /// Events the watchdog recorded with this scenario (`detail.scenario`).
    events: i64,
    /// Seeded targets with exactly one event of the watchdog, of their scenario.
    once: i64,
    /// Retries of this scenario in the sweep's summary.
    summarized: usize,
    /// Notes of this scenario in retry_intervention, and seeded targets at the limit that
    /// are noted, have no event of the watchdog and still the state they were seeded with
    /// (not updated since before the sweep).
    noted: i64,
    noted_only: i64,
}

impl Check {
    fn retried_once(&self) -> bool {
        self.events == self.seeded
            && self.once == self.seeded
            && self.summarized as i64 == self.seeded
    }

    fn noted_once(&self) -> bool {
        self.noted == self.at_limit && self.noted_only == self.at_limit
    }
}

/// What the plan cache did with a detection statement on the watchdog's connection.
#[derive(Debug, Clone, Copy, Default)]
struct PlanCache {
    generic: i64,
    custom: i64,
}

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
    let options = scratch::options(connected, BENCH_DATABASE, "retrylog bench recovery")?;
    let outcome = measure(connected, &options, &args).await;
    scratch::release(connected, BENCH_DATABASE, args.keep).await;
    let figures = outcome?;

    let lines = figure_lines(&args, &figures);
    figure_table(&lines, args.format.format, &["unit"]).print(args.format.format)?;
    if !figures.clean() {
        eprintln!(
            "retrylog bench: the watchdog did not retry every seeded condition exactly once, \
             or verify is not clean (see the table)"
        );
        return Ok(ExitCode::from(EXIT_MISMATCH));
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
        "retrylog bench: recovery over {} jobs × 4 variants; steps {}, max_retries \
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
        "retrylog bench: counter-only baseline: {} conditions before the sweep in {:.2} s \
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

// ---------------------------------------------------------------------------------------------
// Seeding

/// Seeds the pipeline tables in one transaction (see `JOB_PLAN`), with the change
/// notifications off while it inserts, then `VACUUM ANALYZE`. Returns the seeded targets
/// per scenario.
async fn seed(
    pool: &PgPool,
    jobs: u64,
    settings: &WatchdogSettings,
) -> anyhow::Result<BTreeMap<Scenario, Seeded>> {
    let progress = spinner();
    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.as_ref()).collect();
    let reasons: Vec<String> = Scenario::ALL
        .iter()
        .map(|s| s.reason().to_string())
        .collect();
    let steps = settings.steps.names();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    // 1. Half a million rows of notifications nobody listens to would only slow the seeding
    //    down; the ALTERs are part of the transaction, so an error undoes them too.
    progress.set_message("seeding: jobs and variants");
    sqlx::raw_sql(
        "ALTER TABLE jobs DISABLE TRIGGER jobs_notify_change;
         ALTER TABLE jobs_variants DISABLE TRIGGER jobs_variants_notify_change;",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(SEEDED_DDL).execute(&mut *tx).await?;
    sqlx::query(JOB_PLAN)
        .bind(jobs as i64)
        .bind(steps)
        .bind(&names)
        .bind(UNMANAGED_STEP)
        .execute(&mut *tx)
        .await
        .context("planning the bench jobs")?;
    sqlx::query(VARIANT_PLAN)
        .execute(&mut *tx)
        .await
        .context("planning the bench variants")?;
    sqlx::query(INSERT_JOBS)
        .bind(steps)
        .execute(&mut *tx)
        .await
        .context("creating the bench jobs")?;
    sqlx::query(INSERT_VARIANTS)
        .bind(steps)
        .execute(&mut *tx)
        .await
        .context("creating the bench variants")?;
    sqlx::query(INSERT_SEEDED)
        .bind(MAX_RETRIES)
        .execute(&mut *tx)
        .await?;
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM recovery_job_plan GROUP BY 1 ORDER BY 2 DESC")
            .fetch_all(&mut *tx)
            .await?;
    let rows = started.elapsed();

    // 2. The retries before the run, through record_retry like any other: the at-limit
    //    targets reach 3 this way (their counts are the log's, no opening balance), the
    //    others 0–2, so the watchdog appends to streams of every length.
    progress.set_message("seeding: retries before the run");
    let mut prior_events = 0;
    for round in 1..=MAX_RETRIES {
        let appended: i64 = sqlx::query_scalar(PRIOR_RETRIES)
            .bind(round)
            .bind(&names)
            .bind(&reasons)
            .bind(SEED_ACTOR)
            .fetch_one(&mut *tx)
            .await
            .with_context(|| format!("appending round {round} of the prior retries"))?;
        prior_events += appended;
    }
    sqlx::raw_sql(
        "ALTER TABLE jobs ENABLE TRIGGER jobs_notify_change;
         ALTER TABLE jobs_variants ENABLE TRIGGER jobs_variants_notify_change;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let seeded_in = started.elapsed();

    progress.set_message("seeding: VACUUM ANALYZE");
    let started = Instant::now();
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    let vacuumed = started.elapsed();
    progress.finish_and_clear();

    let counts: Vec<(String, String, bool, i64)> = sqlx::query_as(
        "SELECT set_name, scenario, at_limit, count(*) FROM bench_recovery_seeded
          GROUP BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await?;
    let mut seeded: BTreeMap<Scenario, Seeded> = Scenario::ALL
        .iter()
        .map(|&s| (s, Seeded::default()))
        .collect();
    for (set, scenario, at_limit, count) in counts {
        let scenario: Scenario = scenario
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown seeded scenario {scenario}"))?;
        let entry = seeded.entry(scenario).or_default();
        match (set.as_str(), at_limit) {
            (WATCHDOG_SET, false) => entry.watchdog = count,
            (WATCHDOG_SET, true) => entry.at_limit = count,
            (set, _) if BASELINE_SETS.contains(&set) => entry.baseline += count,
            _ => anyhow::bail!("unknown seeded set {set}"),
        }
    }
    eprintln!(
        "retrylog bench: seeded {} jobs ({}) and {} variants in {:.1} s, set-based, with the \
         notify triggers jobs_notify_change and jobs_variants_notify_change disabled during \
         the seeding and enabled again before it committed; {} retries appended before the \
         run through record_retry (actor {SEED_ACTOR}) in {:.1} s; VACUUM ANALYZE in {:.1} s",
        thousands(jobs as f64),
        kinds
            .iter()
            .map(|(kind, n)| format!("{} {kind}", thousands(*n as f64)))
            .collect::<Vec<_>>()
            .join(", "),
        thousands(4.0 * jobs as f64),
        rows.as_secs_f64(),
        thousands(prior_events as f64),
        (seeded_in - rows).as_secs_f64(),
        vacuumed.as_secs_f64(),
    );
    eprintln!(
        "retrylog bench: targets needing a retry, per set (watchdog, baseline's two halves \
         together): {}; at the limit (retry_count {MAX_RETRIES}, watchdog's set only): {}",
        seeded
            .iter()
            .map(|(s, n)| format!(
                "{s} {} + {}",
                thousands(n.watchdog as f64),
                thousands(n.baseline as f64)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        seeded
            .iter()
            .map(|(s, n)| format!("{s} {}", n.at_limit))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(seeded)
}

// ---------------------------------------------------------------------------------------------
// Baseline

/// Unparks the jobs of one baseline set: gives them the status of their condition.
async fn arm(pool: &PgPool, set: &str) -> anyhow::Result<()> {
    let armed = sqlx::query(
        "UPDATE jobs j SET status = s.job_status
           FROM (SELECT DISTINCT job_id, job_status FROM bench_recovery_seeded
                  WHERE set_name = $1) s
          WHERE j.job_id = s.job_id AND j.status = 'pending'",
    )
    .bind(set)
    .execute(pool)
    .await?
    .rows_affected();
    anyhow::ensure!(armed > 0, "no parked job of the set {set} to arm");
    Ok(())
}

/// Fixes every condition of one baseline set the way the counter-only listener did, one
/// transaction each, on a fresh connection of its own, in the order detection would find
/// them (scenario by scenario, longest idle first). Adds each scenario's time to `times`;
/// returns the conditions fixed and the time it took.
async fn counter_only_baseline(
    options: &PgConnectOptions,
    pool: &PgPool,
    set: &str,
    times: &mut BTreeMap<Scenario, Duration>,
) -> anyhow::Result<(usize, Duration)> {
    let targets: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT s.scenario, coalesce(s.job_variants_id, s.job_id)
           FROM bench_recovery_seeded s
           LEFT JOIN jobs_variants v ON v.job_variants_id = s.job_variants_id
           LEFT JOIN jobs j ON j.job_id = s.job_id AND s.job_variants_id IS NULL
          WHERE s.set_name = $1
          ORDER BY coalesce(v.updated_at, j.updated_at)",
    )
    .bind(set)
    .fetch_all(pool)
    .await?;
    let listener = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(options.clone())
        .await
        .context("opening the baseline's connection")?;
    let progress = spinner();
    let mut total = Duration::ZERO;
    for scenario in Scenario::ALL {
        progress.set_message(format!("baseline ({set}): counter-only {scenario}"));
        let ids: Vec<Uuid> = targets
            .iter()
            .filter(|(name, _)| name == scenario.as_ref())
            .map(|&(_, id)| id)
            .collect();
        let started = Instant::now();
        for &id in &ids {
            let mut tx = listener.begin().await?;
            let updated = sqlx::query(counter_only_sql(scenario))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            anyhow::ensure!(updated == 1, "the baseline found no row {id} to update");
            tx.commit().await?;
        }
        let took = started.elapsed();
        *times.entry(scenario).or_default() += took;
        total += took;
    }
    progress.finish_and_clear();
    listener.close().await;
    Ok((targets.len(), total))
}

/// Takes the baseline's bumps back out of the counts (they have no events), so that verify
/// checks exactly what the log says.
async fn restore_baseline_counts(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "UPDATE jobs_variants v SET retry_count = v.retry_count - 1
           FROM bench_recovery_seeded s
          WHERE s.set_name LIKE 'baseline%' AND v.job_variants_id = s.job_variants_id;
         UPDATE jobs j SET retry_count = j.retry_count - 1
           FROM bench_recovery_seeded s
          WHERE s.set_name LIKE 'baseline%' AND s.job_variants_id IS NULL
            AND j.job_id = s.job_id;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Detection plans

/// EXPLAIN (ANALYZE, FORMAT JSON) of each scenario's detection query with the watchdog's
/// parameters (steps, stuck_after, no job list, the batch limit): `repeats` times as a
/// custom plan (the statement with its parameters bound, planned for those values), then
/// `repeats` times as the generic plan (PREPARE, `plan_cache_mode = force_generic_plan`,
/// EXECUTE). Reports the median execution time and the last plan of each.
async fn explain_detections(
    pool: &PgPool,
    settings: &WatchdogSettings,
    repeats: u32,
) -> anyhow::Result<Vec<Detection>> {
    let mut conn = pool.acquire().await?;
    let progress = spinner();
    let mut detections = Vec::new();
    for scenario in Scenario::ALL {
        let sql = scenario.detect_sql(false);
        progress.set_message(format!(
            "EXPLAIN ANALYZE detection of {scenario}, custom plan"
        ));
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let custom = explain_repeatedly(&mut conn, &explain, Some(settings), repeats)
            .await
            .with_context(|| format!("explaining the detection of {scenario}"))?;

        progress.set_message(format!(
            "EXPLAIN ANALYZE detection of {scenario}, generic plan"
        ));
        sqlx::raw_sql(&format!(
            "PREPARE bench_detect (text[], float8, uuid[], bigint) AS {sql};
             SET plan_cache_mode = force_generic_plan;"
        ))
        .execute(&mut *conn)
        .await?;
        // EXECUTE takes no protocol parameters: the server writes the values as literals.
        let execute: String = sqlx::query_scalar(
            "SELECT format('EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE bench_detect(%L, %s, NULL, %s)',
                           $1::text[], $2::float8, $3::bigint)",
        )
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(DETECT_BATCH)
        .fetch_one(&mut *conn)
        .await?;
        let generic = explain_repeatedly(&mut conn, &execute, None, repeats)
            .await
            .with_context(|| format!("explaining the generic plan of {scenario}'s detection"));
        sqlx::raw_sql("DEALLOCATE bench_detect; RESET plan_cache_mode;")
            .execute(&mut *conn)
            .await?;
        let generic = generic?;
        detections.push(Detection {
            scenario,
            custom,
            generic,
        });
    }
    progress.finish_and_clear();
    for detection in &detections {
        for (kind, plan) in [
            ("custom", &detection.custom),
            ("generic", &detection.generic),
        ] {
            eprintln!(
                "retrylog bench: detection of {} ({kind} plan): {} row(s), execution {:.1} ms \
                 (median of {repeats}), planning {:.1} ms; {}",
                detection.scenario,
                thousands(plan.rows),
                plan.execution_ms,
                plan.planning_ms,
                plan.access_summary(),
            );
            for line in &plan.tree {
                eprintln!("retrylog bench:     {line}");
            }
        }
    }
    Ok(detections)
}

/// Runs one EXPLAIN `repeats` times, with the detection parameters of `settings` bound (or
/// none, when `explain` carries them); the last plan, with the median execution time.
async fn explain_repeatedly(
    conn: &mut PgConnection,
    explain: &str,
    settings: Option<&WatchdogSettings>,
    repeats: u32,
) -> anyhow::Result<PlanSummary> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let mut query = sqlx::query_scalar(explain).persistent(false);
        if let Some(settings) = settings {
            query = query
                .bind(settings.steps.names())
                .bind(settings.stuck_after.as_secs_f64())
                .bind(None::<Vec<Uuid>>)
                .bind(DETECT_BATCH);
        }
        let plan: Value = query.fetch_one(&mut *conn).await?;
        let summary = PlanSummary::from_explain(&plan)?;
        times.push(Duration::from_secs_f64(summary.execution_ms / 1000.0));
        last = Some(summary);
    }
    let mut summary = last.context("no EXPLAIN ran")?;
    summary.execution_ms = median(times).as_secs_f64() * 1000.0;
    Ok(summary)
}

/// How a plan reads one table.
#[derive(Debug, Clone, PartialEq)]
struct Access {
    /// "jobs_variants v".
    relation: String,
    /// "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Seq Scan", with "Parallel" or
    /// "Backward" where the plan says so.
    node: String,
    /// The index, for the three index nodes.
    index: Option<String>,
    /// How often the node ran (a SubPlan or the inner side of a nested loop runs per row).
    loops: f64,
}

impl Access {
    fn describe(&self) -> String {
        let loops = if self.loops > 1.0 {
            format!(", {} loops", thousands(self.loops))
        } else {
            String::new()
        };
        match &self.index {
            Some(index) => format!("{}: {} {index}{loops}", self.relation, self.node),
            None => format!("{}: {}{loops}", self.relation, self.node),
        }
    }
}

/// What one EXPLAIN (ANALYZE, FORMAT JSON) says about a query.
#[derive(Debug, Clone, PartialEq)]
struct PlanSummary {
    /// Every scan of a table, in plan order.
    accesses: Vec<Access>,
    /// The plan as an indented tree, one node a line.
    tree: Vec<String>,
    /// Rows the query returned.
    rows: f64,
    planning_ms: f64,
    execution_ms: f64,
}

/// The plan nodes that read an index.
const INDEX_NODES: [&str; 3] = ["Index Scan", "Index Only Scan", "Bitmap Index Scan"];

impl PlanSummary {
    /// Reads `[{"Plan": {...}, "Planning Time": .., "Execution Time": ..}]`.
    fn from_explain(explain: &Value) -> anyhow::Result<PlanSummary> {
        let top = explain
            .get(0)
            .with_context(|| format!("EXPLAIN returned no plan: {explain}"))?;
        let plan = top
            .get("Plan")
            .with_context(|| format!("EXPLAIN output without a Plan: {top}"))?;
        let mut summary = PlanSummary {
            accesses: Vec::new(),
            tree: Vec::new(),
            rows: number(plan, "Actual Rows"),
            planning_ms: number(top, "Planning Time"),
            execution_ms: number(top, "Execution Time"),
        };
        summary.walk(plan, 0, None);
        Ok(summary)
    }

    /// Visits `node` and its children; `heap` is the relation of an enclosing Bitmap Heap
    /// Scan, which its Bitmap Index Scans read the index of.
    fn walk(&mut self, node: &Value, depth: usize, heap: Option<&str>) {
        let text = |key: &str| node.get(key).and_then(Value::as_str);
        let kind = text("Node Type").unwrap_or("?");
        let parallel = node.get("Parallel Aware").and_then(Value::as_bool) == Some(true);
        let relation = text("Relation Name").map(|name| match text("Alias") {
            Some(alias) if alias != name => format!("{name} {alias}"),
            _ => name.to_string(),
        });
        let index = text("Index Name");
        let backward = text("Scan Direction") == Some("Backward");
        let loops = number(node, "Actual Loops");

        let mut line = "  ".repeat(depth);
        if let Some(subplan) = text("Subplan Name") {
            line.push_str(&format!("{subplan}: "));
        }
        if parallel {
            line.push_str("Parallel ");
        }
        line.push_str(kind);
        if backward {
            line.push_str(" Backward");
        }
        if let Some(index) = index {
            line.push_str(&format!(" using {index}"));
        }
        if let Some(relation) = &relation {
            line.push_str(&format!(" on {relation}"));
        }
        line.push_str(&format!(
            " (rows {} × {} loop{}, {:.2} ms",
            thousands(number(node, "Actual Rows")),
            thousands(loops),
            if loops == 1.0 { "" } else { "s" },
            number(node, "Actual Total Time"),
        ));
        let removed = number(node, "Rows Removed by Filter");
        if removed > 0.0 {
            line.push_str(&format!(", {} removed by filter", thousands(removed)));
        }
        line.push(')');
        self.tree.push(line);

        if INDEX_NODES.contains(&kind) || kind == "Seq Scan" {
            self.accesses.push(Access {
                relation: relation
                    .clone()
                    .or_else(|| heap.map(str::to_string))
                    .unwrap_or_else(|| "?".to_string()),
                node: format!(
                    "{}{kind}{}",
                    if parallel { "Parallel " } else { "" },
                    if backward { " Backward" } else { "" }
                ),
                index: index.map(str::to_string),
                loops,
            });
        }
        let heap = if kind == "Bitmap Heap Scan" {
            relation.as_deref()
        } else {
            heap
        };
        if let Some(children) = node.get("Plans").and_then(Value::as_array) {
            for child in children {
                self.walk(child, depth + 1, heap);
            }
        }
    }

    /// Whether any index is read, and how each table is: "indexes: …; seq scans: …".
    fn access_summary(&self) -> String {
        let (indexed, scanned): (Vec<&Access>, Vec<&Access>) =
            self.accesses.iter().partition(|a| a.index.is_some());
        let list = |accesses: &[&Access]| {
            accesses
                .iter()
                .map(|a| a.describe())
                .collect::<Vec<_>>()
                .join("; ")
        };
        match (indexed.is_empty(), scanned.is_empty()) {
            (false, true) => format!("indexes only: {}", list(&indexed)),
            (false, false) => format!(
                "indexes: {}; sequential scans: {}",
                list(&indexed),
                list(&scanned)
            ),
            (true, _) => format!("no index; sequential scans: {}", list(&scanned)),
        }
    }
}

fn number(node: &Value, key: &str) -> f64 {
    node.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Sweeps

/// One sweep of everything on the watchdog's fresh connection: what `serve` does at start.
async fn first_sweep(watchdog: &PgPool, settings: &WatchdogSettings) -> anyhow::Result<FirstSweep> {
    let (_stop, running) = watch::channel(false);
    let progress = spinner();
    progress.set_message("the first sweep: every seeded condition");
    let began: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(watchdog)
        .await?;
    let started = Instant::now();
    let summary = recovery::sweep(watchdog, settings, &Scope::Everything, &running)
        .await
        .context("the first sweep")?;
    let took = started.elapsed();
    let ended: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(watchdog)
        .await?;
    progress.finish_and_clear();
    let scenarios = scenario_times(watchdog, &summary, began, ended).await?;
    eprintln!(
        "retrylog bench: first sweep: {:.2} s, {} detected, {} retried, {} noted, {} skipped, \
         {} failed",
        took.as_secs_f64(),
        thousands(summary.detected as f64),
        thousands(summary.retried.len() as f64),
        summary.noted,
        summary.skipped,
        summary.failed,
    );
    Ok(FirstSweep {
        began,
        took,
        summary,
        scenarios,
    })
}

/// The sweep's time per scenario. A sweep handles the scenarios one after the other, each
/// detection then its candidates one transaction each, so scenario k took from the last
/// retry or note of scenario k−1 (the sweep's start for the first) to its own last one
/// (the sweep's end for the last): on the server's clock, `recorded_at` of the events and
/// `noted_at` of the notes (each its transaction's start, so the boundaries are off by at
/// most one transaction).
async fn scenario_times(
    pool: &PgPool,
    summary: &SweepSummary,
    began: DateTime<Utc>,
    ended: DateTime<Utc>,
) -> anyhow::Result<Vec<(Scenario, usize, i64, Duration)>> {
    let notes: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT scenario, count(*), max(noted_at) FROM retry_intervention
          WHERE actor = $1 GROUP BY 1",
    )
    .bind(ACTOR)
    .fetch_all(pool)
    .await?;
    let mut times = Vec::new();
    let mut from = began;
    for (index, scenario) in Scenario::ALL.into_iter().enumerate() {
        let retried: Vec<DateTime<Utc>> = summary
            .retried
            .iter()
            .filter(|(s, _)| *s == scenario)
            .map(|(_, event)| event.recorded_at)
            .collect();
        let note = notes.iter().find(|(name, ..)| name == scenario.as_ref());
        let noted = note.map_or(0, |&(_, n, _)| n);
        let last = retried
            .iter()
            .copied()
            .chain(note.map(|&(.., at)| at))
            .max()
            .unwrap_or(from);
        let to = if index + 1 == Scenario::ALL.len() {
            ended
        } else {
            last
        };
        let took = (to - from).to_std().unwrap_or_default();
        times.push((scenario, retried.len(), noted, took));
        from = to;
    }
    Ok(times)
}

/// Compares the log and the notes with the seeded watchdog set: per scenario, every target
/// needing a retry has exactly one event of the watchdog with its scenario, every target at
/// the limit one note and no event. Also returns the watchdog's events on any other target.
async fn check_sweep(
    pool: &PgPool,
    first: &FirstSweep,
) -> anyhow::Result<(BTreeMap<Scenario, Check>, i64)> {
    let mut checks: BTreeMap<Scenario, Check> = Scenario::ALL
        .iter()
        .map(|&s| (s, Check::default()))
        .collect();
    let per_target: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH events AS (
             SELECT job_id, job_variants_id, detail ->> 'scenario' AS scenario
               FROM retry_history WHERE actor = $1
         ), targets AS (
             SELECT s.scenario, s.at_limit, count(e.job_id) AS events,
                    count(e.job_id) FILTER (WHERE e.scenario = s.scenario) AS matching,
                    EXISTS (SELECT 1 FROM retry_intervention i
                             WHERE i.job_id = s.job_id
                               AND i.job_variants_id IS NOT DISTINCT FROM s.job_variants_id
                               AND i.scenario = s.scenario) AS noted,
                    coalesce((SELECT v.updated_at < $3 FROM jobs_variants v
                               WHERE v.job_variants_id = s.job_variants_id),
                             (SELECT j.updated_at < $3 AND j.status = s.job_status FROM jobs j
                               WHERE j.job_id = s.job_id AND s.job_variants_id IS NULL))
                        AS untouched
               FROM bench_recovery_seeded s
               LEFT JOIN events e ON e.job_id = s.job_id
                    AND e.job_variants_id IS NOT DISTINCT FROM s.job_variants_id
              WHERE s.set_name = $2
              GROUP BY s.scenario, s.at_limit, s.job_id, s.job_variants_id, s.job_status
         )
         SELECT scenario,
                count(*) FILTER (WHERE NOT at_limit),
                count(*) FILTER (WHERE NOT at_limit AND events = 1 AND matching = 1),
                count(*) FILTER (WHERE at_limit),
                count(*) FILTER (WHERE at_limit AND events = 0 AND noted AND untouched)
           FROM targets GROUP BY scenario",
    )
    .bind(ACTOR)
    .bind(WATCHDOG_SET)
    .bind(first.began)
    .fetch_all(pool)
    .await?;
    for (scenario, seeded, once, at_limit, noted_only) in per_target {
        let check = checks.entry(parse_scenario(&scenario)?).or_default();
        check.seeded = seeded;
        check.once = once;
        check.at_limit = at_limit;
        check.noted_only = noted_only;
    }
    let events: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT detail ->> 'scenario', count(*) FROM retry_history WHERE actor = $1 GROUP BY 1",
    )
    .bind(ACTOR)
    .fetch_all(pool)
    .await?;
    let mut strays = 0;
    for (scenario, count) in events {
        match scenario.as_deref().map(parse_scenario) {
            Some(Ok(scenario)) => checks.entry(scenario).or_default().events = count,
            _ => strays += count,
        }
    }
    let notes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT scenario, count(*) FROM retry_intervention WHERE actor = $1 GROUP BY 1",
    )
    .bind(ACTOR)
    .fetch_all(pool)
    .await?;
    for (scenario, count) in notes {
        checks.entry(parse_scenario(&scenario)?).or_default().noted = count;
    }
    for (scenario, _) in &first.summary.retried {
        checks.entry(*scenario).or_default().summarized += 1;
    }
    strays += sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM retry_history h
          WHERE h.actor = $1
            AND NOT EXISTS (SELECT 1 FROM bench_recovery_seeded s
                             WHERE s.set_name = $2 AND NOT s.at_limit
                               AND s.job_id = h.job_id
                               AND s.job_variants_id IS NOT DISTINCT FROM h.job_variants_id)",
    )
    .bind(ACTOR)
    .bind(WATCHDOG_SET)
    .fetch_one(pool)
    .await?;
    for (scenario, check) in &checks {
        eprintln!(
            "retrylog bench: {scenario}: seeded {}, events {} on {} target(s) each retried \
             once, sweep summary {}; at the limit {}, noted {} ({} with no event and \
             untouched){}",
            thousands(check.seeded as f64),
            thousands(check.events as f64),
            thousands(check.once as f64),
            thousands(check.summarized as f64),
            check.at_limit,
            check.noted,
            check.noted_only,
            if check.retried_once() && check.noted_once() {
                ""
            } else {
                " — MISMATCH"
            },
        );
    }
    if strays > 0 {
        eprintln!("retrylog bench: {strays} event(s) of the watchdog on targets not seeded");
    }
    Ok((checks, strays))
}

fn parse_scenario(name: &str) -> anyhow::Result<Scenario> {
    name.parse()
        .map_err(|_| anyhow::anyhow!("unknown scenario \"{name}\""))
}

/// `count` sweeps of everything with nothing left to do, one after the other on the
/// watchdog's connection: each one's time and what it detected.
async fn steady_sweeps(
    watchdog: &PgPool,
    settings: &WatchdogSettings,
    count: u32,
) -> anyhow::Result<Vec<(Duration, usize)>> {
    let (_stop, running) = watch::channel(false);
    let progress = spinner();
    let mut sweeps = Vec::new();
    for index in 1..=count {
        progress.set_message(format!("steady sweep {index}/{count}"));
        let started = Instant::now();
        let summary = recovery::sweep(watchdog, settings, &Scope::Everything, &running)
            .await
            .context("a steady sweep")?;
        sweeps.push((started.elapsed(), summary.detected));
    }
    progress.finish_and_clear();
    eprintln!(
        "retrylog bench: steady sweeps (nothing to do): {} ms",
        sweeps
            .iter()
            .map(|(took, detected)| {
                let ms = format!("{:.1}", took.as_secs_f64() * 1000.0);
                if *detected == 0 {
                    ms
                } else {
                    format!("{ms} ({detected} detected!)")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(sweeps)
}

/// How often the watchdog's connection planned each detection statement generically and
/// how often with custom plans (`pg_prepared_statements` holds sqlx's statements too).
async fn plan_cache(watchdog: &PgPool) -> anyhow::Result<BTreeMap<Scenario, PlanCache>> {
    let statements: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
            .fetch_all(watchdog)
            .await?;
    let mut caches = BTreeMap::new();
    for scenario in Scenario::ALL {
        let sql = scenario.detect_sql(false);
        if let Some(&(_, generic, custom)) = statements.iter().find(|(text, ..)| *text == sql) {
            caches.insert(scenario, PlanCache { generic, custom });
        }
    }
    for (scenario, cache) in &caches {
        eprintln!(
            "retrylog bench: plan cache of the detection of {scenario} on the watchdog's \
             connection: {} custom plan(s), {} generic",
            cache.custom, cache.generic
        );
    }
    Ok(caches)
}

// ---------------------------------------------------------------------------------------------
// Output

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Every figure as a line of the table.
fn figure_lines(args: &RecoveryArgs, figures: &Figures) -> Vec<Line> {
    let mut lines = Vec::new();
    let scale = format!(
        "{} jobs, {} variants",
        thousands(figures.jobs as f64),
        thousands(figures.variants as f64)
    );
    for detection in &figures.detections {
        for (kind, plan) in [
            ("custom", &detection.custom),
            ("generic", &detection.generic),
        ] {
            lines.push(Line::new(
                "detection",
                format!(
                    "{} ({kind} plan), {} row(s), median of {}: {}",
                    detection.scenario,
                    thousands(plan.rows),
                    args.explain_repeats,
                    plan.access_summary()
                ),
                Unit::Millis,
                plan.execution_ms,
            ));
        }
    }

    let first = &figures.first;
    let retried = first.summary.retried.len();
    let baseline_total: Duration = figures.baseline.values().sum();
    let baseline_conditions: i64 = figures.seeded.values().map(|s| s.baseline).sum();
    lines.push(Line::new(
        "first sweep",
        format!(
            "recovery::sweep(Scope::Everything) at start, {scale}: {} detected, {} retried, {} \
             noted at the limit, {} skipped, {} failed",
            thousands(first.summary.detected as f64),
            thousands(retried as f64),
            first.summary.noted,
            first.summary.skipped,
            first.summary.failed,
        ),
        Unit::Millis,
        ms(first.took),
    ));
    lines.push(
        Line::new(
            "retries/s",
            format!(
                "first sweep: {} retries in {:.2} s (detection, claims and {} notes included)",
                thousands(retried as f64),
                first.took.as_secs_f64(),
                first.summary.noted
            ),
            Unit::PerSecond,
            retried as f64 / first.took.as_secs_f64(),
        )
        .baseline(
            format!(
                "counter-only UPDATE, {} conditions, no detection",
                thousands(baseline_conditions as f64)
            ),
            baseline_conditions as f64 / baseline_total.as_secs_f64(),
        ),
    );
    for &(scenario, retried, noted, took) in &first.scenarios {
        let baseline = figures.seeded.get(&scenario).map_or(0, |s| s.baseline);
        let mut line = Line::new(
            "retries/s",
            format!(
                "{scenario}: {} retried, {noted} noted, {:.2} s of the sweep",
                thousands(retried as f64),
                took.as_secs_f64()
            ),
            Unit::PerSecond,
            retried as f64 / took.as_secs_f64().max(f64::EPSILON),
        );
        if let Some(time) = figures.baseline.get(&scenario) {
            line = line.baseline(
                format!(
                    "counter-only UPDATE, {} conditions",
                    thousands(baseline as f64)
                ),
                baseline as f64 / time.as_secs_f64().max(f64::EPSILON),
            );
        }
        lines.push(line);
    }
    for (scenario, check) in &figures.checks {
        lines.push(Line {
            figure: "retried once",
            condition: format!(
                "{scenario}: seeded {}, the log has {} event(s) of the watchdog, {} target(s) \
                 with exactly one",
                thousands(check.seeded as f64),
                thousands(check.events as f64),
                thousands(check.once as f64)
            ),
            connections: None,
            events: None,
            unit: Unit::Millis,
            ours: None,
            baseline: None,
            goal: Some(Goal::Holds("= seeded")),
            clean: Some(check.retried_once()),
        });
    }
    let at_limit: i64 = figures.checks.values().map(|c| c.at_limit).sum();
    let noted: i64 = figures.checks.values().map(|c| c.noted).sum();
    let noted_only: i64 = figures.checks.values().map(|c| c.noted_only).sum();
    lines.push(Line {
        figure: "interventions",
        condition: format!(
            "at the limit ({MAX_RETRIES}): seeded {at_limit}, noted {noted}, {noted_only} of \
             them with no event and no state change; {} event(s) on targets not seeded",
            figures.strays
        ),
        connections: None,
        events: None,
        unit: Unit::Millis,
        ours: None,
        baseline: None,
        goal: Some(Goal::Holds("= seeded")),
        clean: Some(figures.checks.values().all(|c| c.noted_once()) && figures.strays == 0),
    });

    if let Some(&(second, detected)) = figures.steady.first() {
        lines.push(Line::new(
            "steady sweep",
            format!("the second sweep, nothing left to do ({detected} detected), {scale}"),
            Unit::Millis,
            ms(second),
        ));
    }
    if figures.steady.len() > 1 {
        let detected: usize = figures.steady.iter().map(|&(_, d)| d).sum();
        let caches = figures
            .plan_cache
            .iter()
            .map(|(s, c)| format!("{s} {}/{}", c.generic, c.generic + c.custom))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(Line::new(
            "steady sweep",
            format!(
                "median of {} sweeps with nothing to do ({detected} detected); detections \
                 planned generically: {caches}",
                figures.steady.len()
            ),
            Unit::Millis,
            ms(median(
                figures.steady.iter().map(|&(took, _)| took).collect(),
            )),
        ));
    }

    let verify = &figures.verify;
    let mut line = Line::new(
        "verify events/s",
        format!(
            "after the sweeps: {} events in {} streams, {}",
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
    .goal(Goal::Holds("clean"));
    line.clean = Some(verify.mismatches == 0);
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plan_summary_names_every_index_and_sequential_scan() {
        let explain = json!([{
            "Plan": {
                "Node Type": "Limit", "Actual Rows": 2.0, "Actual Loops": 1.0,
                "Actual Total Time": 3.5,
                "Plans": [{
                    "Node Type": "Nested Loop", "Actual Rows": 2.0, "Actual Loops": 1.0,
                    "Plans": [
                        {"Node Type": "Bitmap Heap Scan", "Relation Name": "jobs_variants",
                         "Alias": "v", "Actual Rows": 2.0, "Actual Loops": 1.0,
                         "Plans": [{"Node Type": "Bitmap Index Scan",
                                    "Index Name": "idx_jobs_variants_status_retry_count",
                                    "Actual Rows": 2.0, "Actual Loops": 1.0}]},
                        {"Node Type": "Seq Scan", "Relation Name": "jobs", "Alias": "j",
                         "Parallel Aware": true, "Actual Rows": 1.0, "Actual Loops": 2.0,
                         "Rows Removed by Filter": 99.0},
                        {"Node Type": "Index Only Scan", "Parent Relationship": "SubPlan",
                         "Subplan Name": "SubPlan 1", "Scan Direction": "Backward",
                         "Index Name": "retry_history_stream_attempt_key",
                         "Relation Name": "retry_history", "Alias": "h",
                         "Actual Rows": 0.0, "Actual Loops": 2.0}
                    ]
                }]
            },
            "Planning Time": 0.25,
            "Execution Time": 3.75
        }]);
        let plan = PlanSummary::from_explain(&explain).unwrap();
        assert_eq!(plan.rows, 2.0);
        assert_eq!(plan.execution_ms, 3.75);
        assert_eq!(plan.planning_ms, 0.25);
        assert_eq!(
            plan.accesses
                .iter()
                .map(Access::describe)
                .collect::<Vec<_>>(),
            [
                "jobs_variants v: Bitmap Index Scan idx_jobs_variants_status_retry_count",
                "jobs j: Parallel Seq Scan, 2 loops",
                "retry_history h: Index Only Scan Backward retry_history_stream_attempt_key, \
                 2 loops",
            ]
        );
        assert_eq!(
            plan.access_summary(),
            "indexes: jobs_variants v: Bitmap Index Scan idx_jobs_variants_status_retry_count; \
             retry_history h: Index Only Scan Backward retry_history_stream_attempt_key, 2 \
             loops; sequential scans: jobs j: Parallel Seq Scan, 2 loops"
        );
        assert_eq!(plan.tree.len(), 6);
        assert_eq!(
            plan.tree[4],
            "    Parallel Seq Scan on jobs j (rows 1 × 2 loops, 0.00 ms, 99 removed by filter)"
        );
        assert!(plan.tree[5].starts_with(
            "    SubPlan 1: Index Only Scan Backward using retry_history_stream_attempt_key on \
             retry_history h"
        ));
    }

    #[test]
    fn a_plan_without_an_index_says_so() {
        let explain = json!([{
            "Plan": {"Node Type": "Seq Scan", "Relation Name": "jobs", "Alias": "jobs",
                     "Actual Rows": 5.0, "Actual Loops": 1.0},
            "Execution Time": 1.0
        }]);
        let plan = PlanSummary::from_explain(&explain).unwrap();
        assert_eq!(
            plan.access_summary(),
            "no index; sequential scans: jobs: Seq Scan"
        );
        assert!(PlanSummary::from_explain(&json!([])).is_err());
    }

    #[test]
    fn the_baseline_bumps_the_count_with_the_watchdogs_state_change() {
        for scenario in Scenario::ALL {
            let sql = counter_only_sql(scenario);
            assert!(sql.contains("retry_count = retry_count + 1"), "{sql}");
            assert!(sql.contains("updated_at = now()"), "{sql}");
            assert_eq!(
                sql.contains("status = 'done'"),
                matches!(scenario, Scenario::Failed | Scenario::FinalStep),
                "{sql}"
            );
            assert_eq!(
                sql.contains("UPDATE jobs "),
                scenario == Scenario::FinalStep
            );
        }
    }
}
