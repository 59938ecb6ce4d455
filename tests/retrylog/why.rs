//! The why of each retry (issue 22): every watchdog scenario, a recovery by hand and a retry
//! recorded by hand, through a real sweep of `tests/fixtures/why.sql`, read back as the `why`
//! of `history` (JSON, CSV, table), `GET /api/v1/history`, the dashboard's target timeline and
//! the overview's latest retries — each string computed by hand. And `--error-column`: the
//! pipeline's error kept with the retry after the row changes, hostile text recorded bounded
//! and escaped, a column the tables lack refused at start.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::config::WatchdogSettings;
use retrylog::event::RetryEvent;
use retrylog::recovery::{self, Scope, SweepSummary};
use retrylog::store::EVENT_COLUMNS;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use tower::ServiceExt;
use uuid::{uuid, Uuid};

use crate::fixtures::*;

/// `tests/fixtures/why.sql`.
const WHY: &str = include_str!("../fixtures/why.sql");

const FAILED_JOB: Uuid = uuid!("51000000-0000-4000-8000-000000000000");
/// Failed at `prepare`; its `last_error` is `CUDA out of memory`.
const FAILED: Uuid = uuid!("51000000-0000-4000-8000-000000000001");
const LAGGING_JOB: Uuid = uuid!("52000000-0000-4000-8000-000000000000");
/// Done at `generate`, its job at `segment`, idle 12 minutes.
const LAGGING: Uuid = uuid!("52000000-0000-4000-8000-000000000001");
const STALE_JOB: Uuid = uuid!("53000000-0000-4000-8000-000000000000");
/// Done at `generate`, idle 12 minutes, three siblings further on.
const STALE: Uuid = uuid!("53000000-0000-4000-8000-000000000001");
/// Running at `iou_eval`, its four variants done there, idle 12 minutes.
const FINAL_JOB: Uuid = uuid!("54000000-0000-4000-8000-000000000000");

/// The watchdog of these tests: the fixture's steps, stuck after 5 minutes, limit 3, keeping
/// `last_error`.
fn settings() -> WatchdogSettings {
    WatchdogSettings {
        steps: "prepare,generate,segment,iou_eval".parse().unwrap(),
        max_retries: 3,
        stuck_after: Duration::from_secs(300),
        sweep_every: Duration::from_secs(3600),
        instance: "watchdog-why".into(),
        error_column: Some("last_error".into()),
        ..WatchdogSettings::default()
    }
}

/// retrylog's schema with `why.sql` loaded.
async fn why_fixture(pool: &PgPool) {
    migrated(pool).await;
    load(pool, WHY).await;
}

/// One sweep of everything.
async fn sweep(pool: &PgPool, settings: &WatchdogSettings) -> SweepSummary {
    let (_keep_running, shutdown) = watch::channel(false);
    recovery::sweep(pool, settings, &Scope::Everything, &shutdown)
        .await
        .unwrap_or_else(|error| panic!("the sweep failed: {error:?}"))
}

/// The pipeline writing a variant's last error, as its workers do.
async fn set_last_error(pool: &PgPool, variant: Uuid, error: &str) {
    sqlx::query("UPDATE jobs_variants SET last_error = $2 WHERE job_variants_id = $1")
        .bind(variant)
        .bind(error)
        .execute(pool)
        .await
        .unwrap();
}

/// The one event of the variant `id`.
async fn only_event(pool: &PgPool, id: Uuid) -> RetryEvent {
    let mut events: Vec<RetryEvent> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM retry_history WHERE job_variants_id = $1 ORDER BY seq"
    ))
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    events.remove(0)
}

