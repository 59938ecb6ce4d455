//! Light on the pipeline (invariant 10 in docs/architecture.md, migrations 0007, 0010 and
//! 0012): with `serve` running, a failure the pipeline commits still wakes the watchdog at once
//! (through a failure signal it polls: it holds no LISTEN that every notifying write would
//! wake), the pipeline's everyday writes never fail or wait because of retrylog, what no
//! failure reveals is found by the periodic sweep, a pipeline's own channel can wake the
//! watchdog too, and the targets created are counted from the rows with no trigger on the
//! pipeline's inserts. How fast those writes run is the benchmark's to say (`retrylog-bench
//! footprint`), not a test's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use retrylog::config::WatchdogSettings;
use retrylog::projector;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::fixtures::*;
use crate::recovery::{settings, Watchdog, LISTENING};
use crate::security::{assert_denied, TestRole};
use crate::serving::{fail_at, first_sweep_done, seconds_to_retry};

/// Starts `retrylog serve` on the test's database, named `instance`, sweeping every
/// `sweep_every`, and waits until its first sweep retried the fixture's failed variant A2.
async fn start_serve(pool: &PgPool, instance: &str, sweep_every: &str) -> tokio::process::Child {
    let serve = serve_command(pool, &["--sweep-every", sweep_every])
        .await
        .env("RETRYLOG_INSTANCE", instance)
        .spawn()
        .expect("retrylog serve starts");
    first_sweep_done(pool).await;
    serve
}

#[sqlx::test(migrations = false)]
async fn serve_retries_a_failure_within_a_second_of_its_commit(pool: PgPool) {
    pipeline(&pool).await;
    // The next periodic sweep is an hour away: only the failure's signal can do it.
    let serve = start_serve(&pool, "serve-footprint", "1h").await;

    let failed_at = fail_at(&pool, VARIANT_A3).await;
    let seconds = seconds_to_retry(&pool, VARIANT_A3, failed_at).await;
    assert!(
        (0.0..1.0).contains(&seconds),
        "retried {seconds:.3} s after the failure was written"
    );
    stop_serve(serve).await;
    assert_verify_clean(&pool).await;
}

/// Sessions of this database whose last statement was a LISTEN (an idle listener's is).
const LISTENERS: &str = "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND query ILIKE 'listen %'";

/// A failure committed by the pipeline's own role (its columns and nothing of retrylog's)
/// leaves a signal through the trigger, which the role can neither read nor forge nor take;
/// serve takes it and retries the variant within a second, and holds no LISTEN meanwhile:
/// PostgreSQL would wake a listener at the commit of every notifying write of the database.
#[sqlx::test(migrations = false)]
async fn a_pipeline_roles_failure_is_signalled_to_serve_which_never_listens(pool: PgPool) {
    pipeline(&pool).await;
    let worker = TestRole::create(&pool, &[retrylog::grant::Capability::Pipeline]).await;
    // The pipeline's role has no right on the signals.
    assert_denied(
        &worker.pool,
        &[
            "SELECT count(*) FROM retry_failure_signal",
            "INSERT INTO retry_failure_signal (job_id) VALUES ('0a000000-0000-4000-8000-000000000000')",
            "DELETE FROM retry_failure_signal",
        ],
    )
    .await;
    // The fixture inserted variant A2 failed: that left job A's signal. A failure rolled
    // back leaves none.
    let signals = "SELECT coalesce(array_agg(job_id ORDER BY id), '{}') FROM retry_failure_signal";
    let inserted: Vec<Uuid> = sqlx::query_scalar(signals).fetch_one(&pool).await.unwrap();
    assert_eq!(inserted, [JOB_A]);
    let mut tx = worker.pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs_variants SET status = 'failed' WHERE job_variants_id = $1")
        .bind(VARIANT_A3)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let after: Vec<Uuid> = sqlx::query_scalar(signals).fetch_one(&pool).await.unwrap();
    assert_eq!(after, inserted);
    let serve = start_serve(&pool, "serve-signalled", "1h").await;

    let failed_at = fail_at(&worker.pool, VARIANT_A3).await;
    let seconds = seconds_to_retry(&pool, VARIANT_A3, failed_at).await;
    assert!(
        (0.0..1.0).contains(&seconds),
        "retried {seconds:.3} s after the failure was written"
    );
    let listeners: i64 = sqlx::query_scalar(LISTENERS)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(listeners, 0, "serve holds no LISTEN");
    let left: Vec<Uuid> = sqlx::query_scalar(signals).fetch_one(&pool).await.unwrap();
    assert_eq!(left, Vec::<Uuid>::new(), "serve took the signal");
    stop_serve(serve).await;
    assert_verify_clean(&pool).await;
}

