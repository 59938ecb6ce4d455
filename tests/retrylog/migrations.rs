//! `migrate` on an empty database, on the pipeline's tables from before retrylog, and again.

use std::collections::BTreeMap;

use retrylog::event::Target;
use retrylog::store::AppendError;
use sqlx::PgPool;
use uuid::Uuid;

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
        matches!(refused, AppendError::LimitReached { .. }),
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

/// What the release before record_retry moved to `sql/` (07bfa3e) recorded in
/// `_sqlx_migrations` for the two migrations that carried its body: the SHA-384 of those
/// files as they were then. Pinned here, apart from `migrate::LEGACY_CHECKSUMS`, so that a
/// wrong value there fails a test.
const PREVIOUS_RELEASE_CHECKSUMS: [(i64, &str); 2] = [
    (
        3,
        "d39489615082299a43e7cad43561bdb496567214e399a7fed1247f85c2a8345621e9d69e4e9bacc001e0213cae98a185",
    ),
    (
        5,
        "fdabf24bc5c9836acafcdb5a7eb8eafda613f5ea92316f44e5c29d49753d2813e587eac6f8053605699c35f85676070c",
    ),
];

/// Records `checksum` (hex) for an applied migration, as the release that applied it did.
async fn record_checksum(pool: &PgPool, version: i64, checksum: &str) {
    let updated =
        sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($2, 'hex') WHERE version = $1")
            .bind(version)
            .bind(checksum)
            .execute(pool)
            .await
            .expect("recording a checksum")
            .rows_affected();
    assert_eq!(updated, 1, "version {version} is applied");
}

/// The checksums `_sqlx_migrations` holds, by version.
async fn recorded_checksums(pool: &PgPool) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .expect("reading _sqlx_migrations")
}

/// The checksums of the migrations this binary embeds, by version.
fn embedded_checksums() -> Vec<(i64, Vec<u8>)> {
    retrylog::migrate::MIGRATOR
        .iter()
        .map(|migration| (migration.version, migration.checksum.to_vec()))
        .collect()
}

/// Replaces record_retry, keeping its signature, with a body that only refuses, and the
/// hash link with a wrong one: stand-ins for the functions an earlier release left, which
/// `migrate` must replace (a copy of the old text would only be one more duplicate).
async fn leave_stand_ins_for_old_function_bodies(pool: &PgPool) {
    load(
        pool,
        "DO $do$ BEGIN
             EXECUTE format($f$
                 CREATE OR REPLACE FUNCTION record_retry(%s) RETURNS retry_history
                 LANGUAGE plpgsql AS $b$ BEGIN
                     RAISE EXCEPTION 'the record_retry of an earlier release';
                 END $b$$f$, pg_get_function_arguments('record_retry'::regproc));
         END $do$;
         CREATE OR REPLACE FUNCTION retry_event_hash(previous bytea, canonical text)
         RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT previous $$;",
    )
    .await;
}

/// record_retry's owner and access privileges, as `pg_proc` has them.
async fn record_retry_owner_and_grants(pool: &PgPool) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT proowner::regrole::text, proacl::text FROM pg_proc WHERE proname = 'record_retry'",
    )
    .fetch_one(pool)
    .await
    .expect("record_retry exists once")
}

