//! `retrylog status`: each projection's checkpoint, lag and runner.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::FormatArg;
use crate::output::Rows;
use crate::projector;

pub async fn run(pool: &PgPool, args: FormatArg) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(&mut *conn)
        .await?;
    let lag = projector::lag(&mut conn).await?;
    let mut rows = Rows::new(&[
        "projection",
        "mode",
        "position",
        "events_applied",
        "events_behind",
        "seconds_behind",
        "updated_at",
        "runner",
    ]);
    // retry_counts is applied inside every append: it is never behind.
    rows.push(vec![
        Value::from("retry_counts"),
        Value::from("inline"),
        Value::Null,
        Value::from(events),
        Value::from(0),
        Value::from(0.0),
        Value::Null,
        Value::from("every append"),
    ]);
    rows.push(vec![
        Value::from(lag.projection),
        Value::from("async"),
        Value::from(lag.position),
        Value::from(lag.events_applied),
        Value::from(lag.events_behind),
        Value::from((lag.seconds_behind * 10.0).round() / 10.0),
        Value::from(
            lag.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        match (lag.runner_pid, lag.runner) {
            (Some(pid), name) => Value::from(format!(
                "{} (backend pid {pid})",
                name.unwrap_or_else(|| "unknown".into())
            )),
            (None, _) => Value::from("none running"),
        },
    ]);
    rows.print(args.format)?;
    Ok(ExitCode::SUCCESS)
}
