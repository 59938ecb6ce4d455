//! `retrylog report`: each report against counts worked out by hand, window boundaries, the
//! trend read from the rollup against a plain GROUP BY over the log, `--as-of` against what
//! the reports showed at that moment, and the binary's exit codes.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use retrylog::event::{NewRetry, RetryReason, Target};
use retrylog::projector;
use retrylog::report::{
    self, Alert, AlertWhy, Bucket, GroupBy, KindStats, TopJob, TopVariant, Trend, TrendQuery,
};
use retrylog::window::Moment;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use strum::IntoEnumIterator;
use uuid::Uuid;

use crate::fixtures::*;

/// A fixed instant, whole seconds, well in the past.
pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a test timestamp")
        .with_timezone(&Utc)
}

/// Inserts a job with the given state and times.
pub async fn insert_job(
    pool: &PgPool,
    job_id: Uuid,
    status: &str,
    step: Option<&str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job_id)
    .bind(status)
    .bind(step)
    .bind(created_at)
    .bind(updated_at)
    .execute(pool)
    .await
    .expect("inserting a job");
}

/// Inserts a variant with the given state and times.
#[allow(clippy::too_many_arguments)]
pub async fn insert_variant(
    pool: &PgPool,
    job_variants_id: Uuid,
    job_id: Uuid,
    creation_order: i32,
    status: &str,
    step: Option<&str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status,
                                    current_step, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(job_variants_id)
    .bind(job_id)
    .bind(creation_order)
    .bind(status)
    .bind(step)
    .bind(created_at)
    .bind(updated_at)
    .execute(pool)
    .await
    .expect("inserting a variant");
}

/// Sets a target's `updated_at` (appends leave it alone on retrylog's schema).
async fn set_updated_at(pool: &PgPool, target: Target, updated_at: DateTime<Utc>) {
    let query = match target {
        Target::Job { job_id } => {
            sqlx::query("UPDATE jobs SET updated_at = $2 WHERE job_id = $1").bind(job_id)
        }
        Target::Variant {
            job_variants_id, ..
        } => sqlx::query("UPDATE jobs_variants SET updated_at = $2 WHERE job_variants_id = $1")
            .bind(job_variants_id),
    };
    query
        .bind(updated_at)
        .execute(pool)
        .await
        .expect("setting updated_at");
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0e00_0000_0000_4000_8000_0000_0000_0000 | n)
}

async fn conn(pool: &PgPool) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    pool.acquire().await.expect("a connection")
}

fn now() -> Moment {
    Moment::Now(Utc::now())
}

// ---------------------------------------------------------------------------------------
// top-jobs, top-variants

#[sqlx::test(migrations = false)]
async fn top_jobs_lists_the_most_retried_first_and_breaks_ties_by_the_latest_update(pool: PgPool) {
    migrated(&pool).await;
    let created = at("2026-01-01T00:00:00Z");
    let (most, tie_older, tie_newer, never) = (id(1), id(2), id(3), id(4));
    for job_id in [most, tie_older, tie_newer, never] {
        insert_job(&pool, job_id, "running", Some("segment"), created, created).await;
    }
    append_n(&pool, job(most), 3).await;
    append_n(&pool, job(tie_older), 2).await;
    append_n(&pool, job(tie_newer), 2).await;
    set_updated_at(&pool, job(most), at("2026-01-01T01:00:00Z")).await;
    set_updated_at(&pool, job(tie_older), at("2026-01-02T00:00:00Z")).await;
    set_updated_at(&pool, job(tie_newer), at("2026-01-03T00:00:00Z")).await;

    let mut conn = conn(&pool).await;
    let top = report::top_jobs(&mut conn, 10, now()).await.unwrap();
    let listed: Vec<(Uuid, i32)> = top.iter().map(|j| (j.job_id, j.retry_count)).collect();
    assert_eq!(listed, vec![(most, 3), (tie_newer, 2), (tie_older, 2)]);
    assert_eq!(
        top[1],
        TopJob {
            job_id: tie_newer,
            status: "running".into(),
            current_step: Some("segment".into()),
            retry_count: 2,
            created_at: created,
            updated_at: at("2026-01-03T00:00:00Z"),
        }
    );

    let limited = report::top_jobs(&mut conn, 2, now()).await.unwrap();
    assert_eq!(
        limited.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![most, tie_newer]
    );
}

#[sqlx::test(migrations = false)]
async fn top_variants_show_their_jobs_state_and_leave_out_variants_without_retries(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 1).await;
    append_n(&pool, variant(JOB_B, VARIANT_B1), 1).await;
    set_updated_at(
        &pool,
        variant(JOB_A, VARIANT_A1),
        at("2026-01-01T00:00:00Z"),
    )
    .await;
    set_updated_at(
        &pool,
        variant(JOB_B, VARIANT_B1),
        at("2026-01-02T00:00:00Z"),
    )
    .await;

    let mut conn = conn(&pool).await;
    let top = report::top_variants(&mut conn, 20, now()).await.unwrap();
    let listed: Vec<(Uuid, i32)> = top
        .iter()
        .map(|v| (v.job_variants_id, v.retry_count))
        .collect();
    // A3 was never retried: not listed. A1 and B1 tie at 1; B1 was updated last.
    assert_eq!(
        listed,
        vec![(VARIANT_A2, 3), (VARIANT_B1, 1), (VARIANT_A1, 1)]
    );
    let a1 = &top[2];
    assert_eq!(
        (
            a1.job_id,
            a1.creation_order,
            a1.status.as_str(),
            a1.current_step.as_deref(),
            a1.job_status.as_deref(),
            a1.job_current_step.as_deref()
        ),
        (
            JOB_A,
            0,
            "done",
            Some("generate"),
            Some("running"),
            Some("segment")
        )
    );
    let b1 = &top[1];
    assert_eq!(
        (b1.job_status.as_deref(), b1.job_current_step.as_deref()),
        (Some("running"), Some("generate"))
    );
}

