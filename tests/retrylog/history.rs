//! `retrylog history` as an audit tool: filters by reason, step, actor, when the retry
//! occurred and what had been recorded by a moment — each inclusive at its boundary, each a
//! bound parameter — through the library and the binary.

use chrono::{DateTime, Duration, Utc};
use retrylog::event::{NewRetry, RetryEvent, RetryReason};
use retrylog::store::{self, HistoryFilter, ReadError};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;
use crate::reports::at;

/// Five events of job A's streams, each with a distinct reason, step, actor and occurred_at:
/// `(seq, reason, step, actor, occurred_at)` in log order.
async fn audit_trail(pool: &PgPool) -> Vec<RetryEvent> {
    pipeline(pool).await;
    let a1 = variant(JOB_A, VARIANT_A1);
    let a2 = variant(JOB_A, VARIANT_A2);
    let events = [
        (
            a1,
            RetryReason::Stuck,
            "generate",
            "watchdog-1",
            "2026-05-01T10:00:00Z",
        ),
        (
            a2,
            RetryReason::Failed,
            "segment",
            "watchdog-1",
            "2026-05-01T11:00:00Z",
        ),
        (
            a2,
            RetryReason::Failed,
            "segment",
            "ops:alice",
            "2026-05-02T09:30:00Z",
        ),
        (
            job(JOB_A),
            RetryReason::ManualRecovery,
            "iou_eval",
            "ops:alice",
            "2026-05-03T08:00:00Z",
        ),
        (
            a1,
            RetryReason::Stuck,
            "generate",
            "watchdog-2",
            "2026-05-04T12:00:00Z",
        ),
    ];
    let mut stored = Vec::new();
    for (target, reason, step, actor, occurred_at) in events {
        let retry = NewRetry::new(target, reason, actor)
            .with_step(step)
            .with_occurred_at(at(occurred_at));
        stored.push(append_ok(pool, &retry).await);
    }
    // Job B's stream: never part of job A's history.
    append_ok(
        pool,
        &NewRetry::new(variant(JOB_B, VARIANT_B1), RetryReason::Failed, "ops:alice")
            .with_occurred_at(at("2026-05-02T09:30:00Z")),
    )
    .await;
    stored
}

/// The positions (1-based, in the trail) of the events a filtered job A history returns.
async fn job_a_positions(pool: &PgPool, trail: &[RetryEvent], filter: HistoryFilter) -> Vec<usize> {
    let mut conn = pool.acquire().await.unwrap();
    let events = store::load_job_history_filtered(&mut conn, JOB_A, &filter)
        .await
        .unwrap_or_else(|error| panic!("{filter:?}: {error}"));
    events
        .iter()
        .map(|event| 1 + trail.iter().position(|e| e.seq == event.seq).unwrap())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn history_filters_by_reason_step_and_actor(pool: PgPool) {
    let trail = audit_trail(&pool).await;
    let all = job_a_positions(&pool, &trail, HistoryFilter::default()).await;
    assert_eq!(all, vec![1, 2, 3, 4, 5]);

    let by_reason = HistoryFilter {
        reason: Some(RetryReason::Failed),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, by_reason).await, vec![2, 3]);

    let by_step = HistoryFilter {
        step: Some("generate".into()),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, by_step).await, vec![1, 5]);

    let by_actor = HistoryFilter {
        actor: Some("ops:alice".into()),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, by_actor).await, vec![3, 4]);

    let combined = HistoryFilter {
        reason: Some(RetryReason::Failed),
        actor: Some("ops:alice".into()),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, combined).await, vec![3]);

    // A value that only looks like SQL is just a value.
    let quoted = HistoryFilter {
        actor: Some("x' OR '1'='1".into()),
        ..HistoryFilter::default()
    };
    assert_eq!(
        job_a_positions(&pool, &trail, quoted).await,
        Vec::<usize>::new()
    );
}

