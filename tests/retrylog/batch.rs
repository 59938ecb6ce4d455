//! The batch door, `record_retries` (SQL) and `store::append_many` (Rust): every refusal of
//! record_retry names its row and writes nothing, rows of one target number consecutively in
//! the caller's order, concurrent batches over the same targets neither deadlock nor leave
//! gaps, the writer capability is the door's, and the largest accepted batch reads back.

use chrono::{Duration, Utc};
use retrylog::error::CallerMistake;
use retrylog::event::{NewRetry, RetryEvent, RetryReason, Target};
use retrylog::grant::Capability::{Reader, Writer};
use retrylog::store::{self, AppendError, MAX_BATCH_ROWS};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;
use crate::security::TestRole;

/// Appends `retries` through `store::append_many` in a transaction of its own: committed
/// when the batch is accepted, rolled back when it is refused.
async fn append_many(pool: &PgPool, retries: &[NewRetry]) -> Result<Vec<RetryEvent>, AppendError> {
    let mut tx = pool.begin().await.expect("a transaction begins");
    match store::append_many(&mut tx, retries).await {
        Ok(events) => {
            tx.commit().await.expect("the batch commits");
            Ok(events)
        }
        Err(error) => {
            tx.rollback().await.expect("the refused batch rolls back");
            Err(error)
        }
    }
}

/// `retries` through the Rust door, expecting a refusal that is the caller's and leaves
/// every table as it was.
async fn refused(pool: &PgPool, retries: &[NewRetry]) -> AppendError {
    let before = snapshot(pool).await;
    let error = append_many(pool, retries)
        .await
        .expect_err("the batch must be refused");
    assert!(
        error.is_caller_mistake(),
        "a fault, not a refusal: {error:?}"
    );
    assert_eq!(
        snapshot(pool).await,
        before,
        "the refused batch ({error}) wrote something"
    );
    error
}

/// `batch` through the SQL door as a psql client sends it, expecting a refusal that writes
/// nothing; returns SQLSTATE, message and HINT.
async fn refused_via_sql(pool: &PgPool, batch: &Value) -> (String, String, Option<String>) {
    let before = snapshot(pool).await;
    let error = sqlx::query("SELECT attempt FROM record_retries($1)")
        .bind(batch)
        .execute(pool)
        .await
        .expect_err("record_retries must refuse");
    assert_eq!(
        snapshot(pool).await,
        before,
        "the refused call ({error}) wrote something"
    );
    let (code, message) = database_error(&error);
    (
        code,
        message,
        retrylog::sqlstate::hint(&error).map(String::from),
    )
}

/// A good row for job B, to stand before and after the refused one.
fn fine() -> NewRetry {
    retry(job(JOB_B))
}