#[sqlx::test(migrations = false)]
async fn top_reports_print_exactly_their_columns_as_json(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 2).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 1).await;

    let jobs = retrylog(&pool, &["report", "top-jobs", "--format", "json"]).await;
    assert_eq!(jobs.code, Some(0), "{jobs:#?}");
    let jobs = jobs.json();
    let job_row = jobs[0].as_object().unwrap();
    let keys: BTreeSet<&str> = job_row.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "job_id",
            "status",
            "current_step",
            "retry_count",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(job_row["job_id"], json!(JOB_A.to_string()));
    assert_eq!(job_row["retry_count"], json!(2));

    let variants = retrylog(&pool, &["report", "top-variants", "--format", "json"]).await;
    assert_eq!(variants.code, Some(0), "{variants:#?}");
    let variants = variants.json();
    assert_eq!(
        variants,
        json!([{
            "job_variants_id": VARIANT_A2.to_string(),
            "job_id": JOB_A.to_string(),
            "creation_order": 1,
            "status": "failed",
            "current_step": "segment",
            "retry_count": 1,
            "job_status": "running",
            "job_current_step": "segment",
        }])
    );

    let csv = retrylog(&pool, &["report", "top-jobs", "--format", "csv"]).await;
    assert_eq!(csv.code, Some(0), "{csv:#?}");
    assert!(
        csv.stdout
            .starts_with("job_id,status,current_step,retry_count,created_at,updated_at\n"),
        "{csv:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// stats

/// Jobs and variants created around `2026-03-01T00:00:00Z`, the window's start in the stats
/// tests: one of each exactly at it, one of each a microsecond before.
async fn stats_fixture(pool: &PgPool) -> DateTime<Utc> {
    migrated(pool).await;
    // Its targets carry counts of 5 and 9, past the default limit.
    lift_retry_limit(pool).await;
    let start = at("2026-03-01T00:00:00Z");
    let before = start - Duration::microseconds(1);
    let later = start + Duration::hours(5);
    // Jobs in the window: at the start (2 retries), later (0), later (5). Outside: 9 retries.
    insert_job(pool, id(1), "running", None, start, start).await;
    insert_job(pool, id(2), "done", None, later, later).await;
    insert_job(pool, id(3), "failed", None, later, later).await;
    insert_job(pool, id(4), "failed", None, before, before).await;
    append_n(pool, job(id(1)), 2).await;
    append_n(pool, job(id(3)), 5).await;
    append_n(pool, job(id(4)), 9).await;
    // Variants in the window: at the start (1), later (0, a variant without retries), later
    // (3). Outside: a microsecond early (4).
    insert_variant(pool, id(11), id(1), 0, "done", None, start, start).await;
    insert_variant(pool, id(12), id(2), 0, "done", None, later, later).await;
    insert_variant(pool, id(13), id(3), 0, "failed", None, later, later).await;
    insert_variant(pool, id(14), id(4), 0, "failed", None, before, before).await;
    append_n(pool, variant(id(1), id(11)), 1).await;
    append_n(pool, variant(id(3), id(13)), 3).await;
    append_n(pool, variant(id(4), id(14)), 4).await;
    start
}

#[sqlx::test(migrations = false)]
async fn stats_count_each_kind_created_in_the_window_from_its_start_inclusive(pool: PgPool) {
    let start = stats_fixture(&pool).await;
    let mut conn = conn(&pool).await;
    let mut stats = report::stats(&mut conn, start, 3, now()).await.unwrap();
    // avg() is numeric in PostgreSQL: compare it within a rounding error, the rest exactly.
    for (row, average) in stats.iter_mut().zip([7.0 / 3.0, 4.0 / 3.0]) {
        assert!((row.avg_retry_count - average).abs() < 1e-9, "{row:?}");
        row.avg_retry_count = average;
    }
    assert_eq!(
        stats,
        vec![
            KindStats {
                kind: "job".into(),
                total: 3,
                no_retry: 1,
                has_retry: 2,
                high_retry: 1,
                avg_retry_count: 7.0 / 3.0,
                max_retry_count: 5,
            },
            KindStats {
                kind: "variant".into(),
                total: 3,
                no_retry: 1,
                has_retry: 2,
                high_retry: 1,
                avg_retry_count: 4.0 / 3.0,
                max_retry_count: 3,
            },
        ]
    );
    // A microsecond earlier, the two targets created just before the start join.
    let wider = report::stats(&mut conn, start - Duration::microseconds(1), 3, now())
        .await
        .unwrap();
    assert_eq!((wider[0].total, wider[0].max_retry_count), (4, 9));
    assert_eq!((wider[1].total, wider[1].high_retry), (4, 2));
}

#[sqlx::test(migrations = false)]
async fn stats_of_an_empty_window_are_both_rows_with_zeros(pool: PgPool) {
    stats_fixture(&pool).await;
    let mut conn = conn(&pool).await;
    let stats = report::stats(&mut conn, Utc::now(), 3, now())
        .await
        .unwrap();
    let zeros = |kind: &str| KindStats {
        kind: kind.into(),
        total: 0,
        no_retry: 0,
        has_retry: 0,
        high_retry: 0,
        avg_retry_count: 0.0,
        max_retry_count: 0,
    };
    assert_eq!(stats, vec![zeros("job"), zeros("variant")]);

    let run = retrylog(
        &pool,
        &["report", "stats", "--since", "1m", "--format", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.json(),
        json!([
            {"kind": "job", "total": 0, "no_retry": 0, "has_retry": 0, "high_retry": 0,
             "avg_retry_count": 0.0, "max_retry_count": 0},
            {"kind": "variant", "total": 0, "no_retry": 0, "has_retry": 0, "high_retry": 0,
             "avg_retry_count": 0.0, "max_retry_count": 0},
        ])
    );
}

#[sqlx::test(migrations = false)]
async fn stats_through_the_binary_round_the_average_and_take_a_timestamp_window(pool: PgPool) {
    stats_fixture(&pool).await;
    let run = retrylog(
        &pool,
        &[
            "report",
            "stats",
            "--since",
            "2026-03-01T00:00:00Z",
            "--high",
            "3",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let rows = run.json();
    assert_eq!(rows[0]["kind"], json!("job"));
    assert_eq!(rows[0]["avg_retry_count"], json!(2.33));
    assert_eq!(rows[1]["avg_retry_count"], json!(1.33));
    assert_eq!(rows[1]["total"], json!(3));
}

// ---------------------------------------------------------------------------------------
// alerts

/// Targets around the alert window `updated_at >= 2026-04-01T12:00:00Z`, min 3.
async fn alerts_fixture(pool: &PgPool) -> DateTime<Utc> {
    migrated(pool).await;
    // Its targets carry counts of 5 and 9, past the default limit.
    lift_retry_limit(pool).await;
    let created = at("2026-04-01T00:00:00Z");
    let boundary = at("2026-04-01T12:00:00Z");
    let inside = boundary + Duration::minutes(30);
    let before = boundary - Duration::microseconds(1);
    // (id, status, retries, updated_at)
    let jobs = [
        (id(1), "running", 3, boundary), // listed: exactly at the boundary
        (id(2), "failed", 5, inside),    // listed
        (id(3), "done", 7, inside),      // done: not listed
        (id(4), "pending", 4, inside),   // pending: not listed
        (id(5), "running", 2, inside),   // below --min
        (id(6), "failed", 6, before),    // updated a microsecond too early
    ];
    for (job_id, status, retries, _) in jobs {
        insert_job(pool, job_id, status, Some("segment"), created, created).await;
        append_n(pool, job(job_id), retries).await;
    }
    for (job_id, _, _, updated_at) in jobs {
        set_updated_at(pool, job(job_id), updated_at).await;
    }
    // Variants of job 1: one failed with 4 retries (listed), one running without any.
    insert_variant(
        pool,
        id(11),
        id(1),
        0,
        "failed",
        Some("generate"),
        created,
        created,
    )
    .await;
    insert_variant(
        pool,
        id(12),
        id(1),
        1,
        "running",
        Some("generate"),
        created,
        created,
    )
    .await;
    append_n(pool, variant(id(1), id(11)), 4).await;
    set_updated_at(pool, variant(id(1), id(11)), inside).await;
    set_updated_at(pool, variant(id(1), id(12)), inside).await;
    boundary
}

#[sqlx::test(migrations = false)]
async fn alerts_list_running_and_failed_targets_retried_often_and_updated_in_the_window(
    pool: PgPool,
) {
    let boundary = alerts_fixture(&pool).await;
    let mut conn = conn(&pool).await;
    let alerts = report::alerts(&mut conn, 3, boundary, now()).await.unwrap();
    let listed: Vec<(&str, Uuid, i32, AlertWhy)> = alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.id, a.retry_count, a.why))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("job", id(2), 5, AlertWhy::HighRetry),
            ("variant", id(11), 4, AlertWhy::HighRetry),
            ("job", id(1), 3, AlertWhy::HighRetry),
        ]
    );
    assert_eq!(
        alerts[1],
        Alert {
            kind: "variant".into(),
            id: id(11),
            job_id: id(1),
            status: "failed".into(),
            current_step: Some("generate".into()),
            retry_count: 4,
            updated_at: boundary + Duration::minutes(30),
            why: AlertWhy::HighRetry,
        }
    );
    // A microsecond later the target updated exactly at the boundary drops out.
    let later = report::alerts(&mut conn, 3, boundary + Duration::microseconds(1), now())
        .await
        .unwrap();
    assert!(later.iter().any(|a| a.id == id(11)), "{later:#?}");
    assert!(later.iter().all(|a| a.id != id(1)), "{later:#?}");
}

