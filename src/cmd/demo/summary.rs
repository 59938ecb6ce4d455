//! What the demo prints at the end, read from the demo database once the pipeline and the
//! watchdog have stopped: the jobs, the retries by scenario and reason, the most retried
//! targets (the `report top-variants` / `top-jobs` queries), the targets that reached the
//! limit, what became of the retries (the success rate by scenario), and `verify`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::live::Labels;
use super::pipeline::PipelineCounts;
use super::DemoFormat;
use crate::config::WatchdogSettings;
use crate::outcome;
use crate::output::{Format, Rows};
use crate::recovery::Scenario;
use crate::replay::{self, VerifyReport};
use crate::report;
use crate::window::Moment;

/// Most retried variants and jobs listed.
const TOP_VARIANTS: i64 = 5;
const TOP_JOBS: i64 = 3;

/// How the run was set up.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub seed: u64,
    pub jobs: usize,
    pub variants: usize,
    pub flaky: usize,
    pub duration: Duration,
    /// How long the pipeline actually ran (shorter when interrupted).
    pub ran: Duration,
    pub interrupted: bool,
    pub started_db: DateTime<Utc>,
}

/// One scenario's retries.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ScenarioRetries {
    scenario: String,
    reason: String,
    retries: i64,
    targets: i64,
    highest_attempt: i32,
    recovered: i64,
    retried_again: i64,
    gave_up: i64,
}

impl ScenarioRetries {
    /// recovered ÷ resolved, as `report outcomes` computes it; `None` when none is resolved.
    fn success_rate(&self) -> Option<f64> {
        let resolved = self.recovered + self.retried_again + self.gave_up;
        (resolved > 0).then(|| self.recovered as f64 / resolved as f64)
    }
}

/// A target the watchdog stopped at the limit.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Intervention {
    job_id: Uuid,
    job_variants_id: Option<Uuid>,
    scenario: String,
    reason: String,
    step: Option<String>,
    status: Option<String>,
    retry_count: i32,
    max_retries: i32,
    noted_after: f64,
}

/// The jobs at the end.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
struct JobCounts {
    started: i64,
    done: i64,
    running: i64,
    /// Running jobs with a target at the limit: they wait for a human.
    held_up: i64,
    /// Jobs the watchdog's final_step recovery set done.
    done_by_watchdog: i64,
}

/// Everything the summary shows.
pub struct Summary {
    facts: RunFacts,
    settings: WatchdogSettings,
    pipeline: Value,
    jobs: JobCounts,
    retries: Vec<ScenarioRetries>,
    top: Rows,
    interventions: Vec<Intervention>,
    labels: Labels,
    most_retried_variant: Option<Uuid>,
    pub verify: VerifyReport,
}

