//! The batch door, `record_retries` (SQL) and `store::append_many` (Rust): every refusal of
//! record_retry names its row and writes nothing, rows of one target number consecutively in
//! the caller's order, concurrent batches over the same targets neither deadlock nor leave
//! gaps, the writer capability is the door's, and the largest accepted batch reads back. The
//! set path (`record_retries_set`) stores byte for byte what record_retry stores row by row,
//! and declines every row that record_retry would not append as it stands.

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
    let mut appended = std::collections::HashMap::new();
    for writer in 0..WRITERS {
        // Every writer names the targets in another order (rotated, half of them reversed):
        // taken in the caller's order, these locks would deadlock.
        let mut mine = targets.to_vec();
        mine.rotate_left(writer % targets.len());
        if writer % 2 == 1 {
            mine.reverse();
        }
        // Three kinds of batch meet: every target twice (appended row by row), every target
        // once (the set path, locking one target at a time), the variants once (the set
        // path, locking them in one sorted statement).
        let batch: Vec<NewRetry> = match writer % 3 {
            0 => mine.iter().chain(mine.iter()).map(|t| retry(*t)).collect(),
            1 => mine.iter().map(|t| retry(*t)).collect(),
            _ => mine
                .iter()
                .filter(|t| t.job_variants_id().is_some())
                .map(|t| retry(*t))
                .collect(),
        };
        for target in &batch {
            *appended.entry(target.target).or_insert(0) += BATCHES as i32;
        }
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
    for target in targets {
        let each = appended[&target];
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

/// What an append leaves, without what differs between two runs of the same rows (seq,
/// recorded_at, txid, observation times): the events of the current transaction, every head
/// row, outcome and event id, and every count.
async fn effects(conn: &mut sqlx::PgConnection) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
             'events', (SELECT jsonb_agg(jsonb_build_array(
                                 event_id, job_id, job_variants_id, reason, step, from_status,
                                 to_status, attempt, actor, detail, occurred_at, db_role,
                                 encode(hash, 'hex')) ORDER BY seq)
                          FROM retry_history WHERE txid = pg_current_xact_id()),
             'heads', (SELECT jsonb_agg(jsonb_build_array(
                                job_id, stream, attempt, encode(hash, 'hex'), last_reason,
                                last_step, last_occurred_at, last_open) ORDER BY job_id, stream)
                         FROM retry_stream_head),
             'outcomes', (SELECT jsonb_agg(jsonb_build_array(
                                   seq, outcome, resolved_at, evidence -> 'attempt')
                                   ORDER BY seq)
                            FROM retry_outcome),
             'event_ids', (SELECT jsonb_agg(jsonb_build_array(event_id, job_id, job_variants_id)
                                            ORDER BY event_id)
                             FROM retry_event_id),
             'counts', (SELECT jsonb_agg(jsonb_build_array(t.job_id, t.variant, t.retry_count)
                                         ORDER BY t.job_id, t.variant NULLS FIRST)
                          FROM (SELECT job_id, NULL::uuid AS variant, retry_count FROM jobs
                                UNION ALL
                                SELECT job_id, job_variants_id, retry_count
                                  FROM jobs_variants) t))",
    )
    .fetch_one(conn)
    .await
    .expect("the effects read")
}

/// `batch` through the set path (`record_retries_set`) in a transaction rolled back: its
/// events (None when it declines) and what it left.
async fn through_the_set_path(pool: &PgPool, batch: &Value) -> (Option<usize>, Value) {
    let mut tx = pool.begin().await.unwrap();
    let events: Option<i32> = sqlx::query_scalar("SELECT array_length(record_retries_set($1), 1)")
        .bind(batch)
        .fetch_one(&mut *tx)
        .await
        .expect("record_retries_set answers or declines; it never raises");
    let left = effects(&mut tx).await;
    tx.rollback().await.unwrap();
    (events.map(|n| n as usize), left)
}

