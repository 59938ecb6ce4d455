//! The baseline of `retrylog-bench recovery`: each seeded condition fixed the way the
//! counter-only listener did it, one plain `UPDATE … retry_count = retry_count + 1` per
//! transaction, no log; its two halves bracket the watchdog's sweep.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use retrylog::recovery::Scenario;

use crate::progress;

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

/// Unparks the jobs of one baseline set: gives them the status of their condition.
pub async fn arm(pool: &PgPool, set: &str) -> anyhow::Result<()> {
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
pub async fn counter_only_baseline(
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
    let progress = progress::spinner();
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
pub async fn restore_baseline_counts(pool: &PgPool) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
