//! `migrate` on an empty database, on the pipeline's tables from before retrylog, and again.

use std::collections::BTreeMap;

use retrylog::event::Target;
use retrylog::store::AppendError;
use sqlx::PgPool;

use crate::fixtures::*;

/// The five indexes of the original counter change, exactly as they must be defined.
const COUNTER_INDEXES: [(&str, &str); 5] = [
    (
        "idx_jobs_retry_count",
        "ON public.jobs USING btree (retry_count)",
    ),
    (
        "idx_jobs_status_retry_count",
        "ON public.jobs USING btree (status, retry_count)",
    ),
    (
        "idx_jobs_variants_retry_count",
        "ON public.jobs_variants USING btree (retry_count)",
    ),
    (
        "idx_jobs_variants_status_retry_count",
        "ON public.jobs_variants USING btree (status, retry_count)",
    ),
    (
        "idx_jobs_variants_job_id_retry_count",
        "ON public.jobs_variants USING btree (job_id, retry_count)",
    ),
];

/// Index name → definition, for the pipeline tables.
async fn pipeline_indexes(pool: &PgPool) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT indexname::text, indexdef FROM pg_indexes
          WHERE schemaname = 'public' AND tablename IN ('jobs', 'jobs_variants')",
    )
    .fetch_all(pool)
    .await
    .expect("reading pg_indexes")
    .into_iter()
    .collect()
}

async fn assert_counter_indexes(pool: &PgPool) {
    let indexes = pipeline_indexes(pool).await;
    for (name, definition) in COUNTER_INDEXES {
        let found = indexes
            .get(name)
            .unwrap_or_else(|| panic!("index {name} is missing; found {indexes:#?}"));
        assert!(
            found.ends_with(definition),
            "index {name} is `{found}`, expected it to end with `{definition}`"
        );
    }
}

/// Asserts `retry_count` is `integer NOT NULL DEFAULT 0` on both pipeline tables.
async fn assert_retry_count_columns(pool: &PgPool) {
    for table in ["jobs", "jobs_variants"] {
        let column: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT data_type::text, is_nullable::text, column_default::text
               FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name = $1 AND column_name = 'retry_count'",
        )
        .bind(table)
        .fetch_optional(pool)
        .await
        .expect("reading information_schema.columns");
        let (data_type, nullable, default) =
            column.unwrap_or_else(|| panic!("{table}.retry_count is missing"));
        assert_eq!(data_type, "integer", "{table}.retry_count type");
        assert_eq!(nullable, "NO", "{table}.retry_count must be NOT NULL");
        assert_eq!(default.as_deref(), Some("0"), "{table}.retry_count default");
    }
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("public.{name}"))
        .fetch_one(pool)
        .await
        .expect("to_regclass")
}

/// The opening balances as (job, variant, balance), in a stable order.
async fn opening_balances(pool: &PgPool) -> Vec<(uuid::Uuid, Option<uuid::Uuid>, i32)> {
    sqlx::query_as(
        "SELECT job_id, job_variants_id, balance FROM retry_opening_balance
          ORDER BY job_id, job_variants_id NULLS FIRST",
    )
    .fetch_all(pool)
    .await
    .expect("reading retry_opening_balance")
}

/// Every count of the counter-era fixture, after migrate and before any append.
const COUNTER_ERA_COUNTS: [(Target, i32); 7] = [
    (Target::Job { job_id: OLD_JOB_1 }, 3),
    (Target::Job { job_id: OLD_JOB_2 }, 0),
    (Target::Job { job_id: OLD_JOB_3 }, 0),
    (
        Target::Variant {
            job_id: OLD_JOB_1,
            job_variants_id: OLD_VARIANT_1_1,
        },
        2,
    ),
    (
        Target::Variant {
            job_id: OLD_JOB_1,
            job_variants_id: OLD_VARIANT_1_2,
        },
        0,
    ),
    (
        Target::Variant {
            job_id: OLD_JOB_1,
            job_variants_id: OLD_VARIANT_1_3,
        },
        0,
    ),
    (
        Target::Variant {
            job_id: OLD_JOB_2,
            job_variants_id: OLD_VARIANT_2_1,
        },
        5,
    ),
];

