//! `retrylog history`: a target's events in order, each labelled with its target, narrowed by
//! the audit filters (reason, step, actor, when it occurred, what was recorded by when), with
//! the watchdog's notes of where the retry limit stopped it and each retry's outcome.

use std::process::ExitCode;

use sqlx::PgPool;

use crate::cli::HistoryArgs;
use crate::intervention;
use crate::outcome;
use crate::output::{history_rows, Format, Rows};
use crate::store::{self, HistoryFilter};
use crate::window::{Moment, TimeSpec, WindowError};

/// The filter the flags ask for; the times are resolved here and bound as parameters.
fn filter(args: &HistoryArgs) -> Result<HistoryFilter, WindowError> {
    let moment = Moment::from_flag(args.as_of.as_deref())?;
    let resolve = |flag: &'static str, text: &Option<String>| {
        text.as_deref()
            .map(|text| TimeSpec::parse(flag, text).map(|spec| spec.resolve(moment.time())))
            .transpose()
    };
    let occurred_since = resolve("--since", &args.since)?;
    let occurred_until = resolve("--until", &args.until)?;
    if let (Some(since), Some(until)) = (occurred_since, occurred_until) {
        if since > until {
            return Err(WindowError::EmptyRange(format!(
                "--since {} is after --until {}: no event can match",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
    }
    Ok(HistoryFilter {
        reason: args.reason,
        step: args.step.clone(),
        actor: args.actor.clone(),
        occurred_since,
        occurred_until,
        recorded_until: moment.as_of(),
    })
}

pub async fn run(pool: &PgPool, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let format = args.format.format;
    rows(pool, &args, format).await?.print(format)?;
    Ok(ExitCode::SUCCESS)
}

/// The history the flags ask for, as rows: what `history` prints and `GET /api/v1/history`
/// answers.
pub async fn rows(pool: &PgPool, args: &HistoryArgs, format: Format) -> anyhow::Result<Rows> {
    let filter = filter(args)?;
    let mut conn = pool.acquire().await?;
    let (events, notes) = match (args.job_id, args.variant_id) {
        (_, Some(variant)) => (
            store::load_variant_history_filtered(&mut conn, variant, &filter).await?,
            intervention::load_interventions(&mut conn, None, Some(variant), &filter).await?,
        ),
        (Some(job), None) => (
            store::load_job_history_filtered(&mut conn, job, &filter).await?,
            intervention::load_interventions(&mut conn, Some(job), None, &filter).await?,
        ),
        (None, None) => unreachable!("clap requires --job-id or --variant-id"),
    };
    // Each retry's outcome as it stood at the moment: observed by then, or open.
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    let outcomes = outcome::load(&mut conn, &seqs, filter.recorded_until).await?;
    Ok(history_rows(&events, &notes, &outcomes, format))
}
