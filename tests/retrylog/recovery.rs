//! The recovery watchdog against the real server: each scenario's retry and the near misses
//! it must leave alone (`tests/fixtures/recovery.sql`), the retry limit through every door,
//! two watchdogs at once, a failure between the state change and the append, and `run`:
//! notifications, reconnecting, shutdown. Idle time is made by setting `updated_at` in the
//! past, never by waiting; waits poll with a deadline of a few seconds.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use retrylog::config::WatchdogSettings;
use retrylog::event::{RetryEvent, RetryReason, Target};
use retrylog::recovery::{self, Scenario, Scope, SweepSummary};
use retrylog::store::EVENT_COLUMNS;
use serde_json::{json, Value};
use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{watch, Barrier};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::{uuid, Uuid};

use crate::fixtures::*;

/// The steps every watchdog here manages; `publish` and `qa` in the fixtures are not managed.
const STEPS: &str = "prepare,generate,segment,iou_eval";

/// The instance name of the single-watchdog tests: the actor of their retries.
const INSTANCE: &str = "watchdog-test";

/// A watchdog managing [`STEPS`], stuck after 5 minutes, 3 retries per target, sweeping only
/// hourly: within a test it acts on its first sweep, a notification, or an explicit `sweep`.
pub(crate) fn settings(instance: &str) -> WatchdogSettings {
    WatchdogSettings {
        steps: STEPS.parse().expect("the test's steps are valid"),
        max_retries: 3,
        stuck_after: Duration::from_secs(300),
        sweep_every: Duration::from_secs(3600),
        instance: instance.to_string(),
        ..WatchdogSettings::default()
    }
}

// The cases of recovery.sql a sweep must retry (the fixture names every other row).

/// Running at `segment`, with [`FAILED_VARIANT`].
const FAILED_JOB: Uuid = uuid!("10010000-0000-4000-8000-000000000000");
/// Failed at `segment`, idle 10 minutes.
const FAILED_VARIANT: Uuid = uuid!("10010000-0000-4000-8000-000000000001");
/// A failed job at `generate`, with [`FAILED_AGAIN_VARIANT`].
const FAILED_AGAIN_JOB: Uuid = uuid!("10020000-0000-4000-8000-000000000000");
/// Failed at `generate` 1 minute ago.
const FAILED_AGAIN_VARIANT: Uuid = uuid!("10020000-0000-4000-8000-000000000001");
/// Running at `segment`, with [`LAGGING_VARIANT`].
const LAGGING_JOB: Uuid = uuid!("20010000-0000-4000-8000-000000000000");
/// Done at `generate`, idle 10 minutes.
const LAGGING_VARIANT: Uuid = uuid!("20010000-0000-4000-8000-000000000001");
/// Running at `generate`, with [`STALE_VARIANT`] and [`STALE_AHEAD`].
const STALE_JOB: Uuid = uuid!("30010000-0000-4000-8000-000000000000");
/// Done at `generate`, idle 10 minutes.
const STALE_VARIANT: Uuid = uuid!("30010000-0000-4000-8000-000000000001");
/// Running at `segment`: the variant that moved further.
const STALE_AHEAD: Uuid = uuid!("30010000-0000-4000-8000-000000000002");
/// Running at `iou_eval`, both its variants done there, everything idle 10 minutes.
const FINAL_JOB: Uuid = uuid!("40010000-0000-4000-8000-000000000000");
/// The first of [`FINAL_JOB`]'s two variants.
const FINAL_VARIANT: Uuid = uuid!("40010000-0000-4000-8000-000000000001");

/// retrylog's schema with `recovery.sql` loaded, under the default retry limit (3).
async fn recovery_fixture(pool: &PgPool) {
    migrated(pool).await;
    load(pool, RECOVERY).await;
}

/// One sweep of everything by a watchdog with `settings`.
async fn sweep(pool: &PgPool, settings: &WatchdogSettings) -> SweepSummary {
    let (_keep_running, shutdown) = watch::channel(false);
    recovery::sweep(pool, settings, &Scope::Everything, &shutdown)
        .await
        .unwrap_or_else(|error| panic!("the sweep of {} failed: {error:?}", settings.instance))
}

/// The targets a sweep retried, with their scenarios, in the order it retried them.
fn retried(summary: &SweepSummary) -> Vec<(Scenario, Target)> {
    summary
        .retried
        .iter()
        .map(|(scenario, event)| (*scenario, event.target()))
        .collect()
}

/// What a retry may change on a job or variant row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct RowState {
    status: String,
    current_step: Option<String>,
    updated_at: DateTime<Utc>,
    retry_count: i32,
}

/// The row of the job or variant `id`.
async fn state(pool: &PgPool, id: Uuid) -> RowState {
    sqlx::query_as(
        "SELECT status, current_step, updated_at, retry_count FROM jobs WHERE job_id = $1
         UNION ALL
         SELECT status, current_step, updated_at, retry_count FROM jobs_variants
          WHERE job_variants_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|error| panic!("reading the row of {id}: {error}"))
}

/// The pipeline failing a variant again, as its workers do.
pub(crate) async fn fail(pool: &PgPool, job_variants_id: Uuid) {
    sqlx::query(
        "UPDATE jobs_variants SET status = 'failed', updated_at = now()
          WHERE job_variants_id = $1",
    )
    .bind(job_variants_id)
    .execute(pool)
    .await
    .unwrap_or_else(|error| panic!("failing variant {job_variants_id}: {error}"));
}

/// The events of the job-level stream `id` or of the variant `id`, in log order.
async fn events_of(pool: &PgPool, id: Uuid) -> Vec<RetryEvent> {
    sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM retry_history
          WHERE job_variants_id = $1 OR (job_id = $1 AND job_variants_id IS NULL)
          ORDER BY seq"
    ))
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap_or_else(|error| panic!("reading the events of {id}: {error}"))
}

/// The one event of `id`; fails when there is none or more than one.
async fn only_event(pool: &PgPool, id: Uuid) -> RetryEvent {
    let mut events = events_of(pool, id).await;
    assert_eq!(
        events.len(),
        1,
        "exactly one event for {id}, found {events:#?}"
    );
    events.remove(0)
}

/// A row of `retry_intervention`, the columns a test compares.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Intervention {
    job_id: Uuid,
    job_variants_id: Option<Uuid>,
    retry_count: i32,
    max_retries: i32,
    scenario: String,
    reason: String,
    step: Option<String>,
    status: Option<String>,
    actor: String,
}

