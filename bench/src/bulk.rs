//! `retrylog-bench bulk`: one bulk recovery (`recovery::bulk::recover_many`, what
//! `retrylog recover --state …`, `POST /api/v1/recover/bulk` and the Targets page run) of N
//! targets needing intervention, against N single recoveries (`recovery::recover_by_hand`,
//! each in a transaction of its own, as `retrylog recover --variant-id` and
//! `POST /api/v1/recover` run it) of the same kind of targets, in one run in the bench database.
//!
//! 1. **Seed** 2N jobs running at `prepare`, each with one variant failed there, retried three
//!    times through `record_retry` and noted at the limit (the watchdog's note): N for the bulk
//!    recovery, N for the singles, whose last retry is at `generate` so the bulk filter
//!    (`step=prepare`) does not match them.
//! 2. **Singles, first half**: N/2 single recoveries, one after another on one connection.
//! 3. **Bulk**: one request, `state=needs_intervention&step=prepare`, max N: its N events.
//! 4. **Singles, second half**, right after: the halves bracket the bulk request, so that
//!    background load weighs on both sides of the ratio.
//! 5. **Checks**: the bulk request recovered N and skipped none; `replay::verify` is clean.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::config::Steps;
use retrylog::connect::Connected;
use retrylog::recovery::bulk::{self, BulkRequest};
use retrylog::recovery::{self, ManualRecovery, ManualTarget};
use retrylog::targets::{Filter, State, StuckRule};

use crate::database::{fresh_database, in_bench_database, print_server, timed_verify};
use crate::figures::{figure_table, thousands, Goal, Line, Unit, VerifyFigure};
use crate::ACTOR;

/// `retrylog-bench bulk`.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// Targets recovered by the bulk request, and by single recoveries (at most 500, a bulk
    /// request's limit).
    #[arg(long, default_value_t = 500, value_name = "N",
          value_parser = clap::value_parser!(i64).range(2..=bulk::MAX_TARGETS))]
    pub targets: i64,

    /// Keep the bench database afterwards.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl BulkArgs {
    pub fn smoke(&mut self) {
        self.targets = 10;
    }
}

/// What one run measured.
struct Figures {
    bulk: Duration,
    recovered: usize,
    skipped: usize,
    singles: Duration,
    single_events: usize,
    verify: VerifyFigure,
}

pub async fn run(connected: &Connected, args: BulkArgs) -> anyhow::Result<ExitCode> {
    let figures = in_bench_database(
        connected,
        "retrylog-bench bulk",
        args.keep,
        async |options| measure(connected, options, &args).await,
    )
    .await?;
    let n = args.targets as usize;
    let per_second = |events: usize, took: Duration| events as f64 / took.as_secs_f64();
    let bulk_rate = per_second(figures.recovered, figures.bulk);
    let single_rate = per_second(figures.single_events, figures.singles);
    let mut checked = Line::check(
        "bulk checks",
        format!(
            "{} recovered, {} skipped of {n} needing intervention",
            figures.recovered, figures.skipped
        ),
        "all recovered",
        figures.recovered == n && figures.skipped == 0,
    );
    checked.events = Some(figures.recovered as u64);
    let lines = vec![
        Line::new(
            "bulk recover",
            format!(
                "one request, state=needs_intervention step=prepare max={n}: {} events in {:.3} s",
                thousands(figures.recovered as f64),
                figures.bulk.as_secs_f64()
            ),
            Unit::PerSecond,
            bulk_rate,
        )
        .events(figures.recovered as u64)
        .baseline("single recovers", single_rate)
        .goal(Goal::AtLeast(1.0)),
        Line::new(
            "single recovers",
            format!(
                "{} recover_by_hand, a transaction each, one connection: {:.3} s",
                thousands(figures.single_events as f64),
                figures.singles.as_secs_f64()
            ),
            Unit::PerSecond,
            single_rate,
        )
        .events(figures.single_events as u64),
        checked,
        Line::verify("after both", &figures.verify),
    ];
    let format = args.format.format;
    figure_table(&lines, format, &["events", "unit"]).print(format)?;
    eprintln!(
        "retrylog-bench: bulk {:.0} events/s, single {:.0} events/s: ratio {:.2}",
        bulk_rate,
        single_rate,
        bulk_rate / single_rate
    );
    if figures.recovered != n || figures.skipped != 0 || figures.verify.mismatches != 0 {
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &BulkArgs,
) -> anyhow::Result<Figures> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let n = args.targets;
    let steps: Steps = retrylog::config::DEFAULT_STEPS
        .parse()
        .map_err(anyhow::Error::msg)?;
    let singles = seed(&pool, n).await.context("seeding the targets")?;

    let (first, second) = singles.split_at(singles.len() / 2);
    let mut took = recover_singles(&pool, first, &steps).await?;
    let request = BulkRequest {
        filter: Filter {
            state: Some(State::NeedsIntervention),
            step: Some("prepare".into()),
            ..Filter::default()
        },
        stuck: StuckRule {
            steps: steps.clone(),
            stuck_after: Duration::from_secs(300),
        },
        asked: json!({"state": "needs_intervention", "step": "prepare"}),
        seen: None,
        note: "retrylog-bench bulk".into(),
        actor: ACTOR.into(),
        max: n,
        dry_run: false,
        request_id: Uuid::new_v4().to_string(),
    };
    let started = Instant::now();
    let result = bulk::recover_many(&pool, &request, &steps).await?;
    let bulk = started.elapsed();
    took += recover_singles(&pool, second, &steps).await?;
    let verify = timed_verify(&pool, "verify").await?;
    Ok(Figures {
        bulk,
        recovered: result.recovered.len(),
        skipped: result.skipped.len(),
        singles: took,
        single_events: singles.len(),
        verify,
    })
}