/// `(entry, why)` of every row of `history --job-id job --format json`, through the binary.
async fn cli_whys(pool: &PgPool, job: Uuid) -> Vec<(String, String)> {
    let run = retrylog(
        pool,
        &["history", "--job-id", &job.to_string(), "--format", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    whys(&run.json())
}

/// `(entry, why)` of every row of `GET /api/v1/history?job_id=…`.
async fn api_whys(api: &Router, job: Uuid) -> Vec<(String, String)> {
    let answer = call(
        api,
        &format!("/api/v1/history?job_id={job}"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    whys(&answer.json)
}

fn whys(rows: &Value) -> Vec<(String, String)> {
    rows.as_array()
        .unwrap_or_else(|| panic!("rows, not {rows}"))
        .iter()
        .map(|row| {
            let text = |key: &str| {
                row[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} of {row}"))
                    .to_string()
            };
            (text("entry"), text("why"))
        })
        .collect()
}

fn retry(why: &str) -> (String, String) {
    ("retry".to_string(), why.to_string())
}

/// A dashboard page's HTML.
async fn page(api: &Router, uri: &str) -> String {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_scenario_of_a_real_sweep_reads_as_its_why_wherever_retries_are_listed(pool: PgPool) {
    why_fixture(&pool).await;

    let summary = sweep(&pool, &settings()).await;
    assert_eq!(
        (summary.retried.len(), summary.failed),
        (4, 0),
        "{summary:#?}"
    );
    // Then an operator recovers the lagging variant by hand, and a retry is recorded by hand
    // with the error in `message`.
    let recovered = retrylog(
        &pool,
        &[
            "recover",
            "--variant-id",
            &LAGGING.to_string(),
            "--note",
            "disk replaced, rerun",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(recovered.code, Some(0), "{recovered:#?}");
    assert_eq!(
        recovered.json()[0]["why"],
        "manual: disk replaced, rerun",
        "recover prints the why of the event it stored"
    );
    let recorded = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &STALE_JOB.to_string(),
            "--variant-id",
            &STALE.to_string(),
            "--reason",
            "stuck",
            "--detail",
            r#"{"message": "no heartbeat for 10m"}"#,
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(recorded.code, Some(0), "{recorded:#?}");

    // Computed by hand from the fixture: idle 12 minutes, three siblings ahead, four variants.
    let expected = [
        (
            FAILED_JOB,
            vec![retry("failed at step prepare; error: CUDA out of memory")],
        ),
        (
            LAGGING_JOB,
            vec![
                retry("lagging: job at segment, variant done at generate"),
                retry("manual: disk replaced, rerun"),
            ],
        ),
        (
            STALE_JOB,
            vec![
                retry("stale: 3 siblings ahead, idle 12m"),
                retry("stuck at step generate; error: no heartbeat for 10m"),
            ],
        ),
        (
            FINAL_JOB,
            vec![retry("final step: all 4 variants done at iou_eval")],
        ),
    ];
    let api = router(&pool, false);
    for (job, whys) in &expected {
        assert_eq!(&cli_whys(&pool, *job).await, whys, "history of job {job}");
        assert_eq!(
            &api_whys(&api, *job).await,
            whys,
            "the API's history of {job}"
        );
    }

    // The table and the CSV carry the same column.
    let table = retrylog(&pool, &["history", "--job-id", &FAILED_JOB.to_string()]).await;
    assert!(
        table.stdout.contains("┆ why ")
            && table
                .stdout
                .contains("failed at step prepare; error: CUDA out of memory"),
        "{}",
        table.stdout
    );
    let csv = retrylog(
        &pool,
        &[
            "history",
            "--job-id",
            &STALE_JOB.to_string(),
            "--format",
            "csv",
        ],
    )
    .await;
    let mut lines = csv.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[7..10], ["step", "why", "from_status"], "{header:?}");
    assert!(
        lines
            .next()
            .unwrap()
            .contains(",generate,\"stale: 3 siblings ahead, idle 12m\",done,"),
        "{}",
        csv.stdout
    );

    // The dashboard: the target's timeline, and the overview's latest retries.
    let timeline = page(&api, &format!("/targets/variant/{STALE}")).await;
    assert!(timeline.contains("<th>why</th>"), "{timeline}");
    assert!(
        timeline.contains("<td>stale: 3 siblings ahead, idle 12m</td>"),
        "{timeline}"
    );
    let latest = page(&api, "/ui/live/overview").await;
    for why in [
        "<td>failed at step prepare; error: CUDA out of memory</td>",
        "<td>final step: all 4 variants done at iou_eval</td>",
        "<td>manual: disk replaced, rerun</td>",
    ] {
        assert!(
            latest.contains(why),
            "the latest retries show {why}: {latest}"
        );
    }
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_pipelines_error_stays_with_its_retry_after_the_row_changes(pool: PgPool) {
    why_fixture(&pool).await;
    let settings = settings();

    sweep(&pool, &settings).await;
    let first = only_event(&pool, FAILED).await;
    assert_eq!(first.detail["error"], "CUDA out of memory");
    // The pipeline runs the step again, fails differently and overwrites its column; and
    // rows without an error (lagging) or whose table has no column (the job) kept none.
    set_last_error(&pool, FAILED, "segfault in decoder").await;
    sqlx::query(
        "UPDATE jobs_variants SET status = 'failed', updated_at = now()
          WHERE job_variants_id = $1",
    )
    .bind(FAILED)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(only_event(&pool, LAGGING).await.detail.get("error"), None);
    let final_step: Value = sqlx::query_scalar(
        "SELECT detail FROM retry_history WHERE job_id = $1 AND job_variants_id IS NULL",
    )
    .bind(FINAL_JOB)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(final_step.get("error"), None, "{final_step}");

    sweep(&pool, &settings).await;
    set_last_error(&pool, FAILED, "the row's error today").await;

    let whys = vec![
        retry("failed at step prepare; error: CUDA out of memory"),
        retry("failed at step prepare; error: segfault in decoder"),
    ];
    assert_eq!(cli_whys(&pool, FAILED_JOB).await, whys);
    assert_eq!(api_whys(&router(&pool, false), FAILED_JOB).await, whys);
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn a_note_where_the_limit_stopped_the_watchdog_keeps_the_error_as_well(pool: PgPool) {
    why_fixture(&pool).await;
    let at_limit = WatchdogSettings {
        max_retries: 0,
        ..settings()
    };

    let summary = sweep(&pool, &at_limit).await;

    assert_eq!(summary.retried.len(), 0, "{summary:#?}");
    assert_eq!(
        cli_whys(&pool, FAILED_JOB).await,
        [(
            "needs_intervention".to_string(),
            "failed at step prepare; error: CUDA out of memory".to_string()
        )]
    );
}

#[sqlx::test(migrations = false)]
async fn a_hostile_error_is_recorded_bounded_and_escaped_and_the_retry_still_made(pool: PgPool) {
    why_fixture(&pool).await;
    // A terminal escape, a line break, a bidi override, zero-width characters, then 100 KB.
    let tail = "x".repeat(100_000);
    let hostile = format!("\u{1b}[2J\u{1b}[31mOK\nrm\u{202e}txt.exe\u{200b}\u{feff}{tail}");
    set_last_error(&pool, FAILED, &hostile).await;
    let length = hostile.chars().count();

    let summary = sweep(&pool, &settings()).await;

    assert_eq!(
        summary.failed, 0,
        "never refused for the pipeline's text: {summary:#?}"
    );
    let event = only_event(&pool, FAILED).await;
    // The first 1000 characters, each refused one written \u{XXXX}, and the length said.
    let kept: String = hostile
        .chars()
        .take(retrylog::recovery::MAX_ERROR_CHARS)
        .collect();
    let expected = format!(
        "{}... ({length} characters)",
        kept.replace('\u{1b}', "\\u{001b}")
            .replace('\n', "\\u{000a}")
            .replace('\u{202e}', "\\u{202e}")
            .replace('\u{200b}', "\\u{200b}")
            .replace('\u{feff}', "\\u{feff}")
    );
    assert_eq!(event.detail["error"], expected.as_str());
    assert!(expected.ends_with("... (100024 characters)"), "{expected}");
    // The why quotes its first 200 characters of that, and no refused character.
    let whys = cli_whys(&pool, FAILED_JOB).await;
    let why = &whys[0].1;
    assert!(
        why.starts_with(
            "failed at step prepare; error: \\u{001b}[2J\\u{001b}[31mOK\\u{000a}rm\\u{202e}txt.exe"
        ),
        "{why}"
    );
    assert!(
        why.ends_with(" characters)") && why.chars().count() < 300,
        "{why}"
    );
    assert!(!why.chars().any(retrylog::text::is_refused), "{why}");
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_an_error_column_the_pipeline_tables_lack_and_takes_one_on_one_table(
    pool: PgPool,
) {
    why_fixture(&pool).await;
    let before = snapshot(&pool).await;

    for (column, said) in [
        (
            "last_eror",
            "--error-column \"last_eror\": neither jobs nor jobs_variants has a column of that \
             name (names are case-sensitive as stored, usually lowercase)",
        ),
        (
            "Last_Error",
            "--error-column \"Last_Error\": neither jobs nor jobs_variants has a column of that \
             name (names are case-sensitive as stored, usually lowercase)",
        ),
        (
            "retry_count",
            "--error-column \"retry_count\": jobs.retry_count is integer, not a text column \
             (text, varchar, char)",
        ),
    ] {
        let run = retrylog(&pool, &["serve", "--error-column", column]).await;
        assert_eq!(run.code, Some(2), "{column}: {run:#?}");
        assert_eq!(
            run.only_problem_line(),
            format!("retrylog: {said}"),
            "{column}"
        );
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a refused serve wrote nothing"
    );

    // On jobs_variants only: taken, read from that table.
    assert_eq!(
        recovery::check_error_column(&pool, "last_error")
            .await
            .unwrap(),
        ["jobs_variants"]
    );
    sqlx::query("ALTER TABLE jobs ADD COLUMN last_error varchar(500)")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        recovery::check_error_column(&pool, "last_error")
            .await
            .unwrap(),
        ["jobs", "jobs_variants"]
    );
}
