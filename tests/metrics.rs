//! `/metrics`, read back with a real Prometheus text parser (`prometheus-parse`): the series
//! docs/metrics.md lists, bounded labels only, and values that move when retries are recorded,
//! refused, projected, and when the watchdog sweeps.
//!
//! A test binary of its own: the process counters live in one registry per process (as in
//! `serve`), which the suite's other tests (tests/retrylog/) move too. Here only these tests
//! run, and each moves series the others leave alone — the HTTP test its routes and the
//! refusal, the watchdog test the sweeps and the watchdog's retries; every test moves
//! `/metrics` itself, which none asserts — so every value is asserted exactly. The database
//! series are each test's own database.

#[allow(dead_code)]
#[path = "retrylog/fixtures.rs"]
mod fixtures;
#[path = "common/temp.rs"]
mod temp;

use std::time::{Duration, Instant};

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
        value(&caught_up, "retrylog_projector_lag_seconds", &[]),
        0.0
    );
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

/// How long each event of the lag test is held back: no projector runs in these tests.
const HELD: Duration = Duration::from_secs(1);

#[sqlx::test(migrations = false)]
async fn the_projector_lag_in_seconds_is_the_age_of_the_oldest_event_it_has_not_applied(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let api = router(&pool, true);
    // An event applied, older than the others: it no longer counts.
    append_ok(&pool, &retry(job(JOB_A))).await;
    projector::catch_up_once(&pool, 1000).await.unwrap();
    tokio::time::sleep(HELD).await;
    // The oldest event not applied (recorded_at is its transaction's start, between these
    // two instants), then, HELD later, a younger one.
    let before_oldest = Instant::now();
    append_ok(&pool, &retry(job(JOB_B))).await;
    let after_oldest = Instant::now();
    tokio::time::sleep(HELD).await;
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;

    let before_scrape = Instant::now();
    let behind = scrape(&api).await;
    let after_scrape = Instant::now();
    assert_eq!(value(&behind, "retrylog_projector_lag_events", &[]), 2.0);
    // The true lag lies between these two; the slack is for comparing the server's clock
    // (now() - recorded_at) with this process's. The applied event would make it 2 s, the
    // younger one 0 s.
    let slack = 0.05;
    let at_least = (before_scrape - after_oldest).as_secs_f64() - slack;
    let at_most = (after_scrape - before_oldest).as_secs_f64() + slack;
    assert!(at_least >= HELD.as_secs_f64() - slack);
    let lag = value(&behind, "retrylog_projector_lag_seconds", &[]);
    assert!(
        (at_least..=at_most).contains(&lag),
        "lag {lag} s, expected {at_least:.3}..={at_most:.3} s"
    );

    projector::catch_up_once(&pool, 1000).await.unwrap();
    let caught_up = scrape(&api).await;
    assert_eq!(value(&caught_up, "retrylog_projector_lag_events", &[]), 0.0);
    assert_eq!(
        value(&caught_up, "retrylog_projector_lag_seconds", &[]),
        0.0
    );
}

#[sqlx::test(migrations = false)]
async fn http_answers_and_refusals_are_counted_by_route_template_and_cause(pool: PgPool) {
    pipeline(&pool).await;
    a2_needs_intervention(&pool).await;
    let api = router(&pool, true);
    let requests = "retrylog_http_requests_total";
    let refusals = "retrylog_appends_refused_total";
    let before = scrape(&api).await;
    assert_eq!(answers_but_metrics(&before), []);
    assert_eq!(value(&before, refusals, &[]), 0.0);

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
    assert_eq!(
        answers_but_metrics(&after),
        [
            ("/api/v1/history".to_string(), "4xx".to_string(), 1.0),
            ("/api/v1/record".to_string(), "4xx".to_string(), 1.0),
            ("unmatched".to_string(), "4xx".to_string(), 1.0),
        ]
    );
    assert_eq!(value(&after, refusals, &[("cause", "limit_reached")]), 1.0);
    assert_eq!(value(&after, refusals, &[]), 1.0);
    // `/metrics` itself, which every test scrapes: at least the scrape before (an answer is
    // counted once it is sent, so a scrape never counts itself).
    let scrapes = [("route", "/metrics"), ("status_class", "2xx")];
    assert!(value(&after, requests, &scrapes) >= 1.0);
    assert!(after
        .iter()
        .all(|sample| !format!("{:?}", sample.labels).contains(&nobody.to_string())));
}

/// Every HTTP answer counted, but those of `/metrics` (which every test of this binary
/// scrapes): route, status class and count, in that order.
fn answers_but_metrics(samples: &[Sample]) -> Vec<(String, String, f64)> {
    let mut answers: Vec<(String, String, f64)> = samples
        .iter()
        .filter(|sample| sample.metric == "retrylog_http_requests_total")
        .filter(|sample| sample.labels.get("route") != Some("/metrics"))
        .map(|sample| {
            let label = |name: &str| sample.labels.get(name).unwrap_or_default().to_string();
            // OpenMetrics types the family, not its `_total` series: the parser reads
            // those as untyped.
            let (Value::Counter(count) | Value::Untyped(count)) = sample.value else {
                panic!("not a count: {sample:?}");
            };
            (label("route"), label("status_class"), count)
        })
        .collect();
    answers.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    answers
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
    assert_eq!(value(&before, "retrylog_watchdog_sweeps_total", &[]), 0.0);
    assert_eq!(value(&before, "retrylog_watchdog_retries_total", &[]), 0.0);

    let (stop, stopped) = watch::channel(false);
    let settings = WatchdogSettings {
        instance: "metrics-watchdog".into(),
        // One sweep of everything, at the start: the next would be an hour later.
        sweep_every: Duration::from_secs(3600),
        ..WatchdogSettings::default()
    };
    let started = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let watchdog = tokio::spawn(retrylog::recovery::run(pool.clone(), settings, stopped));
    // Variant A2 is failed: the first sweep retries it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = scrape(&api).await;
        if value(&now, "retrylog_watchdog_retries_total", &failed) >= 1.0
            && value(&now, "retrylog_watchdog_sweeps_total", &[]) >= 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counters did not move in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    watchdog.await.unwrap();
    let stopped_at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    assert_eq!(retry_count(&pool, variant(JOB_A, VARIANT_A2)).await, 1);

    // Read once the watchdog has stopped: nothing moves them any more.
    let after = scrape(&api).await;
    assert_eq!(
        value(
            &after,
            "retrylog_watchdog_sweeps_total",
            &[("scope", "everything")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "retrylog_watchdog_retries_total", &failed),
        1.0
    );
    assert_eq!(value(&after, "retrylog_watchdog_retries_total", &[]), 1.0);
    // A failure signal may add a sweep of A2's job (which finds it retried): the histogram
    // holds one duration per sweep, whatever their scope.
    assert_eq!(
        value(
            &after,
            "retrylog_watchdog_sweep_duration_seconds_count",
            &[]
        ),
        value(&after, "retrylog_watchdog_sweeps_total", &[])
    );
    let histogram = after
        .iter()
        .find(|sample| sample.metric == "retrylog_watchdog_sweep_duration_seconds")
        .expect("the sweep duration histogram");
    assert!(matches!(histogram.value, Value::Histogram(_)));
    let last_sweep = value(
        &after,
        "retrylog_watchdog_last_sweep_timestamp_seconds",
        &[],
    );
    assert!(
        (started..=stopped_at).contains(&last_sweep),
        "last sweep at {last_sweep}, the watchdog ran from {started} to {stopped_at}"
    );
}
