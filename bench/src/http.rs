//! `retrylog-bench http`: the HTTP side of `serve` over a log of a million events, in the
//! bench database. The router (`retrylog::http::app`, as `serve` builds it) listens on a
//! loopback port inside this process; the clients are plain HTTP/1.1 keep-alive connections
//! of the bench's own, so each time is a whole request on loopback.
//!
//! 1. **Overview** — `GET /` (the dashboard's overview: counts from the rollup, the trend
//!    chart, the top targets, the latest retries): p50 and p99 of `--requests` sequential
//!    requests; goal p99 < 50 ms. Baseline: `GET /readyz` (HTTP and one trivial query), the
//!    floor any page stands on.
//! 2. **Metrics** — `GET /metrics`: p50 and p99; goal p99 < 50 ms; same baseline.
//! 3. **History** — `GET /api/v1/history?variant_id=…` for random variants: p99; goal < 5 ms
//!    end to end; baseline `store::load_stream`, one indexed SELECT of the same stream.
//! 4. **Load** — `--clients` connections asking for the overview for `--seconds`: requests
//!    per second, p99, and errors (must be none).
//! 5. **Memory** — this process's resident memory before the server starts and after the
//!    load (server and bench share the process: the difference is what serving added).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use uuid::Uuid;

use retrylog::cli::FormatArg;
use retrylog::cmd::exit;
use retrylog::connect::Connected;
use retrylog::event::Target;
use retrylog::http::{self as api, ApiContext};
use retrylog::{projector, store};

use crate::database::{fresh_database, in_bench_database, print_server};
use crate::figures::{figure_table, ms, percentile, thousands, Goal, Line, Unit};
use crate::log::load_log;
use crate::reports::realistic_log::realistic_log;

/// `retrylog-bench http`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events: u64,

    /// Sequential requests timed for each p50/p99.
    #[arg(long, default_value_t = 500, value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub requests: u32,

    /// Concurrent clients of the load phase.
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,

    /// How long the load phase lasts, in seconds.
    #[arg(long, default_value_t = 20, value_name = "S",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,

    /// Keep the retrylog_bench database at the end, for inspection.
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub format: FormatArg,
}

impl HttpArgs {
    /// `--smoke`: 2,000 events, 20 requests, 4 clients for 2 s.
    pub fn smoke(&mut self) {
        self.events = 2_000;
        self.requests = 20;
        self.clients = 4;
        self.seconds = 2;
    }
}

/// Goals: the overview and /metrics under this at p99 (ms); the API's history under this.
const PAGE_P99_MS: f64 = 50.0;
const HISTORY_P99_MS: f64 = 5.0;

/// What the run measured.
struct Measured {
    overview: [Duration; 2],
    metrics: [Duration; 2],
    ready: [Duration; 2],
    history: [Duration; 2],
    stream: [Duration; 2],
    load_requests: u64,
    load_errors: u64,
    load_p99: Duration,
    rss_before: u64,
    rss_after: u64,
}

pub async fn run(connected: &Connected, args: HttpArgs) -> anyhow::Result<ExitCode> {
    let measured = in_bench_database(
        connected,
        "retrylog-bench http",
        args.keep,
        async |options| measure(connected, options, &args).await,
    )
    .await?;
    let lines = figure_lines(&args, &measured);
    let format = args.format.format;
    figure_table(&lines, format, &["connections", "events", "unit"]).print(format)?;
    if measured.load_errors > 0 {
        eprintln!(
            "retrylog-bench: {} request(s) failed under load",
            measured.load_errors
        );
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &HttpArgs,
) -> anyhow::Result<Measured> {
    let pool = fresh_database(connected, options).await?;
    print_server(&pool).await?;
    let mut rng = StdRng::from_entropy();
    let log = realistic_log(
        args.events,
        Utc::now() - chrono::Duration::minutes(1),
        &mut rng,
    )?;
    load_log(&pool, log, Some(1_000)).await?;
    let mut conn = pool.acquire().await?;
    projector::catch_up(&mut conn, projector::DEFAULT_BATCH_EVENTS).await?;
    sqlx::raw_sql("VACUUM ANALYZE retry_rollup, retry_rollup_created")
        .execute(&mut *conn)
        .await?;
    eprintln!(
        "retrylog-bench: http over {} events; {} requests per figure, {} clients for {} s",
        thousands(args.events as f64),
        args.requests,
        args.clients,
        args.seconds
    );

    // The server, as `serve` builds it: read-only, no tokens, on a loopback port. The pool is
    // as large as the load's clients can use.
    let rss_before = resident_bytes();
    let server_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(args.clients.min(32))
        .connect_with(options.clone())
        .await?;
    let ctx = ApiContext {
        pool: server_pool.clone(),
        read: None,
        tokens: None,
        steps: retrylog::config::DEFAULT_STEPS
            .parse()
            .expect("valid steps"),
        base_path: String::new(),
        overview_cache: Default::default(),
        stuck_census: Default::default(),
    };
    let listener = api::listen("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = watch::channel(false);
    // serve's own limits, as `retrylog serve` derives them for its pool.
    let limits = api::Limits::for_this_process(
        retrylog::config::parse_duration(api::DEFAULT_HEADER_TIMEOUT)
            .map_err(anyhow::Error::msg)?,
        None,
        server_pool.options().get_max_connections(),
    )?;
    let server = tokio::spawn(api::serve(listener, api::app(ctx), limits, stopped));

    // 1–3. Sequential requests, each timed on its own.
    let mut client = Client::connect(&addr).await?;
    let ready = client.timed(&["/readyz"], args.requests).await?;
    let overview = client.timed(&["/"], args.requests).await?;
    let metrics = client.timed(&["/metrics"], args.requests).await?;
    let sample: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT job_variants_id, job_id FROM jobs_variants ORDER BY random() LIMIT $1",
    )
    .bind(i64::from(args.requests))
    .fetch_all(&mut *conn)
    .await?;
    let paths: Vec<String> = sample
        .iter()
        .map(|(variant, _)| format!("/api/v1/history?variant_id={variant}"))
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let history = client.timed(&paths, args.requests).await?;
    let mut stream = Vec::with_capacity(sample.len());
    for (variant, job) in &sample {
        let started = Instant::now();
        store::load_stream(
            &mut conn,
            Target::Variant {
                job_id: *job,
                job_variants_id: *variant,
            },
        )
        .await?;
        stream.push(started.elapsed());
    }
    drop(conn);

    // 4. The load: every client asks for the overview until the time is up.
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut errors = 0u64;
            let mut client = Client::connect(&addr).await?;
            while Instant::now() < until {
                let started = Instant::now();
                match client.get("/").await {
                    Ok(200) => times.push(started.elapsed()),
                    Ok(_) | Err(_) => {
                        errors += 1;
                        client = Client::connect(&addr).await?;
                    }
                }
            }
            anyhow::Ok((times, errors))
        }));
    }
    let mut times = Vec::new();
    let mut load_errors = 0;
    for task in tasks {
        let (mut done, errors) = task.await??;
        times.append(&mut done);
        load_errors += errors;
    }
    let load_requests = times.len() as u64;
    let load_p99 = if times.is_empty() {
        Duration::ZERO
    } else {
        percentile(&mut times, 0.99)
    };
    let rss_after = resident_bytes();

    stop.send_replace(true);
    server.await?.context("serving")?;
    server_pool.close().await;
    pool.close().await;
    Ok(Measured {
        overview: p50_p99(overview),
        metrics: p50_p99(metrics),
        ready: p50_p99(ready),
        history: p50_p99(history),
        stream: p50_p99(stream),
        load_requests,
        load_errors,
        load_p99,
        rss_before,
        rss_after,
    })
}

