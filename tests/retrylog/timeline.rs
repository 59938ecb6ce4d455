//! The target page's timeline: its filters from the URL narrow the rows to the hand-computed
//! ones, and to exactly the rows `GET /api/v1/history` gives for the same parameters (one
//! definition); a filter the history refuses keeps the page, with the refusal beside its field
//! and 400; each attempt shows its outcome and its why; the target's own id is not on every
//! row; the detail opens into key/values that are whole and wrap inside the page.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{Duration, Utc};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::dashboard::{serve, Browser};
use crate::fixtures::*;
use retrylog::event::RetryReason;

/// The message of A1's last retry: long, with spaces.
const MESSAGE: &str = "the input file /data/batches/2026-11/segment-0042/frames.tar could not \
                       be read after the network share dropped; the step was run again";

/// Job A's timeline, in log order:
///
/// | # | target     | when      | reason | step     | actor     | detail                  |
/// |---|------------|-----------|--------|----------|-----------|-------------------------|
/// | 1 | variant A1 | 3 days ago| stuck  | generate | watchdog  | `{}`                    |
/// | 2 | job A      | 2 days ago| stuck  | prepare  | watchdog  | `{}`                    |
/// | 3 | variant A1 | 1 day ago | failed | segment  | watchdog  | error: CUDA out of mem. |
/// | 4 | variant A1 | 1 hour ago| failed | segment  | api:bob   | long error, message, nested |
async fn timeline_log(pool: &PgPool) {
    pipeline(pool).await;
    let a1 = variant(JOB_A, VARIANT_A1);
    let at = |ago: Duration| Some(Utc::now() - ago);
    let mut first = retry(a1);
    first.actor = "watchdog".into();
    first.step = Some("generate".into());
    first.occurred_at = at(Duration::days(3));
    append_ok(pool, &first).await;
    let mut own = retry(job(JOB_A));
    own.actor = "watchdog".into();
    own.step = Some("prepare".into());
    own.occurred_at = at(Duration::days(2));
    append_ok(pool, &own).await;
    let mut failed = retry(a1);
    failed.reason = RetryReason::Failed;
    failed.actor = "watchdog".into();
    failed.step = Some("segment".into());
    failed.occurred_at = at(Duration::days(1));
    failed.detail = json!({"error": "CUDA out of memory"});
    append_ok(pool, &failed).await;
    let mut last = retry(a1);
    last.reason = RetryReason::Failed;
    last.actor = "api:bob".into();
    last.step = Some("segment".into());
    last.occurred_at = at(Duration::hours(1));
    last.detail = json!({
        "error": "E".repeat(300),
        "message": MESSAGE,
        "context": {"host": "worker-7", "attempts": [1, 2, 3], "env": {"GPU": "A100"}},
    });
    append_ok(pool, &last).await;
}

/// A GET through the read-only router: its status and body.
async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// `html`'s text with the entities a template writes read back.
fn unescape(html: &str) -> String {
    html.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Each filter narrows job A's timeline to the rows computed by hand in [`timeline_log`], and
/// to the very rows the API's history gives for the same parameters.
#[sqlx::test(migrations = false)]
async fn the_timeline_filters_give_the_hand_computed_rows_and_the_apis(pool: PgPool) {
    timeline_log(&pool).await;
    let router = router(&pool, false);
    // (query, the rows by number in timeline_log)
    let cases: [(&str, &[usize]); 8] = [
        ("", &[1, 2, 3, 4]),
        ("reason=failed", &[3, 4]),
        ("step=generate", &[1]),
        ("actor=api%3Abob", &[4]),
        ("since=36h", &[3, 4]),
        ("since=4d&until=30h", &[1, 2]),
        ("reason=failed&actor=watchdog", &[3]),
        // A form sends its blank fields: they filter nothing.
        ("reason=&step=&actor=&since=&until=", &[1, 2, 3, 4]),
    ];
    let when: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
           FROM retry_history WHERE job_id = $1 ORDER BY seq",
    )
    .bind(JOB_A)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(when.len(), 4);
    for (query, expected) in cases {
        let (status, html) = get(&router, &format!("/targets/job/{JOB_A}?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {html}");
        let shown: Vec<&str> = html
            .split("<td class=\"when\">")
            .skip(1)
            .map(|rest| &rest[..rest.find('<').unwrap()])
            .collect();
        let wanted: Vec<&str> = expected.iter().map(|n| when[n - 1].as_str()).collect();
        assert_eq!(shown, wanted, "{query}");
        // The API, given the same parameters (less the blank ones a form sends).
        let api_query: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && !pair.ends_with('='))
            .collect();
        let uri = format!("/api/v1/history?job_id={JOB_A}&{}", api_query.join("&"));
        let api = call(&router, &uri, None, None, &[]).await;
        assert_eq!(api.status, StatusCode::OK, "{uri}: {}", api.json);
        assert_eq!(
            api.json.as_array().unwrap().len(),
            expected.len(),
            "{uri}: the API's rows"
        );
    }
}