#[sqlx::test(migrations = false)]
async fn migrate_on_an_empty_database_creates_the_tables_columns_and_indexes(pool: PgPool) {
    migrated(&pool).await;

    for table in [
        "jobs",
        "jobs_variants",
        "retry_history",
        "retry_opening_balance",
    ] {
        assert!(table_exists(&pool, table).await, "table {table} is missing");
    }
    assert_retry_count_columns(&pool).await;
    assert_counter_indexes(&pool).await;
    for function in [
        "record_retry",
        "retry_counts_apply",
        "retry_counts_drift",
        "retry_counts_rebuild",
    ] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1)")
                .bind(function)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(exists, "function {function} is missing");
    }
    assert!(opening_balances(&pool).await.is_empty());

    // A row the pipeline inserts without naming retry_count starts at 0.
    load(&pool, PIPELINE).await;
    assert_eq!(retry_count(&pool, job(JOB_A)).await, 0);
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A1)).await, 0);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn migrate_on_counter_era_tables_keeps_their_rows_and_turns_null_counts_into_zero(
    pool: PgPool,
) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;

    assert_retry_count_columns(&pool).await;
    assert_counter_indexes(&pool).await;
    for (target, count) in COUNTER_ERA_COUNTS {
        assert_eq!(retry_count(&pool, target).await, count, "{target}");
    }
    // The pipeline's own columns, data and trigger are untouched.
    let (priority, payload): (i32, Option<serde_json::Value>) =
        sqlx::query_as("SELECT priority, payload FROM jobs WHERE job_id = $1")
            .bind(OLD_JOB_1)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(priority, 5);
    assert_eq!(payload, Some(serde_json::json!({"input": "a.mp4"})));
    let (worker, error): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT worker_id, error_message FROM jobs_variants WHERE job_variants_id = $1",
    )
    .bind(OLD_VARIANT_1_1)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(worker.as_deref(), Some("gpu-3"));
    assert_eq!(error.as_deref(), Some("CUDA out of memory"));
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger
          WHERE tgname IN ('jobs_changed', 'jobs_variants_changed')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 2, "the pipeline's triggers survive the migration");
}