fn p50_p99(mut samples: Vec<Duration>) -> [Duration; 2] {
    [
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    ]
}

/// This process's resident memory (VmRSS), in bytes; 0 where /proc does not say.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn figure_lines(args: &HttpArgs, m: &Measured) -> Vec<Line> {
    let events = args.events;
    let page = |figure: &'static str, what: &str, times: [Duration; 2]| {
        [
            Line::new(
                figure,
                format!("{what}, p50 of {} requests", args.requests),
                Unit::Millis,
                ms(times[0]),
            )
            .events(events)
            .baseline("GET /readyz p50", ms(m.ready[0])),
            Line::new(
                figure,
                format!("{what}, p99 of {} requests", args.requests),
                Unit::Millis,
                ms(times[1]),
            )
            .events(events)
            .baseline("GET /readyz p99", ms(m.ready[1]))
            .goal(Goal::Under(PAGE_P99_MS)),
        ]
    };
    let mut lines = Vec::new();
    lines.extend(page(
        "overview ms",
        "GET / (the dashboard's overview)",
        m.overview,
    ));
    lines.extend(page("metrics ms", "GET /metrics", m.metrics));
    lines.push(
        Line::new(
            "API history ms",
            format!(
                "GET /api/v1/history?variant_id=…, p99 of {} random variants, end to end",
                args.requests
            ),
            Unit::Millis,
            ms(m.history[1]),
        )
        .events(events)
        .baseline("store::load_stream p99 (one SELECT)", ms(m.stream[1]))
        .goal(Goal::Under(HISTORY_P99_MS)),
    );
    lines.push(
        Line::new(
            "overview requests/s",
            format!(
                "{} clients asking for GET / for {} s",
                args.clients, args.seconds
            ),
            Unit::PerSecond,
            m.load_requests as f64 / args.seconds as f64,
        )
        .connections(args.clients)
        .events(events),
    );
    lines.push(
        Line::new(
            "overview ms",
            format!("p99 under {} clients for {} s", args.clients, args.seconds),
            Unit::Millis,
            ms(m.load_p99),
        )
        .connections(args.clients)
        .events(events)
        .goal(Goal::Under(PAGE_P99_MS)),
    );
    lines.push(Line::check(
        "load errors",
        format!(
            "{} of {} requests failed",
            m.load_errors,
            m.load_errors + m.load_requests
        ),
        "none",
        m.load_errors == 0,
    ));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    lines.push(Line::check(
        "memory",
        format!(
            "resident memory of the bench process (the server runs inside it): {:.0} MiB \
             before serving, {:.0} MiB after the load",
            mib(m.rss_before),
            mib(m.rss_after)
        ),
        "measured",
        m.rss_before > 0,
    ));
    lines
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Client {
    async fn connect(addr: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// GETs `path`, reads the whole answer, returns its status.
    async fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok(status)
    }

    /// `count` requests cycling over `paths`, each timed; every one must answer 200.
    async fn timed(&mut self, paths: &[&str], count: u32) -> anyhow::Result<Vec<Duration>> {
        // Untimed: the first request warms the connection pool and the statements.
        self.get(paths[0]).await?;
        let mut times = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let path = paths[i % paths.len()];
            let started = Instant::now();
            let status = self.get(path).await?;
            times.push(started.elapsed());
            anyhow::ensure!(status == 200, "GET {path} answered {status}");
        }
        Ok(times)
    }
}
