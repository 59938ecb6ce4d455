//! `retrylog project`: bring the trend rollup up to date once, for cron; a role that may not
//! run the projector (no operator capability) is told so, exit 2.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::ProjectArgs;
use crate::output::Rows;
use crate::projector::{self, Freshness};

/// `project` by a role that may not run the projector: a caller's mistake (exit 2). Without
/// this check the lease it could not take read as "another instance runs the projector"
/// while `status` showed none.
#[derive(Debug, thiserror::Error)]
#[error(
    "role {role} may not run the projector: it lacks the operator capability; the schema's \
     owner grants it with `retrylog grant operator {role}`"
)]
pub struct ProjectorNotPermitted {
    /// The session's role, escaped for the terminal.
    pub role: String,
}

impl crate::error::CallerMistake for ProjectorNotPermitted {
    /// The caller runs the projector as a role without the right to.
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

pub async fn run(pool: &PgPool, args: ProjectArgs) -> anyhow::Result<ExitCode> {
    {
        let mut conn = pool.acquire().await?;
        if !projector::may_run(&mut conn).await? {
            let role: String = sqlx::query_scalar("SELECT session_user::text")
                .fetch_one(&mut *conn)
                .await?;
            return Err(ProjectorNotPermitted {
                role: crate::text::escape(&role, 64),
            }
            .into());
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
