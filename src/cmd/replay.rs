//! `retrylog replay`: rebuild the projections from the log, or show what that would change.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sqlx::PgPool;

use super::stderr_is_terminal;
use crate::cli::ReplayArgs;
use crate::output::Rows;
use crate::replay;

pub async fn run(pool: &PgPool, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let progress = if stderr_is_terminal() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is valid"),
        );
        bar.set_message("replaying the log into retry_counts");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = replay::replay(pool, args.dry_run).await?;
    progress.finish_and_clear();

    let mut rows = Rows::new(&[
        "target",
        "job_id",
        "job_variants_id",
        "retry_count",
        "replayed",
        "opening_balance",
        "events",
    ]);
    for change in &report.changes {
        rows.push(vec![
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
    rows.print(args.format.format)?;
    let verb = if report.applied {
        "changed"
    } else {
        "would change"
    };
    eprintln!(
        "retrylog: replayed {} events; {} {} count(s){}",
        report.events,
        verb,
        report.changes.len(),
        if report.applied {
            ""
        } else {
            " (dry run: nothing written)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
