//! A database outage fails fast: with the server stopped, `serve` answers `/healthz` within a
//! second and `/readyz` 503 within a second, API reads and writes answer 503 with
//! `Retry-After` within `--db-timeout`, a command exits 69 within it — and when the server
//! returns, serve is ready again by itself and the next write goes through.

use std::time::{Duration, Instant};

use retrylog::connect::{start_private_cluster, stop_private_cluster};
use sqlx::postgres::PgPoolOptions;

use crate::crash::Scratch;
use crate::fixtures::*;
use crate::serving::{exchange, start_serve, status_of};

/// The `Retry-After` header of a response, if any.
fn retry_after(response: &str) -> Option<&str> {
    response
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix("retry-after: "))
        .map(str::trim)
}

#[tokio::test]
async fn with_the_database_down_serve_answers_503_fast_and_is_ready_again_when_it_returns() {
    let (scratch, database) = Scratch::with_database("outage", "retrylog_outage").await;
    let data_dir = scratch.data_dir();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(database)
        .await
        .unwrap();
    pipeline(&pool).await;
    let url = database_url(&pool).await;
    let served = start_serve(&pool, &["--db-timeout", "2s"]).await;
    let addr = served.addr.clone();
    let _log_on_panic = served.log_on_panic();
    // serve listens before its start-up is over, and the rest of it (the watchdog's settings)
    // needs the database: a server gone then stops serve, which is not the outage this test
    // is about. Its last start-up line says it is running.
    served.wait_for_log("running the recovery watchdog").await;
    let (ready, _) = exchange(&addr, "/readyz", None, None).await;
    assert_eq!(status_of(&ready), 200, "{ready}");
    pool.close().await;

    // The server goes away (its connections with it).
    stop_private_cluster(&data_dir).expect("the cluster stops");

    let (health, took) = exchange(&addr, "/healthz", None, None).await;
    assert_eq!(status_of(&health), 200, "{health}");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let (ready, took) = exchange(&addr, "/readyz", None, None).await;
    assert_eq!(status_of(&ready), 503, "{ready}");
    assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
    let mut said = vec![format!("/readyz 503 in {took:?}")];
    let bound = Duration::from_secs(2) + Duration::from_millis(1500);
    let record = format!(r#"{{"job_id": "{JOB_B}", "reason": "stuck"}}"#);
    for (path, token, body) in [
        ("/api/v1/reports/stats", READER, None),
        (
            "/api/v1/history?job_id=0a000000-0000-4000-8000-000000000000",
            READER,
            None,
        ),
        ("/api/v1/record", ADMIN, Some(record.as_str())),
    ] {
        let (answer, took) = exchange(&addr, path, Some(token), body).await;
        assert_eq!(status_of(&answer), 503, "{path}: {answer}");
        assert_eq!(retry_after(&answer), Some("5"), "{path}: {answer}");
        assert!(
            answer.contains("the database does not answer"),
            "{path}: {answer}"
        );
        assert!(took < bound, "{path} took {took:?}");
        said.push(format!("{path} 503 in {took:?}"));
    }
    let started = Instant::now();
    let run = retrylog_at(&url, &["--db-timeout", "2s", "report", "stats"]).await;
    assert_eq!(run.code, Some(69), "{run:#?}");
    assert!(
        started.elapsed() < bound,
        "the command took {:?}",
        started.elapsed()
    );
    said.push(format!("report stats exit 69 in {:?}", started.elapsed()));
    eprintln!("outage: {}", said.join(", "));

    // The server returns: serve is ready again by itself, and writes go through.
    start_private_cluster(&data_dir)
        .await
        .expect("the cluster starts again");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, _) = exchange(&addr, "/readyz", None, None).await;
        if status_of(&ready) == 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "serve not ready 20 s after the return: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (answer, _) = exchange(&addr, "/api/v1/record", Some(ADMIN), Some(&record)).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    stop_serve(served.child).await;
}
