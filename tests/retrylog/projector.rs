//! The asynchronous projector: no gaps when transactions commit out of order, exactly-once
//! effect across a killed projector, one runner at a time, and rebuilding the rollup.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc, Weekday};

use retrylog::event::RetryReason;
use retrylog::projector::{self, ProjectorSettings};
use retrylog::replay::{self, Mismatch};
use retrylog::store;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::fixtures::*;

/// Total retries the rollup holds.
async fn rollup_retries(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(retries), 0)::bigint FROM retry_rollup")
        .fetch_one(pool)
        .await
        .expect("summing the rollup")
}

/// The sum of a first_* column over the rollup rows in the hour, day or week (`unit`) of `at`.
async fn flags_in(pool: &PgPool, column: &str, unit: &str, at: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(sum({column}), 0)::bigint FROM retry_rollup
          WHERE date_trunc('{unit}', hour, 'UTC') = date_trunc('{unit}', $1::timestamptz, 'UTC')"
    ))
    .bind(at)
    .fetch_one(pool)
    .await
    .expect("summing first_* flags")
}

/// A connection of its own to the test's database, outside the pool.
async fn own_connection(pool: &PgPool) -> PgConnection {
    PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a separate connection opens")
}

/// The rollup holds exactly the log below the checkpoint, and the checkpoint is past
/// every event.
async fn assert_rollup_exact(pool: &PgPool) {
    let events = event_count(pool).await;
    assert_eq!(rollup_retries(pool).await, events, "rollup total vs log");
    let mut conn = pool.acquire().await.unwrap();
    let lag = projector::lag(&mut conn).await.unwrap();
    assert_eq!(lag.events_behind, 0, "nothing left behind the checkpoint");
    assert_verify_clean(pool).await;
}

