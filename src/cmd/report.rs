//! `retrylog report`: audit and trend reports.

use std::process::ExitCode;

use clap::Args;
use sqlx::PgPool;

/// `retrylog report`.
#[derive(Debug, Args)]
pub struct ReportArgs {}

pub async fn run(_pool: &PgPool, _args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("report is not written yet")
}
