//! The log defends itself: the database refuses to change it, and whatever a superuser
//! changes behind the guard, `verify` finds and names by target.

use retrylog::event::Target;
use retrylog::replay::Mismatch;
use sqlx::PgPool;

use crate::fixtures::*;

/// A log with three streams: variant A1 (3 events), job A (2), variant B1 (2).
async fn three_streams(pool: &PgPool) {
    pipeline(pool).await;
    append_n(pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(pool, job(JOB_A), 2).await;
    append_n(pool, variant(JOB_B, VARIANT_B1), 2).await;
}

/// Runs `sql` on one connection with every trigger off, as a superuser can.
async fn behind_the_guard(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// The SQLSTATE and message of running `sql`, which must fail.
async fn refusal(pool: &PgPool, sql: &str) -> (String, String) {
    let error = sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .expect_err("the statement must be refused");
    database_error(&error)
}

async fn seq_of(pool: &PgPool, target: Target, attempt: i32) -> i64 {
    sqlx::query_scalar(
        "SELECT seq FROM retry_history
          WHERE job_id = $1 AND job_variants_id IS NOT DISTINCT FROM $2 AND attempt = $3",
    )
    .bind(target.job_id())
    .bind(target.job_variants_id())
    .bind(attempt)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn updating_an_event_is_refused_as_append_only(pool: PgPool) {
    three_streams(&pool).await;
    let before = snapshot(&pool).await;

    for sql in [
        "UPDATE retry_history SET reason = 'failed' WHERE attempt = 2",
        "UPDATE retry_history SET detail = '{\"forged\": true}'",
    ] {
        let (code, message) = refusal(&pool, sql).await;
        assert_eq!(code, "RL010", "{message}");
        assert_eq!(message, "retry_history is append-only: UPDATE refused");
    }
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn deleting_an_event_is_refused_as_append_only(pool: PgPool) {
    three_streams(&pool).await;
    let before = snapshot(&pool).await;

    let (code, message) = refusal(&pool, "DELETE FROM retry_history WHERE attempt = 3").await;

    assert_eq!(code, "RL010", "{message}");
    assert_eq!(message, "retry_history is append-only: DELETE refused");
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn truncating_the_log_is_refused_as_append_only(pool: PgPool) {
    three_streams(&pool).await;
    let before = snapshot(&pool).await;

    let (code, message) = refusal(&pool, "TRUNCATE retry_history").await;

    assert_eq!(code, "RL010", "{message}");
    assert_eq!(message, "retry_history is append-only: TRUNCATE refused");
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn opening_balances_are_append_only_too(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    let before = snapshot(&pool).await;

    for sql in [
        "UPDATE retry_opening_balance SET balance = 1",
        "DELETE FROM retry_opening_balance",
        "TRUNCATE retry_opening_balance",
    ] {
        let (code, message) = refusal(&pool, sql).await;
        assert_eq!(code, "RL010", "{sql}: {message}");
        assert!(
            message.starts_with("retry_opening_balance is append-only"),
            "{message}"
        );
    }
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn intervention_notes_are_append_only_too(pool: PgPool) {
    pipeline(&pool).await;
    sqlx::query(
        "INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         VALUES ($1, $2, 3, 3, 'failed', 'failed', 'segment', 'failed', 'test', '{}')",
    )
    .bind(JOB_A)
    .bind(VARIANT_A2)
    .execute(&pool)
    .await
    .unwrap();
    let notes = || async {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT jsonb_agg(to_jsonb(n) ORDER BY seq) FROM retry_intervention n",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = notes().await;

    for sql in [
        "UPDATE retry_intervention SET retry_count = 0",
        "DELETE FROM retry_intervention",
        "TRUNCATE retry_intervention",
    ] {
        let (code, message) = refusal(&pool, sql).await;
        assert_eq!(code, "RL010", "{sql}: {message}");
        assert!(
            message.starts_with("retry_intervention is append-only"),
            "{message}"
        );
    }
    assert_eq!(notes().await, before);
}

#[sqlx::test(migrations = false)]
async fn changing_an_events_reason_behind_the_disabled_guard_is_a_broken_link_naming_its_target(
    pool: PgPool,
) {
    three_streams(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    let seq = seq_of(&pool, target, 2).await;

    sqlx::raw_sql(&format!(
        "ALTER TABLE retry_history DISABLE TRIGGER retry_history_append_only;
         UPDATE retry_history SET reason = 'failed' WHERE seq = {seq};
         ALTER TABLE retry_history ENABLE TRIGGER retry_history_append_only;"
    ))
    .execute(&pool)
    .await
    .unwrap();

    let report = verify(&pool).await;
    assert_eq!(report.events, 7);
    assert_eq!(report.streams, 3);
    assert_eq!(report.mismatches.len(), 1, "{:#?}", report.mismatches);
    let mismatch = &report.mismatches[0];
    assert!(
        matches!(
            mismatch,
            Mismatch::BrokenLink { target: found, seq: found_seq, attempt: 2, .. }
                if *found == target && *found_seq == seq
        ),
        "{mismatch:?}"
    );
    let message = mismatch.to_string();
    assert!(message.contains(&VARIANT_A1.to_string()), "{message}");
    assert!(message.contains("attempt 2"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn changing_an_events_detail_behind_the_guard_is_a_broken_link(pool: PgPool) {
    three_streams(&pool).await;
    let target = job(JOB_A);
    let seq = seq_of(&pool, target, 1).await;

    behind_the_guard(
        &pool,
        &format!("UPDATE retry_history SET detail = '{{\"note\": \"nothing to see\"}}' WHERE seq = {seq}"),
    )
    .await;

    let report = verify(&pool).await;
    assert_eq!(report.mismatches.len(), 1, "{:#?}", report.mismatches);
    assert!(
        matches!(
            &report.mismatches[0],
            Mismatch::BrokenLink { target: found, attempt: 1, .. } if *found == target
        ),
        "{:?}",
        report.mismatches[0]
    );
}

#[sqlx::test(migrations = false)]
async fn deleting_an_event_in_the_middle_behind_the_guard_is_named_by_verify(pool: PgPool) {
    three_streams(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    let third = seq_of(&pool, target, 3).await;
    let second = seq_of(&pool, target, 2).await;

    behind_the_guard(
        &pool,
        &format!("DELETE FROM retry_history WHERE seq = {second}"),
    )
    .await;

    let report = verify(&pool).await;
    assert_eq!(report.events, 6);
    assert!(!report.mismatches.is_empty(), "the tampering is found");
    assert!(
        report
            .mismatches
            .iter()
            .all(|mismatch| mismatch.target().is_none_or(|found| found == target)),
        "only the tampered stream is named: {:#?}",
        report.mismatches
    );
    // The outcomes remember the deleted event: attempt 1 was retried again by it.
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::Outcome(drift) if drift.target.is_none() && drift.problem
                == format!("outcome retried_again is for event seq {second}, which is not in the log")
        )),
        "{:#?}",
        report.mismatches
    );
    let gap = Mismatch::AttemptGap {
        target,
        expected_attempt: 2,
        found_attempt: 3,
    };
    assert!(report.mismatches.contains(&gap), "{:#?}", report.mismatches);
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::BrokenLink { attempt: 3, seq, .. } if *seq == third
        )),
        "the event after the hole no longer links: {:#?}",
        report.mismatches
    );
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::Count(drift) if drift.retry_count == 3 && drift.expected == 2
        )),
        "the count still says 3: {:#?}",
        report.mismatches
    );
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::Outcome(drift) if drift.target == Some(target) && drift.problem.ends_with(
                &format!("but event seq {second} is not the next attempt of its target"))
        )),
        "{:#?}",
        report.mismatches
    );
    assert_eq!(report.mismatches.len(), 5, "{:#?}", report.mismatches);
}

#[sqlx::test(migrations = false)]
async fn deleting_the_last_event_behind_the_guard_shows_as_count_drift(pool: PgPool) {
    three_streams(&pool).await;
    let target = variant(JOB_B, VARIANT_B1);

    behind_the_guard(
        &pool,
        &format!(
            "DELETE FROM retry_history WHERE seq = {}",
            seq_of(&pool, target, 2).await
        ),
    )
    .await;

    // The count, and the outcomes: attempt 1's says it was retried again by the deleted event,
    // and the open retry is the deleted one.
    let report = verify(&pool).await;
    assert_eq!(report.mismatches.len(), 3, "{:#?}", report.mismatches);
    assert!(
        matches!(
            &report.mismatches[0],
            Mismatch::Count(drift) if drift.target == target && drift.events == 1
        ),
        "{:?}",
        report.mismatches[0]
    );
    assert!(
        report.mismatches[1..].iter().all(|mismatch| matches!(
            mismatch,
            Mismatch::Outcome(drift) if drift.target == Some(target)
        )),
        "{:#?}",
        report.mismatches
    );
}

#[sqlx::test(migrations = false)]
async fn an_event_inserted_around_record_retry_is_found_by_verify(pool: PgPool) {
    three_streams(&pool).await;
    let target = job(JOB_A);

    // INSERT is not refused (record_retry itself inserts), but a row that did not come
    // through record_retry has no valid link and no count.
    sqlx::query(
        "INSERT INTO retry_history (event_id, job_id, reason, attempt, actor, occurred_at, hash)
         VALUES (gen_random_uuid(), $1, 'stuck', 3, 'intruder', now(), sha256('x'))",
    )
    .bind(JOB_A)
    .execute(&pool)
    .await
    .unwrap();

    let report = verify(&pool).await;
    assert!(!report.mismatches.is_empty(), "the tampering is found");
    assert!(
        report
            .mismatches
            .iter()
            .all(|mismatch| mismatch.target() == Some(target)),
        "{:#?}",
        report.mismatches
    );
    assert!(report
        .mismatches
        .iter()
        .any(|mismatch| matches!(mismatch, Mismatch::BrokenLink { attempt: 3, .. })));
    assert!(report
        .mismatches
        .iter()
        .any(|mismatch| matches!(mismatch, Mismatch::Count(_))));
}

#[sqlx::test(migrations = false)]
async fn verify_on_an_untouched_log_is_clean_and_counts_what_it_checked(pool: PgPool) {
    three_streams(&pool).await;

    let mut progress = Vec::new();
    let report = retrylog::replay::verify(&pool, |done| progress.push(done))
        .await
        .unwrap();

    assert!(report.is_clean(), "{:#?}", report.mismatches);
    assert_eq!((report.events, report.streams), (7, 3));
    assert_eq!(progress.last(), Some(&7), "progress ends at the total");
}

#[sqlx::test(migrations = false)]
async fn a_deleted_variant_keeps_its_history_and_verify_stays_clean(pool: PgPool) {
    three_streams(&pool).await;

    // The pipeline removes a variant row; the log outlives it.
    sqlx::query("DELETE FROM jobs_variants WHERE job_variants_id = $1")
        .bind(VARIANT_A1)
        .execute(&pool)
        .await
        .unwrap();

    assert_verify_clean(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let history = retrylog::store::load_variant_history(&mut conn, VARIANT_A1)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|event| event.attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let job_history = retrylog::store::load_job_history(&mut conn, JOB_A)
        .await
        .unwrap();
    assert_eq!(
        job_history.len(),
        5,
        "job A's history still lists the variant's events"
    );
}

// Every field the hash covers, changed one at a time behind the guard: a field left out of
// either implementation of the canonical bytes (Rust's `CanonicalEvent`, SQL's
// `retry_event_canonical`) would let its change through unnoticed.
#[sqlx::test(migrations = false)]
async fn changing_any_one_of_the_twelve_hashed_fields_is_found_by_verify(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    for n in 1..=3 {
        append_ok(
            &pool,
            &retry(target)
                .with_step("generate")
                .with_status_change("done", "done")
                .with_detail(serde_json::json!({ "n": n })),
        )
        .await;
    }
    assert_verify_clean(&pool).await;
    let seq = seq_of(&pool, target, 2).await;
    let original: serde_json::Value =
        sqlx::query_scalar("SELECT to_jsonb(r) FROM retry_history r WHERE seq = $1")
            .bind(seq)
            .fetch_one(&pool)
            .await
            .unwrap();

    // (field, change, whether the change moves the event out of its place in the stream)
    let changes = [
        ("event_id", "gen_random_uuid()", false),
        ("job_id", &format!("'{JOB_B}'::uuid") as &str, true),
        ("job_variants_id", &format!("'{VARIANT_A2}'::uuid"), true),
        ("reason", "'failed'", false),
        ("step", "'segment'", false),
        ("from_status", "'failed'", false),
        ("to_status", "'failed'", false),
        ("attempt", "7", true),
        ("actor", "'mallory'", false),
        (
            "occurred_at",
            "occurred_at - interval '1 microsecond'",
            false,
        ),
        ("detail", "detail || '{\"n\": 20}'", false),
        ("hash", "sha256('forged')", false),
    ];
    for (field, change, moves) in changes {
        behind_the_guard(
            &pool,
            &format!("UPDATE retry_history SET {field} = {change} WHERE seq = {seq}"),
        )
        .await;

        let report = verify(&pool).await;
        if moves {
            // The stream it left has a gap at attempt 2.
            assert!(
                report.mismatches.iter().any(|mismatch| matches!(
                    mismatch,
                    Mismatch::AttemptGap { target: found, expected_attempt: 2, .. }
                        if *found == target
                )),
                "{field}: {:#?}",
                report.mismatches
            );
        } else {
            // A changed hash also breaks the next link, which chains from it.
            let expected = if field == "hash" { 2 } else { 1 };
            assert_eq!(
                report.mismatches.len(),
                expected,
                "{field}: {:#?}",
                report.mismatches
            );
            assert!(
                matches!(
                    &report.mismatches[0],
                    Mismatch::BrokenLink { target: found, seq: found_seq, attempt: 2, .. }
                        if *found == target && *found_seq == seq
                ),
                "{field}: {:?}",
                report.mismatches[0]
            );
        }

        // Put the row back as it was, and the log is clean again.
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE retry_history r
                SET event_id = o.event_id, job_id = o.job_id,
                    job_variants_id = o.job_variants_id, reason = o.reason, step = o.step,
                    from_status = o.from_status, to_status = o.to_status,
                    attempt = o.attempt, actor = o.actor, occurred_at = o.occurred_at,
                    detail = o.detail, hash = o.hash
               FROM jsonb_populate_record(NULL::retry_history, $1) o
              WHERE r.seq = o.seq",
        )
        .bind(&original)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_verify_clean(&pool).await;
    }
}
