//! One writer at a time: how an append numbers, chains, counts and commits, the idempotency
//! key, and every input the rules refuse — each refusal names the problem and writes nothing.

use chrono::{Duration, Utc};
use retrylog::error::CallerMistake;
use retrylog::event::{CanonicalEvent, NewRetry, RetryEvent, RetryReason, GENESIS_HASH};
use retrylog::store::{self, AppendError};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;

/// Appends `retry`, expecting a refusal that is the caller's error and leaves every table as
/// it was.
async fn refused(pool: &PgPool, retry: &NewRetry) -> AppendError {
    let before = snapshot(pool).await;
    let error = append(pool, retry)
        .await
        .expect_err("the append must be refused");
    assert!(
        error.is_caller_mistake(),
        "a refusal must be the caller's error, not a fault: {error:?}"
    );
    assert_eq!(
        snapshot(pool).await,
        before,
        "the refused append ({error}) wrote something"
    );
    error
}

/// Runs `sql` (a `record_retry` call, text parameters bound in order) as a SQL client would,
/// expecting a refusal that writes nothing; returns SQLSTATE, message and how the Rust door
/// classifies the same error.
async fn refused_via_sql(
    pool: &PgPool,
    sql: &str,
    params: &[Option<&str>],
) -> (String, String, AppendError) {
    let before = snapshot(pool).await;
    let mut query = sqlx::query(sql);
    for param in params {
        query = query.bind(*param);
    }
    let error = query
        .execute(pool)
        .await
        .expect_err("record_retry must refuse");
    let (code, message) = database_error(&error);
    assert_eq!(
        snapshot(pool).await,
        before,
        "the refused call ({message}) wrote something"
    );
    let classified = AppendError::from(error);
    (code, message, classified)
}

/// The text `verify` hashes for an event's detail: PostgreSQL's form of the stored jsonb.
async fn detail_text(pool: &PgPool, event: &RetryEvent) -> String {
    sqlx::query_scalar("SELECT detail::text FROM retry_history WHERE seq = $1")
        .bind(event.seq)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn canonical<'a>(event: &'a RetryEvent, detail_text: &'a str) -> CanonicalEvent<'a> {
    CanonicalEvent {
        event_id: event.event_id,
        job_id: event.job_id,
        job_variants_id: event.job_variants_id,
        reason: event.reason,
        step: event.step.as_deref(),
        from_status: event.from_status.as_deref(),
        to_status: event.to_status.as_deref(),
        attempt: event.attempt,
        actor: &event.actor,
        occurred_at: event.occurred_at,
        detail_text,
        db_role: event.db_role.as_deref(),
    }
}

#[sqlx::test(migrations = false)]
async fn append_numbers_attempts_from_one_and_counts_each_event(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);

    let events = append_n(&pool, target, 3).await;

    assert_eq!(
        events.iter().map(|event| event.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_eq!(retry_count(&pool, target).await, 3);
    assert_eq!(
        retry_count(&pool, job(JOB_A)).await,
        0,
        "a variant's retries do not count for its job"
    );
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 0);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn an_append_fills_step_and_from_status_from_the_target_and_chains_its_hash(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    let detail = json!({"scenario": "lagging", "nested": {"b": 2, "a": [1, "ü", "a\nb"]}});

    let first = append_ok(
        &pool,
        &NewRetry::new(target, RetryReason::Stuck, "watchdog@host-1").with_detail(detail.clone()),
    )
    .await;
    let second = append_ok(
        &pool,
        &NewRetry::new(target, RetryReason::Failed, "ops")
            .with_step("segment")
            .with_status_change("failed", "done")
            .with_occurred_at(Utc::now() - Duration::minutes(3)),
    )
    .await;

    // Defaults come from the variant's row: done at `generate`.
    assert_eq!(first.target(), target);
    assert_eq!(first.step.as_deref(), Some("generate"));
    assert_eq!(first.from_status.as_deref(), Some("done"));
    assert_eq!(first.to_status, None);
    assert_eq!(first.actor, "watchdog@host-1");
    assert_eq!(first.detail, detail);
    assert!((Utc::now() - first.occurred_at).num_seconds().abs() < 60);
    // What the caller gave wins.
    assert_eq!(second.reason, RetryReason::Failed);
    assert_eq!(second.step.as_deref(), Some("segment"));
    assert_eq!(second.from_status.as_deref(), Some("failed"));
    assert_eq!(second.to_status.as_deref(), Some("done"));

    // The SQL function's hash is the one the Rust canonical form computes, chained.
    let first_text = detail_text(&pool, &first).await;
    assert_eq!(
        canonical(&first, &first_text).hash(&GENESIS_HASH)[..],
        first.hash[..]
    );
    let second_text = detail_text(&pool, &second).await;
    assert_eq!(
        canonical(&second, &second_text).hash(&first.hash)[..],
        second.hash[..]
    );

    // load_stream reads back exactly what append returned.
    let mut conn = pool.acquire().await.unwrap();
    let stream = store::load_stream(&mut conn, target).await.unwrap();
    assert_eq!(stream, vec![first, second]);
}

#[sqlx::test(migrations = false)]
async fn job_and_variant_streams_are_numbered_and_counted_separately(pool: PgPool) {
    pipeline(&pool).await;

    append_n(&pool, job(JOB_A), 2).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 1).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    append_n(&pool, job(JOB_B), 1).await;

    assert_gapless(&pool, job(JOB_A), 2).await;
    assert_gapless(&pool, variant(JOB_A, VARIANT_A1), 1).await;
    assert_gapless(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    assert_gapless(&pool, job(JOB_B), 1).await;
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 2);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 1);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 3);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A3)).await, 0);
    assert_eq!(retry_count(&pool, job(JOB_B)).await, 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn an_append_commits_together_with_the_state_change_it_records(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A2);

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs_variants SET status = 'done' WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&mut *tx)
        .await
        .unwrap();
    let event = store::append(
        &mut tx,
        &NewRetry::new(target, RetryReason::Failed, "watchdog")
            .with_status_change("failed", "done"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs_variants WHERE job_variants_id = $1")
            .bind(VARIANT_A2)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "done");
    assert_eq!(event.from_status.as_deref(), Some("failed"));
    assert_eq!(event.to_status.as_deref(), Some("done"));
    assert_eq!(retry_count(&pool, target).await, 1);
    assert_eq!(event_count(&pool).await, 1);
}