/// Every intervention note, oldest first.
async fn interventions(pool: &PgPool) -> Vec<Intervention> {
    sqlx::query_as(
        "SELECT job_id, job_variants_id, retry_count, max_retries, scenario, reason::text,
                step, status, actor
           FROM retry_intervention ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("reading retry_intervention")
}

/// Asserts what every retry by the watchdog `INSTANCE` records: `reason`, the target's step
/// and status change, attempt 1, and a `detail` equal to `expected` once `idle_seconds` (which
/// must lie in `idle`) is taken out.
fn assert_watchdog_event(
    event: &RetryEvent,
    reason: RetryReason,
    (step, from, to): (&str, &str, &str),
    expected: Value,
    idle: RangeInclusive<i64>,
) {
    let target = event.target();
    assert_eq!(event.reason, reason, "{target}: reason");
    assert_eq!(event.step.as_deref(), Some(step), "{target}: step");
    assert_eq!(event.from_status.as_deref(), Some(from), "{target}: from");
    assert_eq!(event.to_status.as_deref(), Some(to), "{target}: to");
    assert_eq!(event.actor, INSTANCE, "{target}: actor");
    assert_eq!(event.attempt, 1, "{target}: attempt");
    let mut detail = event.detail.clone();
    let idle_seconds = detail
        .as_object_mut()
        .and_then(|fields| fields.remove("idle_seconds"))
        .and_then(|seconds| seconds.as_i64())
        .unwrap_or_else(|| panic!("{target}: detail without idle_seconds: {}", event.detail));
    assert!(
        idle.contains(&idle_seconds),
        "{target}: idle_seconds {idle_seconds} outside {idle:?}"
    );
    assert_eq!(detail, expected, "{target}: detail");
}

/// One row of `recovery_case` and the row it names, as JSON.
#[derive(Debug, sqlx::FromRow)]
struct Case {
    id: Uuid,
    scenario: String,
    expect: String,
    label: String,
    row: Value,
}

/// Every case of `recovery.sql` with its row as it is now.
async fn cases(pool: &PgPool) -> Vec<Case> {
    sqlx::query_as(
        "SELECT c.id, c.scenario, c.expect, c.label,
                coalesce((SELECT to_jsonb(j) FROM jobs j WHERE j.job_id = c.id),
                         (SELECT to_jsonb(v) FROM jobs_variants v
                           WHERE v.job_variants_id = c.id)) AS row
           FROM recovery_case c ORDER BY c.id",
    )
    .fetch_all(pool)
    .await
    .expect("reading recovery_case")
}

/// Intervention notes about the job-level stream `id` or the variant `id`.
async fn notes_about(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM retry_intervention
          WHERE job_variants_id = $1 OR (job_id = $1 AND job_variants_id IS NULL)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("counting intervention notes")
}

/// Sweeps `recovery.sql` once and asserts that every row of `scenario` marked untouched is
/// exactly as it was, without an event or a note, and that the scenario's marked cases were
/// retried once each (so the sweep did run over them).
async fn assert_near_misses_left_alone(pool: &PgPool, scenario: &str) {
    recovery_fixture(pool).await;
    let before = cases(pool).await;
    let summary = sweep(pool, &settings(INSTANCE)).await;
    let after = cases(pool).await;

    assert_eq!(summary.failed, 0, "{summary:#?}");
    let mut touched = Vec::new();
    let mut near_misses = 0;
    for (was, now) in before.iter().zip(&after) {
        if was.scenario != scenario {
            continue;
        }
        let events = events_of(pool, was.id).await;
        if was.expect == "retried" {
            assert_eq!(events.len(), 1, "{}: retried once: {events:#?}", was.label);
            continue;
        }
        near_misses += 1;
        if now.row != was.row {
            touched.push(format!("{}: {} became {}", was.label, was.row, now.row));
        }
        if !events.is_empty() {
            touched.push(format!("{}: {} event(s)", was.label, events.len()));
        }
        let notes = notes_about(pool, was.id).await;
        if notes > 0 {
            touched.push(format!("{}: {notes} intervention note(s)", was.label));
        }
    }
    assert!(
        near_misses >= 6,
        "the fixture has near misses of {scenario}"
    );
    assert!(
        touched.is_empty(),
        "the sweep touched near misses of the {scenario} scenario:\n  {}",
        touched.join("\n  ")
    );
}

#[sqlx::test(migrations = false)]
async fn a_failed_variant_is_set_back_to_done_at_its_step_with_one_failed_event(pool: PgPool) {
    recovery_fixture(&pool).await;
    let before = state(&pool, FAILED_VARIANT).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    let after = state(&pool, FAILED_VARIANT).await;
    assert_eq!(after.status, "done");
    assert_eq!(after.current_step.as_deref(), Some("segment"));
    assert!(
        after.updated_at > before.updated_at,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.retry_count, 1);
    let event = only_event(&pool, FAILED_VARIANT).await;
    assert_eq!(event.target(), variant(FAILED_JOB, FAILED_VARIANT));
    assert_watchdog_event(
        &event,
        RetryReason::Failed,
        ("segment", "failed", "done"),
        json!({
            "scenario": "failed",
            "job_status": "running",
            "job_step": "segment",
            "stuck_after_seconds": 300,
            "variant_step": "segment",
        }),
        600..=900,
    );
    assert!(
        summary.retried.contains(&(Scenario::Failed, event.clone())),
        "the summary holds the stored event: {summary:#?}"
    );
    assert_eq!(state(&pool, FAILED_JOB).await.status, "running");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_variant_that_failed_a_minute_ago_in_a_failed_job_is_retried_at_once(pool: PgPool) {
    recovery_fixture(&pool).await;

    sweep(&pool, &settings(INSTANCE)).await;

    let after = state(&pool, FAILED_AGAIN_VARIANT).await;
    assert_eq!((after.status.as_str(), after.retry_count), ("done", 1));
    let event = only_event(&pool, FAILED_AGAIN_VARIANT).await;
    assert_eq!(
        event.target(),
        variant(FAILED_AGAIN_JOB, FAILED_AGAIN_VARIANT)
    );
    assert_watchdog_event(
        &event,
        RetryReason::Failed,
        ("generate", "failed", "done"),
        json!({
            "scenario": "failed",
            "job_status": "failed",
            "job_step": "generate",
            "stuck_after_seconds": 300,
            "variant_step": "generate",
        }),
        60..=360,
    );
    // Only the variant is retried; its job stays failed for the pipeline to pick up.
    assert_eq!(state(&pool, FAILED_AGAIN_JOB).await.status, "failed");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_failed_scenario_leaves_its_near_misses_alone(pool: PgPool) {
    assert_near_misses_left_alone(&pool, "failed").await;
}

#[sqlx::test(migrations = false)]
async fn a_lagging_variant_is_touched_with_one_stuck_event(pool: PgPool) {
    recovery_fixture(&pool).await;
    let before = state(&pool, LAGGING_VARIANT).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    let after = state(&pool, LAGGING_VARIANT).await;
    assert_eq!(after.status, "done", "touched, not changed");
    assert_eq!(after.current_step.as_deref(), Some("generate"));
    assert!(
        after.updated_at > before.updated_at,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.retry_count, 1);
    let event = only_event(&pool, LAGGING_VARIANT).await;
    assert_eq!(event.target(), variant(LAGGING_JOB, LAGGING_VARIANT));
    assert_watchdog_event(
        &event,
        RetryReason::Stuck,
        ("generate", "done", "done"),
        json!({
            "scenario": "lagging",
            "job_status": "running",
            "job_step": "segment",
            "stuck_after_seconds": 300,
            "variant_step": "generate",
        }),
        600..=900,
    );
    assert!(summary.retried.contains(&(Scenario::Lagging, event)));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_lagging_scenario_leaves_its_near_misses_alone(pool: PgPool) {
    assert_near_misses_left_alone(&pool, "lagging").await;
}

#[sqlx::test(migrations = false)]
async fn a_stale_variant_is_touched_with_one_stuck_event_naming_the_variant_ahead(pool: PgPool) {
    recovery_fixture(&pool).await;
    let before = state(&pool, STALE_VARIANT).await;
    let ahead_before = state(&pool, STALE_AHEAD).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    let after = state(&pool, STALE_VARIANT).await;
    assert_eq!(after.status, "done", "touched, not changed");
    assert_eq!(after.current_step.as_deref(), Some("generate"));
    assert!(
        after.updated_at > before.updated_at,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.retry_count, 1);
    assert_eq!(state(&pool, STALE_AHEAD).await, ahead_before);
    let event = only_event(&pool, STALE_VARIANT).await;
    assert_eq!(event.target(), variant(STALE_JOB, STALE_VARIANT));
    assert_watchdog_event(
        &event,
        RetryReason::Stuck,
        ("generate", "done", "done"),
        json!({
            "scenario": "stale",
            "job_status": "running",
            "job_step": "generate",
            "stuck_after_seconds": 300,
            "variant_step": "generate",
            "ahead_variant_id": STALE_AHEAD,
            "ahead_step": "segment",
            "siblings_ahead": 1,
        }),
        600..=900,
    );
    assert!(summary.retried.contains(&(Scenario::Stale, event)));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_stale_scenario_leaves_its_near_misses_alone(pool: PgPool) {
    assert_near_misses_left_alone(&pool, "stale").await;
}

#[sqlx::test(migrations = false)]
async fn a_finished_job_at_the_final_step_is_set_done_with_one_job_level_manual_recovery_event(
    pool: PgPool,
) {
    recovery_fixture(&pool).await;
    let before = state(&pool, FINAL_JOB).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    let after = state(&pool, FINAL_JOB).await;
    assert_eq!(after.status, "done");
    assert_eq!(after.current_step.as_deref(), Some("iou_eval"));
    assert!(
        after.updated_at > before.updated_at,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.retry_count, 1);
    let event = only_event(&pool, FINAL_JOB).await;
    assert_eq!(event.target(), job(FINAL_JOB), "a job-level event");
    assert_watchdog_event(
        &event,
        RetryReason::ManualRecovery,
        ("iou_eval", "running", "done"),
        json!({
            "scenario": "final_step",
            "job_status": "running",
            "job_step": "iou_eval",
            "stuck_after_seconds": 300,
            "variants_done": 2,
        }),
        600..=900,
    );
    assert!(summary.retried.contains(&(Scenario::FinalStep, event)));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_final_step_scenario_leaves_its_near_misses_alone(pool: PgPool) {
    assert_near_misses_left_alone(&pool, "final_step").await;
}

#[sqlx::test(migrations = false)]
async fn one_sweep_retries_exactly_the_marked_cases_and_a_second_sweep_finds_nothing(pool: PgPool) {
    recovery_fixture(&pool).await;
    let before = cases(&pool).await;
    let settings = settings(INSTANCE);

    let first = sweep(&pool, &settings).await;

    let mut expected = vec![
        (Scenario::Failed, variant(FAILED_JOB, FAILED_VARIANT)),
        (
            Scenario::Failed,
            variant(FAILED_AGAIN_JOB, FAILED_AGAIN_VARIANT),
        ),
        (Scenario::Lagging, variant(LAGGING_JOB, LAGGING_VARIANT)),
        (Scenario::Stale, variant(STALE_JOB, STALE_VARIANT)),
        (Scenario::FinalStep, job(FINAL_JOB)),
    ];
    let mut found = retried(&first);
    expected.sort_by_key(|(scenario, target)| (*scenario, target.to_string()));
    found.sort_by_key(|(scenario, target)| (*scenario, target.to_string()));
    assert_eq!(found, expected);
    assert_eq!(
        (first.detected, first.noted, first.skipped, first.failed),
        (5, 0, 0, 0),
        "{first:#?}"
    );
    assert_eq!(event_count(&pool).await, 5);
    let marked: Vec<&Case> = before.iter().filter(|c| c.expect == "retried").collect();
    assert_eq!(marked.len(), 5, "the fixture marks the five retried cases");
    let after = cases(&pool).await;
    let touched: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(was, now)| was.expect == "untouched" && was.row != now.row)
        .map(|(was, _)| was.label.as_str())
        .collect();
    assert!(touched.is_empty(), "rows changed: {touched:#?}");

    // Nothing left to retry; the second sweep's first look finds the final-step job done, so
    // that retry recovered (the others wait for the pipeline to move their rows).
    let second = sweep(&pool, &settings).await;
    assert_eq!(
        second,
        SweepSummary {
            recovered: 1,
            ..SweepSummary::default()
        },
        "nothing left to do"
    );
    assert_eq!(event_count(&pool).await, 5);
    assert_verify_clean(&pool).await;
}

/// Drives variant A2 of `pipeline.sql` (failed at `segment`, job A running there) through
/// three rounds of sweep -> fail again, each round one retry, so that it ends failed with
/// retry_count 3: at the limit of 3.
async fn fail_and_sweep_up_to_the_limit(pool: &PgPool, settings: &WatchdogSettings) {
    let target = variant(JOB_A, VARIANT_A2);
    for round in 1..=3 {
        let summary = sweep(pool, settings).await;
        assert_eq!(
            retried(&summary),
            [(Scenario::Failed, target)],
            "round {round}"
        );
        assert_eq!(summary.retried[0].1.attempt, round, "round {round}");
        assert_eq!(
            state(pool, VARIANT_A2).await.status,
            "done",
            "round {round}"
        );
        assert_eq!(retry_count(pool, target).await, round, "round {round}");
        fail(pool, VARIANT_A2).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_failed_variant_is_retried_up_to_the_limit_then_noted_once_however_many_sweeps_see_it(
    pool: PgPool,
) {
    pipeline(&pool).await;
    set_retry_limit(&pool, Some(3)).await;
    let settings = settings(INSTANCE);
    fail_and_sweep_up_to_the_limit(&pool, &settings).await;
    let at_limit = state(&pool, VARIANT_A2).await;

    let stopped = sweep(&pool, &settings).await;
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(sweep(&pool, &settings).await);
    }

    assert_eq!((stopped.detected, stopped.noted), (1, 1), "{stopped:#?}");
    assert!(stopped.retried.is_empty(), "{stopped:#?}");
    for summary in &later {
        assert!(summary.retried.is_empty(), "{summary:#?}");
        assert_eq!(summary.noted, 0, "{summary:#?}");
    }
    assert_eq!(
        state(&pool, VARIANT_A2).await,
        at_limit,
        "no state change at the limit: still failed, same updated_at, count 3"
    );
    assert_eq!(at_limit.status, "failed");
    assert_eq!(attempts(&pool, variant(JOB_A, VARIANT_A2)).await, [1, 2, 3]);
    assert_eq!(
        interventions(&pool).await,
        [Intervention {
            job_id: JOB_A,
            job_variants_id: Some(VARIANT_A2),
            retry_count: 3,
            max_retries: 3,
            scenario: "failed".into(),
            reason: "failed".into(),
            step: Some("segment".into()),
            status: Some("failed".into()),
            actor: INSTANCE.into(),
        }]
    );
    assert_verify_clean(&pool).await;
}

// docs/operations.md, "What no scenario covers": a job at the final step whose variant is
// held at the limit is neither closed nor retried; only the variant is noted for a human.
#[sqlx::test(migrations = false)]
async fn a_final_step_job_held_up_by_a_variant_at_the_limit_is_left_running_and_the_variant_noted(
    pool: PgPool,
) {
    recovery_fixture(&pool).await;
    let held = variant(FINAL_JOB, FINAL_VARIANT);
    append_n(&pool, held, 3).await;
    fail(&pool, FINAL_VARIANT).await;
    let job_before = state(&pool, FINAL_JOB).await;

    for round in 1..=3 {
        let summary = sweep(&pool, &settings(INSTANCE)).await;
        assert!(
            !retried(&summary)
                .iter()
                .any(|(_, target)| target.job_id() == FINAL_JOB),
            "round {round}: {summary:#?}"
        );
    }

    assert_eq!(
        state(&pool, FINAL_JOB).await,
        job_before,
        "the job is untouched"
    );
    assert!(events_of(&pool, FINAL_JOB).await.is_empty());
    assert_eq!(state(&pool, FINAL_VARIANT).await.status, "failed");
    assert_eq!(attempts(&pool, held).await, [1, 2, 3]);
    let notes: Vec<Intervention> = interventions(&pool)
        .await
        .into_iter()
        .filter(|note| note.job_id == FINAL_JOB)
        .collect();
    assert_eq!(
        notes,
        [Intervention {
            job_id: FINAL_JOB,
            job_variants_id: Some(FINAL_VARIANT),
            retry_count: 3,
            max_retries: 3,
            scenario: "failed".into(),
            reason: "failed".into(),
            step: Some("iou_eval".into()),
            status: Some("failed".into()),
            actor: INSTANCE.into(),
        }],
        "noted once, the variant only"
    );
}

#[sqlx::test(migrations = false)]
async fn at_the_limit_only_an_operators_forced_manual_recovery_is_recorded(pool: PgPool) {
    pipeline(&pool).await;
    set_retry_limit(&pool, Some(3)).await;
    let settings = settings(INSTANCE);
    fail_and_sweep_up_to_the_limit(&pool, &settings).await;
    assert_eq!(sweep(&pool, &settings).await.noted, 1);
    let target = variant(JOB_A, VARIANT_A2);
    let (job_id, variant_id) = (JOB_A.to_string(), VARIANT_A2.to_string());
    let record = ["record", "--job-id", &job_id, "--variant-id", &variant_id];
    let before = snapshot(&pool).await;
    let notes_before = interventions(&pool).await;

    // 1. The CLI without --force: exit 2, one line naming the target and the limit.
    let refused = retrylog(
        &pool,
        &[&record[..], &["--reason", "manual_recovery"]].concat(),
    )
    .await;
    assert_eq!(refused.code, Some(2), "{refused:#?}");
    assert_eq!(refused.stdout, "", "{refused:#?}");
    let lines = refused.problem_lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!("variant {VARIANT_A2}")) && lines[0].contains("limit 3"),
        "the line names the target and the limit: {}",
        lines[0]
    );
    // 2. The CLI forcing an automatic reason: exit 2.
    let stuck = retrylog(
        &pool,
        &[&record[..], &["--reason", "stuck", "--force"]].concat(),
    )
    .await;
    assert_eq!(stuck.code, Some(2), "{stuck:#?}");
    assert!(stuck.stderr.contains("force"), "{stuck:#?}");
    // 3. record_retry without force: RL004.
    let mut conn = pool.acquire().await.unwrap();
    let error = record_via_sql(&mut conn, target, "manual_recovery")
        .await
        .expect_err("the SQL door refuses a retry past the limit");
    let (code, message) = database_error(&error);
    assert_eq!(code, "RL004", "{message}");
    assert!(
        message.contains(&format!("variant {VARIANT_A2}")),
        "{message}"
    );
    // 4. record_retry forcing reason stuck: 22023.
    let error = sqlx::query_scalar::<_, i32>(
        "SELECT attempt FROM record_retry(job_id => $1, job_variants_id => $2,
                reason => 'stuck', force => true)",
    )
    .bind(JOB_A)
    .bind(VARIANT_A2)
    .fetch_one(&mut *conn)
    .await
    .expect_err("force is only for manual_recovery");
    assert_eq!(database_error(&error).0, "22023");
    drop(conn);
    assert_eq!(
        snapshot(&pool).await,
        before,
        "no refused door wrote anything"
    );
    assert_eq!(interventions(&pool).await, notes_before);

    // 5. The CLI with --force: recorded as the operator, past the limit, count 4.
    let forced = retrylog(
        &pool,
        &[
            &record[..],
            &["--reason", "manual_recovery", "--force", "--format", "json"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(forced.code, Some(0), "{forced:#?}");
    let event = &forced.json()[0];
    // $USER, else the OS user (`id -un`), as `record` names the operator.
    let user = std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| {
            let id = std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap();
            String::from_utf8(id.stdout).unwrap().trim().to_string()
        });
    assert_eq!(event["actor"], format!("cli:{user}"));
    assert_eq!(event["reason"], "manual_recovery");
    assert_eq!(event["attempt"], 4);
    assert_eq!(event["detail"]["forced_past_limit"], 3);
    assert_eq!(retry_count(&pool, target).await, 4);

    // 6. It fails again: the watchdog notes it once more, at count 4, once.
    sqlx::query("UPDATE jobs_variants SET status = 'done' WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&pool)
        .await
        .unwrap();
    fail(&pool, VARIANT_A2).await;
    let noted: Vec<usize> = {
        let mut noted = Vec::new();
        for _ in 0..3 {
            let summary = sweep(&pool, &settings).await;
            assert!(summary.retried.is_empty(), "{summary:#?}");
            noted.push(summary.noted);
        }
        noted
    };
    assert_eq!(noted, [1, 0, 0]);
    let counts: Vec<i32> = interventions(&pool)
        .await
        .iter()
        .map(|note| note.retry_count)
        .collect();
    assert_eq!(counts, [3, 4]);
    assert_eq!(state(&pool, VARIANT_A2).await.status, "failed");

    // 7. --actor names the operator.
    let again = retrylog(
        &pool,
        &[
            &record[..],
            &[
                "--reason",
                "manual_recovery",
                "--force",
                "--actor",
                "ops:alice",
            ],
            &["--format", "json"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(again.code, Some(0), "{again:#?}");
    let event = &again.json()[0];
    assert_eq!(event["actor"], "ops:alice");
    assert_eq!(event["attempt"], 5);
    assert_eq!(event["detail"]["forced_past_limit"], 3);
    assert_eq!(retry_count(&pool, target).await, 5);
    assert_gapless(&pool, target, 5).await;
    assert_verify_clean(&pool).await;
}

/// A pool of its own for one watchdog, its connections named `application_name`.
pub(crate) async fn watchdog_pool(pool: &PgPool, application_name: &str) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("the pool of {application_name} connects: {error}"))
}

/// `recovery::run` in a task of its own, on a pool of its own.
pub(crate) struct Watchdog {
    pool: PgPool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Watchdog {
    /// Starts `run` with `settings` on a pool whose connections are named `application_name`.
    pub(crate) async fn start(
        pool: &PgPool,
        application_name: &str,
        settings: WatchdogSettings,
    ) -> Self {
        let pool = watchdog_pool(pool, application_name).await;
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(recovery::run(pool.clone(), settings, shutdown));
        Watchdog { pool, stop, task }
    }

    /// Sends shutdown and asserts that `run` returns within 2 s; closes its pool.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("run returns within 2 s of shutdown")
            .expect("run does not panic");
        self.pool.close().await;
    }
}

/// A watchdog has LISTENed on the pipeline's channel: its listener's last statement is the
/// LISTEN.
pub(crate) const LISTENING: &str = "EXISTS (SELECT 1 FROM pg_stat_activity
                                 WHERE datname = current_database() AND state = 'idle'
                                   AND query ILIKE 'listen %')";

/// Loads `recovery_crowd.sql` and sets the shared limit to 3.
async fn crowd(pool: &PgPool) {
    migrated(pool).await;
    load(pool, RECOVERY_CROWD).await;
    set_retry_limit(pool, Some(3)).await;
}

/// Asserts that the watchdogs `instances` together retried each of the crowd's 200 conditions
/// exactly once with its scenario, noted each of the 20 targets at the limit exactly once,
/// and did nothing else.
async fn assert_crowd_handled_exactly_once(pool: &PgPool, instances: &[&str]) {
    let mut expected: HashMap<Target, &str> = HashMap::new();
    for n in 1..=50 {
        expected.insert(variant(crowd_id(1, n, 0), crowd_id(1, n, 1)), "failed");
        expected.insert(variant(crowd_id(2, n, 0), crowd_id(2, n, 1)), "lagging");
        expected.insert(variant(crowd_id(3, n, 0), crowd_id(3, n, 1)), "stale");
        expected.insert(job(crowd_id(4, n, 0)), "final_step");
    }
    let rows: Vec<(Uuid, Option<Uuid>, String, String, i64)> = sqlx::query_as(
        "SELECT job_id, job_variants_id, detail->>'scenario', min(actor), count(*)
           FROM retry_history WHERE actor <> 'earlier-watchdog'
          GROUP BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut wrong = Vec::new();
    for (job_id, job_variants_id, scenario, actor, count) in &rows {
        let target = Target::from_columns(*job_id, *job_variants_id);
        match expected.remove(&target) {
            Some(wanted) if wanted == scenario && *count == 1 => {}
            wanted => wrong.push(format!(
                "{target}: {count} {scenario} event(s), expected {wanted:?}"
            )),
        }
        assert!(
            instances.contains(&actor.as_str()),
            "{target}: actor {actor}"
        );
    }
    wrong.extend(
        expected
            .keys()
            .map(|target| format!("{target}: not retried")),
    );
    assert!(
        wrong.is_empty(),
        "{} of 200 conditions not retried exactly once:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );

    let notes = interventions(pool).await;
    let mut noted: Vec<Uuid> = notes
        .iter()
        .filter_map(|note| note.job_variants_id)
        .collect();
    noted.sort();
    let at_limit: Vec<Uuid> = (1..=20).map(|n| crowd_id(5, n, 1)).collect();
    assert_eq!(noted, at_limit, "each target at the limit noted once");
    assert!(notes
        .iter()
        .all(|note| note.retry_count == 3 && note.max_retries == 3));
    assert_eq!(event_count(pool).await, 200 + 60);
    assert_verify_clean(pool).await;
}

#[sqlx::test(migrations = false)]
async fn two_watchdogs_sweeping_at_once_retry_every_condition_exactly_once(pool: PgPool) {
    crowd(&pool).await;
    let instances = ["watchdog-a", "watchdog-b"];
    let start = Arc::new(Barrier::new(instances.len()));
    let mut tasks = Vec::new();
    for instance in instances {
        let own = watchdog_pool(&pool, instance).await;
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let summary = sweep(&own, &settings(instance)).await;
            own.close().await;
            summary
        }));
    }
    let mut summaries = Vec::new();
    for task in tasks {
        summaries.push(task.await.expect("a watchdog panicked"));
    }

    let retried: usize = summaries.iter().map(|s| s.retried.len()).sum();
    let noted: usize = summaries.iter().map(|s| s.noted).sum();
    let failed: usize = summaries.iter().map(|s| s.failed).sum();
    assert_eq!((retried, noted, failed), (200, 20, 0), "{summaries:#?}");
    assert_crowd_handled_exactly_once(&pool, &instances).await;
}

#[sqlx::test(migrations = false)]
async fn two_watchdog_loops_running_at_once_retry_every_condition_exactly_once(pool: PgPool) {
    crowd(&pool).await;
    let instances = ["watchdog-a", "watchdog-b"];
    let mut watchdogs = Vec::new();
    for instance in instances {
        let settings = WatchdogSettings {
            sweep_every: Duration::from_millis(200),
            ..settings(instance)
        };
        watchdogs.push(Watchdog::start(&pool, instance, settings).await);
    }

    wait_until(
        &pool,
        "(SELECT count(*) FROM retry_history WHERE actor <> 'earlier-watchdog') >= 200
         AND (SELECT count(*) FROM retry_intervention) >= 20",
        Duration::from_secs(20),
        "the two watchdogs handled the crowd",
    )
    .await;
    // Stopping lets a retry in flight commit, so the count below is final.
    for watchdog in watchdogs {
        watchdog.stop().await;
    }

    assert_crowd_handled_exactly_once(&pool, &instances).await;
}

#[sqlx::test(migrations = false)]
async fn a_failure_between_the_state_change_and_the_append_rolls_both_back_and_the_sweep_goes_on(
    pool: PgPool,
) {
    recovery_fixture(&pool).await;
    // A fault after the state change: the append of this one variant's event raises.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_one_retry() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.job_variants_id = '{FAILED_VARIANT}' THEN
                 RAISE EXCEPTION 'injected fault: no event for variant %', NEW.job_variants_id;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_one_retry BEFORE INSERT ON retry_history
             FOR EACH ROW EXECUTE FUNCTION refuse_one_retry();"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let before = state(&pool, FAILED_VARIANT).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    assert_eq!(summary.failed, 1, "{summary:#?}");
    let after = state(&pool, FAILED_VARIANT).await;
    assert_eq!(
        after, before,
        "still failed, same updated_at, retry_count 0"
    );
    assert_eq!((after.status.as_str(), after.retry_count), ("failed", 0));
    assert!(events_of(&pool, FAILED_VARIANT).await.is_empty());
    let mut others: Vec<Target> = summary
        .retried
        .iter()
        .map(|(_, event)| event.target())
        .collect();
    others.sort_by_key(Target::to_string);
    let mut expected = vec![
        variant(FAILED_AGAIN_JOB, FAILED_AGAIN_VARIANT),
        variant(LAGGING_JOB, LAGGING_VARIANT),
        variant(STALE_JOB, STALE_VARIANT),
        job(FINAL_JOB),
    ];
    expected.sort_by_key(Target::to_string);
    assert_eq!(others, expected, "the other candidates are still retried");
    assert_verify_clean(&pool).await;

    // Without the fault, the next sweep retries it.
    sqlx::query("DROP TRIGGER refuse_one_retry ON retry_history")
        .execute(&pool)
        .await
        .unwrap();
    let next = sweep(&pool, &settings(INSTANCE)).await;
    assert_eq!(
        retried(&next),
        [(Scenario::Failed, variant(FAILED_JOB, FAILED_VARIANT))]
    );
    assert_eq!(state(&pool, FAILED_VARIANT).await.retry_count, 1);
}

/// Starts a watchdog notifying `channel` over `pipeline.sql`, waits for its first sweep to
/// retry variant A2, then fails variant A3 and asserts it is retried within 2 s, although the
/// next sweep is an hour away: the failure trigger's signal woke it.
async fn assert_failure_gets_retry(pool: &PgPool, channel: &str) {
    pipeline(pool).await;
    let settings = WatchdogSettings {
        channel: channel.to_string(),
        ..settings(INSTANCE)
    };
    recovery::publish_settings(pool, &settings).await.unwrap();
    set_retry_limit(pool, None).await;
    let watchdog = Watchdog::start(pool, "watchdog-notified", settings).await;
    let first_sweep = has_events(VARIANT_A2, 1);
    let deadline = Duration::from_secs(5);
    wait_until(pool, &first_sweep, deadline, "the first sweep retried A2").await;

    fail(pool, VARIANT_A3).await;

    let retried = has_events(VARIANT_A3, 1);
    wait_until(pool, &retried, Duration::from_secs(2), "A3 retried").await;
    assert_eq!(state(pool, VARIANT_A3).await.status, "done");
    watchdog.stop().await;
    assert_eq!(event_count(pool).await, 2);
    assert_verify_clean(pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_failure_gets_its_variant_retried_without_waiting_for_a_sweep(pool: PgPool) {
    assert_failure_gets_retry(&pool, "retrylog_pipeline").await;
}

#[sqlx::test(migrations = false)]
async fn a_watchdog_notifying_another_channel_is_still_woken_by_the_failure_trigger(pool: PgPool) {
    assert_failure_gets_retry(&pool, "pipeline_changes").await;
}

#[sqlx::test(migrations = false)]
async fn a_watchdog_whose_connections_are_terminated_reconnects_and_keeps_retrying(pool: PgPool) {
    pipeline(&pool).await;
    // Hourly sweeps: after the reconnect, only the poll of the failure signals can get A3
    // retried in time.
    let watchdog = Watchdog::start(&pool, "watchdog-under-test", settings(INSTANCE)).await;
    let deadline = Duration::from_secs(5);
    let first_sweep = has_events(VARIANT_A2, 1);
    wait_until(&pool, &first_sweep, deadline, "the first sweep retried A2").await;

    // In the select list, so that only the rows the WHERE keeps are terminated.
    let terminated: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'watchdog-under-test' AND datname = current_database()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !terminated.is_empty() && terminated.iter().all(|(_, signalled)| *signalled),
        "terminated its pooled connections: {terminated:?}"
    );
    let gone = format!(
        "NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ANY('{{{}}}'::int[]))",
        terminated
            .iter()
            .map(|(pid, _)| pid.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    wait_until(&pool, &gone, deadline, "the terminated backends exited").await;

    fail(&pool, VARIANT_A3).await;

    let retried = has_events(VARIANT_A3, 1);
    wait_until(&pool, &retried, deadline, "A3 retried after the reconnect").await;
    assert_eq!(state(&pool, VARIANT_A3).await.status, "done");
    watchdog.stop().await;
    assert_eq!(event_count(&pool).await, 2);
    assert_verify_clean(&pool).await;
}

/// The next notification, within 2 s.
async fn next_notification(listener: &mut PgListener) -> PgNotification {
    tokio::time::timeout(Duration::from_secs(2), listener.recv())
        .await
        .expect("a notification within 2 s")
        .expect("the listener receives")
}

fn payload(notification: &PgNotification) -> Value {
    serde_json::from_str(notification.payload())
        .unwrap_or_else(|error| panic!("payload {:?}: {error}", notification.payload()))
}

#[sqlx::test(migrations = false)]
async fn a_transition_into_failed_notifies_the_channel_with_the_row_as_json(pool: PgPool) {
    pipeline(&pool).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("retrylog_pipeline").await.unwrap();

    fail(&pool, VARIANT_A3).await;
    let variant_failed = next_notification(&mut listener).await;
    sqlx::query("UPDATE jobs SET status = 'failed' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let job_failed = next_notification(&mut listener).await;
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
         VALUES ('0b000000-0000-4000-8000-000000000009', $1, 'failed', 'generate')",
    )
    .bind(JOB_B)
    .execute(&pool)
    .await
    .unwrap();
    let inserted_failed = next_notification(&mut listener).await;

    assert_eq!(variant_failed.channel(), "retrylog_pipeline");
    assert_eq!(
        payload(&variant_failed),
        json!({"table": "jobs_variants", "job_id": JOB_A, "job_variants_id": VARIANT_A3,
               "status": "failed", "step": "segment"})
    );
    assert_eq!(
        payload(&job_failed),
        json!({"table": "jobs", "job_id": JOB_B, "job_variants_id": null,
               "status": "failed", "step": "generate"})
    );
    assert_eq!(
        payload(&inserted_failed)["job_variants_id"],
        json!("0b000000-0000-4000-8000-000000000009")
    );
}

#[sqlx::test(migrations = false)]
async fn the_pipelines_everyday_writes_notify_nothing(pool: PgPool) {
    pipeline(&pool).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("retrylog_pipeline").await.unwrap();

    // Every write a healthy pipeline makes, none of them a transition into failed: a
    // heartbeat, a status change each way, a step change, the counter bump, a new job with
    // its variants, and a failed row written again while it stays failed.
    for statement in [
        "UPDATE jobs_variants SET updated_at = now()",
        "UPDATE jobs_variants SET status = 'running', updated_at = now() WHERE status = 'done'",
        "UPDATE jobs_variants SET status = 'done', updated_at = now() WHERE status = 'running'",
        "UPDATE jobs SET current_step = 'iou_eval', updated_at = now()",
        "UPDATE jobs_variants SET current_step = 'segment', updated_at = now()",
        "UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now()",
        "UPDATE jobs SET status = 'done', updated_at = now()",
        "INSERT INTO jobs (job_id, status, current_step)
         VALUES ('0f000000-0000-4000-8000-000000000000', 'running', 'prepare')",
        "INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
         VALUES ('0f000000-0000-4000-8000-000000000001',
                 '0f000000-0000-4000-8000-000000000000', 'running', 'prepare')",
        "UPDATE jobs_variants SET status = 'failed'
          WHERE job_variants_id = '0f000000-0000-4000-8000-000000000001'",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    // The one transition into failed above is the last statement; draining it, then a
    // failed row updated again (still failed) must send nothing before the marker.
    let failed = next_notification(&mut listener).await;
    assert_eq!(
        payload(&failed)["job_variants_id"],
        json!("0f000000-0000-4000-8000-000000000001"),
        "only the transition into failed notified"
    );
    sqlx::query(
        "UPDATE jobs_variants SET status = 'failed', updated_at = now() WHERE status = 'failed'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_nothing_notified_before_a_marker(&pool, &mut listener).await;
}

/// Sends a marker on the channel and asserts it is the next notification: nothing sent
/// before it is still waiting.
async fn assert_nothing_notified_before_a_marker(pool: &PgPool, listener: &mut PgListener) {
    sqlx::query("SELECT pg_notify('retrylog_pipeline', 'marker')")
        .execute(pool)
        .await
        .unwrap();
    let next = next_notification(listener).await;
    assert_eq!(
        next.payload(),
        "marker",
        "nothing was notified before the marker"
    );
}

#[sqlx::test(migrations = false)]
async fn a_retry_count_update_by_the_projection_notifies_nothing(pool: PgPool) {
    pipeline(&pool).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("retrylog_pipeline").await.unwrap();

    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    append_ok(&pool, &retry(job(JOB_B))).await;
    // Naming the columns without changing them notifies nothing either.
    sqlx::query("UPDATE jobs_variants SET status = status, updated_at = updated_at")
        .execute(&pool)
        .await
        .unwrap();

    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 1);
    assert_eq!(retry_count(&pool, job(JOB_B)).await, 1);
    assert_nothing_notified_before_a_marker(&pool, &mut listener).await;
}

#[sqlx::test(migrations = false)]
async fn the_failure_trigger_notifies_the_channel_named_in_retrylog_settings(pool: PgPool) {
    pipeline(&pool).await;
    sqlx::query("UPDATE retrylog_settings SET notify_channel = 'pipeline_changes'")
        .execute(&pool)
        .await
        .unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener
        .listen_all(["retrylog_pipeline", "pipeline_changes"])
        .await
        .unwrap();

    fail(&pool, VARIANT_A3).await;
    sqlx::query("SELECT pg_notify('retrylog_pipeline', 'marker')")
        .execute(&pool)
        .await
        .unwrap();

    let changed = next_notification(&mut listener).await;
    assert_eq!(changed.channel(), "pipeline_changes");
    assert_eq!(payload(&changed)["job_variants_id"], json!(VARIANT_A3));
    let marker = next_notification(&mut listener).await;
    assert_eq!(
        (marker.channel(), marker.payload()),
        ("retrylog_pipeline", "marker"),
        "nothing else went to the old channel"
    );
}

#[sqlx::test(migrations = false)]
async fn a_running_watchdog_returns_promptly_once_shutdown_is_sent(pool: PgPool) {
    pipeline(&pool).await;
    let watchdog = Watchdog::start(&pool, "watchdog-stopping", settings(INSTANCE)).await;
    let deadline = Duration::from_secs(5);
    let first_sweep = has_events(VARIANT_A2, 1);
    wait_until(&pool, &first_sweep, deadline, "the first sweep retried A2").await;

    let asked = Instant::now();
    watchdog.stop().await;

    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    wait_until(
        &pool,
        "NOT EXISTS (SELECT 1 FROM pg_stat_activity
                      WHERE application_name = 'watchdog-stopping')",
        deadline,
        "the watchdog's connections are closed",
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_watchdog_told_to_stop_before_it_starts_returns_without_a_sweep(pool: PgPool) {
    pipeline(&pool).await;
    let own = watchdog_pool(&pool, "watchdog-stopped").await;
    let (stop, shutdown) = watch::channel(false);
    stop.send_replace(true);

    tokio::time::timeout(
        Duration::from_secs(2),
        recovery::run(own.clone(), settings(INSTANCE), shutdown),
    )
    .await
    .expect("run returns within 2 s");
    own.close().await;

    assert_eq!(event_count(&pool).await, 0, "A2 was not retried");
    drop(stop);
}

#[sqlx::test(migrations = false)]
async fn publish_settings_writes_the_limit_and_the_channel_every_door_reads(pool: PgPool) {
    migrated(&pool).await;
    let settings = WatchdogSettings {
        max_retries: 5,
        channel: "pipeline_changes".into(),
        ..settings("watchdog-a")
    };

    recovery::publish_settings(&pool, &settings).await.unwrap();
    let published: (Option<i32>, String, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT max_retries, notify_channel, updated_by, updated_at FROM retrylog_settings",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    recovery::publish_settings(&pool, &settings).await.unwrap();
    let again: (Option<i32>, String, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT max_retries, notify_channel, updated_by, updated_at FROM retrylog_settings",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    assert_eq!(
        (published.0, published.1.as_str(), published.2.as_str()),
        (Some(5), "pipeline_changes", "watchdog-a")
    );
    assert_eq!(
        again, published,
        "publishing the same settings changes nothing"
    );
}

#[sqlx::test(migrations = false)]
async fn the_effective_limit_is_the_lower_of_the_shared_and_the_instances(pool: PgPool) {
    migrated(&pool).await;
    let settings = settings(INSTANCE);
    let mut limits = Vec::new();
    for shared in [None, Some(2), Some(3), Some(5), Some(0)] {
        set_retry_limit(&pool, shared).await;
        let mut conn = pool.acquire().await.unwrap();
        let limit = recovery::effective_limit(&mut conn, &settings)
            .await
            .unwrap();
        limits.push((shared, limit));
    }

    assert_eq!(
        limits,
        [
            (None, 3),
            (Some(2), 2),
            (Some(3), 3),
            (Some(5), 3),
            (Some(0), 0)
        ]
    );
}

// While the database is unreachable, waiting for a connection (the sweep's acquire, the
// listener's connect) must not hold up a stop: serve's pool would wait 30 s.
#[sqlx::test(migrations = false)]
async fn a_watchdog_whose_database_is_down_still_stops_promptly(pool: PgPool) {
    // Nothing listens on port 1: every connection attempt is refused, and the pool keeps
    // trying for as long as serve's pool does (src/connect/mod.rs, ACQUIRE_TIMEOUT = 30 s).
    let options = (*pool.connect_options()).clone().port(1);
    let down = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(recovery::run(down.clone(), settings(INSTANCE), shutdown));
    // Wait until its first sweep and its listener are both waiting for a connection.
    let until = Instant::now() + Duration::from_secs(10);
    while down.size() < 2 {
        assert!(!task.is_finished(), "run returned before shutdown was sent");
        assert!(
            Instant::now() < until,
            "the sweep and the listener never asked for a connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run returns within 2 s of shutdown while the database is down")
        .expect("run does not panic");
    down.close().await;
}

// A variant the pipeline is failing in a transaction not yet committed still reads as done.
// Closing the job over it would lose the failure: a done job's variants are in no scenario.
// The final-step claim waits for the job's variants (FOR SHARE) and then sees the failure.
#[sqlx::test(migrations = false)]
async fn a_variant_failing_while_the_watchdog_finishes_its_job_is_not_lost(pool: PgPool) {
    recovery_fixture(&pool).await;
    let own = watchdog_pool(&pool, "watchdog-finishing").await;
    // The pipeline fails a variant of the finished job and has not committed yet.
    let mut pipeline = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE jobs_variants SET status = 'failed', updated_at = now()
          WHERE job_variants_id = $1",
    )
    .bind(FINAL_VARIANT)
    .execute(&mut *pipeline)
    .await
    .unwrap();

    let sweeping = tokio::spawn(async move {
        let summary = sweep(&own, &settings(INSTANCE)).await;
        own.close().await;
        summary
    });
    // Let the sweep go as far as it can: to its end, or to waiting for the pipeline's lock.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE application_name = 'watchdog-finishing'
                               AND wait_event_type = 'Lock')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting || sweeping.is_finished() {
            break;
        }
        assert!(Instant::now() < until, "the sweep neither ended nor waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.commit().await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(5), sweeping)
        .await
        .expect("the sweep ends once the pipeline committed")
        .expect("the sweep does not panic");

    let (job_state, variant_state) = (
        state(&pool, FINAL_JOB).await,
        state(&pool, FINAL_VARIANT).await,
    );
    assert_eq!(
        variant_state.status, "failed",
        "the pipeline's change stands"
    );
    assert_ne!(
        job_state.status, "done",
        "the job was set done while its variant failed: {:#?}",
        summary.retried
    );
}

#[sqlx::test(migrations = false)]
async fn serve_runs_the_watchdog_logs_each_retry_and_exits_zero_on_sigterm(pool: PgPool) {
    recovery_fixture(&pool).await;
    let serve = serve_command(&pool, &["--log-format", "json", "--sweep-every", "1h"])
        .await
        .env("RETRYLOG_INSTANCE", "serve-under-test")
        .env("RETRYLOG_MAX_RETRIES", "2")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("retrylog serve starts");

    // Its first sweep retries the fixture's failed variant; then the failure's signal wakes it
    // for a variant the pipeline fails afterwards (the next sweep is an hour away).
    wait_until(
        &pool,
        &has_events(FAILED_VARIANT, 1),
        Duration::from_secs(10),
        "serve's first sweep retried the failed variant",
    )
    .await;
    fail(&pool, FAILED_VARIANT).await;
    wait_until(
        &pool,
        &has_events(FAILED_VARIANT, 2),
        Duration::from_secs(5),
        "serve retried the variant failed again on its signal",
    )
    .await;

    let output = stop_serve(serve).await;

    // Its settings reached the database, its retries carry its name, and its log says what it
    // did, one JSON object per line.
    let limit: Option<i32> = sqlx::query_scalar("SELECT max_retries FROM retrylog_settings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit, Some(2));
    let events = events_of(&pool, FAILED_VARIANT).await;
    assert!(!events.is_empty(), "serve retried the failed variant");
    assert!(events.iter().all(|event| event.actor == "serve-under-test"));
    let log = String::from_utf8(output.stderr).unwrap();
    let retried: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["target"] == format!("variant {FAILED_VARIANT}"))
        .collect();
    assert_eq!(retried.len(), 2, "{log}");
    let first = &retried[0]["fields"];
    assert_eq!(first["scenario"], "failed");
    assert_eq!(first["reason"], "failed");
    assert_eq!(first["attempt"], 1);
    assert_eq!(retried[1]["fields"]["attempt"], 2);
    assert_verify_clean(&pool).await;
}

// Batches: a sweep retries its candidates `batch_size` per transaction.

#[sqlx::test(migrations = false)]
async fn a_retry_the_log_refuses_at_the_limit_is_skipped_and_the_rest_of_its_batch_retried(
    pool: PgPool,
) {
    recovery_fixture(&pool).await;
    let again = variant(FAILED_AGAIN_JOB, FAILED_AGAIN_VARIANT);
    append_n(&pool, again, 2).await;
    // The shared limit drops to 2 as the batch changes this variant's state, after the sweep
    // read 3: record_retries refuses its row (RL004) in the batch with FAILED_VARIANT.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION lower_the_limit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE retrylog_settings SET max_retries = 2;
             RETURN NULL;
         END $$;
         CREATE TRIGGER lower_the_limit AFTER UPDATE ON jobs_variants
             FOR EACH ROW WHEN (NEW.job_variants_id = '{FAILED_AGAIN_VARIANT}')
             EXECUTE FUNCTION lower_the_limit();"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let before = state(&pool, FAILED_AGAIN_VARIANT).await;

    let summary = sweep(&pool, &settings(INSTANCE)).await;

    assert_eq!(
        (summary.skipped, summary.failed, summary.noted),
        (1, 0, 0),
        "{summary:#?}"
    );
    let mut got = retried(&summary);
    got.sort_by_key(|(_, target)| target.to_string());
    let mut wanted = vec![
        (Scenario::Failed, variant(FAILED_JOB, FAILED_VARIANT)),
        (Scenario::Lagging, variant(LAGGING_JOB, LAGGING_VARIANT)),
        (Scenario::Stale, variant(STALE_JOB, STALE_VARIANT)),
        (Scenario::FinalStep, job(FINAL_JOB)),
    ];
    wanted.sort_by_key(|(_, target)| target.to_string());
    assert_eq!(
        got, wanted,
        "its batch-mate and every other candidate retried"
    );
    // The refused one: neither its state change nor the lowered limit survived.
    assert_eq!(state(&pool, FAILED_AGAIN_VARIANT).await, before);
    assert_eq!(events_of(&pool, FAILED_AGAIN_VARIANT).await.len(), 2);
    let limit: Option<i32> = sqlx::query_scalar("SELECT max_retries FROM retrylog_settings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit, Some(3));
    assert_eq!(state(&pool, FAILED_VARIANT).await.status, "done");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn two_watchdogs_racing_in_small_batches_over_the_same_candidates_never_retry_twice(
    pool: PgPool,
) {
    crowd(&pool).await;
    // Batch sizes that cut the crowd differently, so the two claim overlapping batches.
    let instances = [("watchdog-a", 7), ("watchdog-b", 13)];
    let start = Arc::new(Barrier::new(instances.len()));
    let mut tasks = Vec::new();
    for (instance, batch_size) in instances {
        let own = watchdog_pool(&pool, instance).await;
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let settings = WatchdogSettings {
                batch_size,
                ..settings(instance)
            };
            start.wait().await;
            let summary = sweep(&own, &settings).await;
            own.close().await;
            summary
        }));
    }
    let mut summaries = Vec::new();
    for task in tasks {
        summaries.push(task.await.expect("a watchdog panicked"));
    }
    let retried: usize = summaries.iter().map(|s| s.retried.len()).sum();
    let noted: usize = summaries.iter().map(|s| s.noted).sum();
    let failed: usize = summaries.iter().map(|s| s.failed).sum();
    assert_eq!((retried, noted, failed), (200, 20, 0), "{summaries:#?}");
    assert_crowd_handled_exactly_once(&pool, &["watchdog-a", "watchdog-b"]).await;
}

#[sqlx::test(migrations = false)]
async fn a_watchdog_cut_off_mid_batch_leaves_nothing_of_the_batch_and_the_next_sweep_does_it(
    pool: PgPool,
) {
    crowd(&pool).await;
    let before = snapshot(&pool).await;
    let notes_before = interventions(&pool).await.len();
    // The eleventh event of the batch waits on a lock the test holds: ten retries (state
    // changes and events) are made in the batch's transaction by then, and the notes of the
    // failed scenario's targets at the limit.
    sqlx::raw_sql(
        "CREATE FUNCTION hold_the_batch() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT count(*) FROM retry_history WHERE actor = 'watchdog-cut-off') = 10 THEN
                 PERFORM pg_advisory_xact_lock(2424);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER hold_the_batch BEFORE INSERT ON retry_history
             FOR EACH ROW EXECUTE FUNCTION hold_the_batch();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(2424)")
        .execute(&mut *holder)
        .await
        .unwrap();

    let own = watchdog_pool(&pool, "watchdog-cut-off").await;
    let sweeping = tokio::spawn({
        let own = own.clone();
        async move {
            let (_keep_running, shutdown) = watch::channel(false);
            recovery::sweep(
                &own,
                &settings("watchdog-cut-off"),
                &Scope::Everything,
                &shutdown,
            )
            .await
        }
    });
    let waiting = "EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE application_name = 'watchdog-cut-off' AND wait_event_type = 'Lock'
                      AND wait_event = 'advisory')";
    wait_until(
        &pool,
        waiting,
        Duration::from_secs(20),
        "the batch waits mid-way",
    )
    .await;
    // Mid-batch, nothing of it is visible.
    assert_eq!(snapshot(&pool).await, before);
    // The watchdog's session ends there (as in a crash of its host).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'watchdog-cut-off' AND wait_event = 'advisory'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cut_off = sweeping.await.expect("the sweep task ends");
    assert!(
        matches!(cut_off, Err(recovery::RecoveryError::ConnectionLost(_))),
        "{cut_off:?}"
    );
    holder.rollback().await.unwrap();
    own.close().await;
    assert_eq!(
        snapshot(&pool).await,
        before,
        "no half of the batch committed"
    );
    assert_eq!(interventions(&pool).await.len(), notes_before);
    assert_verify_clean(&pool).await;

    // The next sweep does all of it, once.
    sqlx::query("DROP TRIGGER hold_the_batch ON retry_history")
        .execute(&pool)
        .await
        .unwrap();
    let summary = sweep(&pool, &settings("watchdog-after")).await;
    assert_eq!(
        (summary.retried.len(), summary.noted),
        (200, 20),
        "{summary:#?}"
    );
    assert_crowd_handled_exactly_once(&pool, &["watchdog-after"]).await;
}