impl Summary {
    /// Reads the summary from the demo database.
    pub async fn read(
        pool: &PgPool,
        facts: RunFacts,
        settings: WatchdogSettings,
        counts: &PipelineCounts,
        labels: Labels,
    ) -> anyhow::Result<Summary> {
        let pipeline = json!({
            "runs": PipelineCounts::get(&counts.runs),
            "failed_runs": PipelineCounts::get(&counts.failures),
            "notifications_acted_on": PipelineCounts::get(&counts.picked_up),
            "notifications_missed": PipelineCounts::get(&counts.missed_done),
            "completions_missed": PipelineCounts::get(&counts.missed_completions),
        });
        let jobs: JobCounts = sqlx::query_as(
            "SELECT count(*) AS started,
                    count(*) FILTER (WHERE status = 'done') AS done,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    count(*) FILTER (WHERE status = 'running' AND EXISTS (
                        SELECT 1 FROM retry_intervention i WHERE i.job_id = j.job_id)) AS held_up,
                    (SELECT count(DISTINCT job_id) FROM retry_history
                      WHERE job_variants_id IS NULL AND detail->>'scenario' = 'final_step')
                        AS done_by_watchdog
               FROM jobs j",
        )
        .fetch_one(pool)
        .await?;
        let scenarios: Vec<String> = Scenario::ALL.iter().map(|s| s.to_string()).collect();
        let reasons: Vec<String> = Scenario::ALL
            .iter()
            .map(|s| s.reason().to_string())
            .collect();
        // The watchdog has stopped: look at the pipeline's rows once more, as its next sweep
        // would, so a retry whose target moved on in the last moments is not left open.
        let mut conn = pool.acquire().await?;
        outcome::observe(&mut conn, settings.steps.names(), &settings.instance, None).await?;
        drop(conn);
        let retries = sqlx::query_as(
            "SELECT s.scenario, s.reason, count(h.seq) AS retries,
                    count(DISTINCT coalesce(h.job_variants_id, h.job_id)) AS targets,
                    coalesce(max(h.attempt), 0) AS highest_attempt,
                    count(r.seq) FILTER (WHERE r.outcome = 'recovered') AS recovered,
                    count(r.seq) FILTER (WHERE r.outcome = 'retried_again') AS retried_again,
                    count(r.seq) FILTER (WHERE r.outcome = 'gave_up') AS gave_up
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(scenario, reason, n)
               LEFT JOIN retry_history h
                      ON h.detail->>'scenario' = s.scenario AND h.reason::text = s.reason
               LEFT JOIN retry_outcome r ON r.seq = h.seq
              GROUP BY s.scenario, s.reason, s.n
              ORDER BY s.n",
        )
        .bind(&scenarios)
        .bind(&reasons)
        .fetch_all(pool)
        .await?;
        let interventions = sqlx::query_as(
            "SELECT job_id, job_variants_id, scenario, reason::text AS reason, step, status,
                    retry_count, max_retries,
                    extract(epoch FROM noted_at - $1)::float8 AS noted_after
               FROM retry_intervention ORDER BY seq",
        )
        .bind(facts.started_db)
        .fetch_all(pool)
        .await?;
        let (top, most_retried_variant) = top_targets(pool, &labels).await?;
        let verify = replay::verify(pool, |_| {}).await?;
        Ok(Summary {
            facts,
            settings,
            pipeline,
            jobs,
            retries,
            top,
            interventions,
            labels,
            most_retried_variant,
            verify,
        })
    }