#[sqlx::test(migrations = false)]
async fn an_append_in_a_transaction_that_rolls_back_leaves_no_event_no_count_and_no_state_change(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 1).await;
    let before = snapshot(&pool).await;

    // Rolled back explicitly.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs_variants SET status = 'done' WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&mut *tx)
        .await
        .unwrap();
    let event = store::append(&mut tx, &retry(variant(JOB_A, VARIANT_A2)))
        .await
        .unwrap();
    assert_eq!(event.attempt, 2, "inside the transaction the event exists");
    tx.rollback().await.unwrap();
    assert_eq!(snapshot(&pool).await, before);

    // Dropped without a commit (an early return, a panic in the caller).
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
            .bind(JOB_A)
            .execute(&mut *tx)
            .await
            .unwrap();
        store::append(&mut tx, &retry(job(JOB_A))).await.unwrap();
    }
    assert_eq!(snapshot(&pool).await, before);

    // The stream continues as if nothing had happened.
    let event = append_ok(&pool, &retry(variant(JOB_A, VARIANT_A2))).await;
    assert_eq!(event.attempt, 2);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_refused_append_takes_the_callers_state_change_down_with_it(pool: PgPool) {
    pipeline(&pool).await;
    let before = snapshot(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs_variants SET status = 'done' WHERE job_variants_id = $1")
        .bind(VARIANT_A2)
        .execute(&mut *tx)
        .await
        .unwrap();
    let error = store::append(
        &mut tx,
        &retry(variant(JOB_A, VARIANT_A2)).with_max_retries(0),
    )
    .await
    .expect_err("the limit of 0 refuses the retry");
    assert!(
        matches!(error, AppendError::LimitReached { .. }),
        "{error:?}"
    );
    // A caller that commits anyway commits nothing: the transaction is aborted.
    let _ = tx.commit().await;

    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn two_appends_to_one_target_in_one_transaction_number_consecutively(pool: PgPool) {
    pipeline(&pool).await;
    let target = job(JOB_A);

    let mut tx = pool.begin().await.unwrap();
    let first = store::append(&mut tx, &retry(target)).await.unwrap();
    let second = store::append(&mut tx, &retry(target)).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(retry_count(&pool, target).await, 2);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_duplicate_event_id_stores_one_event_and_returns_the_first(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    let event_id = Uuid::new_v4();

    let first = append_ok(
        &pool,
        &NewRetry::new(target, RetryReason::Stuck, "watchdog")
            .with_event_id(event_id)
            .with_detail(json!({"try": 1})),
    )
    .await;
    // The same key again, even with other fields, is the same event.
    let again = append_ok(
        &pool,
        &NewRetry::new(target, RetryReason::Failed, "another-instance")
            .with_event_id(event_id)
            .with_detail(json!({"try": 2})),
    )
    .await;

    assert_eq!(again, first);
    assert_eq!(
        (again.seq, again.attempt, again.hash_hex()),
        (first.seq, 1, first.hash_hex())
    );
    assert_eq!(event_count(&pool).await, 1);
    assert_eq!(retry_count(&pool, target).await, 1);

    // The SQL door answers the same way.
    let attempt: i32 = sqlx::query_scalar(
        "SELECT attempt FROM record_retry(job_id => $1, job_variants_id => $2,
                reason => 'stuck', event_id => $3)",
    )
    .bind(JOB_A)
    .bind(VARIANT_A1)
    .bind(event_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(event_count(&pool).await, 1);
    assert_verify_clean(&pool).await;
}

/// The milliseconds since the epoch a version-7 UUID carries; fails on any other version.
fn v7_millis(id: Uuid) -> u64 {
    assert_eq!(id.get_version_num(), 7, "{id} is not a version-7 UUID");
    let (seconds, nanos) = id.get_timestamp().expect("a v7 UUID has a time").to_unix();
    seconds * 1000 + u64::from(nanos) / 1_000_000
}

#[sqlx::test(migrations = false)]
async fn an_event_id_the_append_generates_is_time_ordered_and_a_callers_is_kept_as_given(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let start = Utc::now().timestamp_millis() as u64;
    let mut ids = Vec::new();
    for target in [
        variant(JOB_A, VARIANT_A1),
        job(JOB_A),
        variant(JOB_B, VARIANT_B1),
    ] {
        ids.push(append_ok(&pool, &retry(target)).await.event_id);
        // Each id in a millisecond of its own, so their order is the appends' order.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    // The batch door generates them the same way.
    let mut tx = pool.begin().await.unwrap();
    let batch = store::append_many(
        &mut tx,
        &[
            retry(variant(JOB_A, VARIANT_A2)),
            retry(variant(JOB_B, VARIANT_B1)),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let end = Utc::now().timestamp_millis() as u64;

    let millis: Vec<u64> = ids.iter().map(|id| v7_millis(*id)).collect();
    assert!(millis.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    for event in &batch {
        let at = v7_millis(event.event_id);
        assert!(at >= millis[2] && at <= end, "{}", event.event_id);
    }
    assert!(millis[0] >= start, "{ids:?} from {start}");
    // Their random part differs where their milliseconds do not.
    assert_ne!(batch[0].event_id, batch[1].event_id);

    // A caller's own id, of any version, is stored as given.
    let given = Uuid::new_v4();
    let event = append_ok(
        &pool,
        &retry(variant(JOB_A, VARIANT_A1)).with_event_id(given),
    )
    .await;
    assert_eq!(event.event_id, given);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn resending_an_append_with_its_event_id_returns_it_past_its_expected_attempt_and_limit(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A2);
    let request = retry(target)
        .with_event_id(Uuid::new_v4())
        .with_expected_attempt(1)
        .with_max_retries(1);

    let first = append_ok(&pool, &request).await;
    // The response was lost; the client sends the very same request again.
    let again = append_ok(&pool, &request).await;

    assert_eq!(again, first);
    assert_eq!(retry_count(&pool, target).await, 1);
}

#[sqlx::test(migrations = false)]
async fn an_event_id_reused_for_another_target_is_refused_naming_the_first_target(pool: PgPool) {
    pipeline(&pool).await;
    let event_id = Uuid::new_v4();
    append_ok(
        &pool,
        &retry(variant(JOB_A, VARIANT_A1)).with_event_id(event_id),
    )
    .await;

    for other in [
        variant(JOB_A, VARIANT_A2),
        job(JOB_A),
        variant(JOB_B, VARIANT_B1),
    ] {
        let error = refused(&pool, &retry(other).with_event_id(event_id)).await;
        assert!(matches!(error, AppendError::EventIdReused(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&event_id.to_string()), "{message}");
        assert!(message.contains(&VARIANT_A1.to_string()), "{message}");
    }
}

#[sqlx::test(migrations = false)]
async fn an_unknown_reason_through_the_sql_function_is_refused_by_name(pool: PgPool) {
    pipeline(&pool).await;

    let (code, message, classified) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => $1::uuid, reason => 'flaky')",
        &[Some(&JOB_A.to_string())],
    )
    .await;
    assert_eq!(code, "22023");
    assert!(message.contains("\"flaky\""), "{message}");
    assert!(
        message.contains("stuck, failed or manual_recovery"),
        "{message}"
    );
    assert!(matches!(classified, AppendError::InvalidInput(_)));

    let (code, message, _) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => $1::uuid, reason => NULL)",
        &[Some(&JOB_A.to_string())],
    )
    .await;
    assert_eq!(code, "22023");
    assert!(message.contains("unknown retry reason"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn a_malformed_id_through_the_sql_function_is_refused_by_value(pool: PgPool) {
    pipeline(&pool).await;

    for sql in [
        "SELECT attempt FROM record_retry(job_id => $1::uuid, reason => 'stuck')",
        "SELECT attempt FROM record_retry(job_id => '0a000000-0000-4000-8000-000000000000',
                job_variants_id => $1::uuid, reason => 'stuck')",
    ] {
        let (code, message, classified) = refused_via_sql(&pool, sql, &[Some("not-a-uuid")]).await;
        assert_eq!(code, "22P02", "{message}");
        assert!(message.contains("uuid"), "{message}");
        assert!(message.contains("not-a-uuid"), "{message}");
        assert!(
            matches!(classified, AppendError::InvalidInput(_)),
            "{classified:?}"
        );
    }
    let (code, message, _) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => 'not-a-uuid', reason => 'stuck')",
        &[],
    )
    .await;
    assert_eq!(code, "22P02", "{message}");
    assert!(message.contains("not-a-uuid"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn a_missing_job_id_through_the_sql_function_is_refused(pool: PgPool) {
    pipeline(&pool).await;

    let (code, message, classified) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => NULL, reason => 'stuck')",
        &[],
    )
    .await;
    assert_eq!(code, "22023");
    assert!(message.contains("job_id"), "{message}");
    assert!(matches!(classified, AppendError::InvalidInput(_)));
}

#[sqlx::test(migrations = false)]
async fn an_unknown_job_is_refused_by_id(pool: PgPool) {
    pipeline(&pool).await;
    let unknown = Uuid::new_v4();

    let error = refused(&pool, &retry(job(unknown))).await;

    assert!(matches!(error, AppendError::UnknownTarget(_)), "{error:?}");
    assert_eq!(error.to_string(), format!("unknown job {unknown}"));
}

#[sqlx::test(migrations = false)]
async fn an_unknown_variant_is_refused_by_id(pool: PgPool) {
    pipeline(&pool).await;
    let unknown = Uuid::new_v4();

    let error = refused(&pool, &retry(variant(JOB_A, unknown))).await;

    assert!(matches!(error, AppendError::UnknownTarget(_)), "{error:?}");
    assert_eq!(error.to_string(), format!("unknown variant {unknown}"));

    // Through the SQL door too, with the same SQLSTATE the Rust door maps.
    let (code, message, _) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => $1::uuid, job_variants_id => $2::uuid,
                reason => 'failed')",
        &[Some(&JOB_A.to_string()), Some(&unknown.to_string())],
    )
    .await;
    assert_eq!(code, "RL001");
    assert!(message.contains(&unknown.to_string()), "{message}");
}

#[sqlx::test(migrations = false)]
async fn a_variant_of_another_job_is_refused_naming_both_jobs(pool: PgPool) {
    pipeline(&pool).await;

    let error = refused(&pool, &retry(variant(JOB_A, VARIANT_B1))).await;

    assert!(matches!(error, AppendError::WrongJob(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("variant {VARIANT_B1} belongs to job {JOB_B}, not to job {JOB_A}")
    );
}

#[sqlx::test(migrations = false)]
async fn a_detail_that_is_not_a_json_object_is_refused(pool: PgPool) {
    pipeline(&pool).await;

    for detail in [
        json!([1, 2]),
        json!("timeout"),
        json!(42),
        json!(true),
        json!(null),
    ] {
        let error = refused(
            &pool,
            &retry(variant(JOB_A, VARIANT_A1)).with_detail(detail.clone()),
        )
        .await;
        assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("detail must be a JSON object"),
            "{detail}: {error}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_detail_over_16_kib_is_refused_and_one_of_exactly_16_kib_is_accepted(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    // `{"pad": "…"}` is 11 bytes around the padding in jsonb's text form.
    let detail_of = |bytes: usize| json!({ "pad": "x".repeat(bytes - 11) });
    let size: i32 = sqlx::query_scalar("SELECT octet_length($1::jsonb::text)")
        .bind(detail_of(16 * 1024))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(size, 16 * 1024, "the fixture's arithmetic");

    let error = refused(&pool, &retry(target).with_detail(detail_of(16 * 1024 + 1))).await;
    assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "detail is 16385 bytes, over the limit of 16384 bytes"
    );
    let error = refused(&pool, &retry(target).with_detail(detail_of(1024 * 1024))).await;
    assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");

    let event = append_ok(&pool, &retry(target).with_detail(detail_of(16 * 1024))).await;
    assert_eq!(event.attempt, 1);
}

#[sqlx::test(migrations = false)]
async fn a_retry_past_the_limit_is_refused_naming_the_target_and_limit(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A2);

    append_ok(&pool, &retry(target).with_max_retries(2)).await;
    append_ok(&pool, &retry(target).with_max_retries(2)).await;
    let error = refused(&pool, &retry(target).with_max_retries(2)).await;

    assert!(
        matches!(error, AppendError::LimitReached { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "retry limit reached: variant {VARIANT_A2} has 2 retries (limit 2); "
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "; an operator recovers it by hand: retrylog recover --variant-id {VARIANT_A2} \
             --note \"why\""
        )),
        "{message}"
    );
    assert_eq!(retry_count(&pool, target).await, 2);

    // A limit of 0 refuses the first retry; no limit lets it through.
    let error = refused(&pool, &retry(job(JOB_A)).with_max_retries(0)).await;
    assert!(
        matches!(error, AppendError::LimitReached { .. }),
        "{error:?}"
    );
    append_ok(&pool, &retry(target)).await;
    assert_eq!(retry_count(&pool, target).await, 3);
}

#[sqlx::test(migrations = false)]
async fn the_default_limit_of_three_refuses_a_fourth_retry_through_every_door(pool: PgPool) {
    pipeline(&pool).await;
    let limit: Option<i32> = sqlx::query_scalar("SELECT max_retries FROM retrylog_settings")
        .fetch_one(&pool)
        .await
        .expect("the settings row exists");
    assert_eq!(limit, Some(3), "a fresh database's shared limit");
    let target = variant(JOB_A, VARIANT_A2);
    append_n(&pool, target, 3).await;

    let error = refused(&pool, &retry(target)).await;
    assert!(
        matches!(error, AppendError::LimitReached { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("(limit 3)"), "{error}");
    let (code, message, _) = refused_via_sql(
        &pool,
        "SELECT record_retry(job_id => $1::uuid, job_variants_id => $2::uuid, reason => 'failed')",
        &[Some(&JOB_A.to_string()), Some(&VARIANT_A2.to_string())],
    )
    .await;
    assert_eq!(code, "RL004", "{message}");
    assert_eq!(retry_count(&pool, target).await, 3);
}

#[sqlx::test(migrations = false)]
async fn the_shared_limit_wins_over_a_callers_higher_max_retries(pool: PgPool) {
    pipeline(&pool).await;
    set_retry_limit(&pool, Some(2)).await;
    let target = job(JOB_B);
    append_n(&pool, target, 2).await;

    let error = refused(&pool, &retry(target).with_max_retries(10)).await;
    assert!(
        matches!(error, AppendError::LimitReached { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("(limit 2)"), "{error}");
    let (code, message, _) = refused_via_sql(
        &pool,
        "SELECT record_retry(job_id => $1::uuid, reason => 'stuck', max_retries => 10)",
        &[Some(&JOB_B.to_string())],
    )
    .await;
    assert_eq!(code, "RL004", "{message}");

    // A caller's lower limit still wins over the shared one.
    set_retry_limit(&pool, Some(5)).await;
    let error = refused(&pool, &retry(target).with_max_retries(2)).await;
    assert!(error.to_string().contains("(limit 2)"), "{error}");
    assert_eq!(retry_count(&pool, target).await, 2);
}

#[sqlx::test(migrations = false)]
async fn append_with_stale_expected_attempt_is_a_conflict(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    append_n(&pool, target, 2).await;

    for stale in [1, 2] {
        let error = refused(&pool, &retry(target).with_expected_attempt(stale)).await;
        assert!(matches!(error, AppendError::Conflict(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "conflict on variant {VARIANT_A1}: expected attempt {stale}, but the next attempt is 3"
            )
        );
    }
    let error = refused(&pool, &retry(target).with_expected_attempt(7)).await;
    assert!(matches!(error, AppendError::Conflict(_)), "{error:?}");

    let event = append_ok(&pool, &retry(target).with_expected_attempt(3)).await;
    assert_eq!(event.attempt, 3);
    assert_eq!(retry_count(&pool, target).await, 3);
}

#[sqlx::test(migrations = false)]
async fn an_expected_attempt_below_one_or_a_negative_limit_is_invalid_input(pool: PgPool) {
    pipeline(&pool).await;
    let target = job(JOB_A);

    let error = refused(&pool, &retry(target).with_expected_attempt(0)).await;
    assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
    assert!(error.to_string().contains("expected_attempt"), "{error}");

    let error = refused(&pool, &retry(target).with_max_retries(-1)).await;
    assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
    assert!(error.to_string().contains("max_retries"), "{error}");
}

#[sqlx::test(migrations = false)]
async fn an_occurred_at_in_the_future_is_refused(pool: PgPool) {
    pipeline(&pool).await;

    let error = refused(
        &pool,
        &retry(job(JOB_A)).with_occurred_at(Utc::now() + Duration::hours(1)),
    )
    .await;

    assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
    assert!(error.to_string().contains("in the future"), "{error}");
}

#[sqlx::test(migrations = false)]
async fn an_occurred_at_of_minus_infinity_through_the_sql_function_is_invalid_input(pool: PgPool) {
    pipeline(&pool).await;

    let (code, message, classified) = refused_via_sql(
        &pool,
        "SELECT attempt FROM record_retry(job_id => $1::uuid, reason => 'stuck',
                occurred_at => '-infinity')",
        &[Some(&JOB_A.to_string())],
    )
    .await;

    assert!(
        matches!(classified, AppendError::InvalidInput(_)),
        "a SQL client's bad timestamp must be its mistake (22023), got {code}: {message}"
    );
    assert!(message.contains("occurred_at"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn a_step_or_actor_with_control_characters_or_too_long_is_refused(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);

    for bad in [
        retry(target).with_step("gen\nerate"),
        retry(target).with_step("x".repeat(201)),
        NewRetry::new(target, RetryReason::Stuck, "ops\u{7}"),
        NewRetry::new(target, RetryReason::Stuck, "a".repeat(201)),
        retry(target).with_status_change("failed\r", "done"),
    ] {
        let error = refused(&pool, &bad).await;
        assert!(matches!(error, AppendError::InvalidInput(_)), "{error:?}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_nul_character_in_any_text_field_is_invalid_input(pool: PgPool) {
    pipeline(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);

    for bad in [
        retry(target).with_step("gen\0erate"),
        NewRetry::new(target, RetryReason::Stuck, "ops\0"),
        retry(target).with_status_change("failed", "do\0ne"),
        retry(target).with_detail(json!({"error": "bad byte \u{0} here"})),
    ] {
        let error = refused(&pool, &bad).await;
        assert!(
            matches!(error, AppendError::InvalidInput(_)),
            "a NUL in the input is the caller's mistake: {error:?}"
        );
    }
}
