//! `/metrics`, read back with a real Prometheus text parser (`prometheus-parse`): the series
//! docs/metrics.md lists, bounded labels only, and values that move when retries are recorded,
//! refused, projected, and when the watchdog sweeps.
//!
//! The process counters are shared by every test of this binary (one registry per process,
//! as in `serve`), so those are asserted as increases; the database series are this test's
//! own database and are asserted exactly.

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use prometheus_parse::{Sample, Scrape, Value};
use retrylog::config::WatchdogSettings;
use retrylog::projector;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::fixtures::*;

/// One scrape, parsed.
async fn scrape(api: &Router) -> Vec<Sample> {
    let answer = raw(api).await;
    Scrape::parse(answer.lines().map(|line| Ok(line.to_string())))
        .expect("the exposition parses")
        .samples
}

async fn raw(api: &Router) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .uri("/metrics")
        .header("authorization", format!("Bearer {READER}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of `metric` with these labels; 0 when the series is absent.
fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)))
        .map(|sample| match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a single number: {other:?}"),
        })
        .sum()
}

#[sqlx::test(migrations = false)]
async fn the_database_series_follow_the_log_the_rollup_and_the_notes(pool: PgPool) {
    pipeline(&pool).await;
    let api = router(&pool, true);
    let before = scrape(&api).await;
    assert_eq!(
        value(
            &before,
            "retrylog_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&before, "retrylog_log_retries_total", &[]), 0.0);
    assert_eq!(
        value(&before, "retrylog_targets_needing_intervention", &[]),
        0.0
    );

    // Retries recorded: the lag shows them until the projector applies them.
    a2_needs_intervention(&pool).await;
    append_ok(&pool, &retry(job(JOB_B))).await;
    let behind = scrape(&api).await;
    assert_eq!(value(&behind, "retrylog_projector_lag_events", &[]), 4.0);
    assert!(value(&behind, "retrylog_projector_lag_seconds", &[]) >= 0.0);
    assert_eq!(
        value(
            &behind,
            "retrylog_targets_needing_intervention",
            &[("kind", "variant")]
        ),
        1.0
    );
    projector::catch_up_once(&pool, 1000).await.unwrap();
    let caught_up = scrape(&api).await;
    assert_eq!(value(&caught_up, "retrylog_projector_lag_events", &[]), 0.0);
    assert_eq!(
        value(
            &caught_up,
            "retrylog_log_retries_total",
            &[
                ("kind", "variant"),
                ("reason", "stuck"),
                ("scenario", "none")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(&caught_up, "retrylog_log_retries_total", &[("kind", "job")]),
        1.0
    );

    // A caller's made-up scenario is not a label value of its own.
    let mut odd = retry(job(JOB_A));
    odd.detail = json!({"scenario": "a-job-id-0a000000"});
    append_ok(&pool, &odd).await;
    projector::catch_up_once(&pool, 1000).await.unwrap();
    let after = scrape(&api).await;
    assert_eq!(
        value(
            &after,
            "retrylog_log_retries_total",
            &[("scenario", "other")]
        ),
        1.0
    );
    for sample in &after {
        let text = format!("{:?}", sample.labels);
        assert!(
            !text.contains("0a000000"),
            "an id in a label: {} {text}",
            sample.metric
        );
    }
}

#[sqlx::test(migrations = false)]
async fn http_answers_and_refusals_are_counted_by_route_template_and_cause(pool: PgPool) {
    pipeline(&pool).await;
    a2_needs_intervention(&pool).await;
    let api = router(&pool, true);
    let route = [("route", "/api/v1/history"), ("status_class", "4xx")];
    let limit = [("cause", "limit_reached")];
    let before = scrape(&api).await;
    let nobody = uuid::Uuid::from_u128(99);
    let unknown = call(
        &api,
        &format!("/api/v1/history?variant_id={nobody}"),
        Some(READER),
        None,
        &[],
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    call(&api, "/no/such/path", Some(READER), None, &[]).await;
    let refused = call(
        &api,
        "/api/v1/record",
        Some(ADMIN),
        Some(json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "reason": "failed"})),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let after = scrape(&api).await;
    let counter = "retrylog_http_requests_total";
    assert!(value(&after, counter, &route) >= value(&before, counter, &route) + 1.0);
    assert!(
        value(&after, counter, &[("route", "unmatched")])
            >= value(&before, counter, &[("route", "unmatched")]) + 1.0
    );
    let refusals = "retrylog_appends_refused_total";
    assert!(value(&after, refusals, &limit) >= value(&before, refusals, &limit) + 1.0);
    assert!(after
        .iter()
        .all(|sample| !format!("{:?}", sample.labels).contains(&nobody.to_string())));
}

#[sqlx::test(migrations = false)]
async fn the_watchdogs_sweeps_and_retries_move_its_counters(pool: PgPool) {
    pipeline(&pool).await;
    let api = router(&pool, true);
    let failed = [
        ("kind", "variant"),
        ("reason", "failed"),
        ("scenario", "failed"),
    ];
    let before = scrape(&api).await;
    let sweeps = value(&before, "retrylog_watchdog_sweeps_total", &[]);
    let retries = value(&before, "retrylog_watchdog_retries_total", &failed);

    let (stop, stopped) = watch::channel(false);
    let settings = WatchdogSettings {
        instance: "metrics-watchdog".into(),
        ..WatchdogSettings::default()
    };
    let watchdog = tokio::spawn(retrylog::recovery::run(pool.clone(), settings, stopped));
    // Variant A2 is failed: the first sweep retries it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let now = scrape(&api).await;
        if value(&now, "retrylog_watchdog_retries_total", &failed) >= retries + 1.0
            && value(&now, "retrylog_watchdog_sweeps_total", &[]) >= sweeps + 1.0
        {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counters did not move in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.send_replace(true);
    watchdog.await.unwrap();
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 1);
    assert!(
        value(
            &moved,
            "retrylog_watchdog_last_sweep_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    let histogram = moved
        .iter()
        .find(|sample| sample.metric == "retrylog_watchdog_sweep_duration_seconds")
        .expect("the sweep duration histogram");
    assert!(matches!(histogram.value, Value::Histogram(_)));
}
