//! `retrylog recover`: an operator's recovery of one target, through the one operation the API
//! and the dashboard call too (`recovery::recover_by_hand`).

use std::process::ExitCode;

use sqlx::PgPool;

use super::record::default_actor;
use crate::cli::RecoverArgs;
use crate::output::event_rows;
use crate::recovery::{self, ManualRecovery, ManualTarget};

pub async fn run(pool: &PgPool, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.job_id, args.variant_id) {
        (_, Some(variant)) => ManualTarget::Variant(variant),
        (Some(job), None) => ManualTarget::Job(job),
        (None, None) => unreachable!("clap requires --job-id or --variant-id"),
    };
    let request = ManualRecovery {
        target,
        note: args.note,
        actor: args.actor.unwrap_or_else(default_actor),
        to_status: args.to_status,
        event_id: args
            .event_id
            .or_else(|| args.request_id.as_deref().map(recovery::request_event_id)),
    };
    let mut tx = pool.begin().await?;
    let recovered = recovery::recover_by_hand(&mut tx, &request, &args.steps).await?;
    tx.commit().await?;
    if recovered.repeated {
        eprintln!("retrylog: this request was already recorded; nothing changed");
    }
    let format = args.format.format;
    event_rows(&[recovered.event], format).print(format)?;
    Ok(ExitCode::SUCCESS)
}
