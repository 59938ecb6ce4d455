//! Reads on a hot standby (`--read-url`): a primary and a streaming standby made with
//! `pg_basebackup -R`, both private clusters of the test's own (`tests/common/standby.rs`).
//! The API and the read commands answer from the standby — what it has not replayed yet they
//! do not show — while writes go to the primary; `/metrics` and the dashboard's overview show
//! the standby's lag; a read the standby cancels for a recovery conflict is read once more,
//! and a second one is a 503.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use retrylog::http::{self, ApiContext, Tokens};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fixtures::*;
use crate::serving::exchange;
use crate::standby::{url, Pair};

/// Both pools: the primary migrated with the pipeline fixture, the standby once it has
/// replayed that.
async fn pair() -> (Pair, PgPool, PgPool) {
    let clusters = Pair::start("retrylog").await;
    let primary = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(clusters.primary.clone())
        .await
        .unwrap();
    pipeline(&primary).await;
    // The standby cancels any read that holds up replay (max_standby_streaming_delay = 0),
    // the statements a new connection runs too, while it replays the cleanup that follows the
    // migrations: connecting is tried again then, as the product's reads are.
    let mut attempts = 0;
    let standby = loop {
        match PgPoolOptions::new()
            .max_connections(4)
            .connect_with(clusters.standby.clone())
            .await
        {
            Ok(standby) => break standby,
            Err(error) if retrylog::connect::is_recovery_conflict(&error) && attempts < 5 => {
                attempts += 1;
            }
            Err(error) => panic!("connecting to the standby: {error}"),
        }
    };
    replayed(&primary, &standby).await;
    (clusters, primary, standby)
}

