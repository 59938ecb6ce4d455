//! `retrylog record`: one retry through the same append as every other door.

use std::process::ExitCode;

use sqlx::PgPool;

use crate::cli::RecordArgs;
use crate::event::{NewRetry, Target};
use crate::output::event_rows;
use crate::store;

/// The actor when `--actor` is not given: the operator at the terminal, `$USER`, else the OS
/// user this process runs as (cron and systemd often leave `$USER` unset).
pub(super) fn default_actor() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|user| !user.trim().is_empty())
        .unwrap_or_else(whoami::username);
    format!("cli:{user}")
}

pub async fn run(pool: &PgPool, args: RecordArgs) -> anyhow::Result<ExitCode> {
    let target = match args.variant_id {
        Some(job_variants_id) => Target::Variant {
            job_id: args.job_id,
            job_variants_id,
        },
        None => Target::Job {
            job_id: args.job_id,
        },
    };
    let mut retry = NewRetry::new(
        target,
        args.reason,
        args.actor.unwrap_or_else(default_actor),
    );
    retry.step = args.step;
    retry.event_id = args.event_id;
    retry.max_retries = args.max_retries;
    retry.expected_attempt = args.expected_attempt;
    retry.force = args.force;
    if let Some(detail) = args.detail {
        retry.detail = detail;
    }

    let mut tx = pool.begin().await?;
    let event = store::append(&mut tx, &retry).await?;
    tx.commit().await?;
    event_rows(&[event], args.format.format).print(args.format.format)?;
    Ok(ExitCode::SUCCESS)
}
