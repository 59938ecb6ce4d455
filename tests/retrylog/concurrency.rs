//! Many writers at once, each on its own connection: attempts stay gapless, counts exact,
//! one event per idempotency key, and conflicts are reported, never double-counted.

use std::collections::BTreeSet;
use std::sync::Arc;

use retrylog::event::Target;
use retrylog::store::{self, AppendError};
use sqlx::PgPool;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::fixtures::*;

/// Spawns `writers` tasks that start together and runs `write(pool, index)` in each; returns
/// their results in task order.
async fn together<T, F, Fut>(pool: &PgPool, writers: usize, write: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(PgPool, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|index| {
            let start = Arc::clone(&start);
            let work = write(pool.clone(), index);
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(writers);
    for task in tasks {
        results.push(task.await.expect("a writer panicked"));
    }
    results
}

/// The next attempt of a target, as a caller using `expected_attempt` reads it first.
async fn next_attempt(pool: &PgPool, target: Target) -> i32 {
    sqlx::query_scalar(
        "SELECT coalesce(max(attempt), 0) + 1 FROM retry_history
          WHERE job_id = $1 AND job_variants_id IS NOT DISTINCT FROM $2",
    )
    .bind(target.job_id())
    .bind(target.job_variants_id())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn thirty_two_writers_appending_a_hundred_retries_each_to_one_variant_number_them_without_gaps(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let target = variant(JOB_A, VARIANT_A1);
    let clients = clients(&pool, 32).await;

    let per_writer: Vec<Vec<i32>> = together(&clients.pool, 32, move |pool, writer| async move {
        let mut attempts = Vec::with_capacity(100);
        for n in 0..100 {
            let retry = retry(target).with_detail(serde_json::json!({"writer": writer, "n": n}));
            attempts.push(append_ok(&pool, &retry).await.attempt);
        }
        attempts
    })
    .await;
    clients.close().await;

    for attempts in &per_writer {
        assert!(
            attempts.windows(2).all(|pair| pair[0] < pair[1]),
            "one writer's attempts increase: {attempts:?}"
        );
    }
    let all: BTreeSet<i32> = per_writer.iter().flatten().copied().collect();
    assert_eq!(
        all,
        (1..=3200).collect(),
        "every writer got distinct attempts"
    );
    assert_eq!(retry_count(&pool, target).await, 3200);
    assert_eq!(event_count(&pool).await, 3200);
    assert_gapless(&pool, target, 3200).await;
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 0);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_rust_and_sql_doors_appending_at_once_keep_counts_and_attempts_exact(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let targets = [job(JOB_A), variant(JOB_A, VARIANT_A1)];
    let clients = clients(&pool, 16).await;

    // 16 writers, 4 kinds, 50 appends each, alternating between the job and its variant.
    together(&clients.pool, 16, move |pool, writer| async move {
        for n in 0..50 {
            let target = targets[n % 2];
            match writer % 4 {
                // The Rust door.
                0 | 1 => {
                    append_ok(&pool, &retry(target)).await;
                }
                // A Python/asyncpg listener: its own transaction, the state change and the
                // event together, prepared statements.
                2 => {
                    let mut tx = pool.begin().await.unwrap();
                    let touch = match target {
                        Target::Job { .. } => {
                            "UPDATE jobs SET updated_at = now() WHERE job_id = $1"
                        }
                        Target::Variant { .. } => {
                            "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1"
                        }
                    };
                    sqlx::query(touch)
                        .bind(target.job_variants_id().unwrap_or(target.job_id()))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    record_via_sql(&mut tx, target, "failed").await.unwrap();
                    tx.commit().await.unwrap();
                }
                // psql: the simple query protocol, literals, autocommit.
                _ => {
                    let variant = target
                        .job_variants_id()
                        .map_or("NULL".to_string(), |id| format!("'{id}'"));
                    sqlx::raw_sql(&format!(
                        "SELECT attempt FROM record_retry(job_id => '{}',
                                job_variants_id => {variant}, reason => 'manual_recovery',
                                actor => 'psql')",
                        target.job_id()
                    ))
                    .execute(&pool)
                    .await
                    .unwrap();
                }
            }
        }
    })
    .await;
    clients.close().await;

    for target in targets {
        assert_eq!(retry_count(&pool, target).await, 400, "{target}");
        assert_gapless(&pool, target, 400).await;
    }
    let by_door: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason::text, count(*) FROM retry_history GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        by_door,
        [
            ("failed".to_string(), 200),
            ("manual_recovery".to_string(), 200),
            ("stuck".to_string(), 400),
        ]
    );
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_appends_with_one_event_id_store_one_event(pool: PgPool) {
    pipeline(&pool).await;
    let clients = clients(&pool, 16).await;

    for (round, target) in [
        variant(JOB_A, VARIANT_A1),
        job(JOB_A),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_B, VARIANT_B1),
        job(JOB_A),
    ]
    .into_iter()
    .enumerate()
    {
        let event_id = Uuid::new_v4();
        let before = event_count(&pool).await;
        // Half the writers use the Rust door, half the SQL door; all send the same key.
        let results: Vec<(i64, i32, Vec<u8>)> =
            together(&clients.pool, 16, move |pool, writer| async move {
                if writer % 2 == 0 {
                    let event = append_ok(&pool, &retry(target).with_event_id(event_id)).await;
                    (event.seq, event.attempt, event.hash)
                } else {
                    sqlx::query_as(
                        "SELECT seq, attempt, hash FROM record_retry(job_id => $1,
                                job_variants_id => $2, reason => 'stuck', event_id => $3)",
                    )
                    .bind(target.job_id())
                    .bind(target.job_variants_id())
                    .bind(event_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                }
            })
            .await;

        let distinct: BTreeSet<_> = results.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "round {round}: every writer gets the one stored event: {distinct:?}"
        );
        assert_eq!(event_count(&pool).await, before + 1, "round {round}");
    }
    clients.close().await;

    assert_eq!(retry_count(&pool, job(JOB_A)).await, 2);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 2);
    assert_eq!(retry_count(&pool, variant(JOB_B, VARIANT_B1)).await, 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_appends_of_one_event_id_to_different_targets_store_one_and_refuse_the_rest(
    pool: PgPool,
) {
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
    let clients = clients(&pool, targets.len() as u32).await;

    for round in 0..5 {
        let event_id = Uuid::new_v4();
        let before = snapshot(&pool).await;
        let results = together(
            &clients.pool,
            targets.len(),
            move |pool, writer| async move {
                append(&pool, &retry(targets[writer]).with_event_id(event_id)).await
            },
        )
        .await;

        let stored: Vec<_> = results
            .iter()
            .filter_map(|result| result.as_ref().ok())
            .collect();
        assert_eq!(stored.len(), 1, "round {round}: {results:?}");
        for error in results.iter().filter_map(|result| result.as_ref().err()) {
            assert!(
                matches!(error, AppendError::EventIdReused(_)),
                "round {round}: {error:?}"
            );
        }
        let after = snapshot(&pool).await;
        assert_eq!(
            after.retry_history.as_array().unwrap().len(),
            before.retry_history.as_array().unwrap().len() + 1
        );
    }
    clients.close().await;

    let total: i64 = sqlx::query_scalar(
        "SELECT (SELECT sum(retry_count) FROM jobs) + (SELECT sum(retry_count) FROM jobs_variants)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(total, 5, "one count per stored event");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn writers_using_expected_attempt_retry_their_conflicts_and_never_double_count(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let target = variant(JOB_A, VARIANT_A2);
    let clients = clients(&pool, 8).await;
    let read = Arc::new(Barrier::new(8));

    let conflicts: Vec<usize> = together(&clients.pool, 8, move |pool, _| {
        let read = Arc::clone(&read);
        async move {
            let mut conflicts = 0;
            let mut stored = 0;
            // 1. A forced round: every writer reads the same next attempt before any appends,
            //    so exactly one append can match it and seven must be conflicts.
            let expected = next_attempt(&pool, target).await;
            read.wait().await;
            match append(&pool, &retry(target).with_expected_attempt(expected)).await {
                Ok(_) => stored += 1,
                Err(AppendError::Conflict(_)) => conflicts += 1,
                Err(error) => panic!("only conflicts are expected: {error:?}"),
            }
            // 2. Then free-running: read, append, retry the conflicts.
            while stored < 25 {
                let expected = next_attempt(&pool, target).await;
                match append(&pool, &retry(target).with_expected_attempt(expected)).await {
                    Ok(event) => {
                        assert_eq!(event.attempt, expected);
                        stored += 1;
                    }
                    Err(AppendError::Conflict(_)) => conflicts += 1,
                    Err(error) => panic!("only conflicts are expected: {error:?}"),
                }
            }
            conflicts
        }
    })
    .await;
    clients.close().await;

    let total: usize = conflicts.iter().sum();
    assert!(
        total >= 7,
        "the forced round must conflict for seven of eight writers; conflicts per writer: {conflicts:?}"
    );
    assert_eq!(retry_count(&pool, target).await, 200);
    assert_gapless(&pool, target, 200).await;
    assert_verify_clean(&pool).await;
}

/// Begins a serializable transaction and takes its snapshot by reading job A's status, as a
/// caller that decides on what it read.
async fn serializable_read(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let _status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(JOB_A)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx
}

#[sqlx::test(migrations = false)]
async fn an_append_in_a_serializable_transaction_that_read_before_a_concurrent_append_is_a_conflict(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let target = job(JOB_A);
    let mut first = serializable_read(&pool).await;
    let mut second = serializable_read(&pool).await;

    store::append(&mut first, &retry(target)).await.unwrap();
    first.commit().await.unwrap();
    let error = store::append(&mut second, &retry(target))
        .await
        .expect_err("the second snapshot predates the first append");
    assert!(matches!(error, AppendError::Conflict(_)), "{error:?}");
    second.rollback().await.unwrap();

    assert_eq!(retry_count(&pool, target).await, 1);
    assert_gapless(&pool, target, 1).await;
}

#[sqlx::test(migrations = false)]
async fn appends_in_serializable_transactions_either_commit_or_report_a_conflict(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let target = job(JOB_A);
    let clients = clients(&pool, 8).await;

    let conflicts: Vec<usize> = together(&clients.pool, 8, move |pool, _| async move {
        let mut stored = 0;
        let mut conflicts = 0;
        while stored < 25 {
            let mut tx = serializable_read(&pool).await;
            let retry = retry(target).with_status_change("running", "running");
            match store::append(&mut tx, &retry).await {
                Ok(_) => match tx.commit().await {
                    Ok(()) => stored += 1,
                    Err(error) => match AppendError::from(error) {
                        AppendError::Conflict(_) => conflicts += 1,
                        other => panic!("commit failed with more than a conflict: {other:?}"),
                    },
                },
                Err(AppendError::Conflict(_)) => conflicts += 1,
                Err(error) => panic!("only conflicts are expected: {error:?}"),
            }
        }
        conflicts
    })
    .await;
    clients.close().await;

    // Eight writers on one target whose snapshots start before they lock it: a run
    // without a single serialization conflict would mean the conflict path never ran.
    assert!(
        conflicts.iter().sum::<usize>() > 0,
        "no writer met a conflict: {conflicts:?}"
    );
    assert_eq!(retry_count(&pool, target).await, 200);
    assert_gapless(&pool, target, 200).await;
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn verify_while_writers_append_reports_nothing(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 8).await;
    let targets = [
        job(JOB_A),
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
    ];

    let writers: Vec<_> = (0..6)
        .map(|writer| {
            let pool = clients.pool.clone();
            tokio::spawn(async move {
                for n in 0..60 {
                    let target = targets[(writer + n) % targets.len()];
                    append_ok(&pool, &retry(target)).await;
                }
            })
        })
        .collect();
    let mut verified = 0;
    while !writers.iter().all(|writer| writer.is_finished()) {
        let report = retrylog::replay::verify(&clients.pool, |_| {})
            .await
            .unwrap();
        assert!(
            report.is_clean(),
            "verify during appends: {:#?}",
            report.mismatches
        );
        verified += 1;
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    clients.close().await;

    assert!(verified > 0);
    assert_eq!(event_count(&pool).await, 360);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn migrate_while_writers_append_is_harmless(pool: PgPool) {
    // Every `retrylog` command migrates first, so a CLI run while the service appends
    // reinstalls the projection functions under the writers' feet.
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 10).await;
    let target = variant(JOB_A, VARIANT_A3);

    let writers: Vec<_> = (0..6)
        .map(|_| {
            let pool = clients.pool.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    append(&pool, &retry(target)).await.unwrap_or_else(|error| {
                        panic!("an append while migrate runs failed: {error}")
                    });
                }
            })
        })
        .collect();
    let mut migrations = 0;
    while !writers.iter().all(|writer| writer.is_finished()) {
        retrylog::migrate::run(&clients.pool)
            .await
            .unwrap_or_else(|error| panic!("migrate while appends run failed: {error}"));
        migrations += 1;
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    clients.close().await;

    assert!(migrations > 0);
    assert_eq!(retry_count(&pool, target).await, 300);
    assert_gapless(&pool, target, 300).await;
    assert_verify_clean(&pool).await;
}
