//! `retrylog serve`: the long-running service. Runs the recovery watchdog and the
//! asynchronous projector until SIGINT or SIGTERM; then lets the transaction in flight (a
//! retry, a projector batch) finish and exits 0.

use std::process::ExitCode;

use anyhow::Context;
use sqlx::PgPool;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::projector::{self, ProjectorSettings};
use crate::recovery;

pub async fn run(pool: &PgPool, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Signals first: one that arrives while starting up still means a clean exit.
    let mut terminate = signal(SignalKind::terminate())?;
    let (stop, stopped) = watch::channel(false);
    let settings = ProjectorSettings {
        batch_events: args.projector_batch,
        ..ProjectorSettings::default()
    };
    let projector = tokio::spawn(projector::run(pool.clone(), settings, stopped.clone()));
    let watchdog = if args.no_watchdog {
        tracing::info!("retrylog serve: running the retry_rollup projector only");
        None
    } else {
        recovery::publish_settings(pool, &args.watchdog)
            .await
            .context("writing the retry limit and channel to retrylog_settings")?;
        tracing::info!("retrylog serve: running the recovery watchdog and the projector");
        Some(tokio::spawn(recovery::run(
            pool.clone(),
            args.watchdog,
            stopped,
        )))
    };

    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    // Both check the flag between transactions: a retry or a batch in flight commits first.
    stop.send_replace(true);
    projector.await?;
    if let Some(watchdog) = watchdog {
        watchdog.await?;
    }
    Ok(ExitCode::SUCCESS)
}
