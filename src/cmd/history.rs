//! `retrylog history`: a target's events in order, each labelled with its target.

use std::process::ExitCode;

use sqlx::PgPool;

use crate::cli::HistoryArgs;
use crate::output::event_rows;
use crate::store;

pub async fn run(pool: &PgPool, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await?;
    let events = match (args.job_id, args.variant_id) {
        (_, Some(variant)) => store::load_variant_history(&mut conn, variant).await?,
        (Some(job), None) => store::load_job_history(&mut conn, job).await?,
        (None, None) => unreachable!("clap requires --job-id or --variant-id"),
    };
    event_rows(&events, args.format.format).print(args.format.format)?;
    Ok(ExitCode::SUCCESS)
}
