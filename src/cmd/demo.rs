//! `retrylog demo`: a live pipeline that goes wrong in every way the watchdog knows, the real
//! watchdog recovering it, and what the log holds afterwards.
//!
//! 1. A scratch database, `retrylog_demo` or the one `--database` names, created fresh on the
//!    configured server (the configured database is never touched: the demo connects to the
//!    server's maintenance database, see `cmd::Schema::Untouched`) and dropped at the end
//!    unless `--keep`. One an earlier `--keep` left is dropped only with `--replace`.
//! 2. The pipeline's own change trigger (`demo/pipeline.rs`), and the watchdog's settings,
//!    scaled to seconds, published to `retrylog_settings` as `serve` does; the watchdog
//!    listens on the pipeline's channel (`pipeline_channel`), besides polling the failures.
//! 3. Three tasks until `--duration` is over (or Ctrl-C): the simulated pipeline
//!    (`demo/pipeline.rs`), [`recovery::run`] — the watchdog `serve` runs — and the live view
//!    (`demo/live.rs`).
//! 4. Stop all three with one signal; each finishes the transaction in flight.
//! 5. The summary (`demo/summary.rs`) and a `verify`; exit 1 if verify is not clean.

mod live;
mod pipeline;
mod summary;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::EnvFilter;

use super::{exit, stderr_is_terminal};
use crate::cli::{DemoArgs, DemoFormat};
use crate::config::{WatchdogSettings, DEFAULT_CHANNEL};
use crate::connect::Connected;
use crate::{recovery, scratch};
use live::{AboveTheBar, Labels, LiveView};
use pipeline::{Pipeline, PipelineCounts, Plan};
use summary::{RunFacts, Summary};

/// The scratch database the demo runs in unless `--database` names another.
pub const DEMO_DATABASE: &str = "retrylog_demo";

/// The watchdog's thresholds, scaled from minutes to seconds so the demo shows them at work.
const STUCK_AFTER: Duration = Duration::from_secs(2);
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const MAX_RETRIES: i32 = 3;
const INSTANCE: &str = "demo-watchdog";

/// Connections of the pipeline (listener, step runs), the watchdog and the live view.
const PIPELINE_CONNECTIONS: u32 = 8;
const WATCHDOG_CONNECTIONS: u32 = 4;
const VIEW_CONNECTIONS: u32 = 2;

/// An earlier `demo --keep` left the demo database, and `--replace` was not given: dropping it
/// would end the sessions of whoever explores it (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "database {database} exists (an earlier `demo --keep` left it, and someone may be \
     exploring it); explore it with --database-url {url}, or run the demo with --replace to \
     drop it and start over"
)]
pub struct KeptDemoDatabase {
    /// The kept database's name.
    pub database: String,
    /// Where the kept database is, for --database-url.
    pub url: String,
}