#[sqlx::test(migrations = false)]
async fn a_database_the_previous_release_migrated_migrates_onward_with_its_data_intact(
    pool: PgPool,
) {
    // 1. The state the previous release leaves: its schema and checksums, old function
    //    bodies, a grant changed by an operator, and data — counter-era balances and events.
    load(&pool, COUNTER_ERA).await;
    migrated(&pool).await;
    // Counter-era balances are above the default limit; step 4 sets one of its own.
    set_retry_limit(&pool, None).await;
    append_n(&pool, job(OLD_JOB_1), 2).await;
    append_n(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_1), 1).await;
    let mut conn = pool.acquire().await.unwrap();
    record_via_sql(&mut conn, variant(OLD_JOB_1, OLD_VARIANT_1_3), "failed")
        .await
        .expect("the SQL door appends");
    drop(conn);
    for (version, checksum) in PREVIOUS_RELEASE_CHECKSUMS {
        record_checksum(&pool, version, checksum).await;
    }
    leave_stand_ins_for_old_function_bodies(&pool).await;
    load(&pool, "REVOKE ALL ON FUNCTION record_retry FROM PUBLIC").await;
    let owner_and_grants = record_retry_owner_and_grants(&pool).await;
    let before = snapshot(&pool).await;

    // 2. This release's migrate.
    retrylog::migrate::run(&pool)
        .await
        .expect("a database of the previous release migrates onward");

    // 3. Nothing recorded changed, the checksums are this release's, the grants survived.
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(retry_count(&pool, job(OLD_JOB_1)).await, 3 + 2);
    assert_eq!(
        retry_count(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_1)).await,
        2 + 1
    );
    assert_eq!(
        retry_count(&pool, variant(OLD_JOB_1, OLD_VARIANT_1_3)).await,
        1
    );
    assert_verify_clean(&pool).await;
    assert_eq!(recorded_checksums(&pool).await, embedded_checksums());
    assert_eq!(record_retry_owner_and_grants(&pool).await, owner_and_grants);

    // 4. record_retry is this release's: the next attempt follows the stream, the hash
    //    links (verify), and the shared limit refuses with RL004, opening balance included.
    let event = append_ok(&pool, &retry(job(OLD_JOB_1))).await;
    assert_eq!(event.attempt, 3);
    assert_eq!(retry_count(&pool, job(OLD_JOB_1)).await, 3 + 3);
    assert_verify_clean(&pool).await;
    set_retry_limit(&pool, Some(5)).await;
    let before = snapshot(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let error = record_via_sql(&mut conn, variant(OLD_JOB_2, OLD_VARIANT_2_1), "stuck")
        .await
        .expect_err("the shared limit of 5 is reached by the opening balance");
    drop(conn);
    let (code, message) = database_error(&error);
    assert_eq!(code, "RL004", "{message}");
    assert_eq!(snapshot(&pool).await, before);

    // 5. And migrate again finds nothing to repair.
    retrylog::migrate::run(&pool).await.expect("migrate again");
    assert_eq!(recorded_checksums(&pool).await, embedded_checksums());
}