/// 2N jobs at `prepare`, each with a failed variant retried three times and noted at the
/// limit; the bulk request's N last retried at `prepare`, the others at `generate`. Answers the
/// singles' variant ids.
async fn seed(pool: &PgPool, n: i64) -> anyhow::Result<Vec<Uuid>> {
    // Readable ids: job i is 0…0i, its variant 0…1 0…0i.
    let id = |kind: u32, i: i64| Uuid::from_u128(((kind as u128) << 64) | i as u128);
    let jobs: Vec<Uuid> = (1..=2 * n).map(|i| id(0, i)).collect();
    let variants: Vec<Uuid> = (1..=2 * n).map(|i| id(1, i)).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step)
         SELECT j, 'running', 'prepare' FROM unnest($1::uuid[]) j",
    )
    .bind(&jobs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
         SELECT v, j, 0, 'failed', 'prepare' FROM unnest($1::uuid[], $2::uuid[]) AS t(v, j)",
    )
    .bind(&variants)
    .bind(&jobs)
    .execute(&mut *tx)
    .await?;
    // Three retries each, the last at the step that tells the bulk set from the singles.
    sqlx::query(
        "SELECT record_retry(job_id => t.j, job_variants_id => t.v, reason => 'failed',
                             step => CASE WHEN t.i <= $3 OR a < 3 THEN 'prepare'
                                          ELSE 'generate' END,
                             actor => 'retrylog-bench', detail => '{\"scenario\": \"failed\"}')
           FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS t(v, j, i),
                generate_series(1, 3) a
          ORDER BY t.i, a",
    )
    .bind(&variants)
    .bind(&jobs)
    .bind(n)
    .execute(&mut *tx)
    .await?;
    // The watchdog's note at the limit of 3: what needs_intervention reads.
    sqlx::query(
        "INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         SELECT j, v, 3, 3, 'failed', 'failed', 'prepare', 'failed', 'retrylog-bench', '{}'
           FROM unnest($1::uuid[], $2::uuid[]) AS t(v, j)",
    )
    .bind(&variants)
    .bind(&jobs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(variants[n as usize..].to_vec())
}

/// Each variant recovered by the single operation, in a transaction of its own; the time of
/// them all.
async fn recover_singles(
    pool: &PgPool,
    variants: &[Uuid],
    steps: &Steps,
) -> anyhow::Result<Duration> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    for &variant in variants {
        let request = ManualRecovery {
            target: ManualTarget::Variant(variant),
            note: "retrylog-bench single".into(),
            actor: ACTOR.into(),
            to_status: None,
            event_id: None,
        };
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        recovery::recover_by_hand(&mut tx, &request, steps).await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}