impl crate::error::CallerMistake for KeptDemoDatabase {
    /// The caller asks for the demo without saying the kept database may go.
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

pub async fn run(connected: &Connected, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let began = Instant::now();
    let database = args.database.as_str();
    let options = scratch::options(connected, database, "retrylog demo")?;
    // 0. Never drop a database an earlier --keep left without being asked to.
    if scratch::exists(connected, database).await? {
        if !args.replace {
            return Err(KeptDemoDatabase {
                database: database.to_owned(),
                url: database_url(&options),
            }
            .into());
        }
        eprintln!(
            "retrylog demo: dropping the {database} database an earlier --keep left (--replace)"
        );
    }
    // A short default seed: it is printed to be typed again.
    let seed = args
        .seed
        .unwrap_or_else(|| rand::thread_rng().gen_range(0..1_000_000));
    let outcome = run_in_scratch(connected, &options, &args, seed).await;
    scratch::release(connected, database, args.keep).await;
    let (summary, timings) = outcome?;

    let explore = args.keep.then(|| database_url(&options));
    summary.print(args.format, explore.as_deref())?;
    eprintln!(
        "retrylog demo: {:.1} s in all: setup {:.1} s, run {:.1} s, summary and verify {:.1} s",
        began.elapsed().as_secs_f64(),
        timings.setup.as_secs_f64(),
        timings.run.as_secs_f64(),
        timings.summary.as_secs_f64()
    );
    if !summary.verify.is_clean() {
        eprintln!("retrylog demo: verify found mismatches in the demo database");
        return Ok(ExitCode::from(exit::MISMATCH));
    }
    Ok(ExitCode::SUCCESS)
}

/// How long each part took.
struct Timings {
    setup: Duration,
    run: Duration,
    summary: Duration,
}

/// Steps 1 to 5 of the module docs but the drop. On an error the pools are dropped and the
/// final `DROP DATABASE ... WITH (FORCE)` ends whatever they left open.
async fn run_in_scratch(
    connected: &Connected,
    options: &PgConnectOptions,
    args: &DemoArgs,
    seed: u64,
) -> anyhow::Result<(Summary, Timings)> {
    let began = Instant::now();
    // 1. The database, and pools of its own for each side so neither starves the other.
    let pool = scratch::create(connected, &args.database, options, PIPELINE_CONNECTIONS).await?;
    let connect = |connections| {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(options.clone())
    };
    let watchdog_pool = connect(WATCHDOG_CONNECTIONS)
        .await
        .context("connecting the watchdog to the demo database")?;
    let view_pool = connect(VIEW_CONNECTIONS)
        .await
        .context("connecting the live view to the demo database")?;

    // 2. The pipeline's change trigger, and the watchdog's settings where the failure
    //    trigger and every door read them.
    sqlx::raw_sql(pipeline::CHANGE_TRIGGER)
        .execute(&pool)
        .await
        .context("installing the demo pipeline's change trigger")?;
    let channel = pipeline::CHANGE_CHANNEL;
    let settings = WatchdogSettings {
        max_retries: MAX_RETRIES,
        stuck_after: STUCK_AFTER,
        sweep_every: SWEEP_EVERY,
        instance: INSTANCE.to_string(),
        channel: DEFAULT_CHANNEL.to_string(),
        pipeline_channel: Some(channel.to_string()),
        ..WatchdogSettings::default()
    };
    recovery::publish_settings(&pool, &settings)
        .await
        .context("writing the demo watchdog's settings to retrylog_settings")?;

    let plan = Plan::new(
        seed,
        args.jobs as usize,
        args.variants as usize,
        settings.steps.names(),
        args.duration,
    );
    let labels = Labels::new(&plan);
    introduce(&plan, &settings, seed, args);
    let setup = began.elapsed();

    // 3. The three tasks, started together.
    let terminal = stderr_is_terminal();
    let bar = LiveView::bar(args.duration, terminal);
    let (stop, stopped) = watch::channel(false);
    let started_db: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let started = Instant::now();
    // The watchdog logs only errors here (RETRYLOG_LOG overrides): the live view shows its
    // retries and limits from the log, and a log line must not cut through the status line.
    let watchdog_log = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RETRYLOG_LOG").unwrap_or_else(|_| EnvFilter::new("error")),
        )
        .with_writer(AboveTheBar(bar.clone()))
        .finish();
    let watchdog = tokio::spawn(
        recovery::run(watchdog_pool.clone(), settings.clone(), stopped.clone())
            .with_subscriber(watchdog_log),
    );
    let (misses_tx, misses_rx) = mpsc::unbounded_channel();
    let view = tokio::spawn(
        LiveView {
            pool: view_pool.clone(),
            labels: labels.clone(),
            last_step: settings.steps.last().to_string(),
            jobs: plan.jobs.len(),
            duration: args.duration,
            started,
            started_db,
            bar,
            terminal,
        }
        .run(misses_rx, stopped.clone()),
    );
    let counts = Arc::new(PipelineCounts::default());
    let pipeline = Pipeline::new(pool.clone(), &plan, Arc::clone(&counts), misses_tx, stopped);
    let pipeline_run = pipeline.run(&plan, channel);
    tokio::pin!(pipeline_run);
    let (ended_early, interrupted) = tokio::select! {
        result = &mut pipeline_run => (Some(result), false),
        _ = tokio::time::sleep(args.duration) => (None, false),
        _ = tokio::signal::ctrl_c() => (None, true),
    };

