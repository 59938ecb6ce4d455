//! The bench database: every benchmark runs in `retrylog_bench`, a scratch database created
//! fresh on the configured server (`retrylog::scratch`) and dropped at the end. Here: the run
//! inside it, its preparation, the line saying what server the figures come from, and the
//! timed verify that closes a run.

use std::time::Instant;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use retrylog::connect::Connected;
use retrylog::{replay, scratch};

use crate::figures::VerifyFigure;
use crate::progress;

/// The scratch database every measurement runs in, unless `RETRYLOG_BENCH_DATABASE` names
/// another.
pub const BENCH_DATABASE: &str = "retrylog_bench";

/// The scratch database's name: `RETRYLOG_BENCH_DATABASE` if set (a plain lowercase
/// identifier), else [`BENCH_DATABASE`]; so that two runs on one server do not drop each
/// other's database.
pub fn bench_database() -> anyhow::Result<String> {
    match std::env::var("RETRYLOG_BENCH_DATABASE") {
        Ok(name) => retrylog::config::parse_channel(&name).map_err(|_| {
            anyhow::anyhow!("RETRYLOG_BENCH_DATABASE: invalid database name {name:?}")
        }),
        Err(_) => Ok(BENCH_DATABASE.to_string()),
    }
}

/// Runs `measure` with the options of the bench database, then drops the database (or keeps
/// it, with `keep`) whether `measure` succeeded or not. `measure` creates the database with
/// [`fresh_database`]; on an error it simply drops its pools: the final `DROP DATABASE ...
/// WITH (FORCE)` ends whatever they left open.
pub async fn in_bench_database<T>(
    connected: &Connected,
    application_name: &str,
    keep: bool,
    measure: impl AsyncFnOnce(&PgConnectOptions) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let name = bench_database()?;
    let options = scratch::options(connected, &name, application_name)?;
    let outcome = measure(&options).await;
    scratch::release(connected, &name, keep).await;
    outcome
}

/// Drops and recreates the bench database, migrates it, and lifts the retry limit: the
/// benchmarks append far past it.
pub async fn fresh_database(
    connected: &Connected,
    options: &PgConnectOptions,
) -> anyhow::Result<PgPool> {
    let pool = scratch::create(connected, &bench_database()?, options, 4).await?;
    sqlx::query("UPDATE retrylog_settings SET max_retries = NULL")
        .execute(&pool)
        .await
        .context("lifting the retry limit in the bench database")?;
    Ok(pool)
}

/// One line on stderr saying which server, configured how, on how many CPUs.
pub async fn print_server(pool: &PgPool) -> anyhow::Result<()> {
    let (version, shared_buffers, synchronous_commit, fsync): (String, String, String, String) =
        sqlx::query_as(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'),
                    current_setting('synchronous_commit'), current_setting('fsync')",
        )
        .fetch_one(pool)
        .await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "retrylog-bench: PostgreSQL {version} (shared_buffers {shared_buffers}, \
         synchronous_commit {synchronous_commit}, fsync {fsync}), {cpus} CPU(s) for client and \
         server; database {}",
        bench_database()?
    );
    Ok(())
}

/// `replay::verify` over the bench database, timed, with a progress bar saying `message`;
/// the first mismatches go to stderr.
pub async fn timed_verify(pool: &PgPool, message: &'static str) -> anyhow::Result<VerifyFigure> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await?;
    let progress = progress::bar(
        total.max(0) as u64,
        &format!("{message} {{bar:40}} {{pos}}/{{len}} events [{{elapsed}}]"),
    );
    let started = Instant::now();
    let report = replay::verify(pool, |done| progress.set_position(done)).await?;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    for mismatch in report.mismatches.iter().take(10) {
        eprintln!("retrylog-bench: verify: {mismatch}");
    }
    Ok(VerifyFigure {
        events: report.events,
        streams: report.streams,
        mismatches: report.mismatches.len(),
        seconds,
    })
}
