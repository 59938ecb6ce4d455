//! `retrylog maintain`: create the log's partitions that are due, record the digests of the
//! closed ones and, with `--keep Nmonths --archive-to DIR`, archive the partitions older than
//! the policy, once, for cron (the same step `serve` runs under its lease). Safe to run any
//! number of times; prints the partitions it created (nothing when nothing was due) and says
//! on stderr what else it did.
//!
//! With a retention policy it takes the maintenance lease, as `serve` does, so that it never
//! archives beside a `serve` that is archiving; while another holder has it, it says so and
//! does nothing.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::MaintainArgs;
use crate::maintain::{self, Leased, Step, StepError};
use crate::output::Rows;

/// How long `maintain --keep` holds the lease: it gives it back when done.
const LEASE: Duration = Duration::from_secs(3600);

pub async fn run(pool: &PgPool, args: MaintainArgs) -> anyhow::Result<ExitCode> {
    let step = match args.retention.retention() {
        None => maintain::step(pool, None, chrono::Utc::now())
            .await
            .map_err(cause)?,
        Some(retention) => {
            let holder = format!(
                "maintain {} {}",
                crate::config::default_instance(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let leased = maintain::run_leased_step(pool, &holder, LEASE, Some(&retention)).await;
            // Given back at once, whatever happened: the next step is anyone's.
            sqlx::query(
                "UPDATE retrylog_maintenance_lease SET expires_at = now() WHERE holder = $1",
            )
            .bind(&holder)
            .execute(pool)
            .await?;
            match leased.map_err(cause)? {
                Leased::Ran(step) => step,
                Leased::Skipped { holder } => {
                    eprintln!(
                        "retrylog: maintain: {holder} holds the maintenance lease and does \
                         this step; nothing done"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    let mut rows = Rows::new(&["created"]);
    for partition in &step.created {
        rows.push(vec![Value::from(partition.clone())]);
    }
    rows.print(args.format.format)?;
    report(&step);
    Ok(ExitCode::SUCCESS)
}

/// The digests and archives, one line each on stderr.
fn report(step: &Step) {
    for partition in &step.digested {
        eprintln!("retrylog: maintain: recorded the digest of closed partition {partition}");
    }
    for archived in &step.archived {
        eprintln!(
            "retrylog: maintain: archived {} ({} events) to {}",
            archived.partition,
            archived.events,
            archived.file.display()
        );
    }
}

/// The error itself, not its wrapper: the exit code is read from its type (an archive refused
/// to a role that does not own the log is the caller's mistake, exit 2).
fn cause(error: StepError) -> anyhow::Error {
    match error {
        StepError::Database(error) => error.into(),
        StepError::Archive(error) => error.into(),
    }
}
