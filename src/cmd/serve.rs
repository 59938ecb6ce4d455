//! `retrylog serve`: the long-running service. Runs the asynchronous projector until
//! SIGINT or SIGTERM, then lets the batch in flight finish and exits 0.

use std::process::ExitCode;

use sqlx::PgPool;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::projector::{self, ProjectorSettings};

pub async fn run(pool: &PgPool, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (stop, stopped) = watch::channel(false);
    let settings = ProjectorSettings {
        batch_events: args.projector_batch,
        ..ProjectorSettings::default()
    };
    let projector = tokio::spawn(projector::run(pool.clone(), settings, stopped));
    tracing::info!("retrylog serve: running the retry_rollup projector");

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    // The projector checks the flag between batches; a batch in flight commits first.
    stop.send_replace(true);
    projector.await?;
    Ok(ExitCode::SUCCESS)
}
