//! A real `retrylog serve` for the tests that talk to it over TCP: started with the tests'
//! tokens, its log kept, requests made on fresh connections, and the watchdog's first sweep
//! and a failure's retry waited for. Shared by the suite and by `tests/slow_clients.rs`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use uuid::Uuid;

use crate::fixtures::*;

/// A running `serve` with the tests' tokens: its address and every line of its log so far.
pub(crate) struct Served {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    _tokens: TempPath,
}

impl Served {
    /// Waits (up to 30 s) until serve's log has a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log.lock().unwrap().join("\n");
            if log.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < until,
                "serve never logged {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A guard that prints serve's log so far if the test panics while it lives: a failure
    /// that is serve's own (it stopped listening, say) then shows why.
    pub fn log_on_panic(&self) -> LogOnPanic {
        LogOnPanic(self.log.clone())
    }
}

/// See [`Served::log_on_panic`].
pub(crate) struct LogOnPanic(Arc<Mutex<Vec<String>>>);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.lock().map(|log| log.join("\n")).unwrap_or_default();
            eprintln!("serve's log up to the failure:\n{log}");
        }
    }
}

/// `serve` with the tests' tokens, the periodic sweep an hour away, and `args`.
pub(crate) async fn start_serve(pool: &PgPool, args: &[&str]) -> Served {
    let tokens = tokens_file();
    let mut command = serve_command(
        pool,
        &[
            &[
                "--tokens-file",
                tokens.to_str().unwrap(),
                "--sweep-every",
                "1h",
            ],
            args,
        ]
        .concat(),
    )
    .await;
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    // The log is read to its end, so serve never blocks on a full pipe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let (found, addr) = tokio::sync::oneshot::channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        let mut found = Some(found);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("HTTP on http://").nth(1) {
                if let Some(found) = found.take() {
                    let _ = found.send(rest.split('/').next().unwrap().to_string());
                }
            }
            kept.lock().unwrap().push(line);
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), addr)
        .await
        .expect("serve listens within 30 s")
        .expect("serve says where it listens");
    Served {
        child,
        addr,
        log,
        _tokens: tokens,
    }
}

/// One request on a fresh connection (a POST when `body` is given, as JSON): the whole
/// response as text, and how long it took.
pub(crate) async fn exchange(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (String, Duration) {
    let (answer, _, took) = timed_exchange(addr, path, token, body).await;
    (answer, took)
}

/// [`exchange`], also saying how long the connection took to open: near a second is the
/// kernel's retry of a dropped connection attempt; a slow answer on a quick connect is serve's
/// (or the machine's).
pub(crate) async fn timed_exchange(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (String, Duration, Duration) {
    let started = Instant::now();
    let (answer, connected) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|error| panic!("connecting to serve at {addr} for {path}: {error}"));
        let connected = started.elapsed();
        let auth = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let (method, content) = match body {
            Some(body) => (
                "POST",
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            ),
            None => ("GET", "\r\n".to_string()),
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n{content}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        (response, connected)
    })
    .await
    .unwrap_or_else(|_| panic!("{path} answered within 30 s"));
    (answer, connected, started.elapsed())
}

/// A response's status code.
pub(crate) fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Waits until a watchdog over the pipeline fixture retried its failed variant A2 (its first
/// sweep).
pub(crate) async fn first_sweep_done(pool: &PgPool) {
    wait_until(
        pool,
        &has_events(VARIANT_A2, 1),
        Duration::from_secs(10),
        "the first sweep",
    )
    .await;
}

/// Waits (10 s at most) for the retry of `variant`; returns the seconds from the moment the
/// pipeline's failure was written (`failed_at`, the server's clock) to the moment its retry
/// was recorded (the server's clock too).
pub(crate) async fn seconds_to_retry(
    pool: &PgPool,
    variant: Uuid,
    failed_at: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let retried = has_events(variant, 1);
    wait_until(
        pool,
        &retried,
        Duration::from_secs(10),
        "the failure retried",
    )
    .await;
    sqlx::query_scalar(
        "SELECT extract(epoch FROM recorded_at - $2)::float8 FROM retry_history
          WHERE job_variants_id = $1 ORDER BY attempt DESC LIMIT 1",
    )
    .bind(variant)
    .bind(failed_at)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The pipeline failing `variant`, as its workers do; returns when, on the server's clock.
pub(crate) async fn fail_at(pool: &PgPool, variant: Uuid) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar(
        "UPDATE jobs_variants SET status = 'failed', updated_at = clock_timestamp()
          WHERE job_variants_id = $1 RETURNING updated_at",
    )
    .bind(variant)
    .fetch_one(pool)
    .await
    .unwrap()
}
