//! `retrylog project`: bring the trend rollup up to date once, for cron.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::ProjectArgs;
use crate::output::Rows;
use crate::projector::{self, Freshness};

pub async fn run(pool: &PgPool, args: ProjectArgs) -> anyhow::Result<ExitCode> {
    let applied = match projector::catch_up_once(pool, args.batch).await? {
        Freshness::CaughtUp { applied } => applied,
        Freshness::Behind(lag) => {
            eprintln!(
                "retrylog: another instance runs the projector (backend pid {}); nothing to do",
                lag.runner_pid
                    .map_or("?".to_string(), |pid| pid.to_string())
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let lag = projector::lag(&mut *pool.acquire().await?).await?;
    let mut rows = Rows::new(&[
        "projection",
        "applied",
        "position",
        "events_behind",
        "seconds_behind",
    ]);
    rows.push(vec![
        Value::from(lag.projection),
        Value::from(applied),
        Value::from(lag.position),
        Value::from(lag.events_behind),
        Value::from(lag.seconds_behind),
    ]);
    rows.print(args.format.format)?;
    Ok(ExitCode::SUCCESS)
}
