//! What became of each retry (migration 0009): every outcome from a real watchdog and a
//! pipeline that moves its rows, `history`'s outcome columns, `report outcomes` against
//! hand-computed rows (today, as of T, empty groups), replay and verify of what derives from
//! the outcomes, and one decision per retry while the pipeline, the watchdog's observation
//! and new retries race.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use retrylog::config::WatchdogSettings;
use retrylog::recovery::{self, Scope, SweepSummary};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{watch, Barrier};
use uuid::{uuid, Uuid};

use crate::fixtures::*;
use crate::recovery::settings;

const STEPS: [&str; 4] = ["prepare", "generate", "segment", "iou_eval"];
const JOB: Uuid = uuid!("0c000000-0000-4000-8000-000000000000");

fn v(n: u8) -> Uuid {
    Uuid::parse_str(&format!("0c000000-0000-4000-8000-0000000000{n:02x}")).unwrap()
}

/// A running job at `generate` with variants 1..=n, each `status` at `generate`, idle for ten
/// minutes (so every scenario sees them at once).
async fn job_with_variants(pool: &PgPool, n: u8, status: &str) {
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step, updated_at)
         VALUES ($1, 'running', 'generate', now() - interval '10 minutes')",
    )
    .bind(JOB)
    .execute(pool)
    .await
    .unwrap();
    for i in 1..=n {
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status,
                                        current_step, updated_at)
             VALUES ($1, $2, $3, $4, 'generate', now() - interval '10 minutes')",
        )
        .bind(v(i))
        .bind(JOB)
        .bind(i32::from(i))
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn sweep(pool: &PgPool, settings: &WatchdogSettings) -> SweepSummary {
    let (_keep, shutdown) = watch::channel(false);
    recovery::sweep(pool, settings, &Scope::Everything, &shutdown)
        .await
        .unwrap()
}

