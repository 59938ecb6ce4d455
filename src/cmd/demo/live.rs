//! The demo's live view on stderr: one line per thing worth seeing — a notification the
//! pipeline missed, a retry the watchdog recorded, a target that reached the limit — and a
//! status line below them, redrawn in place on a terminal and printed every few seconds
//! otherwise. Everything but the misses is read back from the database, so the view shows what
//! the log holds, not what the demo hoped for.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;
use uuid::Uuid;

use super::pipeline::Miss;
use crate::recovery::Scenario;

/// The first word of a line that says a target reached the limit.
const LIMIT: &str = "LIMIT";
/// How often the view reads the database.
const TICK: Duration = Duration::from_millis(250);
/// How often the status line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// A variant `done` before the final step for this long has been missed by the pipeline:
/// the pipeline itself picks one up within milliseconds.
const STUCK_AFTER_SECONDS: f64 = 0.5;

/// Short names for the demo's ids: `job 07`, `job 07 v2` (v0 leads the job).
#[derive(Debug, Default, Clone)]
pub struct Labels(HashMap<Uuid, String>);

impl Labels {
    pub fn new(plan: &super::pipeline::Plan) -> Labels {
        let width = plan.jobs.len().to_string().len();
        let mut labels = HashMap::new();
        for (index, job) in plan.jobs.iter().enumerate() {
            let name = format!("job {:0width$}", index + 1);
            for (order, variant) in job.variants.iter().enumerate() {
                labels.insert(variant.id, format!("{name} v{order}"));
            }
            labels.insert(job.id, name);
        }
        Labels(labels)
    }

    /// The label of a job (`variant` None) or of a variant.
    pub fn of(&self, job: Uuid, variant: Option<Uuid>) -> String {
        let id = variant.unwrap_or(job);
        self.0.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }
}

/// The state of the run, as the status line shows it.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Status {
    pub jobs_started: i64,
    pub jobs_done: i64,
    pub running: i64,
    pub failed: i64,
    /// Variants done before the final step that nothing moved for a moment.
    pub stuck: i64,
    /// Jobs whose variants all finished and which are still running.
    pub awaiting_completion: i64,
    pub retries_failed: i64,
    pub retries_lagging: i64,
    pub retries_stale: i64,
    pub retries_final_step: i64,
    pub interventions: i64,
}

impl Status {
    pub async fn read(pool: &PgPool, last_step: &str) -> Result<Status, sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs) AS jobs_started,
                    (SELECT count(*) FROM jobs WHERE status = 'done') AS jobs_done,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'done' AND current_step <> $1
                                       AND updated_at < now() - make_interval(secs => $2))
                        AS stuck,
                    (SELECT count(*) FROM jobs j
                      WHERE j.status = 'running'
                        AND NOT EXISTS (SELECT 1 FROM jobs_variants o
                                         WHERE o.job_id = j.job_id
                                           AND (o.status <> 'done' OR o.current_step <> $1)))
                        AS awaiting_completion,
                    r.failed AS retries_failed, r.lagging AS retries_lagging,
                    r.stale AS retries_stale, r.final_step AS retries_final_step,
                    (SELECT count(*) FROM retry_intervention) AS interventions
               FROM jobs_variants
              CROSS JOIN (
                  SELECT count(*) FILTER (WHERE detail->>'scenario' = 'failed') AS failed,
                         count(*) FILTER (WHERE detail->>'scenario' = 'lagging') AS lagging,
                         count(*) FILTER (WHERE detail->>'scenario' = 'stale') AS stale,
                         count(*) FILTER (WHERE detail->>'scenario' = 'final_step') AS final_step
                    FROM retry_history) r
              GROUP BY r.failed, r.lagging, r.stale, r.final_step",
        )
        .bind(last_step)
        .bind(STUCK_AFTER_SECONDS)
        .fetch_optional(pool)
        .await
        .map(Option::unwrap_or_default)
    }

    /// The status in three parts, each short enough for an 80-column terminal: the jobs,
    /// the variants, the watchdog.
    fn parts(&self, jobs: usize) -> [String; 3] {
        let mut job_part = format!(
            "jobs: {}/{jobs} started, {} done",
            self.jobs_started, self.jobs_done
        );
        if self.awaiting_completion > 0 {
            job_part.push_str(&format!(
                ", {} awaiting completion",
                self.awaiting_completion
            ));
        }
        [
            job_part,
            format!(
                "variants: {} running, {} failed, {} stuck · needing intervention: {}",
                self.running, self.failed, self.stuck, self.interventions
            ),
            format!(
                "retries: failed {} · lagging {} · stale {} · final_step {}",
                self.retries_failed,
                self.retries_lagging,
                self.retries_stale,
                self.retries_final_step
            ),
        ]
    }
}