#[sqlx::test(migrations = false)]
async fn history_since_and_until_include_an_event_that_occurred_exactly_at_either(pool: PgPool) {
    let trail = audit_trail(&pool).await;
    let window = |since: &str, until: &str| HistoryFilter {
        occurred_since: Some(at(since)),
        occurred_until: Some(at(until)),
        ..HistoryFilter::default()
    };
    // Exactly the occurred_at of events 2 and 4: both in.
    assert_eq!(
        job_a_positions(
            &pool,
            &trail,
            window("2026-05-01T11:00:00Z", "2026-05-03T08:00:00Z")
        )
        .await,
        vec![2, 3, 4]
    );
    // A microsecond inside each boundary: both out.
    let micro = Duration::microseconds(1);
    let narrower = HistoryFilter {
        occurred_since: Some(at("2026-05-01T11:00:00Z") + micro),
        occurred_until: Some(at("2026-05-03T08:00:00Z") - micro),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, narrower).await, vec![3]);
    let only_since = HistoryFilter {
        occurred_since: Some(at("2026-05-03T08:00:00Z")),
        ..HistoryFilter::default()
    };
    assert_eq!(job_a_positions(&pool, &trail, only_since).await, vec![4, 5]);
}

#[sqlx::test(migrations = false)]
async fn history_as_of_shows_the_events_recorded_by_then_including_one_recorded_exactly_then(
    pool: PgPool,
) {
    let trail = audit_trail(&pool).await;
    let as_of = |recorded: DateTime<Utc>| HistoryFilter {
        recorded_until: Some(recorded),
        ..HistoryFilter::default()
    };
    let third = trail[2].recorded_at;
    assert_eq!(
        job_a_positions(&pool, &trail, as_of(third)).await,
        vec![1, 2, 3]
    );
    assert_eq!(
        job_a_positions(&pool, &trail, as_of(third - Duration::microseconds(1))).await,
        vec![1, 2]
    );
    // A variant's history as of a moment.
    let mut conn = pool.acquire().await.unwrap();
    let a2 = store::load_variant_history_filtered(&mut conn, VARIANT_A2, &as_of(third))
        .await
        .unwrap();
    assert_eq!(a2.iter().map(|e| e.attempt).collect::<Vec<_>>(), vec![1, 2]);
}

#[sqlx::test(migrations = false)]
async fn a_filter_that_matches_nothing_is_an_empty_history_but_an_unknown_target_is_an_error(
    pool: PgPool,
) {
    audit_trail(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let nothing = HistoryFilter {
        step: Some("no-such-step".into()),
        ..HistoryFilter::default()
    };
    let events = store::load_job_history_filtered(&mut conn, JOB_B, &nothing)
        .await
        .unwrap();
    assert!(events.is_empty());
    // A3 has no events at all but exists.
    let events = store::load_variant_history_filtered(&mut conn, VARIANT_A3, &nothing)
        .await
        .unwrap();
    assert!(events.is_empty());
    let unknown = Uuid::from_u128(7);
    let error = store::load_job_history_filtered(&mut conn, unknown, &nothing)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReadError::UnknownTarget { kind: "job", id } if id == unknown),
        "{error}"
    );
    let error = store::load_variant_history_filtered(&mut conn, unknown, &nothing)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ReadError::UnknownTarget {
                kind: "variant",
                ..
            }
        ),
        "{error}"
    );
}

#[sqlx::test(migrations = false)]
async fn history_of_a_variant_whose_row_is_gone_is_still_filtered(pool: PgPool) {
    let trail = audit_trail(&pool).await;
    // The pipeline deletes variant A2; its events stay in the log.
    sqlx::query("DELETE FROM jobs_variants WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let by_actor = HistoryFilter {
        actor: Some("ops:alice".into()),
        ..HistoryFilter::default()
    };
    let events = store::load_variant_history_filtered(&mut conn, VARIANT_A2, &by_actor)
        .await
        .unwrap();
    assert_eq!(events, vec![trail[2].clone()]);
    let none = HistoryFilter {
        actor: Some("nobody".into()),
        ..HistoryFilter::default()
    };
    let events = store::load_variant_history_filtered(&mut conn, VARIANT_A2, &none)
        .await
        .unwrap();
    assert!(
        events.is_empty(),
        "known from the log, so empty rather than unknown"
    );
}

