//! The HTTP doors' exact answers, each of which a mutant once changed without a test failing:
//! the security headers' values, a conflict as 409, `/metrics` closed without a token, a
//! browser's own navigation (`Sec-Fetch-Site: none`) allowed to write, and `serve --no-http`
//! listening nowhere.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fixtures::*;

#[sqlx::test(migrations = false)]
async fn every_answer_carries_the_security_headers_with_their_exact_values(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, true);
    for (uri, token) in [
        ("/healthz", None),
        ("/api/v1/reports/stats", Some(READER)),
        ("/api/v1/reports/stats", None),
        ("/login", None),
        ("/no/such/path", None),
    ] {
        let answer = call(&app, uri, token, None, &[]).await;
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_string())
        };
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{uri}"
        );
        assert_eq!(
            header("referrer-policy").as_deref(),
            Some("same-origin"),
            "{uri}"
        );
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some("default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
            "{uri}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_stale_expected_attempt_is_a_409_conflict_that_writes_nothing(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, true);
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    let before = snapshot(&pool).await;

    let body = json!({"job_id": JOB_A, "variant_id": VARIANT_A1, "reason": "stuck", "expected_attempt": 1});
    let answer = call(&app, "/api/v1/record", Some(ADMIN), Some(body), &[]).await;

    assert_eq!(answer.status.as_u16(), 409, "{}", answer.json);
    assert!(
        answer.json["error"].as_str().unwrap().contains("attempt"),
        "{}",
        answer.json
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn metrics_need_a_token_when_the_server_has_tokens(pool: PgPool) {
    migrated(&pool).await;
    let app = router(&pool, true);
    let without = call(&app, "/metrics", None, None, &[]).await;
    assert_eq!(without.status.as_u16(), 401);
    let unknown = call(&app, "/metrics", Some("not-a-token"), None, &[]).await;
    assert_eq!(unknown.status.as_u16(), 401);
    let with = call(&app, "/metrics", Some(READER), None, &[]).await;
    assert_eq!(with.status.as_u16(), 200);
}

#[sqlx::test(migrations = false)]
async fn a_write_from_the_browsers_own_navigation_is_allowed_and_cross_site_is_not(pool: PgPool) {
    pipeline(&pool).await;
    let app = router(&pool, true);
    let record = |headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        async move {
            let body = json!({"job_id": JOB_B, "reason": "stuck"});
            call(&app, "/api/v1/record", Some(ADMIN), Some(body), headers)
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(record(&[("sec-fetch-site", "none")]).await, 201);
    assert_eq!(record(&[("sec-fetch-site", "same-origin")]).await, 201);
    assert_eq!(record(&[("sec-fetch-site", "cross-site")]).await, 403);
    assert_eq!(record(&[("sec-fetch-site", "same-site")]).await, 403);
    assert_eq!(attempts(&pool, job(JOB_B)).await, [1, 2]);
}

#[sqlx::test(migrations = false)]
async fn serve_with_no_http_listens_on_no_port(pool: PgPool) {
    pipeline(&pool).await;
    // A port that was free a moment ago: --no-http must leave it free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = serve_command(&pool, &["--no-http", "--listen", &listen])
        .await
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = log.next_line().await.unwrap() {
            let started = line.contains("running the recovery watchdog");
            seen.push(line);
            if started {
                return;
            }
        }
    })
    .await
    .expect("serve starts its watchdog within 20 s");
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });

    assert!(
        !seen.iter().any(|line| line.contains("HTTP on")),
        "{seen:#?}"
    );
    let connected = tokio::net::TcpStream::connect(&listen).await;
    assert!(connected.is_err(), "something listens on {listen}");
    stop_serve(serve).await;
}

#[sqlx::test(migrations = false)]
async fn a_token_name_follows_the_text_rule_of_every_actor(pool: PgPool) {
    migrated(&pool).await;
    for name in ["ops\u{202e}evil", "ops\u{200b}alice", "ops\u{1b}[31m"] {
        let run = retrylog(&pool, &["token", "new", name, "admin"]).await;
        assert_eq!(run.code, Some(2), "{name:?}: {run:#?}");
        assert!(run.stderr.contains("invalid token name"), "{run:#?}");
        assert!(
            !run.stderr.contains(name),
            "the name is printed escaped: {run:#?}"
        );
        // A line with such a name in a tokens file is refused too.
        let file = TempPath::new("tokens");
        std::fs::write(&file, format!("{name} read {}\n", "0".repeat(64))).unwrap();
        let error = retrylog::http::Tokens::load(&file).unwrap_err().to_string();
        assert!(error.contains("invalid name"), "{error}");
        assert!(!error.contains(name), "{error}");
    }
}
