//! The why of each retry (issue 22): every watchdog scenario, a recovery by hand and a retry
//! recorded by hand, through a real sweep of `tests/fixtures/why.sql`, read back as the `why`
//! of `history` (JSON, CSV, table), `GET /api/v1/history`, the dashboard's target timeline and
//! the overview's latest retries — each string computed by hand.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::config::WatchdogSettings;
use retrylog::recovery::{self, Scope, SweepSummary};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use tower::ServiceExt;
use uuid::{uuid, Uuid};

use crate::fixtures::*;

/// `tests/fixtures/why.sql`.
const WHY: &str = include_str!("../fixtures/why.sql");

const FAILED_JOB: Uuid = uuid!("51000000-0000-4000-8000-000000000000");
const LAGGING_JOB: Uuid = uuid!("52000000-0000-4000-8000-000000000000");
/// Done at `generate`, its job at `segment`, idle 12 minutes.
const LAGGING: Uuid = uuid!("52000000-0000-4000-8000-000000000001");
const STALE_JOB: Uuid = uuid!("53000000-0000-4000-8000-000000000000");
/// Done at `generate`, idle 12 minutes, three siblings further on.
const STALE: Uuid = uuid!("53000000-0000-4000-8000-000000000001");
/// Running at `iou_eval`, its four variants done there, idle 12 minutes.
const FINAL_JOB: Uuid = uuid!("54000000-0000-4000-8000-000000000000");

/// The watchdog of these tests: the fixture's steps, stuck after 5 minutes, limit 3.
fn settings() -> WatchdogSettings {
    WatchdogSettings {
        steps: "prepare,generate,segment,iou_eval".parse().unwrap(),
        max_retries: 3,
        stuck_after: Duration::from_secs(300),
        sweep_every: Duration::from_secs(3600),
        instance: "watchdog-why".into(),
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
        (FAILED_JOB, vec![retry("failed at step prepare")]),
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
        table.stdout.contains("┆ why ") && table.stdout.contains("failed at step prepare"),
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
        "<td>failed at step prepare</td>",
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