    /// Prints the summary on stdout; `explore` is the URL of the kept database.
    pub fn print(&self, format: DemoFormat, explore: Option<&str>) -> anyhow::Result<()> {
        match format {
            DemoFormat::Json => {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&self.json(explore))?
                )?;
                Ok(())
            }
            DemoFormat::Table => self.print_table(explore),
        }
    }

    fn print_table(&self, explore: Option<&str>) -> anyhow::Result<()> {
        // Written, not println!: a closed pipe is an error to return, not a panic.
        let out = &mut std::io::stdout().lock();
        let facts = &self.facts;
        let jobs = &self.jobs;
        let counts = &self.pipeline;
        writeln!(out)?;
        writeln!(
            out,
            "retrylog demo, seed {} ({} × {}, {} flaky, {} s{}):",
            facts.seed,
            super::plural(facts.jobs, "job"),
            super::plural(facts.variants, "variant"),
            facts.flaky,
            facts.ran.as_secs(),
            if facts.interrupted {
                ", interrupted"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "  jobs: {} started, {} done ({} of them by the watchdog's final_step recovery), {} \
             still running ({} held up by a target at the limit)",
            jobs.started, jobs.done, jobs.done_by_watchdog, jobs.running, jobs.held_up
        )?;
        writeln!(
            out,
            "  pipeline: {} step runs, {} failed; {} done notifications acted on, {} missed and \
             {} job completions missed on purpose",
            counts["runs"],
            counts["failed_runs"],
            counts["notifications_acted_on"],
            counts["notifications_missed"],
            counts["completions_missed"]
        )?;

        writeln!(
            out,
            "\nRetries by scenario, and what became of them (watchdog {}; success_rate = \
             recovered / resolved):",
            self.settings.instance
        )?;
        self.retry_rows().print(Format::Table)?;

        writeln!(out, "\nMost retried targets:")?;
        if self.top.rows.is_empty() {
            writeln!(out, "  none")?;
        } else {
            self.top.print(Format::Table)?;
        }

        writeln!(
            out,
            "\nNeeding manual intervention (the limit is {} retries):",
            self.settings.max_retries
        )?;
        if self.interventions.is_empty() {
            writeln!(out, "  none")?;
        } else {
            self.intervention_rows().print(Format::Table)?;
        }

        let verify = &self.verify;
        if verify.is_clean() {
            writeln!(
                out,
                "\nverify: clean — {} events in {} streams, every hash link, retry_count and \
                 outcome matches the log",
                verify.events, verify.streams
            )?;
        } else {
            writeln!(
                out,
                "\nverify: {} mismatch(es) in {} events:",
                verify.mismatches.len(),
                verify.events
            )?;
            for mismatch in &verify.mismatches {
                writeln!(
                    out,
                    "  {}",
                    crate::text::for_terminal(&mismatch.to_string())
                )?;
            }
        }

        if let Some(url) = explore {
            writeln!(out, "\nThe database is kept; explore it with:")?;
            // A command that works as printed, installed or not (`cmd/invocation.rs`).
            let retrylog = format!(
                "{} --database-url '{url}'",
                crate::cmd::invocation::program()
            );
            writeln!(out, "  {retrylog} report top-variants")?;
            if let Some(variant) = self.most_retried_variant {
                writeln!(out, "  {retrylog} history --variant-id {variant}")?;
            }
            writeln!(out, "  {retrylog} report stats")?;
            writeln!(out, "  {retrylog} report outcomes --by step")?;
            writeln!(out, "  psql '{url}' -c 'SELECT * FROM retry_intervention'")?;
        } else {
            writeln!(
                out,
                "\nRun again with --seed {} to repeat this run, with --keep to explore the \
                 database afterwards.",
                facts.seed
            )?;
        }
        Ok(())
    }

    fn retry_rows(&self) -> Rows {
        let mut rows = Rows::new(&[
            "scenario",
            "reason",
            "retries",
            "targets",
            "highest_attempt",
            "recovered",
            "retried_again",
            "gave_up",
            "open",
            "success_rate",
        ]);
        let rate = |rate: Option<f64>| {
            rate.map_or(Value::Null, |rate| {
                Value::from(format!("{:.0}%", rate * 100.0))
            })
        };
        for retry in &self.retries {
            rows.push(vec![
                Value::from(retry.scenario.clone()),
                Value::from(retry.reason.clone()),
                Value::from(retry.retries),
                Value::from(retry.targets),
                Value::from(retry.highest_attempt),
                Value::from(retry.recovered),
                Value::from(retry.retried_again),
                Value::from(retry.gave_up),
                Value::from(retry.retries - retry.recovered - retry.retried_again - retry.gave_up),
                rate(retry.success_rate()),
            ]);
        }
        let sum =
            |field: fn(&ScenarioRetries) -> i64| -> i64 { self.retries.iter().map(field).sum() };
        let all = ScenarioRetries {
            scenario: "all".into(),
            reason: String::new(),
            retries: sum(|r| r.retries),
            targets: 0,
            highest_attempt: 0,
            recovered: sum(|r| r.recovered),
            retried_again: sum(|r| r.retried_again),
            gave_up: sum(|r| r.gave_up),
        };
        rows.push(vec![
            Value::from("all"),
            Value::Null,
            Value::from(all.retries),
            Value::Null,
            Value::Null,
            Value::from(all.recovered),
            Value::from(all.retried_again),
            Value::from(all.gave_up),
            Value::from(all.retries - all.recovered - all.retried_again - all.gave_up),
            rate(all.success_rate()),
        ]);
        rows
    }

    fn intervention_rows(&self) -> Rows {
        let mut rows = Rows::new(&[
            "target",
            "scenario",
            "reason",
            "step",
            "status",
            "retry_count",
            "noted_after",
        ]);
        for note in &self.interventions {
            rows.push(vec![
                Value::from(self.labels.of(note.job_id, note.job_variants_id)),
                Value::from(note.scenario.clone()),
                Value::from(note.reason.clone()),
                note.step.clone().map_or(Value::Null, Value::from),
                note.status.clone().map_or(Value::Null, Value::from),
                Value::from(note.retry_count),
                Value::from(format!("{:.1} s", note.noted_after)),
            ]);
        }
        rows
    }

    fn json(&self, explore: Option<&str>) -> Value {
        let facts = &self.facts;
        let jobs = &self.jobs;
        let retries: Vec<Value> = self
            .retries
            .iter()
            .map(|retry| {
                json!({
                    "scenario": retry.scenario,
                    "reason": retry.reason,
                    "retries": retry.retries,
                    "targets": retry.targets,
                    "highest_attempt": retry.highest_attempt,
                    "recovered": retry.recovered,
                    "retried_again": retry.retried_again,
                    "gave_up": retry.gave_up,
                    "open": retry.retries - retry.recovered - retry.retried_again - retry.gave_up,
                    "success_rate": retry.success_rate(),
                })
            })
            .collect();
        let interventions: Vec<Value> = self
            .interventions
            .iter()
            .map(|note| {
                json!({
                    "target": self.labels.of(note.job_id, note.job_variants_id),
                    "job_id": note.job_id,
                    "job_variants_id": note.job_variants_id,
                    "scenario": note.scenario,
                    "reason": note.reason,
                    "step": note.step,
                    "status": note.status,
                    "retry_count": note.retry_count,
                    "max_retries": note.max_retries,
                    "noted_after_seconds": note.noted_after,
                })
            })
            .collect();
        json!({
            "seed": facts.seed,
            "jobs_planned": facts.jobs,
            "variants_per_job": facts.variants,
            "flaky_variants": facts.flaky,
            "duration_seconds": facts.duration.as_secs_f64(),
            "ran_seconds": facts.ran.as_secs_f64(),
            "interrupted": facts.interrupted,
            "watchdog": {
                "instance": self.settings.instance,
                "steps": self.settings.steps.names(),
                "max_retries": self.settings.max_retries,
                "stuck_after_seconds": self.settings.stuck_after.as_secs_f64(),
                "sweep_every_seconds": self.settings.sweep_every.as_secs_f64(),
            },
            "jobs": {
                "started": jobs.started,
                "done": jobs.done,
                "done_by_watchdog": jobs.done_by_watchdog,
                "running": jobs.running,
                "held_up_at_limit": jobs.held_up,
            },
            "pipeline": self.pipeline,
            "retries": retries,
            "top_targets": rows_json(&self.top),
            "interventions": interventions,
            "verify": {
                "clean": self.verify.is_clean(),
                "events": self.verify.events,
                "streams": self.verify.streams,
                "mismatches": self.verify.mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            },
            "kept_database_url": explore,
        })
    }
}