/// The pipeline writers waiting on a lock that is not the pipeline's own doing, with the
/// application names of the sessions blocking them: the NOTIFY queue's commit lock
/// (`object`, which the change trigger of 0005 made every write queue for), or a lock held by
/// anyone but another writer (the watchdog, the projector). Relation extension (`extend`)
/// between the writers' own inserts is the pipeline's contention, the same without retrylog.
const WAITING_ON_RETRYLOG: &str = "
    SELECT a.wait_event,
           coalesce((SELECT array_agg(b.application_name ORDER BY b.pid)
                       FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))),
                    '{}')
      FROM pg_stat_activity a
     WHERE a.application_name = 'pipeline-writer' AND a.wait_event_type = 'Lock'
       AND (a.wait_event NOT IN ('extend')
            OR EXISTS (SELECT 1 FROM pg_stat_activity b
                        WHERE b.pid = ANY(pg_blocking_pids(a.pid))
                          AND b.application_name <> 'pipeline-writer'))";

/// Rows of one pipeline writer: its own job and four variants, so writers never wait for
/// each other, only (if at all) for retrylog.
const WRITER_JOBS: usize = 6;

#[sqlx::test(migrations = false)]
async fn pipeline_writers_never_fail_or_wait_on_a_lock_while_serve_runs(pool: PgPool) {
    pipeline(&pool).await;
    let mut writer_rows = Vec::new();
    for _ in 0..WRITER_JOBS {
        let job = Uuid::new_v4();
        let variants: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'generate')",
        )
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
             SELECT id, $1, 'done', 'generate' FROM unnest($2::uuid[]) id",
        )
        .bind(job)
        .bind(&variants)
        .execute(&pool)
        .await
        .unwrap();
        writer_rows.push(variants);
    }
    // Sweeping every second, so sweeps run while the pipeline writes.
    let serve = start_serve(&pool, "serve-footprint", "1s").await;

    let writers_pool = PgPoolOptions::new()
        .max_connections(WRITER_JOBS as u32)
        .connect_with(
            (*pool.connect_options())
                .clone()
                .application_name("pipeline-writer"),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<Uuid> = writer_rows.iter().flatten().copied().collect();
    let writers: Vec<_> = writer_rows
        .into_iter()
        .map(|variants| {
            tokio::spawn(write_like_a_pipeline(
                writers_pool.clone(),
                variants,
                stop.clone(),
            ))
        })
        .collect();
    // Sample what the writers wait on while they write and serve sweeps; meanwhile the
    // pipeline fails a variant, and serve must still retry it.
    let mut lock_waits = Vec::new();
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(4);
    let failed_at = fail_at(&pool, VARIANT_A3).await;
    while Instant::now() < until {
        let waiting: Vec<(String, Vec<String>)> = sqlx::query_as(WAITING_ON_RETRYLOG)
            .fetch_all(&pool)
            .await
            .unwrap();
        samples += 1;
        lock_waits.extend(waiting);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.expect("a writer does not panic");
    }
    writers_pool.close().await;
    let seconds = seconds_to_retry(&pool, VARIANT_A3, failed_at).await;
    stop_serve(serve).await;

    assert!(samples > 50, "sampled the writers {samples} times");
    assert!(writes > 100, "the writers wrote ({writes} statements)");
    assert!(
        lock_waits.is_empty(),
        "writers waited on a lock for retrylog in {} of {samples} samples, e.g. {:?}",
        lock_waits.len(),
        &lock_waits[..lock_waits.len().min(5)]
    );
    assert!(
        seconds < 1.0,
        "a failure among the writes was retried in {seconds:.3} s"
    );
    // The writers bumped their counters the counter-only way, without events; put them back
    // so verify checks the watchdog's retries.
    sqlx::query("UPDATE jobs_variants SET retry_count = 0 WHERE job_variants_id = ANY($1)")
        .bind(&written)
        .execute(&pool)
        .await
        .unwrap();
    assert_verify_clean(&pool).await;
}

/// One pipeline worker on its own job: heartbeats, status and step changes, the counter bump,
/// and a new job with four variants, over and over until `stop`. Every statement must succeed;
/// returns how many ran.
async fn write_like_a_pipeline(pool: PgPool, variants: Vec<Uuid>, stop: Arc<AtomicBool>) -> usize {
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        for variant in &variants {
            for statement in [
                "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1",
                "UPDATE jobs_variants SET status = 'running', updated_at = now()
                  WHERE job_variants_id = $1",
                "UPDATE jobs_variants SET status = 'done', current_step = 'segment',
                        updated_at = now() WHERE job_variants_id = $1",
                "UPDATE jobs_variants SET current_step = 'generate', updated_at = now()
                  WHERE job_variants_id = $1",
                "UPDATE jobs_variants SET retry_count = retry_count + 1, updated_at = now()
                  WHERE job_variants_id = $1",
            ] {
                sqlx::query(statement)
                    .bind(variant)
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|error| panic!("a pipeline write failed: {error}"));
                writes += 1;
            }
        }
        let job = Uuid::new_v4();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'prepare')",
        )
        .bind(job)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step)
             SELECT gen_random_uuid(), $1, 'running', 'prepare' FROM generate_series(1, 4)",
        )
        .bind(job)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        writes += 1;
    }
    writes
}

