//! The demo's simulated pipeline: jobs whose variants run the steps one after another, driven
//! by the change notifications of `jobs_variants`, as a real pipeline driven by LISTEN would be
//! — and, on purpose, as unreliable as one.
//!
//! 1. A job starts `running` at the first step with its variants `running` there too.
//! 2. A variant runs a step for a random moment, then becomes `done` (or `failed`).
//! 3. The `done` notification makes the pipeline start the variant's next step; the job's
//!    `current_step` follows its first variant (creation_order 0). A variant the watchdog set
//!    back to `done` after failing re-runs the step it failed; a variant it touched is simply
//!    picked up again.
//! 4. When every variant is done at the final step, the pipeline sets the job `done`.
//!
//! What makes the watchdog necessary: some runs fail (flaky variants most of the time), the
//! pipeline misses some `done` notifications (the variant sits `done` where it is: lagging
//! behind its job, or stale behind variants that moved on), and it misses some job completions
//! (the final-step scenario). Every random choice comes from a generator seeded from the demo's
//! seed, one per variant and job, so a run with the same seed makes the same choices for each
//! target (the interleaving of targets still varies with timing).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// How long one run of one step takes, in milliseconds.
const STEP_MILLIS: std::ops::Range<u64> = 300..1200;
/// The chance that a run of a step fails.
const FAIL_CHANCE: f64 = 0.04;
/// The chance that a run of a flaky variant fails: high enough that most flaky variants use
/// up their retries (about 7 in 8 fail four times before passing four steps).
const FLAKY_FAIL_CHANCE: f64 = 0.7;
/// One variant in this many is flaky (at least one per run).
const VARIANTS_PER_FLAKY: usize = 40;
/// The chance that the pipeline misses a variant's `done` notification. About one miss in
/// four hits a job's first variant before the final step, the origin of most stale
/// variants; at 6% a default run has several of those.
pub(super) const MISS_DONE_CHANCE: f64 = 0.06;
/// The chance that the pipeline misses that a job's variants all finished.
pub(super) const MISS_COMPLETION_CHANCE: f64 = 0.2;
/// Jobs start one after another within this share of the run, so that the last ones still
/// finish before it ends.
const START_WINDOW: f64 = 0.5;

/// Everything decided before the run: the jobs, their variants, when each job starts, which
/// variants are flaky, and the seed of every target's own random choices.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<String>,
    pub jobs: Vec<PlannedJob>,
}

#[derive(Debug)]
pub struct PlannedJob {
    pub id: Uuid,
    /// When the job starts, from the start of the run.
    pub starts_after: Duration,
    pub variants: Vec<PlannedVariant>,
    /// Seeds the job's own choices (whether its completion is missed).
    seed: u64,
}

#[derive(Debug)]
pub struct PlannedVariant {
    pub id: Uuid,
    /// Fails most of its runs.
    pub flaky: bool,
    /// Seeds the variant's own choices (run times, failures, missed notifications).
    seed: u64,
}

impl Plan {
    /// `jobs` jobs of `variants` variants each over `steps`, starting within the first
    /// [`START_WINDOW`] of `duration`, every choice drawn from `seed`.
    pub fn new(
        seed: u64,
        jobs: usize,
        variants: usize,
        steps: &[String],
        duration: Duration,
    ) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let window = duration.mul_f64(START_WINDOW);
        let total = jobs * variants;
        let flaky: HashSet<usize> = sample(&mut rng, total, total.div_ceil(VARIANTS_PER_FLAKY))
            .into_iter()
            .collect();
        let jobs = (0..jobs)
            .map(|job| PlannedJob {
                id: random_uuid(&mut rng),
                // Evenly spread, jittered by up to half a gap.
                starts_after: window.mul_f64((job as f64 + rng.gen_range(0.0..0.5)) / jobs as f64),
                variants: (0..variants)
                    .map(|order| PlannedVariant {
                        id: random_uuid(&mut rng),
                        flaky: flaky.contains(&(job * variants + order)),
                        seed: rng.gen(),
                    })
                    .collect(),
                seed: rng.gen(),
            })
            .collect();
        Plan {
            steps: steps.to_vec(),
            jobs,
        }
    }

    /// How many variants are flaky.
    pub fn flaky(&self) -> usize {
        self.jobs
            .iter()
            .flat_map(|job| &job.variants)
            .filter(|variant| variant.flaky)
            .count()
    }
}

