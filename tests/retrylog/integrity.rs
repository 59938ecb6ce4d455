//! The log defends itself: the database refuses to change it, and whatever a superuser
//! changes behind the guard, `verify` finds and names by target.

use retrylog::event::Target;
use retrylog::replay::Mismatch;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::*;

/// A log with three streams: variant A1 (3 events), job A (2), variant B1 (2).
async fn three_streams(pool: &PgPool) {
    pipeline(pool).await;
    append_n(pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(pool, job(JOB_A), 2).await;
    append_n(pool, variant(JOB_B, VARIANT_B1), 2).await;
}

/// Runs `sql` on one connection with every trigger off, as a superuser can.
pub(crate) async fn behind_the_guard(pool: &PgPool, sql: &str) {
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

pub(crate) async fn seq_of(pool: &PgPool, target: Target, attempt: i32) -> i64 {
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
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::StreamHead(drift) if drift.target == Some(target)
                && drift.problem.ends_with("which is not in the log")
        )),
        "the deleted event's id is still taken: {:#?}",
        report.mismatches
    );
    assert_eq!(report.mismatches.len(), 6, "{:#?}", report.mismatches);
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

    // The count, the outcomes (attempt 1's says it was retried again by the deleted event,
    // and the open retry is the deleted one), and the append's state: the head row still
    // holds attempt 2, and the deleted event's id is still taken.
    let report = verify(&pool).await;
    assert_eq!(report.mismatches.len(), 5, "{:#?}", report.mismatches);
    assert!(
        matches!(
            &report.mismatches[0],
            Mismatch::Count(drift) if drift.target == target && drift.events == 1
        ),
        "{:?}",
        report.mismatches[0]
    );
    assert!(
        report.mismatches[1..3].iter().all(|mismatch| matches!(
            mismatch,
            Mismatch::Outcome(drift) if drift.target == Some(target)
        )),
        "{:#?}",
        report.mismatches
    );
    assert!(
        report.mismatches[3..].iter().all(|mismatch| matches!(
            mismatch,
            Mismatch::StreamHead(drift) if drift.target == Some(target)
        )),
        "{:#?}",
        report.mismatches
    );
    assert!(
        report.mismatches.iter().any(|mismatch| matches!(
            mismatch,
            Mismatch::StreamHead(drift) if drift.problem
                == "retry_stream_head holds attempt 2 (seq 7), the log says attempt 1 (seq 6)"
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

/// A fresh job with one variant whose stream holds three events with every hashed field
/// set; returns the job, the variant and the events' seqs in attempt order.
async fn three_event_stream(pool: &PgPool) -> (Uuid, Uuid, [i64; 3]) {
    let (job_id, variant_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'generate');
         ",
    )
    .bind(job_id)
    .execute(pool)
    .await
    .unwrap();
    add_variant(pool, job_id, variant_id).await;
    let target = variant(job_id, variant_id);
    let mut seqs = [0; 3];
    for (n, seq) in seqs.iter_mut().enumerate() {
        *seq = append_ok(
            pool,
            &retry(target)
                .with_step("generate")
                .with_status_change("done", "done")
                .with_detail(serde_json::json!({ "n": n })),
        )
        .await
        .seq;
    }
    (job_id, variant_id, seqs)
}

async fn add_variant(pool: &PgPool, job_id: Uuid, variant_id: Uuid) {
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
         VALUES ($1, $2, 1, 'done', 'generate')",
    )
    .bind(variant_id)
    .bind(job_id)
    .execute(pool)
    .await
    .unwrap();
}

/// An attacker's re-chaining of one event: its attempt set to `attempt` and its hash
/// recomputed from the previous hash of its stream (genesis for attempt 1), as anyone who
/// can write the table can do with the public hash functions.
fn rechained(seq: i64, attempt: i32) -> String {
    format!(
        "UPDATE retry_history
            SET attempt = {attempt},
                hash = retry_event_hash(
                    coalesce((SELECT p.hash FROM retry_history p
                               WHERE p.job_id = retry_history.job_id
                                 AND p.job_variants_id = retry_history.job_variants_id
                                 AND p.attempt = {attempt} - 1),
                             decode(repeat('00', 32), 'hex')),
                    retry_event_canonical_v2(event_id, job_id, job_variants_id, reason, step,
                                             from_status, to_status, {attempt}, actor, detail,
                                             occurred_at, db_role))
          WHERE seq = {seq};"
    )
}

// Every field the hash covers, changed one at a time behind the guard on the middle event of
// a stream of its own, so that the change is caught only if the field is hashed: the event
// stays right after the event whose stored hash it chains from, and no attempt goes missing
// (a field that places the event in a stream — attempt, job_id, job_variants_id — is moved
// together with what an attacker would move and re-chain to keep every stream gapless). A
// field left out of either implementation of the canonical bytes (Rust's `CanonicalEvent`,
// SQL's `retry_event_canonical*`) would let its change through unnoticed.
#[sqlx::test(migrations = false)]
async fn changing_any_one_of_the_thirteen_hashed_fields_is_found_by_verify(pool: PgPool) {
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    // (field, how it is changed on the middle event, given the stream's three seqs)
    type Change = fn(&Streams) -> String;
    let changes: [(&str, Change); 13] = [
        ("event_id", |s| {
            set(s.middle(), "event_id = gen_random_uuid()")
        }),
        ("reason", |s| set(s.middle(), "reason = 'failed'")),
        ("step", |s| set(s.middle(), "step = 'segment'")),
        ("from_status", |s| set(s.middle(), "from_status = 'failed'")),
        ("to_status", |s| set(s.middle(), "to_status = 'failed'")),
        ("actor", |s| set(s.middle(), "actor = 'mallory'")),
        ("occurred_at", |s| {
            set(
                s.middle(),
                "occurred_at = occurred_at - interval '1 microsecond'",
            )
        }),
        ("detail", |s| {
            set(s.middle(), "detail = detail || '{\"n\": 20}'")
        }),
        ("db_role", |s| set(s.middle(), "db_role = 'mallory'")),
        ("hash", |s| set(s.middle(), "hash = sha256('forged')")),
        // Attempts 1..3 become 2..4 under a forged attempt 1: the middle event is attempt 3,
        // still right after the event it chains from.
        ("attempt", |s| {
            let [first, middle, last] = s.seqs;
            let forged = format!(
                "INSERT INTO retry_history (event_id, job_id, job_variants_id, reason, actor,
                                            occurred_at, attempt, db_role, hash)
                 SELECT gen_random_uuid(), job_id, job_variants_id, 'stuck', 'mallory',
                        occurred_at, 1, db_role, sha256('placeholder')
                   FROM retry_history WHERE seq = {first};"
            );
            format!(
                "{}{}{}{forged}{}",
                set(last, "attempt = 4"),
                set(middle, "attempt = 3"),
                set(first, "attempt = 2"),
                rechained_forged(s),
            )
        }),
        // The first two events move to another stream (attempts 1, 2 there); the last is
        // re-chained as attempt 1 of the stream it stays in.
        ("job_variants_id", |s| {
            format!(
                "UPDATE retry_history SET job_variants_id = '{}' WHERE seq IN ({}, {});{}",
                s.other_variant,
                s.seqs[0],
                s.seqs[1],
                rechained(s.seqs[2], 1)
            )
        }),
        ("job_id", |s| {
            format!(
                "UPDATE retry_history SET job_id = '{}' WHERE seq IN ({}, {});{}",
                s.other_job,
                s.seqs[0],
                s.seqs[1],
                rechained(s.seqs[2], 1)
            )
        }),
    ];
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_name = 'retry_history'
            AND column_name NOT IN ('seq', 'recorded_at', 'txid')
          ORDER BY column_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut fields: Vec<&str> = changes.iter().map(|(field, _)| *field).collect();
    fields.sort();
    assert_eq!(
        fields, columns,
        "every column but the positions is hashed and changed"
    );

    for (field, change) in changes {
        let (job_id, _, seqs) = three_event_stream(&pool).await;
        let streams = Streams {
            seqs,
            other_variant: Uuid::new_v4(),
            other_job: Uuid::new_v4(),
        };
        add_variant(&pool, job_id, streams.other_variant).await;
        behind_the_guard(&pool, &change(&streams)).await;

        let touched = [job_id, streams.other_job];
        let chain_problems: Vec<Mismatch> = verify(&pool)
            .await
            .mismatches
            .into_iter()
            .filter(|m| matches!(m, Mismatch::BrokenLink { .. } | Mismatch::AttemptGap { .. }))
            .filter(|m| m.target().is_some_and(|t| touched.contains(&t.job_id())))
            .collect();
        assert!(
            !chain_problems
                .iter()
                .any(|m| matches!(m, Mismatch::AttemptGap { .. })),
            "{field}: the change left no gap: {chain_problems:#?}"
        );
        assert!(
            chain_problems
                .iter()
                .any(|m| matches!(m, Mismatch::BrokenLink { seq, .. } if *seq == streams.middle())),
            "{field}: the changed event's link is broken: {chain_problems:#?}"
        );
        // A field changed in place breaks that one link (a changed hash also the next one,
        // which chains from it); a move also breaks the moved first event's link.
        let expected = match field {
            "hash" | "job_id" | "job_variants_id" => 2,
            "attempt" => 3,
            _ => 1,
        };
        assert_eq!(
            chain_problems.len(),
            expected,
            "{field}: {chain_problems:#?}"
        );
    }
}

/// The stream a field's change is made on, and where a move takes its events.
struct Streams {
    /// The three events' seqs, attempt 1 first.
    seqs: [i64; 3],
    /// A second variant of the same job, without events.
    other_variant: Uuid,
    /// A job id that has no events.
    other_job: Uuid,
}

impl Streams {
    fn middle(&self) -> i64 {
        self.seqs[1]
    }
}

/// `UPDATE … SET {assignment}` of the event at `seq`.
fn set(seq: i64, assignment: &str) -> String {
    format!("UPDATE retry_history SET {assignment} WHERE seq = {seq};")
}

/// The forged attempt 1 of the `attempt` case, hashed from genesis as `record_retry` would.
fn rechained_forged(s: &Streams) -> String {
    format!(
        "UPDATE retry_history f
            SET hash = retry_event_hash(decode(repeat('00', 32), 'hex'),
                           retry_event_canonical_v2(event_id, job_id, job_variants_id, reason,
                                                    step, from_status, to_status, attempt,
                                                    actor, detail, occurred_at, db_role))
          WHERE attempt = 1 AND job_variants_id =
                (SELECT job_variants_id FROM retry_history WHERE seq = {});",
        s.seqs[0]
    )
}
