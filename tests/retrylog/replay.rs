//! Rebuilding the counts from the log: after they were wiped or corrupted by hand, as a dry
//! run, on a log that is already consistent, and while writers keep appending.

use retrylog::event::Target;
use retrylog::replay::replay;
use retrylog::store::{self, AppendError};
use sqlx::PgPool;

use crate::fixtures::*;

/// A log with three streams: variant A1 (3 events), job A (2), variant B1 (2).
async fn three_streams(pool: &PgPool) {
    pipeline(pool).await;
    append_n(pool, variant(JOB_A, VARIANT_A1), 3).await;
    append_n(pool, job(JOB_A), 2).await;
    append_n(pool, variant(JOB_B, VARIANT_B1), 2).await;
}

/// Every count of the pipeline fixture after [`three_streams`].
const THREE_STREAMS_COUNTS: [(Target, i32); 6] = [
    (Target::Job { job_id: JOB_A }, 2),
    (
        Target::Variant {
            job_id: JOB_A,
            job_variants_id: VARIANT_A1,
        },
        3,
    ),
    (
        Target::Variant {
            job_id: JOB_A,
            job_variants_id: VARIANT_A2,
        },
        0,
    ),
    (
        Target::Variant {
            job_id: JOB_A,
            job_variants_id: VARIANT_A3,
        },
        0,
    ),
    (Target::Job { job_id: JOB_B }, 0),
    (
        Target::Variant {
            job_id: JOB_B,
            job_variants_id: VARIANT_B1,
        },
        2,
    ),
];

async fn assert_three_streams_counts(pool: &PgPool) {
    for (target, count) in THREE_STREAMS_COUNTS {
        assert_eq!(retry_count(pool, target).await, count, "{target}");
    }
}

/// What a replay reports it changed, as (target, count before, count after).
fn changes(report: &retrylog::replay::ReplayReport) -> Vec<(Target, i32, i64)> {
    report
        .changes
        .iter()
        .map(|change| (change.target, change.retry_count, change.expected))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn replay_restores_counts_wiped_by_hand(pool: PgPool) {
    three_streams(&pool).await;
    sqlx::raw_sql(
        "UPDATE jobs SET retry_count = 0;
         UPDATE jobs_variants SET retry_count = 0 WHERE job_id = '0a000000-0000-4000-8000-000000000000'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let report = replay(&pool, false).await.unwrap();

    assert!(report.applied);
    assert_eq!(report.events, 7);
    assert_eq!(
        changes(&report),
        [(job(JOB_A), 0, 2), (variant(JOB_A, VARIANT_A1), 0, 3),],
        "only the counts that differ are listed"
    );
    assert_three_streams_counts(&pool).await;
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn replay_corrects_counts_set_too_high_or_negative(pool: PgPool) {
    three_streams(&pool).await;
    sqlx::raw_sql(
        "UPDATE jobs_variants SET retry_count = 99
          WHERE job_variants_id = '0a000000-0000-4000-8000-000000000003';
         UPDATE jobs_variants SET retry_count = -4
          WHERE job_variants_id = '0b000000-0000-4000-8000-000000000001';",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(verify(&pool).await.mismatches.len(), 2);

    let report = replay(&pool, false).await.unwrap();

    assert_eq!(
        changes(&report),
        [
            (variant(JOB_A, VARIANT_A3), 99, 0),
            (variant(JOB_B, VARIANT_B1), -4, 2),
        ]
    );
    assert_three_streams_counts(&pool).await;
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn replay_dry_run_lists_the_changes_and_writes_nothing(pool: PgPool) {
    three_streams(&pool).await;
    sqlx::raw_sql("UPDATE jobs_variants SET retry_count = 0; UPDATE jobs SET retry_count = 7")
        .execute(&pool)
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    let dry = replay(&pool, true).await.unwrap();

    assert!(!dry.applied);
    assert_eq!(
        changes(&dry),
        [
            (job(JOB_A), 7, 2),
            (variant(JOB_A, VARIANT_A1), 0, 3),
            (job(JOB_B), 7, 0),
            (variant(JOB_B, VARIANT_B1), 0, 2),
        ]
    );
    assert_eq!(snapshot(&pool).await, before, "a dry run writes nothing");

    // The real replay then changes exactly what the dry run listed.
    let applied = replay(&pool, false).await.unwrap();
    assert_eq!(changes(&applied), changes(&dry));
    assert_three_streams_counts(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn replay_on_a_consistent_log_writes_no_row(pool: PgPool) {
    // The counter-era tables bump updated_at on every write: a row replay rewrote would show.
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    append_n(&pool, job(OLD_JOB_1), 2).await;
    append_n(&pool, variant(OLD_JOB_2, OLD_VARIANT_2_1), 1).await;
    let before = snapshot(&pool).await;

    let report = replay(&pool, false).await.unwrap();

    assert!(report.changes.is_empty(), "{:#?}", report.changes);
    assert_eq!(report.events, 3);
    assert_eq!(snapshot(&pool).await, before);
}

/// The watchdog's pattern: touch the target's row (re-triggering the pipeline), then record
/// the retry in the same transaction — so the row is locked before the append starts.
async fn touch_and_append(pool: &PgPool, target: Target) -> Result<(), AppendError> {
    let mut tx = pool.begin().await?;
    let touch = match target {
        Target::Job { .. } => "UPDATE jobs SET updated_at = now() WHERE job_id = $1",
        Target::Variant { .. } => {
            "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1"
        }
    };
    sqlx::query(touch)
        .bind(target.job_variants_id().unwrap_or(target.job_id()))
        .execute(&mut *tx)
        .await?;
    store::append(&mut tx, &retry(target)).await?;
    tx.commit().await?;
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn replay_while_writers_append_leaves_every_count_exact(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 10).await;
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
                    let appended = if writer % 2 == 0 {
                        append(&pool, &retry(target)).await.map(drop)
                    } else {
                        touch_and_append(&pool, target).await
                    };
                    appended.unwrap_or_else(|error| {
                        panic!("an append while replay runs failed: {error}")
                    });
                }
            })
        })
        .collect();
    // Corrupt the counts and replay, again and again, while the writers run.
    let mut replays = 0;
    while !writers.iter().all(|writer| writer.is_finished()) {
        sqlx::raw_sql(
            "UPDATE jobs SET retry_count = 0;
             UPDATE jobs_variants SET retry_count = 0;",
        )
        .execute(&clients.pool)
        .await
        .unwrap();
        replay(&clients.pool, false)
            .await
            .unwrap_or_else(|error| panic!("replay while appends run failed: {error}"));
        replays += 1;
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    clients.close().await;

    assert!(replays > 0);
    for target in targets {
        assert_eq!(retry_count(&pool, target).await, 120, "{target}");
        assert_gapless(&pool, target, 120).await;
    }
    assert_verify_clean(&pool).await;
}