fn seqs(run: &Value) -> Vec<i64> {
    run.as_array()
        .unwrap_or_else(|| panic!("expected an array: {run}"))
        .iter()
        .map(|row| row["seq"].as_i64().unwrap())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn history_flags_filter_through_the_binary(pool: PgPool) {
    let trail = audit_trail(&pool).await;
    let seq = |n: usize| trail[n - 1].seq;
    let job_a = JOB_A.to_string();
    let run = retrylog(
        &pool,
        &[
            "history", "--job-id", &job_a, "--reason", "failed", "--format", "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(seqs(&run.json()), vec![seq(2), seq(3)]);

    let run = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &job_a,
            "--since",
            "2026-05-01T11:00:00Z",
            "--until",
            "2026-05-03",
            "--actor",
            "ops:alice",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(seqs(&run.json()), vec![seq(3)]);

    let a1 = VARIANT_A1.to_string();
    let run = retrylog(
        &pool,
        &[
            "history",
            "--variant-id",
            &a1,
            "--step",
            "generate",
            "--as-of",
            &trail[0].recorded_at.to_rfc3339(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(seqs(&run.json()), vec![seq(1)]);

    // Durations count back from now: everything occurred in May 2026, long before 1 hour ago.
    let run = retrylog(
        &pool,
        &[
            "history", "--job-id", &job_a, "--since", "1h", "--format", "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(seqs(&run.json()), Vec::<i64>::new());
}

#[sqlx::test(migrations = false)]
async fn history_with_a_bad_time_or_an_empty_range_is_one_line_and_exit_two(pool: PgPool) {
    pipeline(&pool).await;
    let job_a = JOB_A.to_string();
    let run = retrylog(&pool, &["history", "--job-id", &job_a, "--until", "7x"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(
        run.problem_lines(),
        vec![
            "retrylog: invalid --until \"7x\": expected a duration like 7d, 12h, 30m or a \
             timestamp like 2026-11-01T00:00:00Z"
        ]
    );
    let run = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &job_a,
            "--since",
            "2026-05-02",
            "--until",
            "2026-05-01",
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.only_problem_line()
            .contains("--since 2026-05-02T00:00:00Z is after --until 2026-05-01T00:00:00Z"),
        "{run:#?}"
    );
}

#[sqlx::test(migrations = false)]
async fn history_shows_where_the_retry_limit_stopped_the_watchdog_once(pool: PgPool) {
    pipeline(&pool).await;
    let settings = retrylog::config::WatchdogSettings {
        max_retries: 1,
        instance: "test-watchdog".into(),
        ..Default::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let sweep = || {
        retrylog::recovery::sweep(
            &pool,
            &settings,
            &retrylog::recovery::Scope::Everything,
            &stopped,
        )
    };
    // Variant A2 is failed at segment: retried once, then failed again and stopped.
    assert_eq!(sweep().await.unwrap().retried.len(), 1);
    sqlx::query("UPDATE jobs_variants SET status = 'failed' WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..3 {
        sweep().await.unwrap();
    }

    let run = retrylog(
        &pool,
        &[
            "history",
            "--variant-id",
            &VARIANT_A2.to_string(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let entries = run.json();
    let entries = entries.as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["entry"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["retry", "needs_intervention"],
        "one note after many sweeps"
    );
    let note = &entries[1];
    assert_eq!(note["target"], format!("variant {VARIANT_A2}"));
    assert_eq!(note["reason"], "failed");
    assert_eq!(note["from_status"], "failed");
    assert_eq!(note["actor"], "test-watchdog");
    assert_eq!(note["seq"], Value::Null);
    assert_eq!(note["detail"]["scenario"], "failed");
    assert_eq!(note["detail"]["retry_count"], 1);
    assert_eq!(note["detail"]["max_retries"], 1);

    // The job's history carries the note too; a reason filter that excludes it drops it.
    let job_history = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &JOB_A.to_string(),
            "--format",
            "json",
        ],
    )
    .await
    .json();
    assert!(job_history
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["entry"] == "needs_intervention"));
    // A stuck retry of another variant of the job, so the filter has something to keep.
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    let stuck_only = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &JOB_A.to_string(),
            "--reason",
            "stuck",
            "--format",
            "json",
        ],
    )
    .await
    .json();
    let stuck_only = stuck_only.as_array().unwrap();
    assert_eq!(stuck_only.len(), 1, "only the stuck retry: {stuck_only:#?}");
    assert_eq!(stuck_only[0]["entry"], "retry");
    assert_eq!(stuck_only[0]["reason"], "stuck");
    assert_eq!(stuck_only[0]["target"], format!("variant {VARIANT_A1}"));
}
