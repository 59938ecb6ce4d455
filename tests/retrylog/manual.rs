//! `recover`: an operator's recovery of one target by hand — the state change and its
//! `manual_recovery` event in one transaction, past the limit, with a note — through the
//! library and the binary; its defaults, its refusals (nothing written) and its idempotency.

use retrylog::config::Steps;
use retrylog::event::{RetryReason, Target};
use retrylog::recovery::{self, ManualRecovery, ManualRecoveryError, ManualTarget, Recovered};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;

/// A recovery of `target` by `ops:alice` with a note, default status.
pub fn by_hand(target: ManualTarget) -> ManualRecovery {
    ManualRecovery {
        target,
        note: "disk was full; freed it".into(),
        actor: "ops:alice".into(),
        to_status: None,
        event_id: None,
    }
}

fn steps() -> Steps {
    retrylog::config::DEFAULT_STEPS.parse().unwrap()
}

/// Runs one recovery in a transaction of its own, committed only when it succeeds.
pub async fn recover(
    pool: &PgPool,
    request: &ManualRecovery,
) -> Result<Recovered, ManualRecoveryError> {
    let mut tx = pool.begin().await.unwrap();
    let recovered = recovery::recover_by_hand(&mut tx, request, &steps()).await?;
    tx.commit().await.unwrap();
    Ok(recovered)
}