/// The state an earlier release left: the migrations up to `version` applied (as sqlx
/// applies them, recorded in `_sqlx_migrations`), no live function installed.
async fn apply_migrations_through(pool: &PgPool, version: i64) {
    use sqlx::migrate::Migrate;

    let mut conn = pool.acquire().await.unwrap();
    conn.ensure_migrations_table().await.unwrap();
    for migration in retrylog::migrate::MIGRATOR.iter() {
        if migration.version <= version {
            conn.apply(migration).await.unwrap();
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_database_migrated_before_version_5_ends_with_one_record_retry_that_takes_force(
    pool: PgPool,
) {
    // 1. Versions 1 to 4 applied, with version 3's checksum of the time and the
    //    record_retry it created: the signature without `force`.
    apply_migrations_through(&pool, 4).await;
    record_checksum(&pool, 3, PREVIOUS_RELEASE_CHECKSUMS[0].1).await;
    load(
        &pool,
        "CREATE FUNCTION record_retry(
             job_id uuid, reason text, job_variants_id uuid DEFAULT NULL,
             step text DEFAULT NULL, actor text DEFAULT NULL, detail jsonb DEFAULT NULL,
             event_id uuid DEFAULT NULL, occurred_at timestamptz DEFAULT NULL,
             from_status text DEFAULT NULL, to_status text DEFAULT NULL,
             expected_attempt integer DEFAULT NULL, max_retries integer DEFAULT NULL
         ) RETURNS retry_history LANGUAGE plpgsql AS $$ BEGIN
             RAISE EXCEPTION 'the record_retry of a release before version 5';
         END $$",
    )
    .await;

    // 2. This release's migrate applies version 5, which drops that signature.
    migrated(&pool).await;

    let signatures: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc
          WHERE proname = 'record_retry'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(signatures.len(), 1, "{signatures:#?}");
    assert!(signatures[0].ends_with("force boolean"), "{signatures:#?}");
    assert_eq!(recorded_checksums(&pool).await, embedded_checksums());
    // A call that leaves `force` out is not ambiguous.
    load(&pool, PIPELINE).await;
    let mut conn = pool.acquire().await.unwrap();
    let attempt = record_via_sql(&mut conn, variant(JOB_A, VARIANT_A1), "stuck")
        .await
        .expect("the SQL door appends");
    assert_eq!(attempt, 1);
    drop(conn);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_migration_changed_in_any_other_way_is_still_refused(pool: PgPool) {
    migrated(&pool).await;
    // Neither the checksum of this release nor one an earlier release recorded.
    record_checksum(&pool, 3, &"ab".repeat(48)).await;

    let error = retrylog::migrate::run(&pool)
        .await
        .expect_err("an unknown checksum fails sqlx's check");

    assert!(
        matches!(
            &error,
            sqlx::Error::Migrate(inner)
                if matches!(**inner, sqlx::migrate::MigrateError::VersionMismatch(3))
        ),
        "{error:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_database_that_counted_creations_by_trigger_keeps_its_counts_and_loses_the_triggers(
    pool: PgPool,
) {
    // 1. Versions 1 to 9: 0004's triggers log every insert into retry_target_created. Rows
    //    three days old and from now, none folded yet by a projector.
    apply_migrations_through(&pool, 9).await;
    load(
        &pool,
        "INSERT INTO jobs (job_id, status, created_at)
         VALUES ('0c000000-0000-4000-8000-000000000000', 'done', now() - interval '3 days'),
                ('0d000000-0000-4000-8000-000000000000', 'running', now());",
    )
    .await;
    let logged: i64 = sqlx::query_scalar("SELECT sum(created)::bigint FROM retry_target_created")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 2, "0004's trigger logged the inserts");

    // 2. This release's migrate folds them, drops the triggers and the log of creations.
    migrated(&pool).await;
    assert!(!table_exists(&pool, "retry_target_created").await);
    let triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%count_created'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(triggers, 0);
    let counted = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT CASE WHEN hour < now() - interval '1 day' THEN 'old' ELSE 'now' END,
                    created
               FROM retry_rollup_created WHERE kind = 'job' ORDER BY hour",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let both = vec![("old".to_string(), 1), ("now".to_string(), 1)];
    assert_eq!(counted(pool.clone()).await, both);

    // 3. The old hour is settled as the trigger counted it: a purge leaves it, the recount
    //    of the hours since the previous one does not touch it, and verify is clean.
    load(
        &pool,
        "DELETE FROM jobs WHERE job_id = '0c000000-0000-4000-8000-000000000000'",
    )
    .await;
    let mut conn = pool.acquire().await.unwrap().detach();
    retrylog::projector::catch_up(&mut conn, 100).await.unwrap();
    assert_eq!(counted(pool.clone()).await, both);
    assert_verify_clean(&pool).await;
}

/// A log as the release before partitioning (migration 0015) leaves it: three events in each
/// stream of the pipeline fixture, chained (format v2), counted, their outcomes decided and
/// the last one open, written here as that release's record_retry wrote them.
const UNPARTITIONED_EVENTS: &str = "
DO $$
DECLARE
    t        record;
    previous bytea;
    stored   bigint;
    before   bigint;
    at       timestamptz;
    id       uuid;
BEGIN
    FOR t IN SELECT job_id, NULL::uuid AS variant FROM jobs
             UNION ALL SELECT job_id, job_variants_id FROM jobs_variants LOOP
        previous := decode(repeat('00', 32), 'hex');
        before := NULL;
        FOR attempt IN 1..3 LOOP
            at := date_trunc('second', now()) - make_interval(mins => 10 - attempt);
            id := gen_random_uuid();
            INSERT INTO retry_history (event_id, job_id, job_variants_id, reason, attempt,
                                       actor, occurred_at, db_role, hash)
            VALUES (id, t.job_id, t.variant, 'stuck', attempt, 'old-release', at,
                    session_user,
                    retry_event_hash(previous, retry_event_canonical_v2(
                        id, t.job_id, t.variant, 'stuck', NULL, NULL, NULL, attempt,
                        'old-release', '{}', at, session_user)))
            RETURNING seq, hash INTO stored, previous;
            IF before IS NOT NULL THEN
                INSERT INTO retry_outcome (seq, outcome, resolved_at, observed_by, evidence)
                VALUES (before, 'retried_again', at, 'old-release',
                        jsonb_build_object('next_seq', stored, 'attempt', attempt));
            END IF;
            before := stored;
        END LOOP;
        INSERT INTO retry_open (job_id, stream, job_variants_id, seq, step, occurred_at)
        VALUES (t.job_id, coalesce(t.variant, '00000000-0000-0000-0000-000000000000'),
                t.variant, stored, NULL, at);
        IF t.variant IS NULL THEN
            UPDATE jobs SET retry_count = retry_count + 3 WHERE job_id = t.job_id;
        ELSE
            UPDATE jobs_variants SET retry_count = retry_count + 3
             WHERE job_variants_id = t.variant;
        END IF;
    END LOOP;
END
$$;";

#[sqlx::test(migrations = false)]
async fn an_unpartitioned_log_migrates_onward_into_partitions_and_verifies_clean(pool: PgPool) {
    // 1. The release before partitioning: migrations through 0015, its events.
    apply_migrations_through(&pool, 15).await;
    load(&pool, include_str!("../../sql/retry_event_hash.sql")).await;
    load(&pool, PIPELINE).await;
    load(&pool, UNPARTITIONED_EVENTS).await;
    let events = event_count(&pool).await;
    assert!(events >= 9, "{events}");
    let before: Vec<(i64, uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT seq, event_id, hash FROM retry_history ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let old_event = before[0].1;

    // 2. This release's migrate carries every event into a partition, with a head row per
    //    stream and an event id per event.
    migrated(&pool).await;
    let partitioned: bool = sqlx::query_scalar(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = 'retry_history'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(partitioned);
    let after: Vec<(i64, uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT seq, event_id, hash FROM retry_history ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(after, before);
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history_default")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        in_default, 0,
        "every carried event has its month's partition"
    );
    let (heads, ids): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM retry_stream_head), (SELECT count(*) FROM retry_event_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((heads * 3, ids), (events, events));
    assert_verify_clean(&pool).await;

    // 3. Appends continue the streams; an old event id is still the old event's.
    lift_retry_limit(&pool).await;
    let next = append_ok(&pool, &retry(job(JOB_A))).await;
    assert_eq!(next.attempt, 4);
    assert_eq!(next.seq, before.last().unwrap().0 + 1);
    let old_target: (uuid::Uuid, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT job_id, job_variants_id FROM retry_history WHERE event_id = $1")
            .bind(old_event)
            .fetch_one(&pool)
            .await
            .unwrap();
    let target = Target::from_columns(old_target.0, old_target.1);
    let again = append_ok(&pool, &retry(target).with_event_id(old_event)).await;
    assert_eq!(again.seq, before[0].0, "the stored event, not a new one");
    let other = if target == job(JOB_A) {
        job(JOB_B)
    } else {
        job(JOB_A)
    };
    let refused = append(&pool, &retry(other).with_event_id(old_event))
        .await
        .expect_err("an old event id is refused for another target");
    assert!(
        matches!(refused, AppendError::EventIdReused(_)),
        "{refused}"
    );
    assert_verify_clean(&pool).await;
}

/// Migration 0024 on a log the release before it wrote: each head row gets its last
/// retry's `detail.scenario` from the log, and verify's head-row check is clean.
#[sqlx::test(migrations = false)]
async fn the_head_rows_scenario_is_filled_from_the_log_by_its_migration(pool: PgPool) {
    crate::targets::targets_log(&pool).await;
    // Before 0024: no such column, no record of the migration.
    load(
        &pool,
        "ALTER TABLE retry_stream_head DROP COLUMN last_scenario;
         DELETE FROM _sqlx_migrations WHERE version = 24;",
    )
    .await;
    retrylog::migrate::run(&pool)
        .await
        .expect("0024 applies to the log");
    let scenarios: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT stream, last_scenario FROM retry_stream_head WHERE stream <> $1 ORDER BY stream",
    )
    .bind(Uuid::nil())
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected = vec![
        (VARIANT_A1, Some("lagging".to_string())),
        (VARIANT_A2, Some("failed".to_string())),
        (VARIANT_B1, None),
    ];
    expected.sort();
    assert_eq!(scenarios, expected);
    assert_verify_clean(&pool).await;
}

/// Migration 0025 on a log whose trigram index (migration 0020) held every retry: the index
/// is built again holding only the retries with text, and the search finds the same rows.
#[sqlx::test(migrations = false)]
async fn the_text_index_is_rebuilt_partial_by_its_migration(pool: PgPool) {
    crate::targets::targets_log(&pool).await;
    let predicate = async || -> Option<String> {
        sqlx::query_scalar(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index
              WHERE indexrelid = 'retry_history_detail_text'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // Before 0025: the index as 0020 made it, on every retry.
    load(
        &pool,
        "DROP INDEX retry_history_detail_text;
         CREATE INDEX retry_history_detail_text ON retry_history USING gin (
             (substr(coalesce(' ' || (detail->>'error'), '')
                     || coalesce(' ' || (detail->>'message'), '')
                     || coalesce(' ' || (detail->>'note'), ''), 2)) gin_trgm_ops);
         DELETE FROM _sqlx_migrations WHERE version = 25;",
    )
    .await;
    assert_eq!(predicate().await, None);
    retrylog::migrate::run(&pool)
        .await
        .expect("0025 applies to the log");
    let after = predicate().await.expect("a partial index");
    assert!(after.contains("?|") && after.contains("note"), "{after}");
    // Every partition has it.
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_partition_tree('retry_history') WHERE isleaf")
            .fetch_one(&pool)
            .await
            .unwrap();
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_partition_tree('retry_history_detail_text') WHERE isleaf",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, partitions);
    let found = retrylog(&pool, &["targets", "--q", "rerun", "--format", "json"]).await;
    assert_eq!(
        found.json()["rows"][0]["id"],
        serde_json::json!(JOB_B.to_string()),
        "{found:#?}"
    );
    assert_verify_clean(&pool).await;
}
