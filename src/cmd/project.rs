//! `retrylog project`: bring the trend rollup up to date once, for cron; a role that may not
//! run the projector (no operator capability) is told so, exit 2.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use super::permission::NotPermitted;
use crate::cli::ProjectArgs;
use crate::grant::Capability;
use crate::output::Rows;
use crate::projector::{self, Freshness};

pub async fn run(pool: &PgPool, args: ProjectArgs) -> anyhow::Result<ExitCode> {
    {
        let mut conn = pool.acquire().await?;
        if !projector::may_run(&mut conn).await? {
            // Asked first: without the right, the lease it could not take would read as
            // "another instance runs the projector" while `status` shows none.
            let role: String = sqlx::query_scalar("SELECT session_user::text")
                .fetch_one(&mut *conn)
                .await?;
            let operator = [Capability::Operator];
            return Err(NotPermitted::new("project", &operator, &operator, &role).into());
        }
    }
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
