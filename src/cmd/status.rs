//! `retrylog status`: the schema version, each projection's checkpoint, lag and runner (who
//! holds the projector's lease, whether it stalled, why the projection cannot advance).

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use super::exit;
use crate::cli::FormatArg;
use crate::migrate;
use crate::output::Rows;
use crate::projector;

pub async fn run(pool: &PgPool, args: FormatArg) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await?;
    // 1. The schema: said first, and alone when behind (the projections may not exist yet).
    let version = migrate::schema_version(&mut conn).await?;
    match &version.problem {
        None => eprintln!(
            "retrylog: schema at migration {} of {}: current",
            version.applied, version.expected
        ),
        Some(problem) => {
            eprintln!(
                "retrylog: schema at migration {} of {}: {} ({problem}); run `retrylog \
                 migrate` as the schema's owner",
                version.applied,
                version.expected,
                if version.ahead { "ahead" } else { "behind" }
            );
            return Ok(ExitCode::from(exit::USAGE));
        }
    }
    // 2. The projections.
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
        "runner_role",
        "state",
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
        Value::Null,
        Value::from("ok"),
    ]);
    let state = match (&lag.failure, lag.stalled) {
        (Some(failure), _) => format!(
            "cannot advance at event seq {}: {failure}",
            lag.failed_at_seq
                .map_or("?".to_string(), |seq| seq.to_string())
        ),
        (None, true) => "stalled: the runner stopped renewing its lease".to_string(),
        (None, false) => "ok".to_string(),
    };
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
                name.filter(|name| !name.is_empty())
                    .unwrap_or_else(|| "unknown".into())
            )),
            (None, _) => Value::from("none running"),
        },
        lag.runner_role.map_or(Value::Null, Value::from),
        Value::from(state),
    ]);
    rows.print(args.format)?;
    Ok(ExitCode::SUCCESS)
}