/// A variant done at `generate` while its job runs at `segment`, idle ten minutes: lagging.
/// Written with nothing failing, so no notification tells anyone about it.
async fn make_lagging(pool: &PgPool) -> Uuid {
    let lagging = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step,
                                    updated_at)
         VALUES ($1, $2, 9, 'done', 'generate', now() - interval '10 minutes')",
    )
    .bind(lagging)
    .bind(JOB_A)
    .execute(pool)
    .await
    .unwrap();
    lagging
}

/// Starts a watchdog named `name` over the pipeline fixture and waits until its first sweep
/// retried the failed variant A2.
async fn start_watchdog(pool: &PgPool, name: &str, settings: WatchdogSettings) -> Watchdog {
    pipeline(pool).await;
    let watchdog = Watchdog::start(pool, name, settings).await;
    first_sweep_done(pool).await;
    watchdog
}

#[sqlx::test(migrations = false)]
async fn a_touch_scenario_no_failure_reveals_is_found_by_the_periodic_sweep(pool: PgPool) {
    let watchdog = start_watchdog(
        &pool,
        "watchdog-sweeping",
        WatchdogSettings {
            sweep_every: Duration::from_secs(1),
            ..settings("watchdog-sweeping")
        },
    )
    .await;
    let lagging = make_lagging(&pool).await;

    retried_then_stopped(&pool, lagging, "the next sweep retried it", watchdog).await;
}

#[sqlx::test(migrations = false)]
async fn a_watchdog_given_the_pipelines_channel_sweeps_the_job_its_notification_names(
    pool: PgPool,
) {
    // Hourly sweeps: only a notification on the pipeline's own channel gets it retried.
    let watchdog = start_watchdog(
        &pool,
        "watchdog-on-pipeline-channel",
        WatchdogSettings {
            pipeline_channel: Some("pipeline_changes".into()),
            ..settings("watchdog-on-pipeline-channel")
        },
    )
    .await;
    let deadline = Duration::from_secs(10);
    wait_until(&pool, LISTENING, deadline, "the watchdog listens").await;
    let lagging = make_lagging(&pool).await;

    // The pipeline's own trigger would send this when it touches a row of job A.
    sqlx::query(
        "SELECT pg_notify('pipeline_changes', json_build_object('job_id', $1::uuid)::text)",
    )
    .bind(JOB_A)
    .execute(&pool)
    .await
    .unwrap();

    wait_until(
        &pool,
        &has_events(lagging, 1),
        deadline,
        "the notified job was swept",
    )
    .await;
    // A payload without a job id sweeps everything: a second lagging variant is found too.
    let another = make_lagging(&pool).await;
    sqlx::query("SELECT pg_notify('pipeline_changes', 'something changed')")
        .execute(&pool)
        .await
        .unwrap();
    retried_then_stopped(&pool, another, "everything was swept", watchdog).await;
}

/// Waits until `variant` has its retry (`what` names the reason it should), stops the
/// watchdog, and checks the log.
async fn retried_then_stopped(pool: &PgPool, variant: Uuid, what: &str, watchdog: Watchdog) {
    wait_until(pool, &has_events(variant, 1), Duration::from_secs(10), what).await;
    watchdog.stop().await;
    assert_verify_clean(pool).await;
}

/// The triggers retrylog keeps on the pipeline's tables: the four of migration 0007, which
/// fire only for a row going into `failed`. Nothing runs on an everyday insert.
#[sqlx::test(migrations = false)]
async fn the_pipelines_tables_carry_only_the_failure_triggers(pool: PgPool) {
    migrated(&pool).await;
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger
          WHERE tgrelid IN ('jobs'::regclass, 'jobs_variants'::regclass) AND NOT tgisinternal
          ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected = [
        ("jobs", "jobs_inserted_failed"),
        ("jobs", "jobs_notify_failure"),
        ("jobs_variants", "jobs_variants_inserted_failed"),
        ("jobs_variants", "jobs_variants_notify_failure"),
    ]
    .map(|(table, name)| (table.to_string(), name.to_string()));
    assert_eq!(triggers, expected);
    // What retrylog adds to their indexes: one BRIN index each, on created_at (migration 0015
    // adds none to them: see its header).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, am.amname FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
          WHERE indrelid IN ('jobs'::regclass, 'jobs_variants'::regclass)
            AND indexrelid::regclass::text LIKE 'retrylog%'
          ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            ("retrylog_jobs_created_at", "brin"),
            ("retrylog_jobs_variants_created_at", "brin"),
        ]
        .map(|(index, method)| (index.to_string(), method.to_string()))
    );
}