/// `batch` row by row through record_retry, in a transaction rolled back: what it left.
async fn through_record_retry(pool: &PgPool, batch: &Value) -> Value {
    let mut tx = pool.begin().await.unwrap();
    for row in batch.as_array().unwrap() {
        sqlx::query(
            "SELECT 1 FROM record_retry(
                 job_id => ($1 ->> 'job_id')::uuid, reason => $1 ->> 'reason',
                 job_variants_id => ($1 ->> 'job_variants_id')::uuid, step => $1 ->> 'step',
                 actor => $1 ->> 'actor', detail => nullif($1 -> 'detail', 'null'),
                 event_id => ($1 ->> 'event_id')::uuid,
                 occurred_at => ($1 ->> 'occurred_at')::timestamptz,
                 from_status => $1 ->> 'from_status', to_status => $1 ->> 'to_status',
                 expected_attempt => ($1 ->> 'expected_attempt')::integer,
                 max_retries => ($1 ->> 'max_retries')::integer,
                 force => coalesce(($1 ->> 'force')::boolean, false))",
        )
        .bind(row)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("record_retry appends {row}: {error}"));
    }
    let left = effects(&mut tx).await;
    tx.rollback().await.unwrap();
    left
}

#[sqlx::test(migrations = false)]
async fn the_set_path_stores_byte_for_byte_what_record_retry_stores_row_by_row(pool: PgPool) {
    pipeline(&pool).await;
    set_retry_limit(&pool, Some(3)).await;
    // A1's, job A's and job B's last retries still open (the batch decides them), A2 at the
    // limit with its retry decided by the watchdog's note, A3 and B1 with no history.
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    a2_needs_intervention(&pool).await;
    append_ok(&pool, &retry(job(JOB_A))).await;
    append_n(&pool, job(JOB_B), 2).await;
    let at = |minutes: i64| (Utc::now() - Duration::minutes(minutes)).to_rfc3339();
    // Event ids and times given, so the hashes of both runs are comparable.
    let batch = json!([
        { "job_id": JOB_B, "job_variants_id": VARIANT_B1, "reason": "failed",
          "event_id": Uuid::new_v4(), "occurred_at": at(9),
          "detail": { "error": "CUDA error: out of memory", "nested": { "n": [1, 2.5, null] } } },
        { "job_id": JOB_A, "job_variants_id": VARIANT_A1, "reason": "stuck",
          "event_id": Uuid::new_v4(), "occurred_at": at(8), "actor": "  watchdog-2 ",
          "step": "  ", "expected_attempt": 2 },
        { "job_id": JOB_A, "reason": "stuck", "event_id": Uuid::new_v4(), "occurred_at": at(7),
          "step": "segment", "from_status": "running", "to_status": "pending",
          "max_retries": 5 },
        { "job_id": JOB_B, "reason": "manual_recovery",
          "event_id": Uuid::new_v4(), "occurred_at": at(6),
          "detail": { "note": "disk replaced", "scenario": "manual" } },
        { "job_id": JOB_A, "job_variants_id": VARIANT_A3, "reason": "failed",
          "event_id": Uuid::new_v4(), "occurred_at": at(5), "detail": null },
        { "job_id": JOB_A, "job_variants_id": VARIANT_A2, "reason": "manual_recovery",
          "event_id": Uuid::new_v4(), "occurred_at": at(4), "force": true },
    ]);
    let before = effects(&mut pool.acquire().await.unwrap()).await;
    let (events, by_set) = through_the_set_path(&pool, &batch).await;
    assert_eq!(events, Some(6), "the set path takes this batch");
    let by_rows = through_record_retry(&pool, &batch).await;
    assert_eq!(by_set, by_rows);
    // What the comparison stands on: each kind of row did what it should.
    let stored = by_set["events"].as_array().unwrap();
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[1][7], json!(2), "A1's second attempt");
    assert_eq!(stored[1][8], json!("watchdog-2"), "the actor trimmed");
    assert_eq!(
        stored[1][4],
        json!("generate"),
        "a blank step is the target's current_step"
    );
    assert_eq!(
        stored[3][9],
        json!({ "note": "disk replaced", "scenario": "manual" })
    );
    assert_eq!(stored[4][9], json!({}), "a null detail is stored as {{}}");
    assert_eq!(
        stored[5][9],
        json!({ "forced_past_limit": 3 }),
        "A2 forced past the limit"
    );
    let retried_again = |effects: &Value| {
        effects["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|outcome| outcome[1] == json!("retried_again"))
            .count()
    };
    assert_eq!(
        retried_again(&by_set) - retried_again(&before),
        3,
        "A1's, job A's and job B's open retries decided"
    );

    // Committed through the door (which takes the set path), it verifies.
    let rows: Vec<i32> = sqlx::query_scalar("SELECT attempt FROM record_retries($1)")
        .bind(&batch)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![1, 2, 2, 3, 1, 4]);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_set_path_declines_every_row_record_retry_would_not_append_as_it_stands(pool: PgPool) {
    pipeline(&pool).await;
    set_retry_limit(&pool, Some(3)).await;
    append_n(&pool, job(JOB_B), 3).await;
    let known = append_ok(&pool, &retry(job(JOB_A))).await.event_id;
    let stranger = Uuid::new_v4();
    let fine = json!({ "job_id": JOB_A, "job_variants_id": VARIANT_A3, "reason": "failed" });
    let a2 = |more: Value| {
        let mut row = json!({ "job_id": JOB_A, "job_variants_id": VARIANT_A2, "reason": "failed" });
        row.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        row
    };
    let declined = [
        (
            "an unknown job",
            json!({ "job_id": stranger, "reason": "stuck" }),
        ),
        (
            "an unknown variant",
            a2(json!({ "job_variants_id": stranger })),
        ),
        ("another job's variant", a2(json!({ "job_id": JOB_B }))),
        (
            "a missing job_id",
            json!({ "job_variants_id": VARIANT_A2, "reason": "stuck" }),
        ),
        ("an unknown reason", a2(json!({ "reason": "bored" }))),
        ("no reason", a2(json!({ "reason": null }))),
        (
            "the shared limit",
            json!({ "job_id": JOB_B, "reason": "stuck" }),
        ),
        ("the caller's limit", a2(json!({ "max_retries": 0 }))),
        ("a negative limit", a2(json!({ "max_retries": -1 }))),
        ("force on a failed retry", a2(json!({ "force": true }))),
        ("a detail not an object", a2(json!({ "detail": [1] }))),
        (
            "a detail too large",
            a2(json!({ "detail": { "pad": "x".repeat(16 * 1024) } })),
        ),
        (
            "a detail too deep",
            a2(json!({ "detail": (0..64).fold(json!(1), |v, _| json!([v])) })),
        ),
        ("a control character", a2(json!({ "actor": "bell\u{7}" }))),
        (
            "a bidi override in the scenario",
            a2(json!({ "detail": { "scenario": "a\u{202e}b" } })),
        ),
        (
            "a long to_status",
            a2(json!({ "to_status": "s".repeat(65) })),
        ),
        ("a long step", a2(json!({ "step": "s".repeat(201) }))),
        (
            "occurred_at in the future",
            a2(json!({ "occurred_at": (Utc::now() + Duration::hours(1)).to_rfc3339() })),
        ),
        (
            "occurred_at before 2000",
            a2(json!({ "occurred_at": "1999-12-31T00:00:00Z" })),
        ),
        (
            "occurred_at infinite",
            a2(json!({ "occurred_at": "infinity" })),
        ),
        (
            "occurred_at not a time",
            a2(json!({ "occurred_at": "soon" })),
        ),
        (
            "an expected attempt that is not next",
            a2(json!({ "expected_attempt": 2 })),
        ),
        (
            "an expected attempt of 0",
            a2(json!({ "expected_attempt": 0 })),
        ),
        (
            "a known event id",
            json!({ "job_id": JOB_A, "reason": "stuck", "event_id": known }),
        ),
        (
            "a known event id of another target",
            a2(json!({ "event_id": known })),
        ),
        ("a second row of one target", fine.clone()),
    ];
    for (case, row) in declined {
        let batch = json!([fine, row]);
        let (events, left) = through_the_set_path(&pool, &batch).await;
        assert_eq!(events, None, "{case}: the set path must decline {row}");
        assert_eq!(
            left["events"],
            Value::Null,
            "{case}: the declined batch wrote events"
        );
    }
    // Two rows giving one new event id: record_retry appends the first and returns it for the
    // second, which the set path leaves to it.
    let id = Uuid::new_v4();
    let twice = json!([a2(json!({ "event_id": id })), a2(json!({ "event_id": id }))]);
    assert_eq!(through_the_set_path(&pool, &twice).await.0, None);
    let before = snapshot(&pool).await;
    let batch = json!([fine]);
    assert_eq!(through_the_set_path(&pool, &batch).await.0, Some(1));
    assert_eq!(
        snapshot(&pool).await,
        before,
        "the set path's run was rolled back"
    );
}