async fn status(pool: &PgPool, target: Target) -> String {
    let sql = match target {
        Target::Job { .. } => "SELECT status FROM jobs WHERE job_id = $1",
        Target::Variant { .. } => "SELECT status FROM jobs_variants WHERE job_variants_id = $1",
    };
    let id = target.job_variants_id().unwrap_or(target.job_id());
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn recovering_a_failed_variant_sets_it_done_and_records_one_event_with_the_note(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let a2 = variant(JOB_A, VARIANT_A2);
    let recovered = recover(&pool, &by_hand(ManualTarget::Variant(VARIANT_A2)))
        .await
        .unwrap();
    assert!(!recovered.repeated);
    let event = recovered.event;
    assert_eq!(event.target(), a2);
    assert_eq!(event.reason, RetryReason::ManualRecovery);
    assert_eq!(event.from_status.as_deref(), Some("failed"));
    assert_eq!(event.to_status.as_deref(), Some("done"));
    assert_eq!(event.step.as_deref(), Some("segment"));
    assert_eq!(event.actor, "ops:alice");
    assert_eq!(event.detail["note"], "disk was full; freed it");
    assert_eq!(status(&pool, a2).await, "done");
    assert_eq!(retry_count(&pool, a2).await, 1);
    assert_eq!(event_count(&pool).await, 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_job_goes_to_done_at_the_final_step_and_back_to_running_elsewhere(pool: PgPool) {
    pipeline(&pool).await;
    sqlx::query("UPDATE jobs SET current_step = 'iou_eval' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET status = 'failed' WHERE job_id = $1")
        .bind(JOB_A)
        .execute(&pool)
        .await
        .unwrap();
    let at_final = recover(&pool, &by_hand(ManualTarget::Job(JOB_B)))
        .await
        .unwrap()
        .event;
    assert_eq!(
        (
            at_final.from_status.as_deref(),
            at_final.to_status.as_deref()
        ),
        (Some("running"), Some("done"))
    );
    assert_eq!(status(&pool, job(JOB_B)).await, "done");
    let elsewhere = recover(&pool, &by_hand(ManualTarget::Job(JOB_A)))
        .await
        .unwrap()
        .event;
    assert_eq!(
        (
            elsewhere.from_status.as_deref(),
            elsewhere.to_status.as_deref()
        ),
        (Some("failed"), Some("running"))
    );
    assert_eq!(status(&pool, job(JOB_A)).await, "running");
}

#[sqlx::test(migrations = false)]
async fn the_caller_may_name_the_status_the_recovery_sets(pool: PgPool) {
    pipeline(&pool).await;
    let mut request = by_hand(ManualTarget::Variant(VARIANT_A3));
    request.to_status = Some("pending".into());
    let event = recover(&pool, &request).await.unwrap().event;
    assert_eq!(event.to_status.as_deref(), Some("pending"));
    assert_eq!(status(&pool, variant(JOB_A, VARIANT_A3)).await, "pending");
}

#[sqlx::test(migrations = false)]
async fn a_recovery_passes_the_retry_limit_and_closes_the_watchdogs_note(pool: PgPool) {
    pipeline(&pool).await;
    a2_needs_intervention(&pool).await;
    let before = retrylog(&pool, &["report", "alerts", "--format", "json"]).await;
    assert_eq!(before.code, Some(3), "{before:#?}");
    assert!(before
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|row| { row["id"] == VARIANT_A2.to_string() && row["why"] == "needs_intervention" }));

    let run = retrylog(
        &pool,
        &[
            "recover",
            "--variant-id",
            &VARIANT_A2.to_string(),
            "--note",
            "fixed the input file",
            "--by",
            "ops:bob",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let event = &run.json()[0];
    assert_eq!(event["attempt"], 4);
    assert_eq!(event["detail"]["forced_past_limit"], 3);

    let after = retrylog(&pool, &["report", "alerts", "--format", "json"]).await;
    assert_eq!(after.code, Some(0), "the alert is gone: {after:#?}");
    assert_eq!(after.json(), json!([]));
    let history = retrylog(
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
    let rows = history.json();
    let last = rows.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["entry"], "retry");
    assert_eq!(last["reason"], "manual_recovery");
    assert_eq!(last["actor"], "ops:bob");
    assert_eq!(last["from_status"], "failed");
    assert_eq!(last["to_status"], "done");
    assert_eq!(last["detail"]["note"], "fixed the input file");
    // The note still shows in the history, before the recovery that closed it.
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|row| row["entry"] == "needs_intervention"));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn refused_recoveries_name_the_problem_and_write_nothing(pool: PgPool) {
    pipeline(&pool).await;
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let before = snapshot(&pool).await;
    let unknown = Uuid::from_u128(42).to_string();
    let a2 = VARIANT_A2.to_string();
    let b = JOB_B.to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["recover", "--variant-id", &unknown, "--note", "x"],
            "unknown variant 00000000-0000-0000-0000-00000000002a: no such row",
        ),
        (
            &["recover", "--job-id", &b, "--note", "x"],
            "is done: a recovery by hand changes only running or failed jobs",
        ),
        (
            &["recover", "--variant-id", &a2, "--note", "   "],
            "a recovery needs a note saying why (--note): it is empty",
        ),
        (
            &[
                "recover",
                "--variant-id",
                &a2,
                "--note",
                "x",
                "--to-status",
                "gone",
            ],
            "unknown status \"gone\"",
        ),
        (&["recover", "--variant-id", &a2], "--note"),
    ];
    for (args, message) in cases {
        let run = retrylog(&pool, args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:#?}");
    }
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn the_same_request_id_twice_recovers_once_and_returns_the_first_event(pool: PgPool) {
    pipeline(&pool).await;
    let a2 = VARIANT_A2.to_string();
    let args = [
        "recover",
        "--variant-id",
        &a2,
        "--note",
        "rerun",
        "--request-id",
        "ticket-17",
        "--format",
        "json",
    ];
    let first = retrylog(&pool, &args).await;
    assert_eq!(first.code, Some(0), "{first:#?}");
    let after_first = snapshot(&pool).await;
    let second = retrylog(&pool, &args).await;
    assert_eq!(second.code, Some(0), "{second:#?}");
    assert!(second.stderr.contains("already recorded"), "{second:#?}");
    assert_eq!(first.json(), second.json());
    assert_eq!(snapshot(&pool).await, after_first);
    assert_eq!(
        first.json()[0]["event_id"],
        Value::from(recovery::request_event_id("ticket-17").to_string())
    );
}

#[sqlx::test(migrations = false)]
async fn concurrent_recoveries_with_one_request_id_store_one_event(pool: PgPool) {
    pipeline(&pool).await;
    let clients = clients(&pool, 8).await;
    let mut request = by_hand(ManualTarget::Variant(VARIANT_A2));
    request.event_id = Some(recovery::request_event_id("same-click"));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = clients.pool.clone();
            let request = request.clone();
            tokio::spawn(async move { recover(&pool, &request).await })
        })
        .collect();
    let mut fresh = 0;
    let mut ids = Vec::new();
    for task in tasks {
        let recovered = task.await.unwrap().expect("every request succeeds");
        fresh += usize::from(!recovered.repeated);
        ids.push(recovered.event.event_id);
    }
    clients.close().await;
    assert_eq!(fresh, 1, "exactly one request recovered the target");
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(event_count(&pool).await, 1);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 1);
}