/// One line above the status line.
#[derive(Debug)]
struct Line {
    /// Seconds since the start of the run.
    at: f64,
    text: String,
}

/// The live view: reads the database every [`TICK`] until `stop` turns true, then once more,
/// so every retry of the run has had its line when it returns.
pub struct LiveView {
    pub pool: PgPool,
    pub labels: Labels,
    pub last_step: String,
    pub jobs: usize,
    pub duration: Duration,
    /// When the run started, here and on the database server's clock.
    pub started: Instant,
    pub started_db: DateTime<Utc>,
    pub bar: ProgressBar,
    /// Whether to print every line, or (not a terminal) only the limits and the status.
    pub terminal: bool,
}

impl LiveView {
    /// The bar for this run: drawn on a terminal, hidden otherwise.
    pub fn bar(duration: Duration, terminal: bool) -> ProgressBar {
        if !terminal {
            return ProgressBar::hidden();
        }
        // The clock (prefix) beside the bar; the status (msg) starts there and runs on below.
        ProgressBar::new(duration.as_millis() as u64).with_style(
            ProgressStyle::with_template("{bar:16.cyan/blue} {prefix}  {msg}")
                .expect("the template is valid"),
        )
    }

    pub async fn run(
        self,
        mut misses: mpsc::UnboundedReceiver<Miss>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Status> {
        let mut last_history = 0i64;
        let mut last_intervention = 0i64;
        let mut last_plain = Instant::now();
        let mut ticks = tokio::time::interval(TICK);
        loop {
            let stopping = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => true,
                _ = ticks.tick() => false,
            };
            let mut lines = Vec::new();
            while let Ok(miss) = misses.try_recv() {
                lines.push(self.miss_line(&miss));
            }
            lines.extend(self.retry_lines(&mut last_history).await?);
            lines.extend(self.intervention_lines(&mut last_intervention).await?);
            lines.sort_by(|a, b| a.at.total_cmp(&b.at));
            for line in &lines {
                let text = format!("{:>5.1}s  {}", line.at, line.text);
                if self.terminal {
                    self.bar.println(text);
                } else if line.text.starts_with(LIMIT) {
                    eprintln!("{text}");
                }
            }
            let status = Status::read(&self.pool, &self.last_step).await?;
            let elapsed = self.started.elapsed().min(self.duration);
            let clock = format!("{:>2}s/{}s", elapsed.as_secs(), self.duration.as_secs());
            if self.terminal {
                let [jobs, variants, retries] = status.parts(self.jobs);
                self.bar.set_position(elapsed.as_millis() as u64);
                self.bar.set_prefix(clock);
                self.bar
                    .set_message(format!("{jobs}\n{variants}\n{retries}"));
            } else if stopping || last_plain.elapsed() >= PLAIN_EVERY {
                last_plain = Instant::now();
                eprintln!("{clock} · {}", status.parts(self.jobs).join(" · "));
            }
            if stopping {
                self.bar.finish();
                return Ok(status);
            }
        }
    }

