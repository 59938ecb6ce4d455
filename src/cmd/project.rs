//! `retrylog project`: bring the trend rollup up to date once, for cron.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::ProjectArgs;
use crate::output::Rows;
use crate::projector;

pub async fn run(pool: &PgPool, args: ProjectArgs) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await?;
    if !projector::try_lead(&mut conn).await? {
        let lag = projector::lag(&mut conn).await?;
        eprintln!(
            "retrylog: another instance runs the projector (backend pid {}); nothing to do",
            lag.runner_pid
                .map_or("?".to_string(), |pid| pid.to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let applied = projector::catch_up(&mut conn, args.batch).await;
    projector::resign(&mut conn).await?;
    let applied = applied?;
    let lag = projector::lag(&mut conn).await?;
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