#[sqlx::test(migrations = false)]
async fn every_refusal_of_record_retry_through_the_batch_names_the_row_and_writes_nothing(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let a2 = variant(JOB_A, VARIANT_A2);
    let stranger = Uuid::new_v4();
    let reused = Uuid::new_v4();
    append_ok(&pool, &retry(job(JOB_A)).with_event_id(reused)).await;
    let detail_of = |bytes: usize| json!({ "pad": "x".repeat(bytes - 11) });

    // (the refused row, how the door classifies it, the message after `row 1 (target): `)
    type Check = fn(&AppendError) -> bool;
    let cases: Vec<(NewRetry, Check, String)> = vec![
        (
            retry(job(stranger)),
            |e| matches!(e, AppendError::UnknownTarget(_)),
            format!("unknown job {stranger}"),
        ),
        (
            retry(variant(JOB_A, stranger)),
            |e| matches!(e, AppendError::UnknownTarget(_)),
            format!("unknown variant {stranger}"),
        ),
        (
            retry(variant(JOB_B, VARIANT_A1)),
            |e| matches!(e, AppendError::WrongJob(_)),
            format!("variant {VARIANT_A1} belongs to job {JOB_A}, not to job {JOB_B}"),
        ),
        (
            retry(a2).with_max_retries(0),
            |e| matches!(e, AppendError::LimitReached { target: Some(t), .. } if *t == variant(JOB_A, VARIANT_A2)),
            format!("retry limit reached: variant {VARIANT_A2} has 0 retries (limit 0)"),
        ),
        (
            retry(a2).with_event_id(reused),
            |e| matches!(e, AppendError::EventIdReused(_)),
            format!("event_id {reused} is already recorded for job {JOB_A}"),
        ),
        (
            retry(a2).with_expected_attempt(5),
            |e| matches!(e, AppendError::Conflict(_)),
            format!(
                "conflict on variant {VARIANT_A2}: expected attempt 5, but the next attempt is 1"
            ),
        ),
        (
            retry(a2).with_expected_attempt(0),
            |e| matches!(e, AppendError::InvalidInput(_)),
            "expected_attempt must be 1 or more, got 0".into(),
        ),
        (
            retry(a2).with_detail(json!([1])),
            |e| matches!(e, AppendError::InvalidInput(_)),
            "detail must be a JSON object, got a JSON array".into(),
        ),
        (
            retry(a2).with_detail(detail_of(16 * 1024 + 1)),
            |e| matches!(e, AppendError::InvalidInput(_)),
            "detail is 16385 bytes, over the limit of 16384 bytes".into(),
        ),
        (
            retry(a2).with_step("seg\u{7}ment"),
            |e| matches!(e, AppendError::InvalidInput(_)),
            "invalid step: \"seg\\u0007ment\" holds U+0007".into(),
        ),
        (
            NewRetry::new(a2, RetryReason::Stuck, "act\0or"),
            |e| matches!(e, AppendError::InvalidInput(_)),
            "actor contains a NUL character (\\u0000), which PostgreSQL cannot store".into(),
        ),
        (
            NewRetry {
                force: true,
                ..retry(a2)
            },
            |e| matches!(e, AppendError::InvalidInput(_)),
            "force is only for an operator's manual_recovery, not for reason stuck".into(),
        ),
    ];
    for (bad, is_expected, message) in cases {
        let target = bad.target;
        let error = refused(&pool, &[fine(), bad, fine()]).await;
        assert!(is_expected(&error), "row 1 ({target}): {error:?}");
        let said = error.to_string();
        let prefix = format!("row 1 ({target}): ");
        assert!(
            said.starts_with(&prefix) && said[prefix.len()..].starts_with(&message),
            "expected `{prefix}{message}…`, got `{said}`"
        );
    }
    let future = retry(a2).with_occurred_at(Utc::now() + Duration::hours(1));
    let error = refused(&pool, &[fine(), future]).await;
    assert!(
        matches!(&error, AppendError::InvalidInput(m) if m.starts_with(&format!("row 1 (variant {VARIANT_A2}): occurred_at ")) && m.ends_with("is in the future")),
        "{error:?}"
    );
    // The limit's refusal says the way past it for this row's target.
    let error = refused(&pool, &[retry(a2).with_max_retries(0)]).await;
    assert!(
        error.to_string().ends_with(&format!(
            "retrylog recover --variant-id {VARIANT_A2} --note \"why\""
        )),
        "{error}"
    );
    let error = refused(&pool, &vec![fine(); MAX_BATCH_ROWS + 1]).await;
    assert_eq!(
        error.to_string(),
        "a batch of 1001 retries is over the limit of 1000 per call; split it"
    );

    // Through SQL: the SQLSTATE, HINT and COLUMN of record_retry, and the row named; and
    // the door's own refusals of the batch's shape.
    let b = json!({ "job_id": JOB_B, "reason": "stuck" });
    let a2_row = |extra: Value| {
        let mut row = json!({ "job_id": JOB_A, "job_variants_id": VARIANT_A2, "reason": "stuck" });
        row.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        row
    };
    let (code, message, hint) =
        refused_via_sql(&pool, &json!([b, a2_row(json!({ "max_retries": 0 }))])).await;
    assert_eq!(code, "RL004");
    assert_eq!(
        message,
        format!("row 1 (variant {VARIANT_A2}): retry limit reached: variant {VARIANT_A2} has 0 retries (limit 0)")
    );
    assert!(
        hint.is_some_and(|hint| hint.contains("manual_recovery")),
        "record_retry's hint kept"
    );
    let error = sqlx::query("SELECT * FROM record_retries($1)")
        .bind(json!([b, { "job_id": VARIANT_A1, "reason": "stuck" }]))
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(database_error(&error).0, "RL001");
    assert_eq!(
        retrylog::sqlstate::column(&error),
        Some("job_variants_id"),
        "COLUMN kept"
    );
    for (batch, code, message) in [
        (
            json!([b, a2_row(json!({ "reason": "bored" }))]),
            "22023",
            format!("row 1 (variant {VARIANT_A2}): unknown retry reason \"bored\""),
        ),
        (
            json!([b, b, a2_row(json!({ "job_variants_id": "A2" }))]),
            "22P02",
            "row 2 (variant \"A2\"): invalid input syntax for type uuid: \"A2\"".into(),
        ),
        (
            json!([b, a2_row(json!({ "attempt": 3 }))]),
            "22023",
            format!("row 1 (variant {VARIANT_A2}): unknown key \"attempt\""),
        ),
        (
            json!([b, a2_row(json!({ "step": 7 }))]),
            "22023",
            format!("row 1 (variant {VARIANT_A2}): step must be a JSON string or null, got a JSON number"),
        ),
        (
            json!([b, a2_row(json!({ "force": "yes" }))]),
            "22023",
            format!("row 1 (variant {VARIANT_A2}): force must be a JSON boolean or null, got a JSON string"),
        ),
        (json!([b, {}]), "22023", "row 1 (no job_id): job_id is required".into()),
        (
            json!([b, "job"]),
            "22023",
            "row 1 is a JSON string, not an object of record_retry's parameters".into(),
        ),
        (
            json!({ "job_id": JOB_B }),
            "22023",
            "retries must be a JSON array of objects, got a JSON object".into(),
        ),
        (
            Value::Array(vec![b.clone(); 1001]),
            "22023",
            "retries has 1001 rows, over the limit of 1000 per call".into(),
        ),
    ] {
        let (got_code, got_message, _) = refused_via_sql(&pool, &batch).await;
        assert_eq!(got_code, code, "{got_message}");
        assert!(got_message.starts_with(&message), "expected `{message}…`, got `{got_message}`");
    }
    assert_eq!(retry_count(&pool, job(JOB_B)).await, 0);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn rows_of_one_target_get_consecutive_attempts_in_the_callers_order(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let a2 = variant(JOB_A, VARIANT_A2);
    let b1 = variant(JOB_B, VARIANT_B1);
    append_n(&pool, a2, 2).await;
    // Interleaved targets, each row labelled by its place in the batch.
    let order = [a2, job(JOB_A), a2, b1, job(JOB_A), a2, b1, a2];
    let batch: Vec<NewRetry> = order
        .iter()
        .enumerate()
        .map(|(row, target)| retry(*target).with_step(format!("row-{row}")))
        .collect();
    let events = append_many(&pool, &batch)
        .await
        .expect("the batch is accepted");

    // One event per row, in the rows' order, each numbered after the target's rows before it.
    let got: Vec<(Target, String, i32)> = events
        .iter()
        .map(|event| {
            let target = Target::from_columns(event.job_id, event.job_variants_id);
            (target, event.step.clone().unwrap(), event.attempt)
        })
        .collect();
    let wanted: Vec<(Target, String, i32)> = vec![
        (a2, "row-0".into(), 3),
        (job(JOB_A), "row-1".into(), 1),
        (a2, "row-2".into(), 4),
        (b1, "row-3".into(), 1),
        (job(JOB_A), "row-4".into(), 2),
        (a2, "row-5".into(), 5),
        (b1, "row-6".into(), 2),
        (a2, "row-7".into(), 6),
    ];
    assert_eq!(got, wanted);
    assert!(
        events.windows(2).all(|pair| pair[0].seq < pair[1].seq),
        "log order is row order"
    );
    assert_gapless(&pool, a2, 6).await;
    assert_eq!(retry_count(&pool, a2).await, 6);
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 2);

    // Resent with the same event ids, the batch returns the stored events and writes nothing.
    let resent: Vec<NewRetry> = batch
        .iter()
        .zip(&events)
        .map(|(retry, event)| retry.clone().with_event_id(event.event_id))
        .collect();
    let before = snapshot(&pool).await;
    assert_eq!(append_many(&pool, &resent).await.unwrap(), events);
    assert_eq!(snapshot(&pool).await, before);
    // The chain: each event hashed after the previous one of its stream.
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_batches_over_the_same_targets_neither_deadlock_nor_leave_gaps(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let targets = [
        job(JOB_A),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        variant(JOB_A, VARIANT_A3),
        job(JOB_B),
        variant(JOB_B, VARIANT_B1),
    ];
    const WRITERS: usize = 8;
    const BATCHES: usize = 10;
    let clients = clients(&pool, WRITERS as u32).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        // Every writer names the targets in another order (rotated, half of them reversed):
        // taken in the caller's order, these locks would deadlock.
        let mut mine = targets.to_vec();
        mine.rotate_left(writer % targets.len());
        if writer % 2 == 1 {
            mine.reverse();
        }
        let batch: Vec<NewRetry> = mine.iter().chain(mine.iter()).map(|t| retry(*t)).collect();
        let pool = clients.pool.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..BATCHES {
                let mut tx = pool.begin().await.unwrap();
                let events = store::append_many(&mut tx, &batch).await?;
                tx.commit().await.unwrap();
                assert_eq!(events.len(), batch.len());
            }
            Ok::<_, AppendError>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .unwrap()
            .expect("no batch deadlocks or conflicts");
    }
    clients.close().await;
    let each = (WRITERS * BATCHES * 2) as i32;
    for target in targets {
        assert_gapless(&pool, target, each).await;
        assert_eq!(retry_count(&pool, target).await, each);
    }
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_batch_door_is_the_writer_capabilitys_and_refused_to_a_reader(pool: PgPool) {
    pipeline(&pool).await;
    let writer = TestRole::create(&pool, &[Writer]).await;
    let batch = json!([
        { "job_id": JOB_A, "reason": "stuck", "actor": "worker-1" },
        { "job_id": JOB_A, "job_variants_id": VARIANT_A2, "reason": "failed" },
    ]);
    let rows: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT attempt, db_role, actor FROM record_retries($1)")
            .bind(&batch)
            .fetch_all(&writer.pool)
            .await
            .expect("a writer may append a batch");
    assert_eq!(
        rows,
        vec![
            (1, writer.name.clone(), "worker-1".into()),
            (1, writer.name.clone(), writer.name.clone())
        ]
    );
    // force stays the operator's, in a batch as alone.
    let before = snapshot(&pool).await;
    let error = sqlx::query("SELECT * FROM record_retries($1)")
        .bind(json!([
            { "job_id": JOB_B, "reason": "stuck" },
            { "job_id": JOB_A, "reason": "manual_recovery", "force": true },
        ]))
        .execute(&writer.pool)
        .await
        .unwrap_err();
    let (code, message) = database_error(&error);
    assert_eq!(code, "42501");
    assert!(
        message.starts_with(&format!(
            "row 1 (job {JOB_A}): force is for the operator capability"
        )),
        "{message}"
    );
    assert_eq!(snapshot(&pool).await, before);

    let reader = TestRole::create(&pool, &[Reader]).await;
    let error = sqlx::query("SELECT * FROM record_retries($1)")
        .bind(&batch)
        .execute(&reader.pool)
        .await
        .unwrap_err();
    let (code, message) = database_error(&error);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "permission denied for function record_retries")
    );
    assert_eq!(snapshot(&pool).await, before);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_largest_accepted_batches_read_back_through_history_reports_and_verify(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let a1 = variant(JOB_A, VARIANT_A1);
    let targets = [
        a1,
        variant(JOB_A, VARIANT_A2),
        job(JOB_B),
        variant(JOB_B, VARIANT_B1),
    ];
    // 100 rows of one target, then the most rows a call takes, one of them with the largest
    // detail accepted.
    let hundred: Vec<NewRetry> = (0..100).map(|_| retry(a1)).collect();
    let events = append_many(&pool, &hundred).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    let largest = json!({ "pad": "x".repeat(16 * 1024 - 11) });
    let most: Vec<NewRetry> = (0..MAX_BATCH_ROWS)
        .map(|row| {
            let retry = retry(targets[row % targets.len()]);
            if row == 501 {
                retry.with_detail(largest.clone())
            } else {
                retry.with_detail(json!({ "row": row }))
            }
        })
        .collect();
    let events = append_many(&pool, &most).await.unwrap();
    assert_eq!(events.len(), MAX_BATCH_ROWS);
    assert_eq!(events[501].detail, largest);
    assert_gapless(&pool, a1, 100 + 250).await;

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
    assert_eq!(history.code, Some(0), "{history:#?}");
    let entries = history.json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 250);
    let padded = entries
        .iter()
        .find(|entry| entry["attempt"] == json!(126))
        .expect("attempt 126 of A2 is row 501");
    assert_eq!(padded["detail"], largest);

    let top = retrylog(&pool, &["report", "top-jobs", "--format", "json"]).await;
    assert_eq!(top.code, Some(0), "{top:#?}");
    let counts: Vec<(String, i64)> = top
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["job_id"].as_str().unwrap().to_string(),
                row["retry_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(counts.contains(&(JOB_B.to_string(), 250)), "{counts:?}");
    assert_verify_clean(&pool).await;
    let verified = retrylog(&pool, &["verify"]).await;
    assert_eq!(verified.code, Some(0), "{verified:#?}");
}