#[sqlx::test(migrations = false)]
async fn migrate_captures_non_zero_counter_era_counts_as_opening_balances(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;

    assert_eq!(
        opening_balances(&pool).await,
        vec![
            (OLD_JOB_1, None, 3),
            (OLD_JOB_1, Some(OLD_VARIANT_1_1), 2),
            (OLD_JOB_2, Some(OLD_VARIANT_2_1), 5),
        ]
    );
    // Counts from before the log are not drift: they are the opening balances.
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn appends_after_the_counter_era_add_to_the_opening_balance(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    lift_retry_limit(&pool).await;

    let events = append_n(&pool, job(OLD_JOB_1), 2).await;
    assert_eq!(
        events.iter().map(|event| event.attempt).collect::<Vec<_>>(),
        [1, 2],
        "attempts number the log's events, not the opening balance"
    );
    append_ok(&pool, &retry(variant(OLD_JOB_1, OLD_VARIANT_1_1))).await;
    append_ok(&pool, &retry(variant(OLD_JOB_1, OLD_VARIANT_1_2))).await;

    assert_eq!(retry_count(&pool, job(OLD_JOB_1)).await, 3 + 2);
    assert_eq!(
        retry_count(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_1)).await,
        2 + 1
    );
    assert_eq!(
        retry_count(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_2)).await,
        1
    );
    assert_verify_clean(&pool).await;

    // The retry limit counts the opening balance: variant 2.1 already has 5 retries.
    let before = snapshot(&pool).await;
    let refused = append(
        &pool,
        &retry(variant(OLD_JOB_2, OLD_VARIANT_2_1)).with_max_retries(5),
    )
    .await
    .expect_err("the limit of 5 is already reached by the opening balance");
    assert!(
        matches!(refused, AppendError::LimitReached(_)),
        "{refused:?}"
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn replay_after_counts_are_wiped_restores_opening_balances_plus_events(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    append_n(&pool, job(OLD_JOB_1), 2).await;
    append_n(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_1), 1).await;
    append_n(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_3), 4).await;
    let expected = [
        (job(OLD_JOB_1), 3 + 2),
        (job(OLD_JOB_2), 0),
        (job(OLD_JOB_3), 0),
        (variant(OLD_JOB_1, OLD_VARIANT_1_1), 2 + 1),
        (variant(OLD_JOB_1, OLD_VARIANT_1_2), 0),
        (variant(OLD_JOB_1, OLD_VARIANT_1_3), 4),
        (variant(OLD_JOB_2, OLD_VARIANT_2_1), 5),
    ];

    sqlx::raw_sql("UPDATE jobs SET retry_count = 0; UPDATE jobs_variants SET retry_count = 0")
        .execute(&pool)
        .await
        .unwrap();
    assert!(!verify(&pool).await.is_clean(), "wiped counts are drift");

    let report = retrylog::replay::replay(&pool, false).await.unwrap();
    assert!(report.applied);
    assert_eq!(report.events, 7);
    assert_eq!(report.changes.len(), 4, "{:#?}", report.changes);
    for (target, count) in expected {
        assert_eq!(retry_count(&pool, target).await, count, "{target}");
    }
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn migrate_on_tables_without_retry_count_adds_the_column_and_the_indexes(pool: PgPool) {
    load(&pool, BEFORE_COUNTERS).await;
    migrated(&pool).await;

    assert_retry_count_columns(&pool).await;
    assert_counter_indexes(&pool).await;
    assert!(opening_balances(&pool).await.is_empty());
    let target = variant(OLD_JOB_1, OLD_VARIANT_1_1);
    assert_eq!(retry_count(&pool, target).await, 0);
    append_ok(&pool, &retry(target)).await;
    assert_eq!(retry_count(&pool, target).await, 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn running_migrate_twice_is_harmless(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_n(&pool, job(JOB_A), 1).await;
    let before = snapshot(&pool).await;
    let indexes = pipeline_indexes(&pool).await;

    migrated(&pool).await;

    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(pipeline_indexes(&pool).await, indexes);
    let event = append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    assert_eq!(
        event.attempt, 3,
        "the chain continues after a second migrate"
    );
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn running_migrate_twice_on_the_counter_era_captures_opening_balances_once(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    append_n(&pool, job(OLD_JOB_1), 1).await;
    let balances = opening_balances(&pool).await;

    migrated(&pool).await;

    assert_eq!(opening_balances(&pool).await, balances);
    assert_eq!(retry_count(&pool, job(OLD_JOB_1)).await, 3 + 1);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn migrate_from_several_clients_at_once_succeeds(pool: PgPool) {
    load(&pool, COUNTER_ERA).await;
    let clients = clients(&pool, 8).await;

    // Polled together from one task (the future of `migrate::run` is not `Send`, so it cannot
    // be spawned), but each run holds connections of its own: six concurrent clients.
    let runs = (0..6).map(|_| retrylog::migrate::run(&clients.pool));
    for result in futures::future::join_all(runs).await {
        result.expect("every concurrent migrate succeeds");
    }
    clients.close().await;

    assert_retry_count_columns(&pool).await;
    assert_counter_indexes(&pool).await;
    assert_eq!(opening_balances(&pool).await.len(), 3);
    assert_verify_clean(&pool).await;
}
