//! The seeded pipeline of `retrylog-bench recovery`: jobs and variants planned and inserted
//! set-based (`INSERT … SELECT … generate_series`, the notify triggers disabled meanwhile),
//! about 1% of the targets in one of the four scenarios, in disjoint sets for the watchdog
//! and the baseline's two halves, some of the watchdog's at the retry limit; the retries
//! before the run appended through `record_retry`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use sqlx::PgPool;

use retrylog::config::WatchdogSettings;
use retrylog::recovery::Scenario;

use super::MAX_RETRIES;
use crate::figures::thousands;
use crate::progress;

/// The step of the old failed jobs: not a managed step, so the watchdog must leave them be.
pub const UNMANAGED_STEP: &str = "publish";

/// The actor of the retries seeded before the run (the watchdog's own are `ACTOR`).
const SEED_ACTOR: &str = "retrylog-bench-seed";

/// The disjoint sets of seeded conditions: the watchdog's, and the baseline's two halves.
pub const WATCHDOG_SET: &str = "watchdog";
pub const BASELINE_SETS: [&str; 2] = ["baseline_before", "baseline_after"];

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

/// How many targets of one scenario were seeded, per set.
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    /// Needing a retry: the watchdog's set, and the baseline's two halves together.
    pub watchdog: i64,
    pub baseline: i64,
    /// The watchdog's targets at the limit.
    pub at_limit: i64,
}

/// Seeds the pipeline tables in one transaction (see `JOB_PLAN`), with the change
/// notifications off while it inserts, then `VACUUM ANALYZE`. Returns the seeded targets
/// per scenario.
pub async fn seed(
    pool: &PgPool,
    jobs: u64,
    settings: &WatchdogSettings,
) -> anyhow::Result<BTreeMap<Scenario, Seeded>> {
    let progress = progress::spinner();
    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.as_ref()).collect();
    let reasons: Vec<String> = Scenario::ALL
        .iter()
        .map(|s| s.reason().to_string())
        .collect();
    let steps = settings.steps.names();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    // 1. Thousands of failure notifications (one per variant inserted failed) nobody listens
    //    to would only slow the seeding down; the ALTERs are part of the transaction, so an
    //    error undoes them too.
    progress.set_message("seeding: jobs and variants");
    sqlx::raw_sql(
        "ALTER TABLE jobs DISABLE TRIGGER jobs_inserted_failed;
         ALTER TABLE jobs_variants DISABLE TRIGGER jobs_variants_inserted_failed;",
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
        "ALTER TABLE jobs ENABLE TRIGGER jobs_inserted_failed;
         ALTER TABLE jobs_variants ENABLE TRIGGER jobs_variants_inserted_failed;",
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
        "retrylog-bench: seeded {} jobs ({}) and {} variants in {:.1} s, set-based, with the \
         failure triggers jobs_inserted_failed and jobs_variants_inserted_failed disabled during \
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
        "retrylog-bench: targets needing a retry, per set (watchdog, baseline's two halves \
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
