//! Slow clients cannot take `serve` down: a request whose headers never finish is closed after
//! `--header-timeout`, and while real clients (`tests/slow_clients.py`, separate processes)
//! hold 20,000 such connections, `/healthz` and an authenticated API read answer within a
//! second (the p99 of a hundred probes each), the watchdog retries a failure, and serve never
//! runs out of open files.
//!
//! A test binary of its own: cargo runs test binaries one after another, so these run with no
//! other test of the suite beside them, and one after the other (`ONE_AT_A_TIME`). The flood
//! takes both cores of this machine kind (two client processes and serve), and its probes are
//! timed to the millisecond: a browser or a private cluster's start beside it would time the
//! machine, not serve. A slow probe prints where its time went (the connection's opening or
//! the answer) and the kernel's counters that tell a dropped connection attempt from a slow
//! answer.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test --test slow_clients
//! ```

#[allow(dead_code)]
#[path = "retrylog/fixtures.rs"]
mod fixtures;
#[allow(dead_code)]
#[path = "retrylog/serving.rs"]
mod serving;
#[path = "common/temp.rs"]
mod temp;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::process::Child;
use tokio::sync::Semaphore;

use crate::fixtures::*;
use crate::serving::{
    fail_at, first_sweep_done, seconds_to_retry, start_serve, status_of, timed_exchange,
};

/// One GET of the flood test: its status code, how long the connection took to open and how
/// long the whole exchange took.
async fn timed_probe(addr: &str, path: &str, token: Option<&str>) -> (u16, Duration, Duration) {
    let (response, connected, took) = timed_exchange(addr, path, token, None).await;
    (status_of(&response), connected, took)
}

/// The kernel's counters that tell a dropped or retried connection attempt from a slow answer:
/// TCP's from /proc/net/netstat and /proc/net/snmp (this network namespace's; other processes'
/// connections move them too) and the input queue's from /proc/net/softnet_stat.
fn network_counters() -> BTreeMap<String, u64> {
    const NAMED: [&str; 8] = [
        "ListenOverflows",
        "ListenDrops",
        "TCPReqQFullDrop",
        "TCPReqQFullDoCookies",
        "TCPSynRetrans",
        "TCPTimeWaitOverflow",
        "PAWSTimewait",
        "RetransSegs",
    ];
    let mut counters = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if NAMED.contains(&name) {
                    counters.insert(name.to_string(), value.parse().unwrap_or(0));
                }
            }
        }
    }
    // Packets the kernel's per-CPU input queue (net.core.netdev_max_backlog) dropped, and the
    // times it ran out of its budget with work left: every loopback packet passes that queue.
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    for (column, name) in [(1, "softnet dropped"), (2, "softnet time squeezed")] {
        let total = softnet
            .lines()
            .filter_map(|line| line.split_whitespace().nth(column))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .sum();
        counters.insert(name.to_string(), total);
    }
    counters
}

/// Each test of this binary holds the one permit for its whole run: neither times the other's
/// flood.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

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

/// The machine's load average over the last minute, as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// The files `pid` has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[sqlx::test(migrations = false)]
async fn a_request_whose_headers_never_finish_is_closed_after_the_header_timeout(pool: PgPool) {
    let _turn = ONE_AT_A_TIME.acquire().await.unwrap();
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

/// Rounds of probes, one every 100 ms: a hundred of each kind, so that the 99th is the p99.
const PROBE_ROUNDS: usize = 100;

#[sqlx::test(migrations = false)]
async fn twenty_thousand_stalled_connections_leave_health_the_api_and_the_watchdog_answering(
    pool: PgPool,
) {
    let _turn = ONE_AT_A_TIME.acquire().await.unwrap();
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
        slow_clients(&served.addr, 10_000, 1.0, 20.0),
        slow_clients(&served.addr, 10_000, 1.0, 20.0),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Ten probes a second for ten seconds: health without a token, a report with one.
    let mut health = Vec::new();
    let mut api = Vec::new();
    // Each probe as (what, connect, whole exchange, the load average then).
    let mut probes = Vec::new();
    let mut most_files = 0;
    let mut failed_at = None;
    let counters_before = network_counters();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0..PROBE_ROUNDS {
        tick.tick().await;
        let (code, connected, took) = timed_probe(&served.addr, "/healthz", None).await;
        assert_eq!(code, 200, "/healthz in round {round}");
        health.push(took);
        probes.push(("healthz", connected, took, load_average()));
        let (code, connected, took) =
            timed_probe(&served.addr, "/api/v1/reports/stats", Some(READER)).await;
        assert_eq!(code, 200, "the stats report in round {round}");
        api.push(took);
        probes.push(("stats", connected, took, load_average()));
        if round % 10 == 0 {
            most_files = most_files.max(open_files(pid));
        }
        if round == 20 {
            failed_at = Some(fail_at(&pool, VARIANT_A3).await);
        }
    }
    let counters_after = network_counters();
    let moved: Vec<String> = counters_after
        .iter()
        .filter_map(|(name, after)| {
            let moved = after - counters_before.get(name).copied().unwrap_or(0);
            (moved > 0).then(|| format!("{name} +{moved}"))
        })
        .collect();
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
    // Of a hundred probes each, the 99th is the p99; the slowest may be one kernel retry of a
    // dropped connection attempt (a second), never more.
    let p99 = |took: &[Duration]| took[took.len() * 99 / 100 - 1];
    eprintln!(
        "slow clients: {opened} connections opened, {closed} closed by serve; /healthz p50 \
         {:.1?}, p99 {:.1?}, slowest {:.1?}; stats p50 {:.1?}, p99 {:.1?}, slowest {:.1?}; \
         serve held at most {most_files} files; the failure retried after {retried:.3} s; \
         network counters moved while probing: {}",
        health[health.len() / 2],
        p99(&health),
        health.last().unwrap(),
        api[api.len() / 2],
        p99(&api),
        api.last().unwrap(),
        if moved.is_empty() {
            "none".to_string()
        } else {
            moved.join(", ")
        }
    );
    // The probes over 100 ms, printed with a failure: where their time went.
    let slow = probes
        .iter()
        .filter(|(_, _, took, _)| *took > Duration::from_millis(100))
        .map(|(what, connected, took, load)| {
            format!("{what}: connect {connected:.1?}, answer {took:.1?}, load {load}")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        opened >= 20_000 && closed > 0,
        "{opened} opened, {closed} closed"
    );
    for (what, took) in [("/healthz", &health), ("the stats report", &api)] {
        assert!(
            p99(took) < Duration::from_secs(1) && *took.last().unwrap() < Duration::from_secs(3),
            "{what}: p99 {:?}, slowest {:?}; the probes over 100 ms:\n{slow}",
            p99(took),
            took.last().unwrap()
        );
    }
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