/// The most retried variants and jobs (the reports' own queries), each with its retries by
/// scenario; and the most retried variant.
async fn top_targets(pool: &PgPool, labels: &Labels) -> anyhow::Result<(Rows, Option<Uuid>)> {
    let mut conn = pool.acquire().await?;
    let moment = Moment::Now(Utc::now());
    let variants = report::top_variants(&mut conn, TOP_VARIANTS, moment).await?;
    let jobs = report::top_jobs(&mut conn, TOP_JOBS, moment).await?;
    let breakdown: Vec<(Uuid, Option<Uuid>, String, i64)> = sqlx::query_as(
        "SELECT job_id, job_variants_id, coalesce(detail->>'scenario', reason::text), count(*)
           FROM retry_history GROUP BY 1, 2, 3 ORDER BY 4 DESC, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_target: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (job, variant, scenario, count) in breakdown {
        by_target
            .entry(variant.unwrap_or(job))
            .or_default()
            .push(format!("{scenario} {count}"));
    }
    let mut rows = Rows::new(&[
        "target",
        "id",
        "retry_count",
        "by_scenario",
        "status",
        "step",
    ]);
    let mut push =
        |job: Uuid, variant: Option<Uuid>, count: i32, status: &str, step: Option<&str>| {
            let id = variant.unwrap_or(job);
            rows.push(vec![
                Value::from(labels.of(job, variant)),
                Value::from(id.to_string()),
                Value::from(count),
                Value::from(by_target.get(&id).map(|s| s.join(", ")).unwrap_or_default()),
                Value::from(status.to_string()),
                step.map_or(Value::Null, Value::from),
            ]);
        };
    for variant in &variants {
        push(
            variant.job_id,
            Some(variant.job_variants_id),
            variant.retry_count,
            &variant.status,
            variant.current_step.as_deref(),
        );
    }
    for job in &jobs {
        push(
            job.job_id,
            None,
            job.retry_count,
            &job.status,
            job.current_step.as_deref(),
        );
    }
    Ok((
        rows,
        variants.first().map(|variant| variant.job_variants_id),
    ))
}

/// Rows as the array of objects `--format json` prints.
fn rows_json(rows: &Rows) -> Value {
    Value::Array(
        rows.rows
            .iter()
            .map(|row| {
                Value::Object(
                    rows.columns
                        .iter()
                        .map(|column| column.to_string())
                        .zip(row.iter().cloned())
                        .collect(),
                )
            })
            .collect(),
    )
}