/// (outcome, resolved_at − occurred_at in ms) of each retry of a stream, by attempt; "open"
/// without an outcome.
async fn outcomes_of(pool: &PgPool, variant: Option<Uuid>) -> Vec<(String, Option<i64>)> {
    sqlx::query_as(
        "SELECT coalesce(r.outcome::text, 'open'),
                (extract(epoch FROM r.resolved_at - h.occurred_at) * 1000)::bigint
           FROM retry_history h LEFT JOIN retry_outcome r ON r.seq = h.seq
          WHERE h.job_id = $1 AND h.job_variants_id IS NOT DISTINCT FROM $2
          ORDER BY h.attempt",
    )
    .bind(JOB)
    .bind(variant)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The pipeline takes a variant through its step: running at the next one.
async fn advance(pool: &PgPool, variant: Uuid, to: &str) {
    sqlx::query(
        "UPDATE jobs_variants SET status = 'running', current_step = $2, updated_at = now()
          WHERE job_variants_id = $1",
    )
    .bind(variant)
    .bind(to)
    .execute(pool)
    .await
    .unwrap();
}

async fn fail(pool: &PgPool, variant: Uuid) {
    sqlx::query(
        "UPDATE jobs_variants SET status = 'failed', updated_at = now() WHERE job_variants_id = $1",
    )
    .bind(variant)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_failed_variant_the_pipeline_then_advances_is_recovered_with_a_positive_time(
    pool: PgPool,
) {
    migrated(&pool).await;
    job_with_variants(&pool, 1, "failed").await;
    let watchdog = settings("watchdog-outcomes");
    assert_eq!(sweep(&pool, &watchdog).await.retried.len(), 1);
    assert_eq!(
        outcomes_of(&pool, Some(v(1))).await,
        [("open".into(), None)]
    );

    // The re-run passes: the pipeline moves the variant on to the next step.
    tokio::time::sleep(Duration::from_millis(20)).await;
    advance(&pool, v(1), "segment").await;
    let summary = sweep(&pool, &watchdog).await;
    assert_eq!(summary.recovered, 1, "{summary:?}");
    let outcomes = outcomes_of(&pool, Some(v(1))).await;
    assert_eq!(outcomes[0].0, "recovered");
    assert!(outcomes[0].1.unwrap() >= 20, "{outcomes:?}");
    let (observer, evidence): (String, Value) =
        sqlx::query_as("SELECT observed_by, evidence FROM retry_outcome")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(observer, "watchdog-outcomes");
    assert_eq!(evidence["step"], "segment");

    // Decided once: another sweep, and the pipeline moving further, change nothing.
    advance(&pool, v(1), "iou_eval").await;
    assert_eq!(sweep(&pool, &watchdog).await.recovered, 0);
    assert_eq!(outcomes_of(&pool, Some(v(1))).await, outcomes);

    // history shows it, with the time to result.
    let history = retrylog(
        &pool,
        &[
            "history",
            "--variant-id",
            &v(1).to_string(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(history.code, Some(0), "{history:#?}");
    let row = &history.json()[0];
    assert_eq!(row["outcome"], "recovered");
    let seconds = row["seconds_to_result"].as_f64().unwrap();
    assert!(
        (seconds * 1000.0 - outcomes[0].1.unwrap() as f64).abs() <= 1.0,
        "{row}"
    );
    assert!(row["resolved_at"].is_string(), "{row}");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_variant_that_fails_again_and_is_retried_makes_the_first_retry_retried_again(
    pool: PgPool,
) {
    migrated(&pool).await;
    job_with_variants(&pool, 1, "failed").await;
    let watchdog = settings("watchdog-outcomes");
    sweep(&pool, &watchdog).await;
    // The re-run fails at the same step: the next sweep retries it again.
    fail(&pool, v(1)).await;
    assert_eq!(sweep(&pool, &watchdog).await.retried.len(), 1);
    let outcomes = outcomes_of(&pool, Some(v(1))).await;
    assert_eq!(outcomes[0].0, "retried_again");
    assert!(outcomes[0].1.unwrap() >= 0);
    assert_eq!(outcomes[1], ("open".into(), None));
    let evidence: Value = sqlx::query_scalar("SELECT evidence FROM retry_outcome")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(evidence["attempt"], 2);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_variant_that_reaches_the_limit_gave_up(pool: PgPool) {
    migrated(&pool).await;
    job_with_variants(&pool, 1, "failed").await;
    let watchdog = WatchdogSettings {
        max_retries: 2,
        ..settings("watchdog-outcomes")
    };
    for _ in 0..2 {
        sweep(&pool, &watchdog).await;
        fail(&pool, v(1)).await;
    }
    // The third failure meets the limit: a note, and the last retry gave up.
    let summary = sweep(&pool, &watchdog).await;
    assert_eq!((summary.retried.len(), summary.noted), (0, 1));
    let outcomes = outcomes_of(&pool, Some(v(1))).await;
    let names: Vec<&str> = outcomes.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(names, ["retried_again", "gave_up"]);
    let (note, evidence): (i64, Value) = sqlx::query_as(
        "SELECT i.seq, r.evidence FROM retry_intervention i, retry_outcome r
          WHERE r.outcome = 'gave_up'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(evidence["note_seq"], note);
    assert_eq!(evidence["max_retries"], 2);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_final_step_job_closed_by_the_watchdog_is_recovered(pool: PgPool) {
    migrated(&pool).await;
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step, updated_at)
         VALUES ($1, 'running', 'iou_eval', now() - interval '10 minutes');
         ",
    )
    .bind(JOB)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step,
                                    updated_at)
         VALUES ($1, $2, 0, 'done', 'iou_eval', now() - interval '10 minutes')",
    )
    .bind(v(1))
    .bind(JOB)
    .execute(&pool)
    .await
    .unwrap();
    let watchdog = settings("watchdog-outcomes");
    assert_eq!(sweep(&pool, &watchdog).await.retried.len(), 1);
    // The next sweep sees the job done.
    assert_eq!(sweep(&pool, &watchdog).await.recovered, 1);
    let outcomes = outcomes_of(&pool, None).await;
    assert_eq!(outcomes[0].0, "recovered");
    assert!(outcomes[0].1.unwrap() >= 0);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_retry_whose_target_never_moves_or_is_deleted_stays_open(pool: PgPool) {
    migrated(&pool).await;
    job_with_variants(&pool, 2, "done").await;
    // Both lag behind their job at segment: stuck, touched by the watchdog.
    sqlx::query("UPDATE jobs SET current_step = 'segment' WHERE job_id = $1")
        .bind(JOB)
        .execute(&pool)
        .await
        .unwrap();
    let watchdog = settings("watchdog-outcomes");
    assert_eq!(sweep(&pool, &watchdog).await.retried.len(), 2);
    sqlx::query("DELETE FROM jobs_variants WHERE job_variants_id = $1")
        .bind(v(2))
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(sweep(&pool, &watchdog).await.recovered, 0);
    }
    assert_eq!(
        outcomes_of(&pool, Some(v(1))).await,
        [("open".into(), None)]
    );
    assert_eq!(
        outcomes_of(&pool, Some(v(2))).await,
        [("open".into(), None)]
    );
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_open")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 2);
}

/// The report's fixture, through the SQL door with chosen times, so every number is known:
///
/// | retry | reason | scenario | step | attempt | outcome | to recover |
/// | --- | --- | --- | --- | --- | --- | --- |
/// | v1 | failed | failed | generate | 1 | recovered | 30 s |
/// | v2 | failed | failed | generate | 1 | recovered | 90 s |
/// | v3 #1 | stuck | lagging | generate | 1 | retried_again | |
/// | v3 #2 | stuck | lagging | generate | 2 | open | |
/// | v4 | failed | failed | generate | 1 | gave_up | |
/// | job | manual_recovery | (none) | iou_eval | 1 | open | |
///
/// Returns the instants before the first retry, after the notes but before the recoveries
/// were observed, and after.
async fn report_fixture(pool: &PgPool) -> [DateTime<Utc>; 3] {
    migrated(pool).await;
    job_with_variants(pool, 4, "failed").await;
    let clock = || async {
        let at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        at
    };
    let before = clock().await;
    let retry = |variant: Option<Uuid>, reason: &'static str, scenario: Option<&'static str>| async move {
        let detail = scenario.map(|s| json!({ "scenario": s }));
        sqlx::query(
            "SELECT record_retry(job_id => $1, job_variants_id => $2, reason => $3,
                                 detail => $4, occurred_at => now() - interval '10 minutes',
                                 step => CASE WHEN $2::uuid IS NULL THEN 'iou_eval' END)",
        )
        .bind(JOB)
        .bind(variant)
        .bind(reason)
        .bind(detail)
        .execute(pool)
        .await
        .unwrap();
    };
    retry(Some(v(1)), "failed", Some("failed")).await;
    retry(Some(v(2)), "failed", Some("failed")).await;
    retry(Some(v(3)), "stuck", Some("lagging")).await;
    retry(Some(v(4)), "failed", Some("failed")).await;
    retry(None, "manual_recovery", None).await;
    retry(Some(v(3)), "stuck", Some("lagging")).await;
    sqlx::query(
        "INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         VALUES ($1, $2, 1, 1, 'failed', 'failed', 'generate', 'failed', 'watchdog', '{}')",
    )
    .bind(JOB)
    .bind(v(4))
    .execute(pool)
    .await
    .unwrap();
    let noted = clock().await;
    // v1 and v2 moved on 30 s and 90 s after their retries, as their rows say.
    for (variant, seconds) in [(v(1), 30.0), (v(2), 90.0)] {
        sqlx::query(
            "UPDATE jobs_variants v SET current_step = 'segment', status = 'running',
                    updated_at = h.occurred_at + make_interval(secs => $2)
               FROM retry_history h
              WHERE v.job_variants_id = $1 AND h.job_variants_id = $1",
        )
        .bind(variant)
        .bind(seconds)
        .execute(pool)
        .await
        .unwrap();
    }
    let steps: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        retrylog::outcome::observe(&mut conn, &steps, "test", None)
            .await
            .unwrap(),
        2
    );
    let after = clock().await;
    [before, noted, after]
}

/// `report outcomes --by BY [--as-of AT] --format json`, as (group → the row's other columns).
async fn report(pool: &PgPool, by: &str, as_of: Option<DateTime<Utc>>) -> Vec<(String, Value)> {
    let as_of = as_of.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let mut args = vec!["report", "outcomes", "--by", by, "--format", "json"];
    if let Some(at) = &as_of {
        args.extend(["--as-of", at]);
    }
    let run = retrylog(pool, &args).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let mut row = row.as_object().unwrap().clone();
            let group = row.remove("group").unwrap().as_str().unwrap().to_string();
            (group, Value::Object(row))
        })
        .collect()
}

/// One report row's columns after `group`.
fn row(
    counts: [i64; 5],
    success_rate: Option<f64>,
    median: Option<f64>,
    p90: Option<f64>,
) -> Value {
    let [retries, recovered, retried_again, gave_up, open] = counts;
    json!({
        "retries": retries, "recovered": recovered, "retried_again": retried_again,
        "gave_up": gave_up, "open": open, "success_rate": success_rate,
        "median_seconds_to_recover": median, "p90_seconds_to_recover": p90,
    })
}

fn named(rows: &[(&str, Value)]) -> Vec<(String, Value)> {
    rows.iter()
        .map(|(g, r)| (g.to_string(), r.clone()))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn the_outcomes_report_matches_hand_computed_rows_for_every_grouping(pool: PgPool) {
    report_fixture(&pool).await;
    assert_eq!(
        report(&pool, "reason", None).await,
        named(&[
            ("stuck", row([2, 0, 1, 0, 1], Some(0.0), None, None)),
            (
                "failed",
                row([3, 2, 0, 1, 0], Some(0.6667), Some(30.0), Some(90.0))
            ),
            ("manual_recovery", row([1, 0, 0, 0, 1], None, None, None)),
        ])
    );
    // The watchdog's four scenarios are always listed; an event without one is "(none)".
    assert_eq!(
        report(&pool, "scenario", None).await,
        named(&[
            (
                "failed",
                row([3, 2, 0, 1, 0], Some(0.6667), Some(30.0), Some(90.0))
            ),
            ("lagging", row([2, 0, 1, 0, 1], Some(0.0), None, None)),
            ("stale", row([0, 0, 0, 0, 0], None, None, None)),
            ("final_step", row([0, 0, 0, 0, 0], None, None, None)),
            ("(none)", row([1, 0, 0, 0, 1], None, None, None)),
        ])
    );
    assert_eq!(
        report(&pool, "attempt", None).await,
        named(&[
            ("1", row([5, 2, 1, 1, 1], Some(0.5), Some(30.0), Some(90.0))),
            ("2", row([1, 0, 0, 0, 1], None, None, None)),
        ])
    );
    assert_eq!(
        report(&pool, "step", None).await,
        named(&[
            (
                "generate",
                row([5, 2, 1, 1, 1], Some(0.5), Some(30.0), Some(90.0))
            ),
            ("iou_eval", row([1, 0, 0, 0, 1], None, None, None)),
        ])
    );
    // The CSV carries the same columns, in the order.
    let csv = retrylog(&pool, &["report", "outcomes", "--format", "csv"]).await;
    assert_eq!(
        csv.stdout.lines().next(),
        Some(
            "group,retries,recovered,retried_again,gave_up,open,success_rate,\
             median_seconds_to_recover,p90_seconds_to_recover"
        ),
        "{csv:#?}"
    );
    assert_eq!(
        csv.stdout.lines().nth(2),
        Some("failed,3,2,0,1,0,0.6667,30.0,90.0")
    );
}

#[sqlx::test(migrations = false)]
async fn the_outcomes_report_as_of_t_shows_only_what_was_observed_by_then(pool: PgPool) {
    let [before, noted, after] = report_fixture(&pool).await;
    // Before the first retry: every group empty.
    assert_eq!(
        report(&pool, "reason", Some(before)).await,
        named(&[
            ("stuck", row([0, 0, 0, 0, 0], None, None, None)),
            ("failed", row([0, 0, 0, 0, 0], None, None, None)),
            ("manual_recovery", row([0, 0, 0, 0, 0], None, None, None)),
        ])
    );
    // After the retries and the note, before the recoveries were observed: v1 and v2 open.
    assert_eq!(
        report(&pool, "reason", Some(noted)).await,
        named(&[
            ("stuck", row([2, 0, 1, 0, 1], Some(0.0), None, None)),
            ("failed", row([3, 0, 0, 1, 2], Some(0.0), None, None)),
            ("manual_recovery", row([1, 0, 0, 0, 1], None, None, None)),
        ])
    );
    // After: the log's answer is the rollup's.
    for by in ["reason", "step", "scenario", "attempt"] {
        assert_eq!(
            report(&pool, by, Some(after)).await,
            report(&pool, by, None).await,
            "--by {by}"
        );
    }
    // history as of the note shows v1's retry open, and recovered today.
    let history = |as_of: Option<DateTime<Utc>>| {
        let pool = pool.clone();
        async move {
            let at = as_of.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            let id = v(1).to_string();
            let mut args = vec!["history", "--variant-id", &id, "--format", "json"];
            if let Some(at) = &at {
                args.extend(["--as-of", at]);
            }
            let run = retrylog(&pool, &args).await;
            run.json()[0]["outcome"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(history(Some(noted)).await, "open");
    assert_eq!(history(None).await, "recovered");
}

#[sqlx::test(migrations = false)]
async fn replay_rebuilds_what_derives_from_outcomes_and_verify_names_what_was_broken(pool: PgPool) {
    report_fixture(&pool).await;
    assert_eq!(retrylog(&pool, &["project"]).await.code, Some(0));
    assert_verify_clean(&pool).await;
    sqlx::raw_sql(
        "DELETE FROM retry_open;
         UPDATE retry_outcome_rollup SET retries = retries + 5
          WHERE outcome = 'recovered' AND dimension = 'reason';
         UPDATE retry_outcome_recovery_time SET recovered = 0 WHERE dimension = 'step';",
    )
    .execute(&pool)
    .await
    .unwrap();
    let broken = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(broken.code, Some(1), "{broken:#?}");
    let problems: Vec<String> = broken.json()["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert_eq!(
        problems
            .iter()
            .filter(|p| p.contains("retry_open holds none, the log and the outcomes say seq"))
            .count(),
        2,
        "v3's second retry and the job's are open: {problems:#?}"
    );
    assert_eq!(
        problems
            .iter()
            .filter(|p| p.starts_with("retry_outcome_rollup ")
                && p.contains(" reason=failed recovered: stored 7, the log and the outcomes say 2"))
            .count(),
        1,
        "{problems:#?}"
    );
    // v1's 30 s and v2's 90 s, stored as zero (no row).
    assert_eq!(
        problems
            .iter()
            .filter(|p| p.starts_with("retry_outcome_recovery_time ")
                && p.contains(" step=generate ttr_ms=")
                && p.ends_with("stored no row, the log and the outcomes say 1"))
            .count(),
        2,
        "{problems:#?}"
    );
    let replayed = retrylog(&pool, &["replay", "--projection", "retry_outcomes"]).await;
    assert_eq!(replayed.code, Some(0), "{replayed:#?}");
    assert!(
        replayed.stderr.contains("changed 5 row(s)"),
        "{replayed:#?}"
    );
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn each_retry_is_decided_once_while_the_pipeline_the_observer_and_new_retries_race(
    pool: PgPool,
) {
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    job_with_variants(&pool, 8, "failed").await;
    let steps: Arc<Vec<String>> = Arc::new(STEPS.iter().map(|s| s.to_string()).collect());
    let (stop_tx, stop) = watch::channel(false);
    // Two observers in a loop, as two watchdog instances would.
    let observers: Vec<_> = (0..2)
        .map(|i| {
            let (pool, steps, stop) = (pool.clone(), steps.clone(), stop.clone());
            tokio::spawn(async move {
                let mut decided = 0;
                let mut conn = pool.acquire().await.unwrap();
                while !*stop.borrow() {
                    decided +=
                        retrylog::outcome::observe(&mut conn, &steps, &format!("o{i}"), None)
                            .await
                            .unwrap();
                }
                decided
            })
        })
        .collect();
    // Eight writers, one per variant: retry, then let the pipeline move it on or fail it again.
    let barrier = Arc::new(Barrier::new(8));
    let writers: Vec<_> = (1..=8u8)
        .map(|i| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for round in 0..12 {
                    sqlx::query("SELECT record_retry($1, 'failed', $2)")
                        .bind(JOB)
                        .bind(v(i))
                        .execute(&pool)
                        .await
                        .unwrap();
                    if round % 3 == 2 {
                        let next = STEPS[2 + (round / 3) % 2];
                        advance(&pool, v(i), next).await;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop_tx.send(true).unwrap();
    let mut observed = 0;
    for observer in observers {
        observed += observer.await.unwrap();
    }
    let counts: HashMap<String, i64> =
        sqlx::query_as("SELECT outcome::text, count(*) FROM retry_outcome GROUP BY 1")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    // 96 retries: each of the 88 followed by another was decided exactly once, recovered
    // (by an observer) or retried again; the 8 last ones are open or recovered.
    let recovered = counts.get("recovered").copied().unwrap_or(0);
    let retried_again = counts.get("retried_again").copied().unwrap_or(0);
    assert_eq!(recovered, observed, "{counts:?}");
    assert!(recovered + retried_again >= 88, "{counts:?}");
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_open")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recovered + retried_again + open, 96, "{counts:?}");
    assert_verify_clean(&pool).await;
}

/// The open retries live on the head rows (migration 0021): `retry_open` is a view of the
/// head rows whose last retry is undecided. A next retry decides the open one and opens
/// itself in the head row's one update; a write to the view sets or clears the head's flag;
/// a row that is not its stream's last event cannot be opened.
#[sqlx::test(migrations = false)]
async fn the_open_retry_is_the_head_rows_flag_and_the_view_writes_it(pool: PgPool) {
    migrated(&pool).await;
    job_with_variants(&pool, 2, "failed").await;
    lift_retry_limit(&pool).await;
    let first = append_ok(&pool, &retry(variant(JOB, v(1)))).await;
    let second = append_ok(&pool, &retry(variant(JOB, v(1)))).await;
    let other = append_ok(&pool, &retry(variant(JOB, v(2)))).await;

    let open = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT seq FROM retry_open ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert_eq!(open(pool.clone()).await, vec![second.seq, other.seq]);
    let flags: Vec<(Uuid, i64, bool)> = sqlx::query_as(
        "SELECT stream, last_seq, last_open FROM retry_stream_head ORDER BY last_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        flags,
        vec![(v(1), second.seq, true), (v(2), other.seq, true)]
    );
    let decided: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, outcome::text FROM retry_outcome ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(decided, vec![(first.seq, "retried_again".to_string())]);

    // A delete clears the flag and returns the row it cleared; the head row stays.
    let deleted: Vec<i64> =
        sqlx::query_scalar("DELETE FROM retry_open WHERE seq = $1 RETURNING seq")
            .bind(other.seq)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(deleted, vec![other.seq]);
    assert_eq!(open(pool.clone()).await, vec![second.seq]);
    let heads: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_stream_head")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(heads, 2);

    // Only a stream's last event can be open.
    let refused = sqlx::query(
        "INSERT INTO retry_open (job_id, stream, job_variants_id, seq, step, occurred_at)
         SELECT job_id, job_variants_id, job_variants_id, seq, step, occurred_at
           FROM retry_history WHERE seq = $1",
    )
    .bind(first.seq)
    .execute(&pool)
    .await
    .unwrap_err();
    let (state, message) = database_error(&refused);
    assert_eq!(state, "22023", "{message}");
    assert!(
        message.contains(&format!("seq {} is not the last event", first.seq)),
        "{message}"
    );
    assert!(sqlx::query("UPDATE retry_open SET step = 'x'")
        .execute(&pool)
        .await
        .is_err());

    // The cleared retry is closed: a next retry of v2 decides nothing for it.
    let next = append_ok(&pool, &retry(variant(JOB, v(2)))).await;
    assert_eq!(open(pool.clone()).await, vec![second.seq, next.seq]);
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_outcome")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(decided, 1, "only v1's first retry is decided");

    // The stream's last event can be opened again, through the view.
    sqlx::query("DELETE FROM retry_open WHERE seq = $1")
        .bind(second.seq)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(open(pool.clone()).await, vec![next.seq]);
    sqlx::query(
        "INSERT INTO retry_open (job_id, stream, job_variants_id, seq, step, occurred_at)
         SELECT job_id, job_variants_id, job_variants_id, seq, step, occurred_at
           FROM retry_history WHERE seq = $1",
    )
    .bind(second.seq)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(open(pool.clone()).await, vec![second.seq, next.seq]);
}
