//! The HTTP API of `serve`, driven through its router (`retrylog::http::app`): the same rows
//! as the CLI's `--format json` for the same fixtures and flags, the CLI's messages on 400 and
//! 404, tokens and roles (401/403), cross-site writes refused, record and recover through the
//! one library operation, the OpenAPI document against the routes; and `serve`'s own HTTP
//! settings through the binary.

use axum::http::StatusCode;
use axum::Router;
use retrylog::event::RetryReason;
use retrylog::http::{self, ApiContext, Tokens};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::fixtures::*;
use crate::serving::exchange;

/// GET with the read token.
async fn get(router: &Router, uri: &str) -> Answer {
    call(router, uri, Some(READER), None, &[]).await
}

/// The pipeline with retries to every kind of target, a note, and a high count.
async fn audited(pool: &PgPool) {
    pipeline(pool).await;
    append_n(pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_ok(pool, &retry(job(JOB_B))).await;
    a2_needs_intervention(pool).await;
}

/// The CLI's message for a refusal: its stderr without the `retrylog: ` prefix.
fn cli_message(run: &Run) -> String {
    run.problem_lines()
        .first()
        .map(|line| line.trim_start_matches("retrylog: ").to_string())
        .unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn every_report_answers_the_rows_the_cli_prints_for_the_same_flags(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    let cases: [(&str, &[&str]); 9] = [
        ("/api/v1/reports/top-jobs", &["report", "top-jobs"]),
        (
            "/api/v1/reports/top-jobs?limit=1",
            &["report", "top-jobs", "--limit", "1"],
        ),
        ("/api/v1/reports/top-variants", &["report", "top-variants"]),
        (
            "/api/v1/reports/stats?since=30d&high=2",
            &["report", "stats", "--since", "30d", "--high", "2"],
        ),
        ("/api/v1/reports/alerts", &["report", "alerts"]),
        (
            "/api/v1/reports/alerts?min=2&as_of=2099-01-01",
            &["report", "alerts", "--min", "2", "--as-of", "2099-01-01"],
        ),
        (
            "/api/v1/reports/trend?bucket=hour&since=1d&by=reason",
            &[
                "report", "trend", "--bucket", "hour", "--since", "1d", "--by", "reason",
            ],
        ),
        (
            "/api/v1/history?job_id=0a000000-0000-4000-8000-000000000000",
            &[
                "history",
                "--job-id",
                "0a000000-0000-4000-8000-000000000000",
            ],
        ),
        (
            "/api/v1/history?variant_id=0a000000-0000-4000-8000-000000000002&reason=stuck",
            &[
                "history",
                "--variant-id",
                "0a000000-0000-4000-8000-000000000002",
                "--reason",
                "stuck",
            ],
        ),
    ];
    for (uri, args) in cases {
        let answer = get(&api, uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.json);
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        let run = retrylog(&pool, &args).await;
        assert_eq!(answer.json, run.json(), "{uri} and retrylog {args:?}");
        assert!(
            !answer.json.as_array().unwrap().is_empty() || uri.contains("as_of"),
            "{uri}: the fixture gives rows to compare"
        );
    }
}

/// A bad parameter is a 400 with the CLI's message in the API's terms: the query parameter
/// or JSON key where the CLI names its flag (`since`, not `--since`; `limit`, not `--limit
/// <LIMIT>`), whether the message is clap's or the library's.
#[sqlx::test(migrations = false)]
async fn a_bad_parameter_is_a_400_with_the_clis_message_naming_the_parameter(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    // The URI, the same flags on the command line, and each flag's parameter.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        ("/api/v1/reports/stats?since=soonish", &["report", "stats", "--since", "soonish"], &[("--since", "since")]),
        ("/api/v1/reports/trend?bucket=hour&since=3000d", &["report", "trend", "--bucket", "hour", "--since", "3000d"],
         &[("--bucket", "bucket"), ("--since", "since")]),
        ("/api/v1/history?job_id=0a000000-0000-4000-8000-000000000000&since=2026-02-01&until=2026-01-01",
         &["history", "--job-id", "0a000000-0000-4000-8000-000000000000", "--since", "2026-02-01", "--until", "2026-01-01"],
         &[("--since", "since"), ("--until", "until")]),
        ("/api/v1/reports/alerts?as_of=next+week", &["report", "alerts", "--as-of", "next week"], &[("--as-of", "as_of")]),
    ];
    for (uri, args, flags) in cases {
        let answer = get(&api, uri).await;
        let run = retrylog(&pool, args).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(run.code, Some(2), "{run:#?}");
        let cli = cli_message(&run);
        let mut api_terms = cli.clone();
        for (flag, parameter) in flags {
            assert!(cli.contains(flag), "{cli}");
            api_terms = api_terms.replace(flag, parameter);
        }
        assert_eq!(answer.json["error"], api_terms, "{uri}");
    }
    // Flags clap refuses, parameters the API does not take, a history without its target.
    for (uri, message) in [
        (
            "/api/v1/reports/top-jobs?limit=0",
            "invalid value '0' for 'limit': 0 is not in 1..9223372036854775807",
        ),
        (
            "/api/v1/reports/top-jobs?colour=blue",
            "unknown parameter \"colour\"",
        ),
        (
            "/api/v1/reports/top-jobs?format=csv",
            "unknown parameter \"format\"",
        ),
        (
            "/api/v1/reports/top-jobs?limt=3",
            "unknown parameter \"limt\" (a similar one exists: limit)",
        ),
        (
            "/api/v1/reports/trend?bucket=year",
            "invalid value 'year' for 'bucket' [possible values: hour, day, week]",
        ),
        (
            "/api/v1/history",
            "history needs a target: give the parameter job_id or variant_id",
        ),
        (
            "/api/v1/history?reason=stuck",
            "history needs a target: give the parameter job_id or variant_id",
        ),
        // A NUL (a URL can hold one, a command line cannot): schemathesis found it a 500.
        (
            "/api/v1/targets?scenario=fail%00ed",
            "invalid scenario: it holds a NUL character (%00)",
        ),
        (
            "/api/v1/history?job_id=0a000000-0000-4000-8000-000000000000&step=a%00",
            "invalid step: it holds a NUL character (%00)",
        ),
    ] {
        let answer = get(&api, uri).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(answer.json["error"], message, "{uri}");
    }
    let answer = get(&api, "/api/v1/history?job_id=not-a-uuid").await;
    let error = answer.json["error"].as_str().unwrap();
    assert!(
        error.starts_with("invalid value 'not-a-uuid' for 'job_id': "),
        "{error}"
    );

    // The JSON bodies' keys likewise; an id of the other kind names the key it belongs in.
    let record = call(
        &api,
        "/api/v1/record",
        Some(ADMIN),
        Some(json!({"job_id": JOB_A, "variant_id": JOB_A, "reason": "stuck"})),
        &[],
    )
    .await;
    assert_eq!(record.status, StatusCode::NOT_FOUND, "{}", record.json);
    assert_eq!(
        record.json["error"],
        format!("{JOB_A} is a job, not a variant: use job_id")
    );
    let recover = call(
        &api,
        "/api/v1/recover",
        Some(ADMIN),
        Some(json!({"variant_id": JOB_B, "note": "x"})),
        &[],
    )
    .await;
    assert_eq!(
        recover.json["error"],
        format!("{JOB_B} is a job, not a variant: use job_id")
    );
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let recover = call(
        &api,
        "/api/v1/recover",
        Some(ADMIN),
        Some(json!({"job_id": JOB_B, "note": "x"})),
        &[],
    )
    .await;
    assert_eq!(recover.status, StatusCode::BAD_REQUEST, "{}", recover.json);
    assert_eq!(
        recover.json["error"],
        format!(
            "job {JOB_B} is done: a recovery by hand changes only running or failed jobs (name \
             the status with to_status to set another)"
        )
    );
}

#[sqlx::test(migrations = false)]
async fn unknown_ids_and_paths_are_404(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    let nobody = Uuid::from_u128(7);
    let answer = get(&api, &format!("/api/v1/history?variant_id={nobody}")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let run = retrylog(&pool, &["history", "--variant-id", &nobody.to_string()]).await;
    assert_eq!(answer.json["error"], cli_message(&run));
    let before = snapshot(&pool).await;
    let answer = call(
        &api,
        "/api/v1/recover",
        Some(ADMIN),
        Some(json!({"variant_id": nobody, "note": "x"})),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.json);
    assert_eq!(
        answer.json["error"],
        format!("unknown variant {nobody}: no such row")
    );
    assert_eq!(
        get(&api, "/api/v1/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn tokens_roles_and_origins_decide_and_a_refused_request_writes_nothing(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    let read_only = router(&pool, false);
    let recover = json!({"variant_id": VARIANT_A2, "note": "try again"});
    let record = json!({"job_id": JOB_B, "reason": "stuck"});
    let before = snapshot(&pool).await;

    // Reads: a token is needed when the server has tokens; none when it has none.
    let missing = call(&api, "/api/v1/reports/alerts", None, None, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    let wrong = call(&api, "/api/v1/reports/alerts", Some("guess"), None, &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&api, "/api/v1/reports/alerts").await.status,
        StatusCode::OK
    );
    let anonymous = call(&read_only, "/api/v1/reports/alerts", None, None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::OK);

    // Writes: admin only, same-origin only, never without tokens.
    type Case<'a> = (
        &'a Router,
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        StatusCode,
    );
    let refused: [Case; 9] = [
        (&api, "/api/v1/recover", None, &[], StatusCode::UNAUTHORIZED),
        (
            &api,
            "/api/v1/recover",
            Some("guess"),
            &[],
            StatusCode::UNAUTHORIZED,
        ),
        (
            &api,
            "/api/v1/recover",
            Some(READER),
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            &api,
            "/api/v1/record",
            Some(READER),
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            &read_only,
            "/api/v1/recover",
            None,
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            &read_only,
            "/api/v1/record",
            Some(ADMIN),
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            &api,
            "/api/v1/recover",
            Some(ADMIN),
            &[("sec-fetch-site", "cross-site")],
            StatusCode::FORBIDDEN,
        ),
        (
            &api,
            "/api/v1/recover",
            Some(ADMIN),
            &[
                ("origin", "https://evil.example"),
                ("host", "retrylog.local"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            &api,
            "/api/v1/record",
            Some(ADMIN),
            &[("origin", "null")],
            StatusCode::FORBIDDEN,
        ),
    ];
    for (router, uri, token, headers, status) in refused {
        let body = if uri.ends_with("recover") {
            &recover
        } else {
            &record
        };
        let answer = call(router, uri, token, Some(body.clone()), headers).await;
        assert_eq!(
            answer.status, status,
            "{uri} {token:?} {headers:?}: {}",
            answer.json
        );
        assert!(answer.json["error"].is_string());
    }
    let read_role = call(
        &api,
        "/api/v1/recover",
        Some(READER),
        Some(recover.clone()),
        &[],
    )
    .await;
    assert_eq!(
        read_role.json["error"],
        "token viewer has the read role; recording and recovering need admin"
    );
    assert_eq!(
        snapshot(&pool).await,
        before,
        "no refused request wrote anything"
    );

    // The same origin, as the dashboard's own pages send it, is accepted.
    let same_origin = call(
        &api,
        "/api/v1/record",
        Some(ADMIN),
        Some(record),
        &[
            ("origin", "http://retrylog.local"),
            ("host", "retrylog.local"),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!(
        same_origin.status,
        StatusCode::CREATED,
        "{}",
        same_origin.json
    );
    assert_eq!(
        same_origin.json["actor"], "ops-alice",
        "{}",
        same_origin.json
    );
}

#[sqlx::test(migrations = false)]
async fn bad_bodies_are_400_and_write_nothing(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    let before = snapshot(&pool).await;
    let cases = [
        (
            "/api/v1/recover",
            json!({"variant_id": VARIANT_A2, "note": "  "}),
            "a recovery needs a note saying why (note): it is empty",
        ),
        (
            "/api/v1/recover",
            json!({"variant_id": VARIANT_A2, "note": "x", "to_status": "gone"}),
            "unknown status \"gone\" (expected pending, running, done or failed)",
        ),
        (
            "/api/v1/recover",
            json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "note": "x"}),
            "name exactly one of job_id and variant_id",
        ),
        (
            "/api/v1/record",
            json!({"job_id": JOB_B, "reason": "bored"}),
            "unknown retry reason \"bored\" (expected stuck, failed or manual_recovery)",
        ),
        (
            "/api/v1/record",
            json!({"job_id": JOB_B, "reason": "stuck", "detail": [1]}),
            "detail must be a JSON object, e.g. '{\"error\": \"timeout\"}'",
        ),
    ];
    for (uri, body, message) in cases {
        let answer = call(&api, uri, Some(ADMIN), Some(body.clone()), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.json
        );
        assert_eq!(answer.json["error"], message, "{body}");
    }
    let answer = call(
        &api,
        "/api/v1/record",
        Some(ADMIN),
        Some(json!({"job_id": JOB_B, "reason": "stuck", "colour": 1})),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.json["error"]
        .as_str()
        .unwrap()
        .contains("unknown field `colour`"));
    // The limit: job A2 is at 3; a plain retry is refused with the CLI's message.
    let answer = call(
        &api,
        "/api/v1/record",
        Some(ADMIN),
        Some(json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "reason": "failed"})),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.json["error"]
            .as_str()
            .unwrap()
            .starts_with("retry limit reached"),
        "{}",
        answer.json
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn recover_over_the_api_is_the_clis_operation_with_the_tokens_name_and_is_idempotent(
    pool: PgPool,
) {
    audited(&pool).await;
    let api = router(&pool, true);
    let alerts = get(&api, "/api/v1/reports/alerts").await.json;
    assert!(alerts
        .as_array()
        .unwrap()
        .iter()
        .any(|row| row["id"] == VARIANT_A2.to_string()));
    let body = json!({"variant_id": VARIANT_A2, "note": "input fixed", "request_id": "click-1"});
    let first = call(
        &api,
        "/api/v1/recover",
        Some(ADMIN),
        Some(body.clone()),
        &[],
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    // One object, the event: not an array of one.
    assert!(first.json.is_object(), "{}", first.json);
    let event = &first.json;
    assert_eq!(event["actor"], "ops-alice");
    assert_eq!(event["reason"], RetryReason::ManualRecovery.to_string());
    assert_eq!(
        (event["from_status"].as_str(), event["to_status"].as_str()),
        (Some("failed"), Some("done"))
    );
    assert_eq!(event["detail"]["note"], "input fixed");
    assert_eq!(
        event["event_id"],
        retrylog::recovery::request_event_id("click-1").to_string()
    );

    let after = snapshot(&pool).await;
    let again = call(&api, "/api/v1/recover", Some(ADMIN), Some(body), &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json, first.json);
    assert_eq!(
        snapshot(&pool).await,
        after,
        "a repeated request changes nothing"
    );

    // The same event through the CLI's history; the alert is gone.
    let history = get(
        &api,
        &format!("/api/v1/history?variant_id={VARIANT_A2}&reason=manual_recovery"),
    )
    .await;
    let row = &history.json[0];
    for key in [
        "seq",
        "event_id",
        "actor",
        "from_status",
        "to_status",
        "detail",
        "hash",
    ] {
        assert_eq!(row[key], event[key], "{key}");
    }
    let alerts = get(&api, "/api/v1/reports/alerts").await.json;
    assert!(!alerts
        .as_array()
        .unwrap()
        .iter()
        .any(|row| row["id"] == VARIANT_A2.to_string()));
    assert_verify_clean(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn the_trends_rows_carry_the_documented_fields_in_order_with_recovered_after_retries(
    pool: PgPool,
) {
    audited(&pool).await;
    // Job B reaches done: the watchdog's observation decides its one retry recovered.
    sqlx::query("UPDATE jobs SET status = 'done' WHERE job_id = $1")
        .bind(JOB_B)
        .execute(&pool)
        .await
        .unwrap();
    let decided: i64 = sqlx::query_scalar(
        "SELECT retry_outcome_observe(ARRAY['prepare','generate','segment','iou_eval'],
                                      'test', NULL)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(decided, 1);
    let api = router(&pool, true);
    let document = get(&api, "/api/v1/openapi.json").await.json;
    let schema = &document["components"]["schemas"]["TrendRow"];
    let documented: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented[2..4], ["retries", "recovered"]);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(required, documented);
    assert_eq!(
        document["paths"]["/api/v1/reports/trend"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["items"]["$ref"],
        "#/components/schemas/TrendRow"
    );

    let answer = get(&api, "/api/v1/reports/trend?bucket=hour&since=1h").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let rows = answer.json.as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let fields: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, documented, "{row}");
    }
    let recovered = |group: &str| -> i64 {
        rows.iter()
            .filter(|row| row["group"] == group)
            .map(|row| row["recovered"].as_i64().unwrap())
            .sum()
    };
    assert_eq!((recovered("job"), recovered("variant")), (1, 0), "{rows:?}");
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_lists_every_route_and_every_documented_path_answers(pool: PgPool) {
    audited(&pool).await;
    let api = router(&pool, true);
    let document = get(&api, "/api/v1/openapi.json").await.json;
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = http::ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    routes.sort();
    assert_eq!(
        documented, routes,
        "the document and the router list the same routes"
    );
    for (method, path) in &documented {
        let (uri, body) = match (method.as_str(), path.as_str()) {
            ("get", "/api/v1/history" | "/api/v1/chain") => {
                (format!("{path}?job_id={JOB_A}"), None)
            }
            ("get", _) => (path.clone(), None),
            ("post", "/api/v1/record") => (
                path.clone(),
                Some(json!({"job_id": JOB_B, "reason": "stuck"})),
            ),
            ("post", "/api/v1/recover/bulk") => (
                path.clone(),
                Some(json!({"filter": {"kind": "job"}, "note": "documented", "dry_run": true})),
            ),
            ("post", _) => (
                path.clone(),
                Some(json!({"job_id": JOB_B, "note": "documented"})),
            ),
            _ => unreachable!(),
        };
        let answer = call(&api, &uri, Some(ADMIN), body, &[]).await;
        assert!(
            answer.status.is_success(),
            "{method} {uri}: {} {}",
            answer.status,
            answer.json
        );
        // Every documented status is one the operation declares, and a JSON answer has the
        // shape its schema says: an array, or one object (record and recover answer one event).
        let declared = &document["paths"][path][method]["responses"];
        assert!(
            declared.get(answer.status.as_str()).is_some(),
            "{method} {path} answers {}",
            answer.status
        );
        let mut schema = &declared[answer.status.as_str()]["content"]["application/json"]["schema"];
        if let Some(name) = schema["$ref"].as_str() {
            let name = name.strip_prefix("#/components/schemas/").unwrap();
            schema = &document["components"]["schemas"][name];
        }
        if !schema.is_null() {
            let array = schema["type"] == "array";
            assert_eq!(
                answer.json.is_array(),
                array,
                "{method} {path}: the document says {schema}, the answer is {}",
                answer.json
            );
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_base_path_moves_everything_under_it_and_every_answer_has_a_csp(pool: PgPool) {
    migrated(&pool).await;
    let ctx = ApiContext {
        pool: pool.clone(),
        read: None,
        tokens: None,
        steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
        base_path: "/retrylog".into(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    };
    let api = http::app(ctx);
    let ready = call(&api, "/retrylog/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.json);
    assert_eq!(ready.json["status"], "ready");
    assert_eq!(
        call(&api, "/retrylog/healthz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    let outside = call(&api, "/healthz", None, None, &[]).await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    for answer in [ready, outside] {
        let csp = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    }
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_a_public_address_without_tokens_and_a_bad_tokens_file(pool: PgPool) {
    migrated(&pool).await;
    let bad_file = TempPath::new("tokens");
    std::fs::write(&bad_file, "alice superuser 00\n").unwrap();
    let bad = bad_file.to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 3] = [
        (
            &["serve", "--listen", "0.0.0.0:0"],
            "is not a loopback address: serving beyond this machine needs a tokens file",
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--tokens-file", &bad],
            "line 1: unknown role \"superuser\"",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--base-path",
                "retrylog/",
            ],
            "invalid --base-path",
        ),
    ];
    for (args, message) in cases {
        let run = retrylog(&pool, args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:#?}");
    }
}

/// The token `token new` showed on stderr.
fn token_on(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix("retrylog: token: "))
        .unwrap_or_else(|| panic!("no token on stderr: {stderr}"))
        .to_string()
}

/// `retrylog token new NAME ROLE >> tokens`, the way one makes a tokens file, leaves a file
/// `serve` loads, and each token shown on the terminal (stderr) is accepted by it: stdout holds
/// the file's line and nothing else.
#[tokio::test]
async fn token_new_appended_to_a_tokens_file_leaves_a_valid_file_whose_tokens_it_accepts() {
    let dir = TempPath::dir("token-new");
    let file = dir.join("tokens");
    std::fs::write(&file, "# the API's tokens\n").unwrap();
    let mut shown = Vec::new();
    for (name, role) in [("ops-carol", "admin"), ("grafana", "read")] {
        let line = format!(
            "'{}' token new {name} {role} >> '{}' 2> '{}'",
            env!("CARGO_BIN_EXE_retrylog"),
            file.display(),
            dir.join("stderr").display()
        );
        let run = tokio::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .await
            .unwrap();
        assert!(run.status.success(), "{line}: {run:?}");
        let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap();
        shown.push((name, role, token_on(&stderr)));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines().count(),
        3,
        "a comment and one line per token: {text}"
    );
    let tokens = Tokens::load(&file).unwrap_or_else(|error| panic!("{error}: {text}"));
    for (name, role, token) in shown {
        assert!(!text.contains(&token), "the file holds no token: {text}");
        let (found, found_role, _) = tokens
            .login(&token)
            .unwrap_or_else(|| panic!("the token shown for {name} is not accepted: {text}"));
        assert_eq!(
            (found.as_str(), found_role.to_string()),
            (name, role.into())
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_token_from_token_new_opens_the_api_of_a_running_serve(pool: PgPool) {
    pipeline(&pool).await;
    let run = retrylog(&pool, &["token", "new", "ops-bob", "admin"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let token = token_on(&run.stderr);
    let line = run.stdout.trim_end().to_string();
    assert!(line.starts_with("ops-bob admin "), "{line}");
    assert!(!line.contains(&token), "the file's line holds no secret");
    let path = TempPath::new("tokens");
    std::fs::write(&path, format!("{line}\n")).unwrap();
    assert!(Tokens::load(&path).is_ok());

    let mut serve = serve_command(
        &pool,
        &[
            "--no-watchdog",
            "--listen",
            "127.0.0.1:0",
            "--tokens-file",
            path.to_str().unwrap(),
        ],
    )
    .await
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some(rest) = line.split("HTTP on http://").nth(1) {
                return rest.split('/').next().unwrap().to_string();
            }
        }
        panic!("serve ended without saying where it listens");
    })
    .await
    .expect("serve listens within 30 s");
    let path = "/api/v1/reports/top-jobs";
    let (with_token, _) = exchange(&addr, path, Some(&token), None).await;
    assert!(with_token.starts_with("HTTP/1.1 200"));
    let (without, _) = exchange(&addr, path, None, None).await;
    assert!(without.starts_with("HTTP/1.1 401"));
    stop_serve(serve).await;
}
