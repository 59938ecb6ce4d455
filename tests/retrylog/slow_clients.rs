//! Slow clients cannot take `serve` down: a request whose headers never finish is closed after
//! `--header-timeout`, and while real clients (`tests/slow_clients.py`, separate processes)
//! hold 20,000 such connections, `/healthz` and an authenticated API read answer within a
//! second, the watchdog retries a failure, and serve never runs out of open files.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use crate::fixtures::*;
use crate::footprint::{fail_at, first_sweep_done, seconds_to_retry};

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
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|error| panic!("connecting to serve at {addr} for {path}: {error}"));
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
        response
    })
    .await
    .unwrap_or_else(|_| panic!("{path} answered within 30 s"));
    (answer, started.elapsed())
}

/// A response's status code.
pub(crate) fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One GET: its status code and how long the answer took.
async fn probe(addr: &str, path: &str, token: Option<&str>) -> (u16, Duration) {
    let (response, took) = exchange(addr, path, token, None).await;
    (status_of(&response), took)
}

/// `tests/slow_clients.py`: `count` connections trickling a header byte every `gap` seconds
/// for `seconds`.
fn slow_clients(addr: &str, count: u32, gap: f64, seconds: f64) -> Child {
    let (host, port) = addr.rsplit_once(':').unwrap();
    tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/slow_clients.py"
        ))
        .args([host, port])
        .args([count.to_string(), gap.to_string(), seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs tests/slow_clients.py")
}

/// What a slow client printed when it stopped.
async fn report(clients: Child) -> Value {
    let output = clients.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The open-file limit of `pid` (its soft limit, which serve raised to the hard one).
fn file_limit(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// The files `pid` has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[sqlx::test(migrations = false)]
async fn a_request_whose_headers_never_finish_is_closed_after_the_header_timeout(pool: PgPool) {
    pipeline(&pool).await;
    let served = start_serve(&pool, &["--header-timeout", "2s"]).await;

    // 200 connections, a header byte every half second, for 7 seconds: each is closed two
    // seconds after serve took it, and its replacement too.
    let report = report(slow_clients(&served.addr, 200, 0.5, 7.0)).await;
    let closed = report["closed_by_server"].as_u64().unwrap();
    let median = report["median_life"].as_f64().unwrap();
    let longest = report["longest_life"].as_f64().unwrap();
    assert!(closed >= 400, "{report}");
    assert!((1.8..3.0).contains(&median), "{report}");
    assert!(longest < 4.0, "{report}");
    stop_serve(served.child).await;
}

#[sqlx::test(migrations = false)]
async fn twenty_thousand_stalled_connections_leave_health_the_api_and_the_watchdog_answering(
    pool: PgPool,
) {
    // The 20,000 connections reach the header timeout together and reconnect together. A
    // listen queue shorter than that burst drops connection attempts, a probe's among them,
    // which the kernel retries a second later whatever serve does: the deployment raises the
    // cap (deploy/retrylog.sysctl.conf, as .ci/run does).
    let backlog = retrylog::http::effective_backlog().expect("a Linux host");
    assert!(
        backlog > 20_000,
        "the listen backlog is {backlog}, capped by net.core.somaxconn: a burst of 20,000 \
         reconnects overflows it. Run `sysctl -w net.core.somaxconn=65535` (.ci/run does; \
         deploy/retrylog.sysctl.conf)"
    );
    pipeline(&pool).await;
    let served = start_serve(&pool, &["--header-timeout", "3s"]).await;
    first_sweep_done(&pool).await;
    let pid = served.child.id().unwrap();

    // Two processes, since one may hold only its open-file limit of connections (20,000 on
    // this machine kind; serve's cap is that limit less the pool and a reserve).
    let clients = [
        slow_clients(&served.addr, 10_000, 1.0, 16.0),
        slow_clients(&served.addr, 10_000, 1.0, 16.0),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Probes once a second: health without a token, a report with one.
    let mut health = Vec::new();
    let mut api = Vec::new();
    let mut most_files = 0;
    let mut failed_at = None;
    for second in 0..10 {
        let (code, took) = probe(&served.addr, "/healthz", None).await;
        assert_eq!(code, 200, "/healthz after {second} s");
        health.push(took);
        let (code, took) = probe(&served.addr, "/api/v1/reports/stats", Some(READER)).await;
        assert_eq!(code, 200, "the stats report after {second} s");
        api.push(took);
        most_files = most_files.max(open_files(pid));
        if second == 2 {
            failed_at = Some(fail_at(&pool, VARIANT_A3).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The watchdog kept working: the failure was retried, on its signal, not a sweep.
    let retried = seconds_to_retry(&pool, VARIANT_A3, failed_at.unwrap()).await;

    let mut opened = 0;
    let mut closed = 0;
    for clients in clients {
        let report = report(clients).await;
        opened += report["opened"].as_u64().unwrap();
        closed += report["closed_by_server"].as_u64().unwrap();
    }
    health.sort();
    api.sort();
    eprintln!(
        "slow clients: {opened} connections opened, {closed} closed by serve; /healthz slowest \
         {:?}, stats slowest {:?}; serve held at most {most_files} files; the failure retried \
         after {retried:.3} s",
        health.last().unwrap(),
        api.last().unwrap()
    );
    assert!(
        opened >= 20_000 && closed > 0,
        "{opened} opened, {closed} closed"
    );
    // With ten probes each, the p99 is the slowest.
    assert!(
        *health.last().unwrap() < Duration::from_secs(1),
        "{health:?}"
    );
    assert!(*api.last().unwrap() < Duration::from_secs(1), "{api:?}");
    assert!(retried < 5.0, "retried {retried:.3} s after the failure");
    let limit = file_limit(pid);
    assert!(
        most_files < limit,
        "serve held {most_files} files of {limit}"
    );
    let log = served.log.lock().unwrap().join("\n");
    assert!(!log.contains("accepting an HTTP connection"), "{log}");
    stop_serve(served.child).await;
}
