//! The `retrylog-bench` binary: parse the command line, find the server the way `retrylog`
//! does, run one benchmark in a scratch database, map errors to exit codes.
//!
//! The benchmark is not part of the product: it uses only retrylog's public library API, and
//! docs/performance.md explains every figure it prints.
//!
//! # Layout
//!
//! - `appends`: `retrylog-bench appends`, appends against two baselines; then `replay`, the
//!   replay against a hand-written recount.
//! - `reports`: `retrylog-bench reports`, the reports over a log of millions of events.
//! - `catchup`: `retrylog-bench catchup`, the projector's catch-up of a batch onto short
//!   streams against onto long ones.
//! - `recovery`: `retrylog-bench recovery`, the watchdog over a seeded pipeline.
//! - `http`: `retrylog-bench http`, the dashboard, /metrics and the API over a million events.
//! - `targets`: `retrylog-bench targets`, the targets list's pages against OFFSET paging.
//! - `bulk`: `retrylog-bench bulk`, one bulk recovery against as many single recoveries.
//! - `database`: the scratch database they run in; `pipeline`: the jobs and variants they
//!   retry; `log`: generated hash-chained logs, loaded by COPY.
//! - `footprint`: `retrylog-bench footprint`, the pipeline's own writes with retrylog
//!   installed against a twin database without it (`twin`: the counter-only "before", also
//!   where the appends' baselines run); `slices`: the timing flags and commit-counting
//!   workers both share.
//! - `scale`: `retrylog-bench scale`, the same figures at two log sizes (appends, reads,
//!   verify, archiving a month, a partition ahead, disk per million events) and their ratio.
//! - `figures`: the table every benchmark prints; `progress`: spinners and bars on stderr.

mod appends;
mod bulk;
mod catchup;
mod database;
mod figures;
mod footprint;
mod http;
mod log;
mod pipeline;
mod progress;
mod recovery;
mod replay;
mod reports;
mod scale;
mod slices;
mod targets;
mod twin;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use retrylog::cmd::{exit, one_line};
use retrylog::connect::{self, ConnectSettings, DatabaseUse};

/// The actor of every event the benchmarks append, and the watchdog's instance name.
pub const ACTOR: &str = "retrylog-bench";

/// A stuck retry of one variant, as the benchmarks append them.
pub fn stuck_retry(job_id: uuid::Uuid, job_variants_id: uuid::Uuid) -> retrylog::event::NewRetry {
    let target = retrylog::event::Target::Variant {
        job_id,
        job_variants_id,
    };
    retrylog::event::NewRetry::new(target, retrylog::event::RetryReason::Stuck, ACTOR)
}

