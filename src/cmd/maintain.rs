//! `retrylog maintain`: create the log's partitions that are due, once, for cron (the same
//! step `serve` runs under its lease). Safe to run any number of times; prints what it
//! created, nothing when nothing was due.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::cli::FormatArg;
use crate::maintain;
use crate::output::Rows;

pub async fn run(pool: &PgPool, args: FormatArg) -> anyhow::Result<ExitCode> {
    let mut tx = pool.begin().await?;
    let created = maintain::create_partitions(&mut tx).await?;
    tx.commit().await?;
    let mut rows = Rows::new(&["created"]);
    for partition in created {
        rows.push(vec![Value::from(partition)]);
    }
    rows.print(args.format)?;
    Ok(ExitCode::SUCCESS)
}