/// Waits until the standby has replayed everything the primary wrote so far.
async fn replayed(primary: &PgPool, standby: &PgPool) {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&lsn)
            .fetch_one(standby)
            .await
            .unwrap();
        if done {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the standby replays within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// serve's router with the primary and the read replica.
fn router(primary: &PgPool, standby: &PgPool) -> axum::Router {
    http::app(ApiContext {
        pool: primary.clone(),
        read: Some(standby.clone()),
        tokens: Some(Arc::new(Tokens::load(&tokens_file()).unwrap())),
        steps: retrylog::config::DEFAULT_STEPS.parse().unwrap(),
        base_path: String::new(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    })
}

fn attempts_of(history: &Value) -> Vec<i64> {
    history
        .as_array()
        .expect("history is an array")
        .iter()
        .filter_map(|row| row["attempt"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_from_the_standby_and_writes_to_the_primary() {
    let (_clusters, primary, standby) = pair().await;
    let app = router(&primary, &standby);
    let history = format!("/api/v1/history?variant_id={VARIANT_A2}");

    // A write through serve: on the primary (the standby would refuse it).
    let recorded = call(
        &app,
        "/api/v1/record",
        Some(ADMIN),
        Some(json!({"job_id": JOB_A, "variant_id": VARIANT_A2, "reason": "failed"})),
        &[],
    )
    .await;
    assert_eq!(recorded.status, StatusCode::CREATED, "{}", recorded.json);
    assert_eq!(attempts(&primary, variant(JOB_A, VARIANT_A2)).await, [1]);

    // With the standby's replay paused, a retry recorded on the primary is not read yet:
    // the read comes from the standby, not from the primary.
    replayed(&primary, &standby).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();
    append_ok(&primary, &retry(variant(JOB_A, VARIANT_A2))).await;
    let before = call(&app, &history, Some(READER), None, &[]).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.json);
    assert_eq!(attempts_of(&before.json), [1], "{}", before.json);

    // The lag the standby has then is on /metrics.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("retrylog_read_replica_in_recovery 1"),
        "{metrics}"
    );
    let lag = lag_seconds(&metrics).expect("the lag is on /metrics");
    assert!(
        lag >= 1.0,
        "replay paused for a second: lag {lag}\n{metrics}"
    );
    // And on the dashboard's overview, as a card of its own.
    let overview = overview_live(&app).await;
    let shown = replica_lag_card(&overview).expect("the overview shows the replica's lag");
    let seconds: f64 = shown.trim_end_matches(" s").parse().unwrap_or_else(|_| {
        panic!("the card's lag is seconds: {shown:?}");
    });
    assert!(seconds >= 1.0, "replay paused for a second: {shown}");

    // Once replayed, the retry is there; an idle primary then means no lag.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    replayed(&primary, &standby).await;
    let after = call(&app, &history, Some(READER), None, &[]).await;
    assert_eq!(attempts_of(&after.json), [1, 2], "{}", after.json);
    let lag = lag_seconds(&metrics_text(&app).await).expect("the lag is on /metrics");
    assert_eq!(
        lag, 0.0,
        "a standby that replayed all it received is not behind"
    );
}

/// The overview's live part, as a reader logged in to the dashboard sees it.
async fn overview_live(app: &axum::Router) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let login = axum::http::Request::post("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "retrylog.test")
        .body(axum::body::Body::from(format!("token={READER}")))
        .unwrap();
    let response = app.clone().oneshot(login).await.unwrap();
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("the login sets its session cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let request = axum::http::Request::get("/ui/live/overview")
        .header("cookie", cookie)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of the overview's "read replica lag" card.
fn replica_lag_card(html: &str) -> Option<&str> {
    let card = html.split("read replica lag</span>").nth(1)?;
    let value = card.split("<span class=\"value small\">").nth(1)?;
    value.split("</span>").next()
}

async fn metrics_text(app: &axum::Router) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .uri("/metrics")
        .header("authorization", format!("Bearer {READER}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn lag_seconds(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("retrylog_read_replica_lag_seconds "))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_commands_answer_from_the_standby_once_its_schema_is_current() {
    let clusters = Pair::start("retrylog").await;
    let primary = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(clusters.primary.clone())
        .await
        .unwrap();
    let standby = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(clusters.standby.clone())
        .await
        .unwrap();
    let pause = || sqlx::query("SELECT pg_wal_replay_pause()").execute(&standby);
    let resume = || sqlx::query("SELECT pg_wal_replay_resume()").execute(&standby);
    // The standby has not replayed the migrations: the read commands refuse it, naming it.
    pause().await.unwrap();
    pipeline(&primary).await;
    append_ok(&primary, &retry(variant(JOB_A, VARIANT_A1))).await;
    let primary_url = url(&clusters.primary);
    let standby_url = url(&clusters.standby);
    let a1 = VARIANT_A1.to_string();
    let history = [
        "--read-url",
        &standby_url,
        "history",
        "--format",
        "json",
        "--variant-id",
        &a1,
    ];
    let run = retrylog_at(&primary_url, &history).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("read replica (--read-url)"),
        "{}",
        run.stderr
    );

    // Replayed: the command answers, and says where it read.
    resume().await.unwrap();
    replayed(&primary, &standby).await;
    let run = retrylog_at(&primary_url, &history).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("reads from database retrylog on"),
        "{}",
        run.stderr
    );
    assert_eq!(attempts_of(&run.json()), [1]);

    // What the standby has not replayed, the command does not show: it read the standby.
    pause().await.unwrap();
    append_ok(&primary, &retry(variant(JOB_A, VARIANT_A1))).await;
    let run = retrylog_at(&primary_url, &history).await;
    assert_eq!(attempts_of(&run.json()), [1], "{}", run.stderr);
    // Reports too (the trend's catch-up stays off a standby, which can write nothing).
    let trend = [
        "--read-url",
        &standby_url,
        "report",
        "trend",
        "--format",
        "json",
    ];
    let run = retrylog_at(&primary_url, &trend).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    resume().await.unwrap();
    replayed(&primary, &standby).await;

    // `serve --read-url`: its API reads the standby and its /metrics shows the standby.
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args(["--database-url", &primary_url, "--read-url", &standby_url])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env_remove("RETRYLOG_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if let Some(rest) = line.split("HTTP on http://").nth(1) {
                return rest.split('/').next().unwrap().to_string();
            }
        }
        panic!("serve ended without saying where it listens");
    })
    .await
    .expect("serve listens within 30 s");
    let metrics = get(&addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("retrylog_read_replica_in_recovery 1"),
        "{metrics}"
    );
    let history = get(&addr, &format!("/api/v1/history?variant_id={VARIANT_A1}")).await;
    assert!(history.starts_with("HTTP/1.1 200"), "{history}");
    assert_eq!(history.matches("\"attempt\":").count(), 2, "{history}");
    // The rest of its log is read, not cut off: a closed stderr would fail its last lines.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    stop_serve(serve).await;
}

/// One GET to a running serve; the whole response, headers included.
async fn get(addr: &str, path: &str) -> String {
    exchange(addr, path, None, None).await.0
}

/// Starts a read on the standby that still sees `t`'s rows while the primary deletes and
/// vacuums them: with `max_standby_streaming_delay = 0` the standby cancels the read to
/// replay the cleanup ("canceling statement due to conflict with recovery", 40001).
async fn provoke_conflict(primary: &PgPool, standby: &PgPool) -> sqlx::Error {
    sqlx::query("CREATE TABLE IF NOT EXISTS t AS SELECT g AS n FROM generate_series(1, 1000) g")
        .execute(primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        .execute(primary)
        .await
        .unwrap();
    replayed(primary, standby).await;
    let reading = {
        let standby = standby.clone();
        tokio::spawn(async move {
            sqlx::query("SELECT count(*), pg_sleep(20) FROM t")
                .execute(&standby)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("DELETE FROM t").execute(primary).await.unwrap();
    sqlx::query("VACUUM t").execute(primary).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the standby cancels the read within 30 s")
        .unwrap()
        .expect_err("the standby cancels the read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_standby_cancels_is_read_once_more_then_answered_503() {
    let (_clusters, primary, standby) = pair().await;
    let conflict = provoke_conflict(&primary, &standby).await;
    assert!(
        retrylog::connect::is_recovery_conflict(&conflict),
        "a real recovery conflict is recognised: {conflict}"
    );
    // A serialization failure on the primary is not one: not retried as such.
    let (code, _) = database_error(&conflict);
    assert_eq!(code, "40001");

    // Read once more: the first attempt is cancelled for real, the second answers.
    let tries = AtomicU32::new(0);
    let answer = retrylog::connect::read_retrying(|| async {
        if tries.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(anyhow::Error::from(
                provoke_conflict(&primary, &standby).await,
            ));
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
            .fetch_one(&standby)
            .await?;
        anyhow::Ok(count)
    })
    .await;
    assert_eq!(answer.unwrap(), 0);
    assert_eq!(tries.load(Ordering::SeqCst), 2);

    // Cancelled twice: the API's answer is a 503 with Retry-After.
    let tries = AtomicU32::new(0);
    let error = retrylog::connect::read_retrying(|| async {
        tries.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(anyhow::Error::from(
            provoke_conflict(&primary, &standby).await,
        ))
    })
    .await
    .unwrap_err();
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    let response = http::Error::from(error).into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
}