/// `retry_rollup_created` as it stands: (hour, kind) → created.
async fn created_counts(pool: &PgPool) -> BTreeMap<(DateTime<Utc>, String), i64> {
    sqlx::query_as("SELECT hour, kind, created FROM retry_rollup_created")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(hour, kind, created)| ((hour, kind), created))
        .collect()
}

/// A job of `variants` variants created at `created_at`, as the pipeline (or a backfill)
/// inserts it.
async fn insert_job(pool: &PgPool, created_at: DateTime<Utc>, variants: i32) -> Uuid {
    let job = Uuid::new_v4();
    sqlx::query(
        "WITH j AS (INSERT INTO jobs (job_id, status, current_step, created_at)
                    VALUES ($1, 'running', 'prepare', $2))
         INSERT INTO jobs_variants (job_variants_id, job_id, status, current_step, created_at)
         SELECT gen_random_uuid(), $1, 'running', 'prepare', $2 FROM generate_series(1, $3)",
    )
    .bind(job)
    .bind(created_at)
    .bind(variants)
    .execute(pool)
    .await
    .unwrap();
    job
}

fn hour(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::hours(1)).unwrap()
}

#[sqlx::test(migrations = false)]
async fn targets_created_are_recounted_from_the_rows_and_a_late_backfill_is_named_by_verify(
    pool: PgPool,
) {
    migrated(&pool).await;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let old = now - chrono::Duration::days(3);
    let key = |at: DateTime<Utc>, kind: &str| (hour(at), kind.to_string());
    // 1. Rows from before the first recount are all counted, whatever their created_at.
    let old_job = insert_job(&pool, old, 2).await;
    insert_job(&pool, now, 4).await;
    let mut conn = pool.acquire().await.unwrap().detach();
    projector::catch_up(&mut conn, 100).await.unwrap();
    let mut expected = BTreeMap::from([
        (key(old, "job"), 1),
        (key(old, "variant"), 2),
        (key(now, "job"), 1),
        (key(now, "variant"), 4),
    ]);
    assert_eq!(created_counts(&pool).await, expected);

    // 2. New rows in the hours not settled: serve's recount waits for its interval, then
    //    counts them.
    insert_job(&pool, now, 1).await;
    let minute = std::time::Duration::from_secs(60);
    assert!(!projector::count_created(&mut conn, minute).await.unwrap());
    assert_eq!(created_counts(&pool).await, expected);
    assert!(
        projector::count_created(&mut conn, std::time::Duration::ZERO)
            .await
            .unwrap()
    );
    *expected.get_mut(&key(now, "job")).unwrap() = 2;
    *expected.get_mut(&key(now, "variant")).unwrap() = 5;
    assert_eq!(created_counts(&pool).await, expected);

    // 3. The pipeline purges the old job: its settled hour still says it was created there,
    //    and verify has nothing to say about it.
    sqlx::query("DELETE FROM jobs WHERE job_id = $1")
        .bind(old_job)
        .execute(&pool)
        .await
        .unwrap();
    projector::catch_up(&mut conn, 100).await.unwrap();
    assert_eq!(created_counts(&pool).await, expected);
    assert_verify_clean(&pool).await;

    // 4. A backfill two days back after those hours settled: not counted by the recount,
    //    named by verify with its hour, counted by replay (which recounts every row that
    //    exists, so the purged job is gone from its hour).
    let backfilled = now - chrono::Duration::days(2);
    insert_job(&pool, backfilled, 3).await;
    projector::catch_up(&mut conn, 100).await.unwrap();
    assert_eq!(created_counts(&pool).await, expected);
    let run = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let stamp = hour(backfilled).format("%Y-%m-%d %H:00Z");
    for (kind, rows) in [("job", 1), ("variant", 3)] {
        let line = format!(
            "retry_rollup {stamp} {kind} reason=- step=- scenario=-: targets created not \
             counted (stored 0, the pipeline's rows say {rows})"
        );
        assert!(run.stdout.contains(&line), "{line}\n{run:#?}");
    }
    let run = retrylog(&pool, &["replay"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    expected.remove(&key(old, "job"));
    expected.remove(&key(old, "variant"));
    expected.insert(key(backfilled, "job"), 1);
    expected.insert(key(backfilled, "variant"), 3);
    assert_eq!(created_counts(&pool).await, expected);
    assert_verify_clean(&pool).await;
}