    // 4. One signal stops all three; wait for each.
    stop.send_replace(true);
    let pipeline_result = match ended_early {
        Some(result) => result,
        None => pipeline_run.await,
    };
    let ran = started.elapsed();
    watchdog.await.context("the watchdog panicked")?;
    let view_result = view.await.context("the live view panicked")?;
    pipeline_result.context("running the demo pipeline")?;
    view_result.context("showing the run")?;
    watchdog_pool.close().await;
    view_pool.close().await;

    // 5. The summary, verify included.
    let summarizing = Instant::now();
    let facts = RunFacts {
        seed,
        jobs: plan.jobs.len(),
        variants: args.variants as usize,
        flaky: plan.flaky(),
        duration: args.duration,
        ran,
        interrupted,
        started_db,
    };
    let summary = Summary::read(&pool, facts, settings, &counts, labels).await?;
    pool.close().await;
    let timings = Timings {
        setup,
        run: ran,
        summary: summarizing.elapsed(),
    };
    Ok((summary, timings))
}

/// Says on stderr what is about to happen and how to repeat it.
fn introduce(plan: &Plan, settings: &WatchdogSettings, seed: u64, args: &DemoArgs) {
    let steps = settings.steps.names().join(" → ");
    eprintln!(
        "retrylog demo: seed {seed} (repeat with --seed {seed}), in database {}, for {}",
        args.database,
        humantime::format_duration(args.duration)
    );
    eprintln!(
        "  pipeline: {} × {} over {steps}",
        plural(plan.jobs.len(), "job"),
        plural(args.variants as usize, "variant"),
    );
    eprintln!(
        "            misses {:.0}% of the done notifications and {:.0}% of job completions;",
        pipeline::MISS_DONE_CHANCE * 100.0,
        pipeline::MISS_COMPLETION_CHANCE * 100.0,
    );
    eprintln!(
        "            {}, failing most of the time",
        plural(plan.flaky(), "flaky variant")
    );
    eprintln!(
        "  watchdog: {}; stuck after {}, sweeps every {}, limit {} retries",
        settings.instance,
        humantime::format_duration(settings.stuck_after),
        humantime::format_duration(settings.sweep_every),
        settings.max_retries
    );
    eprintln!("    failed      a failed variant is set back to done, so its step re-runs");
    eprintln!("    lagging     a done variant left behind its job is touched, so it moves on");
    eprintln!("    stale       a done variant that others overtook is touched, so it moves on");
    eprintln!("    final_step  a job whose variants all finished the last step is set done");
}

/// `1 job`, `2 jobs`.
fn plural(count: usize, noun: &str) -> String {
    let ending = if count == 1 { "" } else { "s" };
    format!("{count} {noun}{ending}")
}

/// A URL for the demo database (the one `options` name) that the other commands and psql
/// accept, without the password. A unix socket goes in the `host` parameter (the URL's host
/// cannot be a path).
fn database_url(options: &PgConnectOptions) -> String {
    let database = url_encode(options.get_database().unwrap_or(DEMO_DATABASE));
    let user = url_encode(options.get_username());
    let port = options.get_port();
    let host = options.get_host();
    let socket = match options.get_socket() {
        Some(dir) => Some(dir.display().to_string()),
        None => host.starts_with('/').then(|| host.to_string()),
    };
    match socket {
        Some(dir) => format!(
            "postgres://{user}@localhost:{port}/{database}?host={}",
            url_encode(&dir)
        ),
        None if host.contains(':') => format!("postgres://{user}@[{host}]:{port}/{database}"),
        None => format!("postgres://{user}@{host}:{port}/{database}"),
    }
}

/// Percent-encodes all but letters, digits, `-._~` and `/`.
fn url_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_database_url_names_the_server_and_never_the_password() {
        let tcp = PgConnectOptions::new()
            .host("db.example")
            .port(5433)
            .username("alice")
            .password("secret")
            .database("retrylog_demo");
        assert_eq!(
            database_url(&tcp),
            "postgres://alice@db.example:5433/retrylog_demo"
        );
        let socket = PgConnectOptions::new()
            .socket("/run/my pg")
            .port(5432)
            .username("bob")
            .database("my_demo");
        assert_eq!(
            database_url(&socket),
            "postgres://bob@localhost:5432/my_demo?host=/run/my%20pg"
        );
    }
}