/// A version-4 UUID from the seeded generator, so a repeated run has the same ids.
fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// What the pipeline did on purpose that the watchdog will have to notice, for the live view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// It ignored the notification that this variant finished this step.
    Done { variant: Uuid, step: String },
    /// It ignored that every variant of this job finished the final step.
    Completion { job: Uuid },
}

/// Counts of what the pipeline did, for the summary.
#[derive(Debug, Default)]
pub struct PipelineCounts {
    /// Jobs started.
    pub jobs_started: AtomicU64,
    /// Runs of a step, re-runs included.
    pub runs: AtomicU64,
    /// Runs that failed.
    pub failures: AtomicU64,
    /// `done` notifications acted on.
    pub picked_up: AtomicU64,
    /// `done` notifications ignored on purpose.
    pub missed_done: AtomicU64,
    /// Job completions ignored on purpose.
    pub missed_completions: AtomicU64,
    /// Jobs the pipeline itself set done.
    pub completed: AtomicU64,
}

impl PipelineCounts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A variant as the pipeline knows it.
#[derive(Debug, Clone, Copy)]
struct VariantFacts {
    job: Uuid,
    order: i32,
    flaky: bool,
}

/// The pipeline's own change trigger, installed in the demo database: a per-row NOTIFY on
/// every insert and on every change of status, step or updated_at, the way a pipeline whose
/// workers listen for their rows' changes re-triggers work when a row is touched (such a
/// pipeline gives its channel to `serve --pipeline-channel`, docs/operations.md). It is the
/// pipeline's, not retrylog's
/// (retrylog's own trigger notifies only transitions into `failed`, migration 0007); the
/// demo's watchdog listens to it too (`pipeline_channel`).
pub const CHANGE_TRIGGER: &str = "
CREATE FUNCTION demo_pipeline_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('demo_pipeline',
                      (jsonb_build_object('table', TG_TABLE_NAME) || to_jsonb(NEW))::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_demo_inserted AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION demo_pipeline_notify();
CREATE TRIGGER jobs_demo_changed AFTER UPDATE ON jobs FOR EACH ROW
    WHEN ((OLD.status, OLD.current_step, OLD.updated_at)
          IS DISTINCT FROM (NEW.status, NEW.current_step, NEW.updated_at))
    EXECUTE FUNCTION demo_pipeline_notify();
CREATE TRIGGER jobs_variants_demo_inserted AFTER INSERT ON jobs_variants
    FOR EACH ROW EXECUTE FUNCTION demo_pipeline_notify();
CREATE TRIGGER jobs_variants_demo_changed AFTER UPDATE ON jobs_variants FOR EACH ROW
    WHEN ((OLD.status, OLD.current_step, OLD.updated_at)
          IS DISTINCT FROM (NEW.status, NEW.current_step, NEW.updated_at))
    EXECUTE FUNCTION demo_pipeline_notify();
";

/// The channel [`CHANGE_TRIGGER`] notifies.
pub const CHANGE_CHANNEL: &str = "demo_pipeline";

/// The payload the pipeline's change trigger sends ([`CHANGE_TRIGGER`]): the row, and the
/// table it is in. Other columns are ignored.
#[derive(Debug, Deserialize, PartialEq)]
struct Change {
    table: String,
    job_id: Uuid,
    /// Absent for a job.
    #[serde(default)]
    job_variants_id: Option<Uuid>,
    status: String,
    #[serde(rename = "current_step")]
    step: Option<String>,
}

impl Change {
    fn parse(notification: &PgNotification) -> anyhow::Result<Change> {
        serde_json::from_str(notification.payload()).with_context(|| {
            format!(
                "reading the change notification {:?}",
                notification.payload()
            )
        })
    }
}

/// The running pipeline. Its state in memory is only what a real pipeline would also keep:
/// which (variant, step) failed, so that `done` after a failure means "re-run".
pub struct Pipeline {
    pool: PgPool,
    steps: Vec<String>,
    variants: HashMap<Uuid, VariantFacts>,
    /// Each variant's and each job's own random choices.
    dice: Mutex<HashMap<Uuid, StdRng>>,
    /// (variant, step index) whose last run failed: its next `done` re-runs the step.
    failed: Mutex<HashSet<(Uuid, usize)>>,
    /// Jobs whose completion was decided (done or missed), so a late notification of one of
    /// its variants cannot decide it again.
    decided: Mutex<HashSet<Uuid>>,
    counts: Arc<PipelineCounts>,
    misses: mpsc::UnboundedSender<Miss>,
    stop: watch::Receiver<bool>,
}

impl Pipeline {
    pub fn new(
        pool: PgPool,
        plan: &Plan,
        counts: Arc<PipelineCounts>,
        misses: mpsc::UnboundedSender<Miss>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Pipeline> {
        let mut variants = HashMap::new();
        let mut dice = HashMap::new();
        for job in &plan.jobs {
            dice.insert(job.id, StdRng::seed_from_u64(job.seed));
            for (order, variant) in job.variants.iter().enumerate() {
                variants.insert(
                    variant.id,
                    VariantFacts {
                        job: job.id,
                        order: order as i32,
                        flaky: variant.flaky,
                    },
                );
                dice.insert(variant.id, StdRng::seed_from_u64(variant.seed));
            }
        }
        Arc::new(Pipeline {
            pool,
            steps: plan.steps.clone(),
            variants,
            dice: Mutex::new(dice),
            failed: Mutex::new(HashSet::new()),
            decided: Mutex::new(HashSet::new()),
            counts,
            misses,
            stop,
        })
    }

    /// Runs until `stop` turns true: starts the jobs of `plan` on time and reacts to the
    /// notifications on `channel`. Returns once every step run in flight has stopped.
    ///
    /// 1. LISTEN first, so no notification of the first job is missed by accident.
    /// 2. One loop handles the notifications one at a time, in the order they were committed,
    ///    so the check "are all variants done?" sees every earlier change.
    /// 3. Step runs are tasks of their own; the loop only starts them.
    pub async fn run(self: Arc<Self>, plan: &Plan, channel: &str) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .context("connecting the pipeline's listener")?;
        listener
            .listen(channel)
            .await
            .with_context(|| format!("listening on channel {channel}"))?;
        let started = Instant::now();
        let mut stop = self.stop.clone();
        let mut runs = JoinSet::new();
        let mut next_job = 0;
        let outcome = loop {
            let next_start = plan
                .jobs
                .get(next_job)
                .map(|job| started + job.starts_after);
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
                Some(finished) = runs.join_next(), if !runs.is_empty() => {
                    if let Err(error) = finished.context("a step run panicked").and_then(|run| run) {
                        break Err(error);
                    }
                }
                _ = tokio::time::sleep_until(next_start.unwrap_or(started)), if next_start.is_some() => {
                    if let Err(error) = self.start_job(&plan.jobs[next_job], &mut runs).await {
                        break Err(error);
                    }
                    next_job += 1;
                }
                received = listener.recv() => {
                    let handled = match received {
                        Ok(notification) => self.handle(&notification, &mut runs).await,
                        Err(error) => Err(anyhow::Error::new(error)
                            .context("receiving the pipeline's notifications")),
                    };
                    if let Err(error) = handled {
                        break Err(error);
                    }
                }
            }
        };
        // Step runs watch the same signal; on an error, stop them here.
        if outcome.is_err() {
            runs.abort_all();
        }
        while runs.join_next().await.is_some() {}
        outcome
    }

    /// Creates the job and its variants, all running at the first step, and starts the runs.
    async fn start_job(
        self: &Arc<Self>,
        job: &PlannedJob,
        runs: &mut JoinSet<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let ids: Vec<Uuid> = job.variants.iter().map(|variant| variant.id).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', $2)")
            .bind(job.id)
            .bind(&self.steps[0])
            .execute(&mut *tx)
            .await
            .with_context(|| format!("starting job {}", job.id))?;
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
             SELECT id, $1, (n - 1)::int, 'running', $2
               FROM unnest($3::uuid[]) WITH ORDINALITY AS v(id, n)",
        )
        .bind(job.id)
        .bind(&self.steps[0])
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("creating the variants of job {}", job.id))?;
        tx.commit().await?;
        PipelineCounts::bump(&self.counts.jobs_started);
        for id in ids {
            runs.spawn(Arc::clone(self).run_step(id, 0));
        }
        Ok(())
    }

    /// One run of step `step` of `variant`: a random moment, then `done` or `failed`. Stops
    /// without writing when the demo ends meanwhile.
    async fn run_step(self: Arc<Self>, variant: Uuid, step: usize) -> anyhow::Result<()> {
        let facts = self.variants[&variant];
        let (millis, fails) = {
            let mut dice = self.dice.lock().expect("the dice are never poisoned");
            let rng = dice.get_mut(&variant).expect("every variant has its dice");
            let chance = if facts.flaky {
                FLAKY_FAIL_CHANCE
            } else {
                FAIL_CHANCE
            };
            (rng.gen_range(STEP_MILLIS), rng.gen_bool(chance))
        };
        PipelineCounts::bump(&self.counts.runs);
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(millis)) => {}
        }
        if fails {
            // Before the update commits: the watchdog may set it back to done at once.
            self.failed
                .lock()
                .expect("never poisoned")
                .insert((variant, step));
            PipelineCounts::bump(&self.counts.failures);
        }
        sqlx::query(
            "UPDATE jobs_variants SET status = $2, updated_at = now()
              WHERE job_variants_id = $1 AND status = 'running' AND current_step = $3",
        )
        .bind(variant)
        .bind(if fails { "failed" } else { "done" })
        .bind(&self.steps[step])
        .execute(&self.pool)
        .await
        .with_context(|| format!("finishing step {} of variant {variant}", self.steps[step]))?;
        Ok(())
    }

    /// Reacts to one change: only a variant that became (or was touched while) `done` at a
    /// known step matters.
    async fn handle(
        self: &Arc<Self>,
        notification: &PgNotification,
        runs: &mut JoinSet<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let change = Change::parse(notification)?;
        let (Some(variant), Some(step_name)) = (change.job_variants_id, &change.step) else {
            return Ok(());
        };
        if change.table != "jobs_variants" || change.status != "done" {
            return Ok(());
        }
        let Some(step) = self.steps.iter().position(|name| name == step_name) else {
            return Ok(());
        };
        if !self.variants.contains_key(&variant) {
            return Ok(());
        }
        if self.roll(variant, MISS_DONE_CHANCE) {
            PipelineCounts::bump(&self.counts.missed_done);
            let _ = self.misses.send(Miss::Done {
                variant,
                step: step_name.clone(),
            });
            return Ok(());
        }
        PipelineCounts::bump(&self.counts.picked_up);
        let rerun = self
            .failed
            .lock()
            .expect("never poisoned")
            .remove(&(variant, step));
        if rerun {
            if self.start_step(variant, step, step).await? {
                runs.spawn(Arc::clone(self).run_step(variant, step));
            }
        } else if step + 1 < self.steps.len() {
            if self.start_step(variant, step, step + 1).await? {
                runs.spawn(Arc::clone(self).run_step(variant, step + 1));
            }
        } else {
            self.complete_job(change.job_id).await?;
        }
        Ok(())
    }

    /// Sets `variant`, done at step `from`, running at step `to` — and the job to `to` too when
    /// this is its first variant. False when the variant is no longer done at `from` (an
    /// earlier notification of the same change was acted on already).
    async fn start_step(&self, variant: Uuid, from: usize, to: usize) -> anyhow::Result<bool> {
        let facts = self.variants[&variant];
        let mut tx = self.pool.begin().await?;
        let started = sqlx::query(
            "UPDATE jobs_variants SET status = 'running', current_step = $3, updated_at = now()
              WHERE job_variants_id = $1 AND status = 'done' AND current_step = $2",
        )
        .bind(variant)
        .bind(&self.steps[from])
        .bind(&self.steps[to])
        .execute(&mut *tx)
        .await
        .with_context(|| format!("starting step {} of variant {variant}", self.steps[to]))?
        .rows_affected()
            == 1;
        if started && facts.order == 0 && to != from {
            sqlx::query(
                "UPDATE jobs SET current_step = $2, updated_at = now()
                  WHERE job_id = $1 AND status = 'running'",
            )
            .bind(facts.job)
            .bind(&self.steps[to])
            .execute(&mut *tx)
            .await
            .with_context(|| format!("moving job {} to step {}", facts.job, self.steps[to]))?;
        }
        tx.commit().await?;
        Ok(started)
    }

    /// After a variant finished the final step: sets the job done when every variant has —
    /// unless this is one of the completions the pipeline misses.
    async fn complete_job(&self, job: Uuid) -> anyhow::Result<()> {
        let finished: bool = sqlx::query_scalar(
            "SELECT count(*) = count(*) FILTER (WHERE status = 'done' AND current_step = $2)
               FROM jobs_variants WHERE job_id = $1",
        )
        .bind(job)
        .bind(self.steps.last())
        .fetch_one(&self.pool)
        .await
        .with_context(|| format!("checking whether job {job} finished"))?;
        if !finished || !self.decided.lock().expect("never poisoned").insert(job) {
            return Ok(());
        }
        if self.roll(job, MISS_COMPLETION_CHANCE) {
            PipelineCounts::bump(&self.counts.missed_completions);
            let _ = self.misses.send(Miss::Completion { job });
            return Ok(());
        }
        let done = sqlx::query(
            "UPDATE jobs SET status = 'done', updated_at = now()
              WHERE job_id = $1 AND status = 'running'",
        )
        .bind(job)
        .execute(&self.pool)
        .await
        .with_context(|| format!("setting job {job} done"))?
        .rows_affected();
        if done == 1 {
            PipelineCounts::bump(&self.counts.completed);
        }
        Ok(())
    }

    /// True with probability `chance`, from the target's own generator.
    fn roll(&self, target: Uuid, chance: f64) -> bool {
        let mut dice = self.dice.lock().expect("never poisoned");
        dice.get_mut(&target)
            .expect("every target has its dice")
            .gen_bool(chance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<String> {
        ["prepare", "generate", "segment", "iou_eval"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn the_same_seed_plans_the_same_run() {
        let a = Plan::new(7, 5, 3, &steps(), Duration::from_secs(20));
        let b = Plan::new(7, 5, 3, &steps(), Duration::from_secs(20));
        // Everything planned, seeds included.
        let ids = |plan: &Plan| format!("{:?}", plan.jobs);
        assert_eq!(ids(&a), ids(&b));
        let c = Plan::new(8, 5, 3, &steps(), Duration::from_secs(20));
        assert_ne!(ids(&a), ids(&c));
    }

    #[test]
    fn jobs_start_in_order_within_the_start_window() {
        let plan = Plan::new(1, 40, 4, &steps(), Duration::from_secs(20));
        let starts: Vec<Duration> = plan.jobs.iter().map(|job| job.starts_after).collect();
        assert!(
            starts.windows(2).all(|pair| pair[0] <= pair[1]),
            "{starts:?}"
        );
        assert!(*starts.last().unwrap() <= Duration::from_secs(10));
    }

    #[test]
    fn one_variant_in_forty_is_flaky_and_at_least_one() {
        assert_eq!(
            Plan::new(1, 40, 4, &steps(), Duration::from_secs(20)).flaky(),
            4
        );
        assert_eq!(
            Plan::new(1, 1, 1, &steps(), Duration::from_secs(20)).flaky(),
            1
        );
    }

    #[test]
    fn the_trigger_payload_reads_as_a_change() {
        let job = Uuid::from_u128(1);
        let variant = Uuid::from_u128(2);
        // What `jsonb_build_object('table', ...) || to_jsonb(NEW)` sends for a variant.
        let payload = format!(
            r#"{{"table": "jobs_variants", "job_id": "{job}", "job_variants_id": "{variant}", "status": "done", "current_step": "segment", "creation_order": 0, "retry_count": 1}}"#
        );
        let change: Change = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            change,
            Change {
                table: "jobs_variants".into(),
                job_id: job,
                job_variants_id: Some(variant),
                status: "done".into(),
                step: Some("segment".into()),
            }
        );
        // A job's row has no job_variants_id.
        let payload = format!(
            r#"{{"table": "jobs", "job_id": "{job}", "status": "done", "current_step": null}}"#
        );
        let change: Change = serde_json::from_str(&payload).unwrap();
        assert_eq!(change.job_variants_id, None);
    }
}