/// A filter the history cannot use keeps the page (its cards, its form as typed) with the
/// refusal beside the field, 400; a parameter of no field is said above the form.
#[sqlx::test(migrations = false)]
async fn a_bad_timeline_filter_keeps_the_page_with_the_error_beside_its_field(pool: PgPool) {
    timeline_log(&pool).await;
    let router = router(&pool, false);
    for (query, field, message) in [
        (
            "since=7x",
            "since",
            "since: \"7x\" is not a duration or a time (like 7d, 12h or 2026-11-01)",
        ),
        (
            "reason=bored",
            "reason",
            "reason: \"bored\" is not valid: unknown retry reason",
        ),
        (
            "job_id=x",
            "filter",
            "job_id: the page's address names its target",
        ),
    ] {
        let (status, html) = get(&router, &format!("/targets/job/{JOB_A}?{query}")).await;
        let html = unescape(&html);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let marker = format!("id=\"{field}-error\" role=\"alert\">");
        let at = html
            .find(&marker)
            .unwrap_or_else(|| panic!("{query}: no #{field}-error in {html}"));
        assert!(
            html[at + marker.len()..].starts_with(message),
            "{query}: {}",
            &html[at..at + 200]
        );
        assert!(html.contains("id=\"status\""), "{query}: the page's cards");
        assert!(!html.contains("<td class=\"when\">"), "{query}: no rows");
    }
    // An unknown target is still the 404 page, filter or none.
    let (status, _) = get(
        &router,
        "/targets/job/00000000-0000-4000-8000-00000000dead?since=7x",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    browser
        .goto(&format!(
            "{}/targets/job/{JOB_A}?reason=failed&since=7x",
            served.base
        ))
        .await;
    assert_eq!(browser.count("#error").await, 0, "not the error page");
    let beside = browser
        .client
        .execute(
            "const field = document.getElementById('since');
             return [field.value, field.getAttribute('aria-invalid'),
                     field.closest('label').nextElementSibling.id,
                     document.querySelector('#reason option[selected]').value,
                     document.getElementById('since-error').innerText];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        beside,
        json!([
            "7x",
            "true",
            "since-error",
            "failed",
            "since: \"7x\" is not a duration or a time (like 7d, 12h or 2026-11-01)"
        ])
    );
    // (The console logs the page's 400 itself, as it should.)
    browser.close().await;
}

/// In the browser: the URL's filter narrows the rows; each shows its attempt, the variant it
/// is of (never the job's own id), its outcome and its why as the API says them; the detail
/// opens into every key with its whole value, wrapped inside the page.
#[sqlx::test(migrations = false)]
async fn the_timeline_shows_outcome_why_and_the_whole_detail_per_attempt(pool: PgPool) {
    timeline_log(&pool).await;
    let router = router(&pool, false);
    let api = call(
        &router,
        &format!("/api/v1/history?job_id={JOB_A}&reason=failed"),
        None,
        None,
        &[],
    )
    .await;
    let expected: Vec<Value> = api
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            json!([
                row["attempt"].to_string(),
                format!("variant {VARIANT_A1}"),
                row["outcome"],
                row["why"]
            ])
        })
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(
        expected[0][3],
        json!("failed at step segment; error: CUDA out of memory")
    );

    let served = serve(&pool).await;
    let browser = Browser::open(false).await;
    browser.login(&served, READER).await;
    browser
        .goto(&format!(
            "{}/targets/job/{JOB_A}?reason=failed",
            served.base
        ))
        .await;
    let rows = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#timeline tbody tr.entry')].map(tr => {
                 const cells = [...tr.children].map(td => td.innerText.trim());
                 const outcome = tr.querySelector('td.outcome').innerText.split(' ')[0];
                 return [cells[0], cells[1], outcome, cells[7]]; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows, Value::Array(expected));
    assert!(
        !browser
            .text("#timeline tbody")
            .await
            .contains(&JOB_A.to_string()),
        "the job's own id is not repeated on its rows"
    );
    let selected = browser.text("#reason option[selected]").await;
    assert_eq!(selected, "failed");

    // The last attempt's detail, opened: every key, every value whole, inside the viewport.
    let detail = browser
        .client
        .execute(
            "const details = [...document.querySelectorAll('#timeline td.detail details')].pop();
             details.querySelector('summary').click();
             const pairs = {};
             const vw = document.documentElement.clientWidth;
             let overflowing = [];
             for (const dt of details.querySelectorAll('dt')) {
                 const dd = dt.nextElementSibling;
                 pairs[dt.innerText] = dd.innerText;
                 const r = dd.getBoundingClientRect();
                 if (dd.scrollWidth > dd.clientWidth + 1 || r.right > vw)
                     overflowing.push(dt.innerText);
             }
             return [details.querySelector('summary').innerText, pairs, overflowing];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        detail[0],
        json!("detail: error, context, message"),
        "the keys in the order the log keeps them (jsonb: shorter first)"
    );
    assert_eq!(detail[1]["error"], json!("E".repeat(300)));
    assert_eq!(detail[1]["message"], json!(MESSAGE));
    let context = detail[1]["context"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(context).unwrap(),
        json!({"host": "worker-7", "attempts": [1, 2, 3], "env": {"GPU": "A100"}}),
        "the nested value is whole JSON"
    );
    assert!(
        context.contains("\n  \"env\": {\n    \"GPU\": \"A100\""),
        "indented: {context}"
    );
    browser.screenshot("target-timeline-detail").await;
    assert_eq!(detail[2], json!([]), "no value overflows its box");
    browser.assert_no_console_problems().await;
    browser.close().await;
}
