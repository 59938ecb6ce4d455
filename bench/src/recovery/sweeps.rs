//! The sweeps of `retrylog-bench recovery`: the first sweep of everything (timed per
//! scenario from the server's timestamps), the checks that every seeded condition was
//! retried exactly once and every target at the limit noted, the steady sweeps with nothing
//! to do, and what the plan cache did with the detection statements.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use retrylog::config::WatchdogSettings;
use retrylog::recovery::{self, Scenario, Scope, SweepSummary};

use super::seed::WATCHDOG_SET;
use crate::figures::thousands;
use crate::{progress, ACTOR};

/// The first sweep, and what the log says about it.
#[derive(Debug, Clone)]
pub struct FirstSweep {
    /// When it started, on the server's clock.
    pub began: DateTime<Utc>,
    pub took: Duration,
    pub summary: SweepSummary,
    /// Per scenario: retries, notes, and the sweep's time spent on it (from the server's
    /// timestamps of each retry and note, see `scenario_times`).
    pub scenarios: Vec<(Scenario, usize, i64, Duration)>,
}

/// The checks of one scenario after the first sweep.
#[derive(Debug, Clone, Default)]
pub struct Check {
    /// Seeded targets of the watchdog's set needing a retry, and at the limit.
    pub seeded: i64,
    pub at_limit: i64,
    /// Events the watchdog recorded with this scenario (`detail.scenario`).
    pub events: i64,
    /// Seeded targets with exactly one event of the watchdog, of their scenario.
    pub once: i64,
    /// Retries of this scenario in the sweep's summary.
    pub summarized: usize,
    /// Notes of this scenario in retry_intervention, and seeded targets at the limit that
    /// are noted, have no event of the watchdog and still the state they were seeded with
    /// (not updated since before the sweep).
    pub noted: i64,
    pub noted_only: i64,
}

impl Check {
    pub fn retried_once(&self) -> bool {
        self.events == self.seeded
            && self.once == self.seeded
            && self.summarized as i64 == self.seeded
    }

    pub fn noted_once(&self) -> bool {
        self.noted == self.at_limit && self.noted_only == self.at_limit
    }
}

/// What the plan cache did with a detection statement on the watchdog's connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanCache {
    pub generic: i64,
    pub custom: i64,
}

/// One sweep of everything on the watchdog's fresh connection: what `serve` does at start.
pub async fn first_sweep(
    watchdog: &PgPool,
    settings: &WatchdogSettings,
) -> anyhow::Result<FirstSweep> {
    let (_stop, running) = watch::channel(false);
    let progress = progress::spinner();
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
        "retrylog-bench: first sweep: {:.2} s, {} detected, {} retried, {} noted, {} skipped, \
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
pub async fn check_sweep(
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
            "retrylog-bench: {scenario}: seeded {}, events {} on {} target(s) each retried \
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
        eprintln!("retrylog-bench: {strays} event(s) of the watchdog on targets not seeded");
    }
    Ok((checks, strays))
}

fn parse_scenario(name: &str) -> anyhow::Result<Scenario> {
    name.parse()
        .map_err(|_| anyhow::anyhow!("unknown scenario \"{name}\""))
}

/// `count` sweeps of everything with nothing left to do, one after the other on the
/// watchdog's connection: each one's time and what it detected.
pub async fn steady_sweeps(
    watchdog: &PgPool,
    settings: &WatchdogSettings,
    count: u32,
) -> anyhow::Result<Vec<(Duration, usize)>> {
    let (_stop, running) = watch::channel(false);
    let progress = progress::spinner();
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
        "retrylog-bench: steady sweeps (nothing to do): {} ms",
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
pub async fn plan_cache(watchdog: &PgPool) -> anyhow::Result<BTreeMap<Scenario, PlanCache>> {
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
            "retrylog-bench: plan cache of the detection of {scenario} on the watchdog's \
             connection: {} custom plan(s), {} generic",
            cache.custom, cache.generic
        );
    }
    Ok(caches)
}