/// Measure retrylog against hand-written baselines, in a scratch database.
///
/// Every figure is printed beside a baseline measured in the same run, with the ratio and the
/// goal (docs/performance.md explains each one). Each benchmark runs in its own database,
/// retrylog_bench, created (dropped first if it exists) on the configured server and dropped
/// at the end; the configured database is never touched. appends and footprint also create
/// its twin without retrylog, retrylog_bench_before. RETRYLOG_BENCH_DATABASE names another
/// scratch database (the twin: that name + _before), so two runs on one server do not drop
/// each other's.
///
/// The server: --database-url / DATABASE_URL, else the libpq variables (PGHOST, PGPORT,
/// PGUSER, PGDATABASE, ...) and the local socket, else retrylog's private PostgreSQL cluster,
/// as for `retrylog`.
///
/// Exit codes: 0 success (a goal not met does not change it); 1 a check failed (verify,
/// equal answers, every condition retried once); 2 a mistake on the command line; 69 no
/// database reachable; 70 any other failure.
#[derive(Debug, Parser)]
#[command(name = "retrylog-bench", version, max_term_width = 100)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db. Never falls back when set.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Where the private cluster lives when no server is reachable
    /// [default: /var/lib/retrylog for root, else $XDG_DATA_HOME/retrylog or ~/.local/share/retrylog].
    #[arg(long, env = "RETRYLOG_DATA_DIR", global = true, hide_env_values = true)]
    data_dir: Option<PathBuf>,

    /// Run at tiny sizes, in seconds, to prove the benchmark still runs end to end (for CI):
    /// overrides the size flags; every check still counts, the figures mean nothing.
    #[arg(long, global = true)]
    smoke: bool,

    #[command(subcommand)]
    command: Command,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Command {
    /// The retry log itself: appends against the counter-only UPDATE and a naive event
    /// append, then replay against a hand-written recount.
    Appends(appends::AppendsArgs),
    /// The reports over a realistic log of millions of events: trend from the rollup against
    /// a GROUP BY over the log, a variant's history, the projector's catch-up.
    Reports(reports::ReportsArgs),
    /// The projector's catch-up of 10,000 new events onto streams of 10 events against onto
    /// streams of 10,000: its cost follows the batch, not the streams' history.
    Catchup(catchup::CatchupArgs),
    /// The recovery watchdog over 100,000 jobs × 4 variants: detection plans, a sweep of
    /// every seeded condition against the counter-only listener, the steady-state sweep.
    Recovery(recovery::RecoveryArgs),
    /// The pipeline's own writes (counter bump, heartbeat, status and step change, a job
    /// with four variants) with retrylog installed and its watchdog and projector running,
    /// against a twin database without retrylog; with and without a pipeline NOTIFY trigger
    /// of its own.
    Footprint(footprint::FootprintArgs),
    /// The HTTP side of `serve` over a log of a million events: the overview page and
    /// /metrics at p50/p99, the API's history of one target, 64 clients on the overview for
    /// 20 s, memory before and after.
    Http(http::HttpArgs),
    /// The targets list (`retrylog targets`, the API and the Targets page) over 100,000 jobs
    /// × 4 variants and a million events: every filter the page offers, the first page and a
    /// later one at p50/p99, against DISTINCT ON + OFFSET.
    Targets(targets::TargetsBenchArgs),
    /// One bulk recovery of 500 targets needing intervention (`recover --state …`) against
    /// 500 single recoveries of the same kind of targets: seconds, events/s, the ratio.
    Bulk(bulk::BulkArgs),
    /// The same figures at 1M and 10M events in one run, with the 10M ÷ 1M ratio: appends at
    /// 16 connections, history, trend and outcomes p99, verify, archiving one month, a
    /// partition created ahead, and the disk per million events.
    Scale(scale::ScaleArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("retrylog-bench: {}", one_line(&error));
            ExitCode::from(exit::code(&error))
        }
    }
}

/// Finds the server (saying on stderr which), then runs the benchmark; its scratch database
/// is derived from the configured one.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = ConnectSettings {
        database_url: cli.database_url,
        // The configured database is only where the server is found: never opened, nor
        // created; the pool is on the maintenance database.
        max_connections: 1,
        data_dir: cli.data_dir,
        database: DatabaseUse::ServerOnly,
        ..ConnectSettings::default()
    };
    let connected = connect::connect(&settings).await?;
    eprintln!("retrylog-bench: using {}", connected.description);
    if cli.smoke {
        eprintln!("retrylog-bench: smoke run: tiny sizes, the figures mean nothing");
    }
    match cli.command {
        Command::Appends(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            appends::run(&connected, args).await
        }
        Command::Reports(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            reports::run(&connected, args).await
        }
        Command::Catchup(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            catchup::run(&connected, args).await
        }
        Command::Recovery(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            recovery::run(&connected, args).await
        }
        Command::Footprint(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            footprint::run(&connected, args).await
        }
        Command::Http(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            http::run(&connected, args).await
        }
        Command::Targets(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            targets::run(&connected, args).await
        }
        Command::Bulk(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            bulk::run(&connected, args).await
        }
        Command::Scale(mut args) => {
            if cli.smoke {
                args.smoke();
            }
            scale::run(&connected, args).await
        }
    }
}
