//! Exact answers to odd input (issue 21, finding 7): a number in `detail` that PostgreSQL's
//! jsonb cannot hold is the caller's mistake at every door (exit 2, HTTP 400, a SQLSTATE of
//! class 22) and writes nothing, while the extremes a detail can hold read back exactly
//! through history, the reports, replay and verify; and the JSON API's writes take only JSON
//! bodies (415 otherwise).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use retrylog::error::CallerMistake;
use retrylog::store::AppendError;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::fixtures::*;

/// `text` read as JSON: serde_json (with `arbitrary_precision`) holds numbers of any size.
fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// What every door must say about `{"n": 1e200000}` (serde_json writes its exponent `e+`).
const OUT_OF_RANGE: &str = "detail.n holds the number 1e+200000, which PostgreSQL cannot store \
     in jsonb (at most 131072 digits before the decimal point and 16383 after)";

#[sqlx::test(migrations = false)]
async fn a_number_past_jsonbs_range_is_the_callers_mistake_at_every_door_and_writes_nothing(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let before = snapshot(&pool).await;
    let job_b = JOB_B.to_string();

    // The CLI: exit 2 and one line naming the detail's key and the number.
    for (detail, line) in [
        (r#"{"n": 1e200000}"#, format!("retrylog: {OUT_OF_RANGE}")),
        (
            r#"{"runs": [{"tiny": -2.5e-20000}]}"#,
            "retrylog: detail.runs[0].tiny holds the number -2.5e-20000, which PostgreSQL \
             cannot store in jsonb (at most 131072 digits before the decimal point and 16383 \
             after)"
                .to_string(),
        ),
    ] {
        let run = retrylog(
            &pool,
            &[
                "record", "--job-id", &job_b, "--reason", "stuck", "--detail", detail,
            ],
        )
        .await;
        assert_eq!(run.code, Some(2), "{detail}: {run:#?}");
        assert_eq!(run.only_problem_line(), line);
    }

    // HTTP: 400 with the same message.
    let api = router(&pool, true);
    let body = json_of(&format!(
        r#"{{"job_id": "{JOB_B}", "reason": "stuck", "detail": {{"n": 1e200000}}}}"#
    ));
    let answer = call(&api, "/api/v1/record", Some(ADMIN), Some(body), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.json);
    assert_eq!(answer.json, json!({ "error": OUT_OF_RANGE }));

    // The Rust door: InvalidInput, the caller's mistake.
    let error = append(
        &pool,
        &retry(job(JOB_B)).with_detail(json_of(r#"{"n": 1e200000}"#)),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&error, AppendError::InvalidInput(message) if message == OUT_OF_RANGE),
        "{error:?}"
    );
    assert!(error.is_caller_mistake());

    // The SQL door: PostgreSQL refuses the jsonb itself, before record_retry runs, with
    // numeric_value_out_of_range (class 22, data exception: the caller's).
    let error = sqlx::query("SELECT record_retry(job_id => $1, reason => 'stuck', detail => $2)")
        .bind(JOB_B)
        .bind(json_of(r#"{"n": 1e200000}"#))
        .execute(&pool)
        .await
        .expect_err("jsonb cannot hold it");
    let (code, message) = database_error(&error);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22003", "value overflows numeric format")
    );

    assert_eq!(snapshot(&pool).await, before, "a refusal wrote something");
}

#[sqlx::test(migrations = false)]
async fn the_rust_range_rule_agrees_with_postgresql_on_every_edge_of_numeric(pool: PgPool) {
    migrated(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    for number in [
        "1e131071",
        "9.999e131071",
        "1e131072",
        "10e131071",
        "0.1e131072",
        "0.001e131074",
        "0.001e131075",
        "-1e131071",
        "1e-16383",
        "1.5e-16383",
        "1.0e-16382",
        "1.00e-16382",
        "0e-16383",
        "0e-16384",
        "0e999999",
        "0e1073741822",
        "0e1073741824",
        "1e-2147483648",
        "123.456",
        "-0.0",
    ] {
        let detail = json_of(&format!(r#"{{"n": {number}}}"#));
        let rust_holds = retrylog::event::number_out_of_range(&detail).is_none();
        let server = sqlx::query("SELECT $1::jsonb")
            .bind(&detail)
            .execute(&mut *conn)
            .await;
        assert_eq!(
            rust_holds,
            server.is_ok(),
            "{number}: the server says {server:?}"
        );
    }
}

/// `1` followed by `zeros` zeros, as PostgreSQL writes 1e`zeros`.
fn one_then_zeros(zeros: usize) -> String {
    format!("1{}", "0".repeat(zeros))
}

#[sqlx::test(migrations = false)]
async fn the_largest_and_smallest_numbers_a_detail_holds_read_back_exactly_everywhere(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let job_a = JOB_A.to_string();
    // jsonb's largest number is written out in 131,072 digits: more than a detail's 16 KiB,
    // so record_retry refuses it as such — the caller's mistake, nothing written.
    let before = snapshot(&pool).await;
    let largest = format!(r#"{{"n": 9.{}e131071}}"#, "9".repeat(40));
    let run = retrylog(
        &pool,
        &[
            "record", "--job-id", &job_a, "--reason", "stuck", "--detail", &largest,
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(
        run.only_problem_line(),
        "retrylog: detail is 131079 bytes, over the limit of 16384 bytes"
    );
    assert_eq!(snapshot(&pool).await, before);

    // The largest and the smallest that fit: {"n": 1e16376} and {"t": 1e-16375} are 16,384
    // bytes each as PostgreSQL writes them, the CLI's and the API's doors.
    let run = retrylog(
        &pool,
        &[
            "record",
            "--job-id",
            &job_a,
            "--reason",
            "stuck",
            "--detail",
            r#"{"n": 1e16376}"#,
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let api = router(&pool, true);
    let body = json_of(&format!(
        r#"{{"job_id": "{JOB_A}", "variant_id": "{VARIANT_A3}", "reason": "failed", "detail": {{"t": 1e-16375}}}}"#
    ));
    let answer = call(&api, "/api/v1/record", Some(ADMIN), Some(body), &[]).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT detail::text FROM retry_history ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let largest = one_then_zeros(16376);
    let smallest = format!("0.{}1", "0".repeat(16374));
    assert_eq!(
        stored,
        [
            format!(r#"{{"n": {largest}}}"#),
            format!(r#"{{"t": {smallest}}}"#)
        ]
    );
    assert!(stored.iter().all(|detail| detail.len() == 16384));

    // history, through the CLI and the API, gives every digit back.
    let run = retrylog(&pool, &["history", "--job-id", &job_a, "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let shown: Vec<String> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["detail"].to_string())
        .collect();
    assert_eq!(
        shown,
        [
            format!(r#"{{"n":{largest}}}"#),
            format!(r#"{{"t":{smallest}}}"#)
        ]
    );
    let answer = call(
        &api,
        &format!("/api/v1/history?job_id={JOB_A}"),
        Some(READER),
        None,
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json[0]["detail"]["n"].to_string(), largest);
    assert_eq!(answer.json[1]["detail"]["t"].to_string(), smallest);

    // Every other read, replay and verify work with them in the log.
    for args in [
        vec!["history", "--job-id", &job_a],
        vec!["history", "--job-id", &job_a, "--format", "csv"],
        vec!["report", "trend", "--since", "1d", "--by", "scenario"],
        vec!["report", "outcomes", "--since", "1d"],
        vec!["report", "stats"],
        vec!["report", "top-variants"],
        vec!["replay"],
        vec!["verify"],
    ] {
        let run = retrylog(&pool, &args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
    }
    assert_verify_clean(&pool).await;
}

/// POSTs `body` as it is, with this `Content-Type` or none, and the admin token.
async fn post_as(
    router: &Router,
    uri: &str,
    content_type: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("authorization", format!("Bearer {ADMIN}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[sqlx::test(migrations = false)]
async fn the_json_apis_writes_refuse_a_body_not_declared_json_with_415_and_write_nothing(
    pool: PgPool,
) {
    pipeline(&pool).await;
    let api = router(&pool, true);
    let document = call(&api, "/api/v1/openapi.json", Some(READER), None, &[])
        .await
        .json;
    let writes = [
        (
            "/api/v1/record",
            json!({"job_id": JOB_B, "reason": "stuck"}),
        ),
        (
            "/api/v1/recover",
            json!({"job_id": JOB_B, "note": "input fixed"}),
        ),
    ];
    let before = snapshot(&pool).await;
    for (uri, body) in &writes {
        for (content_type, given) in [
            (None, "none".to_string()),
            (Some("text/plain"), "\"text/plain\"".to_string()),
            (
                Some("application/x-www-form-urlencoded"),
                "\"application/x-www-form-urlencoded\"".to_string(),
            ),
            (
                Some("application/json; charset=latin1"),
                "\"application/json; charset=latin1\"".to_string(),
            ),
        ] {
            let (status, answer) = post_as(&api, uri, content_type, body).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{uri} {content_type:?}: {answer}"
            );
            assert_eq!(
                answer,
                json!({
                    "error": format!(
                        "the request body must be JSON with Content-Type: application/json \
                         (charset utf-8, if any); got {given}"
                    )
                }),
                "{uri} {content_type:?}"
            );
        }
        assert!(
            document["paths"][uri]["post"]["responses"]
                .get("415")
                .is_some(),
            "the OpenAPI document declares 415 for POST {uri}"
        );
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a refused body wrote something"
    );

    // JSON in UTF-8, said in any case, is accepted.
    let (status, answer) = post_as(
        &api,
        writes[0].0,
        Some("application/json; charset=utf-8"),
        &writes[0].1,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = post_as(&api, writes[1].0, Some("Application/JSON"), &writes[1].1).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}
