//! `retrylog replay`: rebuild the projections from the log, or show what that would change.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sqlx::PgPool;

use super::stderr_is_terminal;
use crate::cli::ReplayArgs;
use crate::output::{Format, Rows};
use crate::projection::PROJECTIONS;
use crate::replay;

pub async fn run(pool: &PgPool, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let progress = if stderr_is_terminal() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is valid"),
        );
        bar.set_message("replaying the log into the projections");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let projections = match args.projection {
        Some(projection) => std::slice::from_ref(projection),
        None => PROJECTIONS,
    };
    let report = replay::replay_projections(pool, projections, args.dry_run).await?;
    progress.finish_and_clear();

    let mut rows = Rows::new(&[
        "projection",
        "target",
        "job_id",
        "job_variants_id",
        "stored",
        "replayed",
        "opening_balance",
        "events",
    ]);
    for change in &report.changes {
        rows.push(vec![
            Value::from("retry_counts"),
            Value::from(change.target.to_string()),
            Value::from(change.target.job_id().to_string()),
            change
                .target
                .job_variants_id()
                .map_or(Value::Null, |id| Value::from(id.to_string())),
            Value::from(change.retry_count),
            Value::from(change.expected),
            Value::from(change.opening_balance),
            Value::from(change.events),
        ]);
    }
    for change in &report.rollup_changes {
        rows.push(vec![
            Value::from("retry_rollup"),
            Value::from(format!(
                "{} {} {} step={} scenario={}",
                change.hour.format("%Y-%m-%d %H:00Z"),
                change.kind,
                change.reason.as_deref().unwrap_or("created"),
                change.step.as_deref().unwrap_or("-"),
                change.scenario.as_deref().unwrap_or("-"),
            )),
            Value::Null,
            Value::Null,
            change.stored.map_or(Value::Null, Value::from),
            change.expected.map_or(Value::Null, Value::from),
            Value::Null,
            Value::Null,
        ]);
    }
    for change in &report.outcome_changes {
        rows.push(vec![
            Value::from("retry_outcomes"),
            Value::from(change.to_string()),
            change
                .target
                .map_or(Value::Null, |t| Value::from(t.job_id().to_string())),
            change
                .target
                .and_then(|t| t.job_variants_id())
                .map_or(Value::Null, |id| Value::from(id.to_string())),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ]);
    }
    // An empty table says nothing the summary line below does not; machines get `[]`.
    if !rows.rows.is_empty() || args.format.format != Format::Table {
        rows.print(args.format.format)?;
    }
    for drift in &report.unsettled {
        // A drift names a rollup cell's step and scenario: text from the log, escaped.
        eprintln!(
            "retrylog: still drifting after replay (written by hand meanwhile?): {}",
            crate::text::for_terminal(&drift.to_string())
        );
    }
    let verb = if report.applied {
        "changed"
    } else {
        "would change"
    };
    eprintln!(
        "retrylog: replayed {} events into {}; {} {} row(s){}",
        report.events,
        report.projections.join(" and "),
        verb,
        report.changes.len() + report.rollup_changes.len() + report.outcome_changes.len(),
        if report.applied {
            ""
        } else {
            " (dry run: nothing written)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