#[sqlx::test(migrations = false)]
async fn an_event_committed_after_a_later_one_is_applied_once_not_skipped(pool: PgPool) {
    pipeline(&pool).await;
    let mut projector_conn = own_connection(&pool).await;

    // 1. Transaction A appends first (lower seq, lower txid) and stays open.
    let mut a = pool.begin().await.unwrap();
    store::append(&mut a, &retry(variant(JOB_A, VARIANT_A1)))
        .await
        .unwrap();
    // 2. Transaction B appends after it and commits.
    append_ok(&pool, &retry(variant(JOB_B, VARIANT_B1))).await;
    // 3. The projector runs: A is in flight, so the horizon stops below it. B's event has a
    //    higher txid than A, so it waits too — nothing is applied out of order.
    let applied = projector::catch_up(&mut projector_conn, 1000)
        .await
        .unwrap();
    assert_eq!(
        applied, 0,
        "nothing may pass the oldest running transaction"
    );
    // 4. A commits; the projector runs again and applies both, once each.
    a.commit().await.unwrap();
    let applied = projector::catch_up(&mut projector_conn, 1000)
        .await
        .unwrap();
    assert_eq!(applied, 2);
    assert_eq!(
        projector::catch_up(&mut projector_conn, 1000)
            .await
            .unwrap(),
        0
    );
    assert_rollup_exact(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_projector_killed_between_batches_resumes_from_its_checkpoint(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    for target in [
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        job(JOB_B),
    ] {
        append_n(&pool, target, 4).await;
    }

    // Two small batches (one event per transaction here), then the connection is killed.
    let mut doomed = own_connection(&pool).await;
    let first = projector::run_batch(&mut doomed, 1).await.unwrap();
    let second = projector::run_batch(&mut doomed, 1).await.unwrap();
    assert_eq!((first.events, second.events), (1, 1));
    assert_eq!(
        second.from, first.to,
        "batches continue from the checkpoint"
    );

    // A third batch is applied but not committed when its connection is terminated.
    let mut tx = doomed.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT retry_rollup_apply('1', pg_snapshot_xmin(pg_current_snapshot()))")
        .execute(&mut *tx)
        .await
        .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    assert!(
        tx.commit().await.is_err(),
        "the killed session cannot commit"
    );
    assert_eq!(
        rollup_retries(&pool).await,
        2,
        "only the committed batches count"
    );

    // A new projector resumes where the checkpoint says and counts everything once.
    let mut successor = own_connection(&pool).await;
    let applied = projector::catch_up(&mut successor, 1).await.unwrap();
    assert_eq!(applied, 10);
    assert_rollup_exact(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn one_instance_leads_the_others_stand_by_and_take_over_when_it_dies(pool: PgPool) {
    migrated(&pool).await;
    let mut leader = own_connection(&pool).await;
    let mut standby = own_connection(&pool).await;
    assert!(projector::try_lead(&mut leader).await.unwrap());
    assert!(!projector::try_lead(&mut standby).await.unwrap());

    let mut observer = pool.acquire().await.unwrap();
    let lag = projector::lag(&mut observer).await.unwrap();
    let leader_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut leader)
        .await
        .unwrap();
    assert_eq!(lag.runner_pid, Some(leader_pid), "status names the runner");

    // The leader's session ends without resigning: its lock goes with it.
    drop(leader);
    let mut took_over = false;
    for _ in 0..50 {
        if projector::try_lead(&mut standby).await.unwrap() {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(took_over, "the standby takes over once the leader is gone");
}

#[sqlx::test(migrations = false)]
async fn two_projectors_at_once_under_live_appends_keep_the_rollup_exact(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let clients = clients(&pool, 6).await;
    let (stop, stopped) = watch::channel(false);
    let settings = ProjectorSettings {
        batch_events: 7,
        poll: Duration::from_millis(20),
        standby_poll: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        count_created_every: Duration::from_millis(50),
    };
    let first = tokio::spawn(projector::run(
        clients.pool.clone(),
        settings.clone(),
        stopped.clone(),
    ));
    let second = tokio::spawn(projector::run(clients.pool.clone(), settings, stopped));

    // Writers append while both projectors run; half of them directly race the batches.
    let mut writers = Vec::new();
    for target in [
        variant(JOB_A, VARIANT_A1),
        variant(JOB_A, VARIANT_A2),
        variant(JOB_B, VARIANT_B1),
        job(JOB_A),
    ] {
        let pool = clients.pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                let reason = if i % 2 == 0 {
                    RetryReason::Failed
                } else {
                    RetryReason::Stuck
                };
                let mut next = retry(target);
                next.reason = reason;
                append_ok(&pool, &next).await;
            }
        }));
    }
    // Both run: two projector sessions in this database, one holding the runner's lease and
    // the other standing by, its last statement a refused try for that lease.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (sessions, leading, standing_by): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*),
                    count(*) FILTER (WHERE a.pid = l.holder_pid),
                    count(*) FILTER (WHERE a.pid IS DISTINCT FROM l.holder_pid
                                       AND a.query LIKE 'UPDATE projector_lease l%')
               FROM pg_stat_activity a, projector_lease l
              WHERE a.datname = current_database()
                AND a.application_name = 'retrylog projector'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if (sessions, leading, standing_by) == (2, 1, 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never saw one projector leading and one standing by: \
             {sessions} sessions, {leading} leading, {standing_by} standing by"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Wait until the projector (whichever leads) has caught up, then stop both.
    let mut observer = pool.acquire().await.unwrap();
    for _ in 0..200 {
        if projector::lag(&mut observer).await.unwrap().events_behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(observer);
    stop.send_replace(true);
    first.await.unwrap();
    second.await.unwrap();
    clients.close().await;

    assert_eq!(event_count(&pool).await, 160);
    assert_rollup_exact(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_wiped_rollup_is_reported_by_verify_and_rebuilt_by_replay(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    append_n(&pool, job(JOB_B), 2).await;
    let mut conn = own_connection(&pool).await;
    projector::catch_up(&mut conn, 100).await.unwrap();
    assert_rollup_exact(&pool).await;

    sqlx::query("DELETE FROM retry_rollup")
        .execute(&pool)
        .await
        .unwrap();
    let report = verify(&pool).await;
    assert!(!report.is_clean());
    assert!(
        report
            .mismatches
            .iter()
            .all(|mismatch| matches!(mismatch, Mismatch::Rollup(drift) if drift.problem == "missing from the rollup")),
        "{:?}",
        report.mismatches
    );

    let dry = replay::replay(&pool, true).await.unwrap();
    assert!(!dry.rollup_changes.is_empty());
    assert_eq!(rollup_retries(&pool).await, 0, "a dry run writes nothing");

    let done = replay::replay(&pool, false).await.unwrap();
    assert_eq!(done.rollup_changes.len(), dry.rollup_changes.len());
    assert_rollup_exact(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn serve_keeps_the_rollup_current_and_exits_zero_on_sigterm(pool: PgPool) {
    pipeline(&pool).await;
    // The projector alone: a watchdog would retry failed variant A2 itself, racing the appends.
    let serve = serve_command(&pool, &["--no-watchdog"])
        .await
        .spawn()
        .expect("retrylog serve starts");

    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    let mut observer = pool.acquire().await.unwrap();
    let mut caught_up = false;
    for _ in 0..100 {
        let lag = projector::lag(&mut observer).await.unwrap();
        if lag.events_behind == 0 && lag.events_applied == 3 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(observer);
    assert!(caught_up, "serve applied the new events within 10 s");

    stop_serve(serve).await;
    assert_rollup_exact(&pool).await;
}

/// Every rollup row (and catch-up cell) agrees with the log below the checkpoint, and each
/// bucket × group's first_* sum is the number of distinct targets the log has there: the
/// trend's "targets retried", at every width and grouping.
async fn assert_rollup_matches_log_at_checkpoint(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let position = retrylog::projection::rollup_position(&mut conn)
        .await
        .unwrap();
    let drift = retrylog::projection::rollup_drift(&mut conn, position)
        .await
        .unwrap();
    assert!(drift.is_empty(), "drift at {position}: {drift:?}");
    for unit in ["hour", "day", "week"] {
        for (column, log_group) in [
            (
                "kind",
                "CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END",
            ),
            ("reason", "reason::text"),
            ("step", "left(coalesce(step, ''), 200)"),
            ("scenario", "left(coalesce(detail ->> 'scenario', ''), 200)"),
        ] {
            let rollup_group = if column == "reason" {
                "reason::text"
            } else {
                column
            };
            let differing: i64 = sqlx::query_scalar(&format!(
                "WITH r AS (SELECT date_trunc('{unit}', hour, 'UTC') AS b, {rollup_group} AS g,
                                   sum(first_{unit}_{column})::bigint AS n
                              FROM retry_rollup GROUP BY 1, 2),
                      l AS (SELECT date_trunc('{unit}', occurred_at, 'UTC') AS b, {log_group} AS g,
                                   count(DISTINCT (job_id, job_variants_id)) AS n
                              FROM retry_history WHERE txid < $1::bigint::text::xid8
                             GROUP BY 1, 2)
                 SELECT count(*) FROM r FULL JOIN l ON (r.b, r.g) = (l.b, l.g)
                  WHERE r.n IS DISTINCT FROM l.n AND coalesce(r.n, 0) + coalesce(l.n, 0) > 0"
            ))
            .bind(position)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            assert_eq!(
                differing, 0,
                "targets retried per {unit} by {column} at {position}"
            );
        }
    }
}

/// Appends `n` retries of `target` with out-of-order times inside a few hours and days, and
/// varied reasons, steps and scenarios.
async fn append_scattered(pool: &PgPool, target: retrylog::event::Target, n: usize, seed: usize) {
    let base = Utc::now() - TimeDelta::days(9);
    let reasons = [RetryReason::Stuck, RetryReason::Failed, RetryReason::Stuck];
    for i in 0..n {
        let k = i * 7 + seed;
        let mut retry = retry(target);
        retry.reason = reasons[k % 3];
        retry.step = Some(["prepare", "generate", "segment"][(k / 2) % 3].to_string());
        retry.detail = match k % 4 {
            0 => serde_json::json!({}),
            1 => serde_json::json!({ "scenario": "lagging" }),
            _ => serde_json::json!({ "scenario": "stale" }),
        };
        // Hours 0..5 of days 0, 1 and 8, not in attempt order.
        retry.occurred_at = Some(
            base + TimeDelta::days([0, 1, 8][(k / 5) % 3])
                + TimeDelta::minutes(((k * 37) % 300) as i64),
        );
        append_ok(pool, &retry).await;
    }
}

#[sqlx::test(migrations = false)]
async fn batches_cut_anywhere_onto_long_streams_keep_first_in_bucket_flags_exact(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    // Long streams (every event its own transaction), applied in batches of 1, 3 and 7
    // events, so batch boundaries fall inside buckets and inside groups.
    append_scattered(&pool, variant(JOB_A, VARIANT_A1), 60, 0).await;
    append_scattered(&pool, job(JOB_B), 45, 3).await;
    let mut conn = own_connection(&pool).await;
    for size in [1, 3, 7].into_iter().cycle() {
        let batch = projector::run_batch(&mut conn, size).await.unwrap();
        assert_rollup_matches_log_at_checkpoint(&pool).await;
        if batch.caught_up {
            break;
        }
    }
    // A batch landing on streams that are already long.
    append_scattered(&pool, variant(JOB_A, VARIANT_A1), 12, 1).await;
    append_scattered(&pool, job(JOB_B), 5, 2).await;
    let applied = projector::catch_up(&mut conn, 10_000).await.unwrap();
    assert_eq!(applied, 17);
    assert_rollup_matches_log_at_checkpoint(&pool).await;
    assert_rollup_exact(&pool).await;

    // Replay rebuilds the same rollup and cells in one transaction.
    let rebuilt = replay::replay(&pool, false).await.unwrap();
    assert!(
        rebuilt.rollup_changes.is_empty(),
        "{:?}",
        rebuilt.rollup_changes
    );
    assert_rollup_matches_log_at_checkpoint(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_lower_attempt_applied_after_a_higher_one_takes_the_first_flag_over(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    let mut projector_conn = own_connection(&pool).await;
    // A Wednesday noon (UTC) some weeks back: attempt 4 falls there, attempt 3 in the same
    // hour, in another hour of that day, or in another day of that week; one week each.
    let monday = Utc::now().date_naive().week(Weekday::Mon).first_day();
    let wednesday_noon = monday.and_hms_opt(12, 0, 0).unwrap().and_utc() + TimeDelta::days(2);
    let cases = [
        (variant(JOB_A, VARIANT_A1), TimeDelta::zero()),
        (variant(JOB_A, VARIANT_A2), TimeDelta::hours(-3)),
        (job(JOB_B), TimeDelta::days(-1)),
    ];
    for (weeks_back, (target, third_from_fourth)) in (3..).zip(cases) {
        append_n(&pool, target, 2).await;
        projector::catch_up(&mut projector_conn, 10_000)
            .await
            .unwrap();
        let at = wednesday_noon - TimeDelta::weeks(weeks_back);
        // 1. `late` takes its transaction id first, then waits; attempt 3 commits in a later
        //    transaction id; then `late` appends attempt 4.
        let mut late_conn = own_connection(&pool).await;
        let mut late = late_conn.begin().await.unwrap();
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *late)
            .await
            .unwrap();
        let mut third = retry(target);
        third.occurred_at = Some(at + third_from_fourth);
        append_ok(&pool, &third).await;
        let mut fourth = retry(target);
        fourth.occurred_at = Some(at);
        let event = store::append(&mut late, &fourth).await.unwrap();
        assert_eq!(event.attempt, 4);
        late.commit().await.unwrap();

        // 2. One transaction per batch: attempt 4 (the lower txid) is applied first and is
        //    the first of its hour, day and week; attempt 3 then takes over every flag of
        //    the buckets it shares with it.
        let first = projector::run_batch(&mut projector_conn, 1).await.unwrap();
        assert_eq!(first.events, 1);
        assert_eq!(
            flags_in(&pool, "first_hour_kind", "hour", at).await,
            1,
            "attempt 4 alone in its hour so far"
        );
        assert_rollup_matches_log_at_checkpoint(&pool).await;
        projector::catch_up(&mut projector_conn, 1).await.unwrap();
        assert_rollup_matches_log_at_checkpoint(&pool).await;
        for (column, unit) in [("first_day_kind", "day"), ("first_week_kind", "week")] {
            assert_eq!(
                flags_in(&pool, column, unit, at).await,
                1,
                "{column} around {at} with attempt 3 at {third_from_fourth}"
            );
        }
        let third_first_in: (i64, i64) = sqlx::query_as(
            "SELECT sum(first_day_kind)::bigint, sum(first_week_kind)::bigint FROM retry_rollup
              WHERE hour = date_trunc('hour', $1::timestamptz, 'UTC')",
        )
        .bind(at + third_from_fourth)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            third_first_in,
            (1, 1),
            "attempt 3's row holds the day's and week's flag"
        );
    }
    assert_rollup_exact(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_rollup_from_before_the_lowest_cells_gets_them_from_its_cells_and_catches_up_exactly(
    pool: PgPool,
) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    append_scattered(&pool, variant(JOB_A, VARIANT_A1), 40, 0).await;
    append_scattered(&pool, job(JOB_B), 30, 3).await;
    let mut conn = own_connection(&pool).await;
    projector::catch_up(&mut conn, 7).await.unwrap();

    // 1. The state a release before migration 11 left: the cells, no lowest cells (the
    //    functions of that release did not know them; this release's are reinstalled).
    load(
        &pool,
        "DROP TABLE retry_rollup_lowest; DELETE FROM _sqlx_migrations WHERE version = 11;",
    )
    .await;
    migrated(&pool).await;
    let lowest: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_rollup_lowest")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(lowest > 0, "migration 11 derived the lowest cells");
    assert_rollup_matches_log_at_checkpoint(&pool).await;

    // 2. Batches onto those streams, in hours and days that hold cells already.
    append_scattered(&pool, variant(JOB_A, VARIANT_A1), 15, 1).await;
    append_scattered(&pool, job(JOB_B), 9, 2).await;
    for size in [1, 4].into_iter().cycle() {
        let batch = projector::run_batch(&mut conn, size).await.unwrap();
        assert_rollup_matches_log_at_checkpoint(&pool).await;
        if batch.caught_up {
            break;
        }
    }
    assert_rollup_exact(&pool).await;
}