#[sqlx::test(migrations = false)]
async fn alerts_exit_zero_when_the_list_is_empty_and_three_when_it_is_not(pool: PgPool) {
    alerts_fixture(&pool).await;
    // Everything was updated in 2026-04: nothing within the last hour.
    let quiet = retrylog(&pool, &["report", "alerts", "--format", "json"]).await;
    assert_eq!(quiet.code, Some(0), "{quiet:#?}");
    assert_eq!(quiet.json(), json!([]));

    let listed = retrylog(
        &pool,
        &[
            "report",
            "alerts",
            "--min",
            "3",
            "--within",
            "2026-04-01T12:00:00Z",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(listed.code, Some(3), "{listed:#?}");
    let rows = listed.json();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows:#}");
    assert_eq!(
        rows[1],
        json!({
            "kind": "variant",
            "id": id(11).to_string(),
            "job_id": id(1).to_string(),
            "status": "failed",
            "current_step": "generate",
            "retry_count": 4,
            "why": "high_retry",
        })
    );

    let table = retrylog(&pool, &["report", "alerts", "--within", "2026-01-01"]).await;
    assert_eq!(table.code, Some(3), "{table:#?}");
    assert!(table.stdout.contains("high_retry"), "{table:#?}");
}

// ---------------------------------------------------------------------------------------
// time flags

#[sqlx::test(migrations = false)]
async fn a_bad_time_is_one_line_naming_the_flag_and_the_value_and_exits_two(pool: PgPool) {
    migrated(&pool).await;
    for (args, flag, value) in [
        (vec!["report", "stats", "--since", "7x"], "--since", "7x"),
        (
            vec!["report", "alerts", "--within", "soon"],
            "--within",
            "soon",
        ),
        (vec!["report", "trend", "--since", "30"], "--since", "30"),
        (
            vec!["report", "top-jobs", "--as-of", "2026-02-30"],
            "--as-of",
            "2026-02-30",
        ),
        (
            vec!["report", "top-variants", "--as-of", "1y"],
            "--as-of",
            "1y",
        ),
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(2), "{run:#?}");
        assert_eq!(run.stdout, "", "{run:#?}");
        let lines = run.problem_lines();
        assert_eq!(lines.len(), 1, "{run:#?}");
        assert!(
            lines[0].contains(&format!("invalid {flag} \"{value}\"")),
            "{lines:?}"
        );
        assert!(
            lines[0].contains("expected a duration like 7d"),
            "{lines:?}"
        );
    }
    let run = retrylog(&pool, &["report", "stats", "--since", "7x"]).await;
    assert_eq!(
        run.problem_lines(),
        vec![
            "retrylog: invalid --since \"7x\": expected a duration like 7d, 12h, 30m or a \
             timestamp like 2026-11-01T00:00:00Z"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// trend

const STEPS: [Option<&str>; 4] = [Some("prepare"), Some("generate"), Some("segment"), None];
const SCENARIOS: [Option<&str>; 5] = [
    Some("lagging"),
    Some("failed"),
    Some("stale"),
    Some("final_step"),
    None,
];

/// A random pipeline history over the three weeks before `now`: jobs and variants created at
/// random times (some steps empty), events at random `occurred_at` with random reasons, steps
/// and scenarios, some job-level; the projector catches up between chunks of appends.
async fn random_history(pool: &PgPool, seed: u64, now: DateTime<Utc>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut targets: Vec<Target> = Vec::new();
    let three_weeks = 21 * 24 * 3600;
    for j in 0..12u128 {
        let job_id = id(1000 + j);
        let created = now - Duration::seconds(rng.gen_range(0..three_weeks));
        let step = STEPS[rng.gen_range(0..STEPS.len())];
        insert_job(pool, job_id, "running", step, created, created).await;
        targets.push(job(job_id));
        for v in 0..rng.gen_range(0..4u128) {
            let variant_id = id(2000 + j * 10 + v);
            let created = created + Duration::minutes(rng.gen_range(0..600));
            let step = STEPS[rng.gen_range(0..STEPS.len())];
            insert_variant(
                pool,
                variant_id,
                job_id,
                v as i32,
                "running",
                step,
                created.min(now),
                created.min(now),
            )
            .await;
            targets.push(variant(job_id, variant_id));
        }
    }
    let mut projector_conn = pool.acquire().await.unwrap().detach();
    for chunk in 0..4 {
        for _ in 0..60 {
            let target = targets[rng.gen_range(0..targets.len())];
            let reason = [
                RetryReason::Stuck,
                RetryReason::Failed,
                RetryReason::ManualRecovery,
            ][rng.gen_range(0..3)];
            let mut retry = NewRetry::new(target, reason, format!("watchdog-{chunk}"))
                .with_occurred_at(
                    now - Duration::seconds(rng.gen_range(0..three_weeks + 3 * 24 * 3600)),
                );
            if let Some(step) = STEPS[rng.gen_range(0..STEPS.len())] {
                retry = retry.with_step(step);
            }
            if let Some(scenario) = SCENARIOS[rng.gen_range(0..SCENARIOS.len())] {
                retry = retry.with_detail(json!({ "scenario": scenario }));
            }
            append_ok(pool, &retry).await;
        }
        projector::catch_up(&mut projector_conn, 7).await.unwrap();
    }
}

/// The plain GROUP BY over the raw log the trend must equal: (bucket, group) → (retries,
/// targets retried), and bucket → kind → targets created, for the window from the start of
/// the bucket holding `since`, as PostgreSQL truncates it.
async fn log_group_by(
    conn: &mut PgConnection,
    bucket: Bucket,
    by: GroupBy,
    since: DateTime<Utc>,
) -> (
    DateTime<Utc>,
    HashMap<(DateTime<Utc>, String), (i64, i64)>,
    HashMap<(DateTime<Utc>, String), i64>,
) {
    let unit = bucket.to_string();
    let start: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc($1, $2, 'UTC')")
        .bind(&unit)
        .bind(since)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let group = match by {
        GroupBy::Kind => "CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END",
        GroupBy::Reason => "reason::text",
        GroupBy::Step => "coalesce(step, '(none)')",
        GroupBy::Scenario => "coalesce(detail ->> 'scenario', '(none)')",
    };
    let retried: Vec<(DateTime<Utc>, String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT date_trunc($1, occurred_at, 'UTC'), {group}, count(*),
                count(DISTINCT (job_id, job_variants_id))
           FROM retry_history
          WHERE occurred_at >= $2
          GROUP BY 1, 2"
    ))
    .bind(&unit)
    .bind(start)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let created: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
        "SELECT date_trunc($1, created_at, 'UTC'), 'job', count(*) FROM jobs
          WHERE created_at >= $2 GROUP BY 1
         UNION ALL
         SELECT date_trunc($1, created_at, 'UTC'), 'variant', count(*) FROM jobs_variants
          WHERE created_at >= $2 GROUP BY 1",
    )
    .bind(&unit)
    .bind(start)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (
        start,
        retried
            .into_iter()
            .map(|(b, g, n, t)| ((b, g), (n, t)))
            .collect(),
        created.into_iter().map(|(b, k, n)| ((b, k), n)).collect(),
    )
}

/// Asserts that `trend` is exactly the GROUP BY, laid out as every bucket × every group.
async fn assert_trend_is_the_group_by(conn: &mut PgConnection, trend: &Trend, now: DateTime<Utc>) {
    let TrendQuery { bucket, by, since } = trend.query;
    let label = format!("bucket {bucket}, by {by}, since {since}");
    let (start, retried, created) = log_group_by(conn, bucket, by, since).await;
    let last: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc($1, $2, 'UTC')")
        .bind(bucket.to_string())
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let expected_buckets: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT generate_series($2::timestamptz, $3::timestamptz, ('1 ' || $1)::interval)",
    )
    .bind(bucket.to_string())
    .bind(start)
    .bind(last)
    .fetch_all(&mut *conn)
    .await
    .unwrap();

    let expected_groups: BTreeSet<String> = match by {
        GroupBy::Kind => ["job", "variant"].map(String::from).into(),
        _ => retried.keys().map(|(_, g)| g.clone()).collect(),
    };
    let buckets: BTreeSet<DateTime<Utc>> = trend.rows.iter().map(|r| r.bucket).collect();
    let groups: BTreeSet<String> = trend.rows.iter().map(|r| r.group.clone()).collect();
    assert_eq!(
        buckets.into_iter().collect::<Vec<_>>(),
        expected_buckets,
        "{label}"
    );
    assert_eq!(groups, expected_groups, "{label}");
    assert_eq!(
        trend.rows.len(),
        expected_buckets.len() * expected_groups.len(),
        "{label}: one row per bucket and group"
    );
    assert_eq!(trend.from, start, "{label}");

    for row in &trend.rows {
        let (retries, targets) = retried
            .get(&(row.bucket, row.group.clone()))
            .copied()
            .unwrap_or((0, 0));
        let created_job = created.get(&(row.bucket, "job".into())).copied();
        let created_variant = created.get(&(row.bucket, "variant".into())).copied();
        let targets_created = match by {
            GroupBy::Kind => created
                .get(&(row.bucket, row.group.clone()))
                .copied()
                .unwrap_or(0),
            _ => created_job.unwrap_or(0) + created_variant.unwrap_or(0),
        };
        let rate = (targets_created > 0).then(|| targets as f64 / targets_created as f64);
        assert_eq!(
            (
                row.retries,
                row.targets_retried,
                row.targets_created,
                row.retry_rate
            ),
            (retries, targets, targets_created, rate),
            "{label}: bucket {} group {}",
            row.bucket,
            row.group
        );
    }
    let total: i64 = trend.rows.iter().map(|r| r.retries).sum();
    let expected_total: i64 = retried.values().map(|(n, _)| n).sum();
    assert_eq!(total, expected_total, "{label}: every event of the window");
}

#[sqlx::test(migrations = false)]
async fn trend_from_the_rollup_equals_a_group_by_over_the_log_for_every_bucket_and_grouping(
    pool: PgPool,
) {
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    let now = Utc::now();
    random_history(&pool, 20_261_101, now).await;
    let events = event_count(&pool).await;
    assert_eq!(events, 240);
    let after = Utc::now();

    let mut conn = conn(&pool).await;
    let mut windows_cut = 0;
    for since in [now - Duration::days(30), now - Duration::days(10)] {
        for bucket in Bucket::iter() {
            for by in GroupBy::iter() {
                let query = TrendQuery { bucket, by, since };
                let trend = report::trend(&mut conn, query, Moment::Now(now))
                    .await
                    .unwrap();
                assert_trend_is_the_group_by(&mut conn, &trend, now).await;
                let in_window: i64 = trend.rows.iter().map(|r| r.retries).sum();
                if in_window < events {
                    windows_cut += 1;
                }
                // Read from the log as of a moment after every append, the trend is the same
                // as the rollup's at that moment.
                let from_rollup = report::trend(&mut conn, query, Moment::Now(after))
                    .await
                    .unwrap();
                let from_log = report::trend(&mut conn, query, Moment::AsOf(after))
                    .await
                    .unwrap();
                assert_eq!(from_log.rows, from_rollup.rows, "as of {after}: {query:?}");
            }
        }
    }
    assert!(
        windows_cut >= 12,
        "the 10-day windows leave events out: {windows_cut}"
    );
}

#[sqlx::test(migrations = false)]
async fn trend_counts_an_event_at_the_window_start_and_shows_buckets_without_retries(pool: PgPool) {
    migrated(&pool).await;
    let now = Utc::now();
    let today = Bucket::Day.start_of(now);
    let start = today - Duration::days(2);
    insert_job(&pool, id(1), "running", Some("segment"), start, start).await;
    insert_job(
        &pool,
        id(2),
        "running",
        None,
        today - Duration::days(1),
        today - Duration::days(1),
    )
    .await;
    // Exactly at the window's start: in. A microsecond before: out.
    append_ok(
        &pool,
        &retry(job(id(1)))
            .with_occurred_at(start)
            .with_step("segment"),
    )
    .await;
    append_ok(
        &pool,
        &retry(job(id(1)))
            .with_occurred_at(start - Duration::microseconds(1))
            .with_step("segment"),
    )
    .await;
    append_ok(&pool, &retry(job(id(2))).with_occurred_at(now)).await;

    let run = retrylog(
        &pool,
        &[
            "report",
            "trend",
            "--bucket",
            "day",
            "--by",
            "step",
            "--since",
            &(start + Duration::hours(7)).to_rfc3339(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let day = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        run.json(),
        json!([
            {"bucket": day(start), "group": "(none)", "retries": 0, "recovered": 0,
             "targets_retried": 0, "targets_created": 1, "retry_rate": 0.0},
            {"bucket": day(start), "group": "segment", "retries": 1, "recovered": 0,
             "targets_retried": 1, "targets_created": 1, "retry_rate": 1.0},
            {"bucket": day(today - Duration::days(1)), "group": "(none)", "retries": 0,
             "recovered": 0, "targets_retried": 0, "targets_created": 1, "retry_rate": 0.0},
            {"bucket": day(today - Duration::days(1)), "group": "segment", "retries": 0,
             "recovered": 0, "targets_retried": 0, "targets_created": 1, "retry_rate": 0.0},
            {"bucket": day(today), "group": "(none)", "retries": 1, "recovered": 0,
             "targets_retried": 1, "targets_created": 0, "retry_rate": null},
            {"bucket": day(today), "group": "segment", "retries": 0, "recovered": 0,
             "targets_retried": 0, "targets_created": 0, "retry_rate": null},
        ])
    );
}

#[sqlx::test(migrations = false)]
async fn trend_brings_the_rollup_up_to_date_first(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_n(&pool, job(JOB_B), 1).await;
    // Nothing has run the projector: the rollup is empty until the report catches it up.
    let run = retrylog(
        &pool,
        &["report", "trend", "--since", "1d", "--format", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.problem_lines(), Vec::<&str>::new(), "{run:#?}");
    let rows = run.json();
    let today = rows.as_array().unwrap().last().unwrap().clone();
    assert_eq!(today["group"], json!("variant"));
    assert_eq!(today["retries"], json!(2));
    assert_eq!(today["targets_retried"], json!(1));
    assert_eq!(today["targets_created"], json!(4));
    assert_eq!(today["retry_rate"], json!(0.25));
    let mut conn = conn(&pool).await;
    assert_eq!(projector::lag(&mut conn).await.unwrap().events_behind, 0);
}

#[sqlx::test(migrations = false)]
async fn trend_reads_the_rollup_as_it_stands_and_says_how_far_behind_while_another_instance_leads(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 1).await;
    let mut leader = pool.acquire().await.unwrap().detach();
    projector::catch_up(&mut leader, 100).await.unwrap();
    assert!(projector::try_lead(&mut leader).await.unwrap());
    append_n(&pool, job(JOB_A), 2).await;

    let run = retrylog(
        &pool,
        &[
            "report", "trend", "--since", "1h", "--bucket", "hour", "--format", "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let lines = run.problem_lines();
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert!(
        lines[0].contains("2 event(s)") && lines[0].contains("behind the log"),
        "{lines:?}"
    );
    let jobs: i64 = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["group"] == json!("job"))
        .map(|row| row["retries"].as_i64().unwrap())
        .sum();
    assert_eq!(
        jobs, 1,
        "the two events the leader has not applied are not shown yet"
    );
    projector::resign(&mut leader).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn trend_draws_an_svg_chart_with_a_line_per_group(pool: PgPool) {
    pipeline(&pool).await;
    append_ok(
        &pool,
        &NewRetry::new(job(JOB_A), RetryReason::Failed, "test"),
    )
    .await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 2).await;
    let file = TempPath::new("trend");
    let run = retrylog(
        &pool,
        &[
            "report",
            "trend",
            "--by",
            "reason",
            "--since",
            "3d",
            "--format",
            "svg",
            "--output",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout, "", "the chart goes to the file");
    let svg = std::fs::read_to_string(&file).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("Retries per day by reason"), "{svg}");
    assert!(
        svg.contains(">failed (1 / 0)<") && svg.contains(">stuck (2 / 0)<"),
        "{svg}"
    );
    // Two panels (retries, rate), one line per group in each; nothing recovered, so no
    // dashed line.
    assert_eq!(svg.matches("<path ").count(), 4, "{svg}");
    assert_eq!(
        svg.matches(r#"<path class="recovered""#).count(),
        0,
        "{svg}"
    );
}

// ---------------------------------------------------------------------------------------
// trend: recovered

/// The managed steps in order, as the watchdog passes them to the observation.
const OBSERVE: &str =
    "SELECT retry_outcome_observe(ARRAY['prepare','generate','segment','iou_eval'],
                                                    'test', NULL)";

/// When a recovered history was recorded and observed.
struct Recoveries {
    /// The hour of the retries' window: the retries happened in the two hours before it.
    hour: DateTime<Utc>,
    /// After every retry was recorded, before any outcome was observed.
    recorded: DateTime<Utc>,
    /// After the observation that decided three of them recovered.
    observed: DateTime<Utc>,
}

/// Job 1 (running at `generate`) with variants 11 (done), 12 (failed), 13 (running at
/// `segment`), and job 2 (running at `segment`); five retries in the two hours before this
/// one:
///
/// | retry                          | hour  | kind    | step     | then                       |
/// | ------------------------------ | ----- | ------- | -------- | -------------------------- |
/// | variant 11, stuck              | H − 2 | variant | generate | moves to segment: recovered |
/// | variant 12, failed             | H − 2 | variant | generate | retried again               |
/// | variant 12, failed (attempt 2) | H − 1 | variant | generate | moves to segment: recovered |
/// | variant 13, stuck              | H − 1 | variant | segment  | stays: open                 |
/// | job 2, manual_recovery         | H − 1 | job     | segment  | done: recovered             |
///
/// The pipeline's rows move on after `recorded` and the observation decides them before
/// `observed`; the projector then catches up.
async fn recovered_history(pool: &PgPool) -> Recoveries {
    migrated(pool).await;
    let t0 = server_clock(pool).await;
    let hour = Bucket::Hour.start_of(t0);
    let created = hour - Duration::hours(3);
    insert_job(pool, id(1), "running", Some("generate"), created, created).await;
    insert_job(pool, id(2), "running", Some("segment"), created, created).await;
    for (n, status, step) in [
        (11, "done", "generate"),
        (12, "failed", "generate"),
        (13, "running", "segment"),
    ] {
        let order = n as i32 - 11;
        insert_variant(
            pool,
            id(n),
            id(1),
            order,
            status,
            Some(step),
            created,
            created,
        )
        .await;
    }
    let two_ago = hour - Duration::hours(2) + Duration::minutes(10);
    let one_ago = hour - Duration::hours(1) + Duration::minutes(10);
    for (target, reason, step, occurred_at) in [
        (
            variant(id(1), id(11)),
            RetryReason::Stuck,
            "generate",
            two_ago,
        ),
        (
            variant(id(1), id(12)),
            RetryReason::Failed,
            "generate",
            two_ago,
        ),
        (
            variant(id(1), id(12)),
            RetryReason::Failed,
            "generate",
            one_ago,
        ),
        (
            variant(id(1), id(13)),
            RetryReason::Stuck,
            "segment",
            one_ago,
        ),
        (job(id(2)), RetryReason::ManualRecovery, "segment", one_ago),
    ] {
        let retry = NewRetry::new(target, reason, "test")
            .with_step(step)
            .with_occurred_at(occurred_at);
        append_ok(pool, &retry).await;
    }
    let recorded = server_clock(pool).await;
    sqlx::query(
        "UPDATE jobs_variants SET current_step = 'segment', status = 'running'
          WHERE job_variants_id = ANY ($1)",
    )
    .bind(vec![id(11), id(12)])
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(id(2))
        .execute(pool)
        .await
        .unwrap();
    let decided: i64 = sqlx::query_scalar(OBSERVE).fetch_one(pool).await.unwrap();
    assert_eq!(decided, 3, "variants 11 and 12 moved on, job 2 is done");
    let observed = server_clock(pool).await;
    let mut projector_conn = conn(pool).await;
    projector::catch_up(&mut projector_conn, 1000)
        .await
        .unwrap();
    Recoveries {
        hour,
        recorded,
        observed,
    }
}

/// (hour, group, retries, recovered) of a trend's rows with a retry.
fn retried_rows(trend: &Trend) -> Vec<(DateTime<Utc>, String, i64, i64)> {
    trend
        .rows
        .iter()
        .filter(|row| row.retries > 0)
        .map(|row| (row.bucket, row.group.clone(), row.retries, row.recovered))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn trend_counts_the_recovered_retries_of_each_bucket_from_the_rollup_and_as_of_a_moment(
    pool: PgPool,
) {
    let Recoveries {
        hour,
        recorded,
        observed,
    } = recovered_history(&pool).await;
    let since = hour - Duration::hours(3);
    let h = |back: i64| hour - Duration::hours(back);
    let mut conn = conn(&pool).await;
    let ask = |by, moment| {
        let query = TrendQuery {
            bucket: Bucket::Hour,
            by,
            since,
        };
        (query, moment)
    };

    // By step and by kind, worked out from the table of `recovered_history`.
    let by_step = vec![
        (h(2), "generate".to_string(), 2, 1),
        (h(1), "generate".to_string(), 1, 1),
        (h(1), "segment".to_string(), 2, 1),
    ];
    let by_kind = vec![
        (h(2), "variant".to_string(), 2, 1),
        (h(1), "job".to_string(), 1, 1),
        (h(1), "variant".to_string(), 2, 1),
    ];
    let by_reason = vec![
        (h(2), "failed".to_string(), 1, 0),
        (h(2), "stuck".to_string(), 1, 1),
        (h(1), "failed".to_string(), 1, 1),
        (h(1), "manual_recovery".to_string(), 1, 1),
        (h(1), "stuck".to_string(), 1, 0),
    ];
    for (by, expected) in [
        (GroupBy::Step, &by_step),
        (GroupBy::Kind, &by_kind),
        (GroupBy::Reason, &by_reason),
    ] {
        // Today, from the rollups.
        let (query, moment) = ask(by, Moment::Now(observed));
        let today = report::trend(&mut conn, query, moment).await.unwrap();
        assert_eq!(&retried_rows(&today), expected, "today, by {by}");
        assert!(
            today
                .rows
                .iter()
                .all(|row| row.retries > 0 || row.recovered == 0),
            "by {by}: {today:?}"
        );
        // As of a moment after the observation, from the log: the same rows.
        let (query, moment) = ask(by, Moment::AsOf(observed));
        let after = report::trend(&mut conn, query, moment).await.unwrap();
        assert_eq!(after.rows, today.rows, "as of {observed}, by {by}");
        // As of a moment before it: the same retries, none recovered yet.
        let (query, moment) = ask(by, Moment::AsOf(recorded));
        let before = report::trend(&mut conn, query, moment).await.unwrap();
        let not_yet: Vec<_> = expected
            .iter()
            .map(|(bucket, group, retries, _)| (*bucket, group.clone(), *retries, 0))
            .collect();
        assert_eq!(retried_rows(&before), not_yet, "as of {recorded}, by {by}");
    }
    // By scenario: none of the retries names one.
    let (query, moment) = ask(GroupBy::Scenario, Moment::Now(observed));
    let by_scenario = report::trend(&mut conn, query, moment).await.unwrap();
    assert_eq!(
        retried_rows(&by_scenario),
        vec![
            (h(2), "(none)".to_string(), 2, 1),
            (h(1), "(none)".to_string(), 3, 2),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn trend_prints_recovered_right_after_retries_in_csv_and_json(pool: PgPool) {
    let Recoveries { hour, recorded, .. } = recovered_history(&pool).await;
    let since = (hour - Duration::hours(2)).to_rfc3339();
    let args = [
        "report",
        "trend",
        "--bucket",
        "hour",
        "--by",
        "step",
        "--since",
        &since,
        "--non-empty",
    ];
    let mut csv_args = args.to_vec();
    csv_args.extend(["--format", "csv"]);
    let run = retrylog(&pool, &csv_args).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let hour_label = |back: i64| {
        (hour - Duration::hours(back)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    assert_eq!(
        run.stdout.lines().take(4).collect::<Vec<_>>(),
        vec![
            "bucket,group,retries,recovered,targets_retried,targets_created,retry_rate".to_string(),
            format!("{},generate,2,1,2,0,", hour_label(2)),
            format!("{},generate,1,1,1,0,", hour_label(1)),
            format!("{},segment,2,1,2,0,", hour_label(1)),
        ],
        "{run:#?}"
    );
    // JSON, as of before the observation: nothing recovered yet.
    let recorded = recorded.to_rfc3339();
    let mut json_args = args.to_vec();
    json_args.extend(["--format", "json", "--as-of", &recorded]);
    let run = retrylog(&pool, &json_args).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let rows = run.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|row| row["recovered"] == json!(0)),
        "{rows:?}"
    );
    assert_eq!(rows[0]["retries"], json!(2));
}

#[sqlx::test(migrations = false)]
async fn trend_svg_draws_each_groups_recovered_retries_as_a_dashed_line(pool: PgPool) {
    let Recoveries { hour, recorded, .. } = recovered_history(&pool).await;
    let since = (hour - Duration::hours(3)).to_rfc3339();
    let recorded = recorded.to_rfc3339();
    let svg_of = |as_of: Option<&str>| {
        let mut args = vec![
            "report", "trend", "--bucket", "hour", "--by", "step", "--since", &since, "--format",
            "svg",
        ];
        if let Some(as_of) = as_of {
            args.extend(["--as-of", as_of]);
        }
        let pool = pool.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = retrylog(&pool, &args).await;
            assert_eq!(run.code, Some(0), "{run:#?}");
            run.stdout
        }
    };
    let svg = svg_of(None).await;
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    // Both steps recovered something: a dashed line each, in its retries line's colour.
    let dashed: Vec<&str> = svg
        .lines()
        .filter(|line| line.starts_with(r#"<path class="recovered""#))
        .collect();
    assert_eq!(dashed.len(), 2, "{svg}");
    for (line, colour) in dashed.iter().zip(["#4e79a7", "#f28e2b"]) {
        assert!(
            line.contains(&format!(r#"stroke="{colour}""#)) && line.contains("stroke-dasharray"),
            "{line}"
        );
        assert!(
            svg.lines()
                .any(|solid| solid.starts_with(r#"<path class="retries""#)
                    && solid.contains(&format!(r#"stroke="{colour}""#))),
            "{svg}"
        );
    }
    // The legend explains the dash and gives each group's totals.
    assert!(
        svg.contains(">generate (3 / 2)<") && svg.contains(">segment (2 / 1)<"),
        "{svg}"
    );
    assert!(svg.contains(">recovered</text>"), "{svg}");
    assert_eq!(svg.matches("<svg").count(), 1, "{svg}");
    assert_eq!(
        svg.matches("<path ").count(),
        2 + 2 + 2,
        "retries, recovered, rate"
    );

    // As of before the observation: nothing recovered, so no dashed line.
    let before = svg_of(Some(&recorded)).await;
    assert_eq!(
        before.matches(r#"<path class="recovered""#).count(),
        0,
        "{before}"
    );
    assert!(before.contains(">generate (3 / 0)<"), "{before}");
}

// ---------------------------------------------------------------------------------------
// --as-of

/// What the reports showed at one moment.
#[derive(Debug)]
struct Observed {
    at: DateTime<Utc>,
    top_jobs: Vec<TopJob>,
    top_variants: Vec<TopVariant>,
    stats: Vec<KindStats>,
    alerts: Vec<Alert>,
    trend: Trend,
}

const AS_OF_TREND: (Bucket, GroupBy) = (Bucket::Hour, GroupBy::Kind);

/// The server's clock, the one `recorded_at` and `created_at` are compared with: the tests
/// never compare the client's clock with the server's.
async fn server_clock(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn observe(pool: &PgPool, since: DateTime<Utc>) -> Observed {
    // Every append so far committed before the server read `at`, and the next one starts
    // after it.
    let at = server_clock(pool).await;
    let mut conn = conn(pool).await;
    projector::catch_up(&mut conn, 1000).await.unwrap();
    let moment = Moment::Now(at);
    let (bucket, by) = AS_OF_TREND;
    Observed {
        at,
        top_jobs: report::top_jobs(&mut conn, 10, moment).await.unwrap(),
        top_variants: report::top_variants(&mut conn, 20, moment).await.unwrap(),
        stats: report::stats(&mut conn, since, 2, moment).await.unwrap(),
        alerts: report::alerts(&mut conn, 2, at - Duration::hours(1), moment)
            .await
            .unwrap(),
        trend: report::trend(&mut conn, TrendQuery { bucket, by, since }, moment)
            .await
            .unwrap(),
    }
}

#[sqlx::test(migrations = false)]
async fn as_of_a_moment_every_report_equals_what_it_showed_at_that_moment(pool: PgPool) {
    migrated(&pool).await;
    lift_retry_limit(&pool).await;
    let t0 = server_clock(&pool).await;
    let since = t0 - Duration::minutes(1);
    // Job 1 with two variants; job 2 from the counter era with an opening balance of 2.
    insert_job(&pool, id(1), "running", Some("segment"), t0, t0).await;
    insert_variant(&pool, id(11), id(1), 0, "failed", Some("segment"), t0, t0).await;
    insert_variant(&pool, id(12), id(1), 1, "running", Some("segment"), t0, t0).await;
    insert_job(&pool, id(2), "failed", Some("generate"), t0, t0).await;
    sqlx::query("UPDATE jobs SET retry_count = 2 WHERE job_id = $1")
        .bind(id(2))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO retry_opening_balance (job_id, job_variants_id, balance) VALUES ($1, NULL, 2)",
    )
    .bind(id(2))
    .execute(&pool)
    .await
    .unwrap();

    let mut observed = vec![observe(&pool, since).await];
    append_n(&pool, job(id(1)), 1).await;
    append_n(&pool, variant(id(1), id(11)), 2).await;
    observed.push(observe(&pool, since).await);
    // A job created between two moments: absent from the earlier ones.
    let t = server_clock(&pool).await;
    insert_job(&pool, id(3), "running", Some("prepare"), t, t).await;
    insert_variant(&pool, id(31), id(3), 0, "running", Some("prepare"), t, t).await;
    append_n(&pool, variant(id(3), id(31)), 1).await;
    append_n(&pool, job(id(2)), 1).await;
    observed.push(observe(&pool, since).await);
    append_n(&pool, variant(id(1), id(11)), 2).await;
    append_n(&pool, job(id(1)), 3).await;
    append_n(&pool, variant(id(1), id(12)), 1).await;
    observed.push(observe(&pool, since).await);
    let t = server_clock(&pool).await;
    insert_job(&pool, id(4), "failed", None, t, t).await;
    append_n(&pool, job(id(4)), 4).await;
    observed.push(observe(&pool, since).await);

    // The moments differ: the sequence really changed what the reports showed.
    let jobs_listed: Vec<usize> = observed.iter().map(|o| o.top_jobs.len()).collect();
    let variants_listed: Vec<usize> = observed.iter().map(|o| o.top_variants.len()).collect();
    assert_eq!(jobs_listed, vec![1, 2, 2, 2, 3]);
    assert_eq!(variants_listed, vec![0, 1, 2, 3, 3]);

    let mut conn = conn(&pool).await;
    let (bucket, by) = AS_OF_TREND;
    for o in &observed {
        let moment = Moment::AsOf(o.at);
        assert_eq!(
            report::top_jobs(&mut conn, 10, moment).await.unwrap(),
            o.top_jobs,
            "top-jobs as of {}",
            o.at
        );
        assert_eq!(
            report::top_variants(&mut conn, 20, moment).await.unwrap(),
            o.top_variants,
            "top-variants as of {}",
            o.at
        );
        assert_eq!(
            report::stats(&mut conn, since, 2, moment).await.unwrap(),
            o.stats,
            "stats as of {}",
            o.at
        );
        assert_eq!(
            report::alerts(&mut conn, 2, o.at - Duration::hours(1), moment)
                .await
                .unwrap(),
            o.alerts,
            "alerts as of {}",
            o.at
        );
        let trend = report::trend(&mut conn, TrendQuery { bucket, by, since }, moment)
            .await
            .unwrap();
        assert_eq!(trend.rows, o.trend.rows, "trend as of {}", o.at);
    }

    // And through the binary: top-jobs as of the second moment.
    let second = &observed[1];
    let run = retrylog(
        &pool,
        &[
            "report",
            "top-jobs",
            "--as-of",
            &second.at.to_rfc3339(),
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let listed: Vec<(String, i64)> = run
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
    assert_eq!(listed, vec![(id(2).to_string(), 2), (id(1).to_string(), 1)]);
}

#[sqlx::test(migrations = false)]
async fn as_of_counts_an_event_recorded_exactly_then(pool: PgPool) {
    pipeline(&pool).await;
    let first = append_ok(&pool, &retry(job(JOB_A))).await;
    let second = append_ok(&pool, &retry(job(JOB_A))).await;
    assert!(second.recorded_at > first.recorded_at);
    let mut conn = conn(&pool).await;
    let count_as_of = |rows: Vec<TopJob>| rows.first().map_or(0, |job| job.retry_count);
    let at_second = report::top_jobs(&mut conn, 1, Moment::AsOf(second.recorded_at))
        .await
        .unwrap();
    let just_before = report::top_jobs(
        &mut conn,
        1,
        Moment::AsOf(second.recorded_at - Duration::microseconds(1)),
    )
    .await
    .unwrap();
    assert_eq!(count_as_of(at_second), 2);
    assert_eq!(count_as_of(just_before), 1);
    // Before the pipeline's rows were created there is nothing to report.
    let before_rows = report::top_jobs(
        &mut conn,
        1,
        Moment::AsOf(Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(before_rows, vec![]);
}

/// Lets the watchdog (limit 3, the fixture's steps) sweep every job once.
async fn sweep_at_limit_three(pool: &PgPool) -> retrylog::recovery::SweepSummary {
    let settings = retrylog::config::WatchdogSettings {
        steps: "prepare,generate,segment,iou_eval".parse().unwrap(),
        max_retries: 3,
        instance: "test-watchdog".into(),
        ..Default::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    retrylog::recovery::sweep(
        pool,
        &settings,
        &retrylog::recovery::Scope::Everything,
        &stopped,
    )
    .await
    .expect("the sweep runs")
}

#[sqlx::test(migrations = false)]
async fn alerts_list_a_target_the_limit_stopped_until_a_retry_changes_its_count(pool: PgPool) {
    // Job 2 of the fixture is failed at segment with 5 retries; variant 11 of job 1 (running
    // at segment) is failed at generate with 4: both are past the watchdog's limit of 3.
    let boundary = alerts_fixture(&pool).await;
    let summary = sweep_at_limit_three(&pool).await;
    assert_eq!(summary.noted, 1, "{summary:#?}");
    assert!(summary.retried.is_empty(), "{summary:#?}");

    let mut conn = conn(&pool).await;
    let listed = |alerts: &[Alert]| -> Vec<(String, Uuid, i32, AlertWhy)> {
        alerts
            .iter()
            .map(|a| (a.kind.clone(), a.id, a.retry_count, a.why))
            .collect()
    };
    // Listed first, once, and whatever --min and the window say.
    let alerts = report::alerts(&mut conn, 3, boundary, now()).await.unwrap();
    assert_eq!(
        listed(&alerts),
        vec![
            ("variant".into(), id(11), 4, AlertWhy::NeedsIntervention),
            ("job".into(), id(2), 5, AlertWhy::HighRetry),
            ("job".into(), id(1), 3, AlertWhy::HighRetry),
        ]
    );
    let far_window = report::alerts(&mut conn, 100, Utc::now(), now())
        .await
        .unwrap();
    assert_eq!(
        listed(&far_window),
        vec![("variant".into(), id(11), 4, AlertWhy::NeedsIntervention)]
    );
    // As of a moment before the note, it is not listed.
    let before = report::alerts(
        &mut conn,
        100,
        boundary,
        Moment::AsOf(boundary + Duration::hours(1)),
    )
    .await
    .unwrap();
    assert!(before.is_empty(), "{before:#?}");

    // An operator's forced recovery changes the count: the note is closed.
    append_ok(
        &pool,
        &NewRetry::new(
            variant(id(1), id(11)),
            RetryReason::ManualRecovery,
            "cli:operator",
        )
        .forced(),
    )
    .await;
    let after = report::alerts(&mut conn, 100, Utc::now(), now())
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:#?}");

    // Through the binary: listed with exit 3 while open (a second note, at count 5, since the
    // variant is still failed and the limit stops the watchdog again).
    assert_eq!(sweep_at_limit_three(&pool).await.noted, 1);
    let run = retrylog(&pool, &["report", "alerts", "--format", "json"]).await;
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_eq!(run.json()[0]["why"], json!("needs_intervention"));
    assert_eq!(run.json()[0]["retry_count"], json!(5));
}