    fn miss_line(&self, miss: &Miss) -> Line {
        let at = self.started.elapsed().as_secs_f64();
        let text = match miss {
            Miss::Done { variant, step } => format!(
                "missed   {:<10} done at {step}: the pipeline lost the notification",
                self.labels.of(Uuid::nil(), Some(*variant))
            ),
            Miss::Completion { job } => format!(
                "missed   {:<10} all variants finished: the pipeline did not notice",
                self.labels.of(*job, None)
            ),
        };
        Line { at, text }
    }

    /// The watchdog's retries recorded since `last` (the log's seq). One watchdog commits
    /// its retries one at a time, so reading by seq misses none.
    async fn retry_lines(&self, last: &mut i64) -> Result<Vec<Line>, sqlx::Error> {
        let rows: Vec<Recorded> = sqlx::query_as(
            "SELECT seq, job_id, job_variants_id, coalesce(detail->>'scenario', '') AS scenario,
                    step, attempt AS count,
                    extract(epoch FROM occurred_at - $2)::float8 AS at
               FROM retry_history WHERE seq > $1 ORDER BY seq",
        )
        .bind(*last)
        .bind(self.started_db)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::new();
        for row in rows {
            *last = row.seq;
            let what = match row.scenario.parse::<Scenario>() {
                Ok(Scenario::Failed) => "set back to done: re-runs",
                Ok(Scenario::Lagging) => "touched: behind its job",
                Ok(Scenario::Stale) => "touched: overtaken",
                Ok(Scenario::FinalStep) => "job set done",
                Err(_) => "",
            };
            lines.push(Line {
                at: row.at,
                text: format!(
                    "retry #{} {:<10} {:<10} {:<9} {what}",
                    row.count,
                    self.labels.of(row.job_id, row.job_variants_id),
                    row.scenario,
                    row.step.unwrap_or_default()
                ),
            });
        }
        Ok(lines)
    }

    /// The targets the watchdog stopped at the limit since `last`.
    async fn intervention_lines(&self, last: &mut i64) -> Result<Vec<Line>, sqlx::Error> {
        let rows: Vec<Recorded> = sqlx::query_as(
            "SELECT seq, job_id, job_variants_id, scenario, step, retry_count AS count,
                    extract(epoch FROM noted_at - $2)::float8 AS at
               FROM retry_intervention WHERE seq > $1 ORDER BY seq",
        )
        .bind(*last)
        .bind(self.started_db)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::new();
        for row in rows {
            *last = row.seq;
            lines.push(Line {
                at: row.at,
                text: format!(
                    "{LIMIT}    {:<10} {:<10} {:<9} {} retries used: needs a human",
                    self.labels.of(row.job_id, row.job_variants_id),
                    row.scenario,
                    row.step.unwrap_or_default(),
                    row.count
                ),
            });
        }
        Ok(lines)
    }
}

/// A retry or an intervention note, as the live view reads it.
#[derive(Debug, sqlx::FromRow)]
struct Recorded {
    seq: i64,
    job_id: Uuid,
    job_variants_id: Option<Uuid>,
    scenario: String,
    step: Option<String>,
    /// The retry's attempt, or the retry_count the limit stopped.
    count: i32,
    /// Seconds since the start of the run.
    at: f64,
}

/// Where the watchdog's log lines go during the demo: above the status line, so a line does
/// not land in the middle of it.
#[derive(Clone)]
pub struct AboveTheBar(pub ProgressBar);

impl<'a> MakeWriter<'a> for AboveTheBar {
    type Writer = BarWriter;

    fn make_writer(&'a self) -> BarWriter {
        BarWriter {
            bar: self.0.clone(),
            text: Vec::new(),
        }
    }
}

/// Collects one log line and writes it whole when dropped (the formatter makes one writer per
/// line).
pub struct BarWriter {
    bar: ProgressBar,
    text: Vec<u8>,
}

impl Write for BarWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarWriter {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            self.bar
                .suspend(|| std::io::stderr().write_all(&self.text).ok());
        }
    }
}
