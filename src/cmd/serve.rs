//! `retrylog serve`: the long-running service. Runs the recovery watchdog, the asynchronous
//! projector, the leased partition maintenance (with `--keep`, the archive too), the HTTP API and (with `--verify-every`) a
//! scheduled verify until SIGINT or SIGTERM; then lets the transaction in flight (a retry, a
//! projector batch, a request) finish and exits 0.
//!
//! Three pools, the same one unless configured apart (docs/scale.md): `pool` (the primary:
//! writes and sessions of the dashboard), `read` (`--read-url`, a hot standby: the pages' and
//! the API's reads) and `sessions` (`--direct-url` behind a transaction pooler: the projector's
//! lease and the watchdog's LISTEN need a session of their own).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::permission::NotPermitted;
use crate::cli::ServeArgs;
use crate::http::{self, ApiContext, Tokens};
use crate::projector::{self, ProjectorSettings};
use crate::recovery;
use crate::verify_state;

pub async fn run(
    pool: &PgPool,
    read: Option<&PgPool>,
    sessions: &PgPool,
    args: ServeArgs,
) -> anyhow::Result<ExitCode> {
    // Signals first: one that arrives while starting up still means a clean exit.
    let mut terminate = signal(SignalKind::terminate())?;
    let (stop, stopped) = watch::channel(false);
    // The error column next: a name the pipeline tables do not have as text stops serve
    // before it listens or retries anything.
    if let (false, Some(column)) = (args.no_watchdog, &args.watchdog.error_column) {
        let tables = recovery::check_error_column(pool, column).await?;
        let without = ["jobs", "jobs_variants"]
            .into_iter()
            .find(|table| !tables.iter().any(|found| found == table))
            .map(|table| format!("; {table} has no such column: its retries keep none"))
            .unwrap_or_default();
        tracing::info!(
            error_column = %column,
            tables = %tables.join(","),
            "each retry keeps the target's {column} in its detail.error (read from {}{without})",
            tables.join(" and ")
        );
    }
    // HTTP's settings are checked, and its port bound, before anything else starts: a
    // mistake there stops serve at once.
    let http = if args.no_http {
        None
    } else {
        let tokens = match &args.tokens_file {
            Some(path) => Some(Arc::new(Tokens::load(path)?)),
            None => None,
        };
        let addr = http::check_settings(&args.listen, tokens.is_some(), &args.base_path)?;
        let limits = http::Limits::for_this_process(
            args.header_timeout,
            args.max_http_connections.map(|n| n as usize),
            pool.options().get_max_connections(),
        )?;
        let listener = http::listen(addr).with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        let read_only = if tokens.is_none() {
            " (read-only: no tokens file)"
        } else {
            ""
        };
        tracing::info!(
            "retrylog serve: HTTP on http://{local}{}/{read_only}, at most {} connections, \
             headers within {:?}",
            args.base_path,
            limits.max_connections,
            limits.header_timeout
        );
        if let Some(backlog) = http::effective_backlog().filter(|&backlog| backlog < http::BACKLOG)
        {
            tracing::info!(
                "retrylog serve: the listen backlog is {backlog} (net.core.somaxconn): a burst \
                 of more new connections than that loses some, which their clients retry a \
                 second later; deploy/retrylog.sysctl.conf raises it"
            );
        }
        let ctx = ApiContext {
            pool: pool.clone(),
            read: read.cloned(),
            tokens,
            steps: args.watchdog.steps.clone(),
            base_path: args.base_path.clone(),
            overview_cache: Default::default(),
            stuck_census: Default::default(),
        };
        let app = http::app(ctx);
        Some(tokio::spawn(http::serve(
            listener,
            app,
            limits,
            stopped.clone(),
        )))
    };
    // The scheduled verify records its runs and takes a lease: a role that may not is told
    // now, not at the first period.
    let verifier = match args.verify_every {
        Some(every) => {
            let mut conn = pool.acquire().await?;
            if !verify_state::may_schedule(&mut conn).await? {
                let role: String = sqlx::query_scalar("SELECT session_user::text")
                    .fetch_one(&mut *conn)
                    .await?;
                let operator = [crate::grant::Capability::Operator];
                return Err(
                    NotPermitted::new("serve --verify-every", &operator, &operator, &role).into(),
                );
            }
            drop(conn);
            tracing::info!("retrylog serve: a plain verify every {every:?} on one instance");
            Some(tokio::spawn(verify_state::run_every(
                pool.clone(),
                every,
                stopped.clone(),
            )))
        }
        None => None,
    };
    // The retention policy archives, which is the schema owner's job: a role that may not is
    // told now, not at the first maintenance step.
    let retention = args.retention.retention();
    if let Some(retention) = &retention {
        crate::archive::ensure_owner(&mut *pool.acquire().await?).await?;
        tracing::info!(
            "retrylog serve: keeping {} whole months before the current one; older partitions \
             are archived to {} by the maintenance step",
            retention.months,
            retention.to.display()
        );
    }
    let settings = ProjectorSettings {
        batch_events: args.projector_batch,
        ..ProjectorSettings::default()
    };
    let projector = tokio::spawn(projector::run(sessions.clone(), settings, stopped.clone()));
    let maintenance = tokio::spawn(crate::maintain::run(
        pool.clone(),
        retention,
        stopped.clone(),
    ));
    let watchdog = if args.no_watchdog {
        tracing::info!("retrylog serve: running the retry_rollup projector only");
        None
    } else {
        recovery::publish_settings(sessions, &args.watchdog)
            .await
            .context("writing the retry limit and channel to retrylog_settings")?;
        tracing::info!("retrylog serve: running the recovery watchdog and the projector");
        Some(tokio::spawn(recovery::run(
            sessions.clone(),
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
    maintenance.await?;
    if let Some(verifier) = verifier {
        verifier.await?;
    }
    if let Some(watchdog) = watchdog {
        watchdog.await?;
    }
    if let Some(http) = http {
        http.await?.context("serving HTTP")?;
    }
    Ok(ExitCode::SUCCESS)
}
