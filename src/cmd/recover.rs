//! `retrylog recover`: an operator's recovery of one target, through the one operation the API
//! and the dashboard call too (`recovery::recover_by_hand`); or, given the filters of
//! `retrylog targets` instead of an id, of every target they match, through the bulk recovery
//! the API and the Targets page call (`recovery::bulk::recover_many`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use super::record::default_actor;
use crate::cli::{FilterArgs, RecoverArgs};
use crate::output::{event_rows, Format, Rows};
use crate::recovery::bulk::{self, BulkError, BulkRequest, BulkResult};
use crate::recovery::{self, ManualRecovery, ManualTarget};
use crate::targets::StuckRule;

pub async fn run(pool: &PgPool, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.job_id, args.variant_id) {
        (_, Some(variant)) => ManualTarget::Variant(variant),
        (Some(job), None) => ManualTarget::Job(job),
        (None, None) => return run_bulk(pool, args).await,
    };
    let request = ManualRecovery {
        target,
        note: args.note,
        actor: args.by.unwrap_or_else(default_actor),
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

/// `recover --state …`: every target the filters match. JSON prints the API's answer whole;
/// a table lists each target with what became of it, and stderr the counts.
async fn run_bulk(pool: &PgPool, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    if !args.filter.any() {
        return Err(BulkError::NoFilter.into());
    }
    let request = BulkRequest {
        filter: super::targets::filter(&args.filter)?,
        stuck: StuckRule {
            steps: args.steps.clone(),
            stuck_after: args.filter.stuck_after,
        },
        asked: asked(&args.filter),
        seen: None,
        note: args.note,
        actor: args.by.unwrap_or_else(default_actor),
        max: args.max,
        dry_run: args.dry_run,
        request_id: args
            .request_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let result = bulk::recover_many(pool, &request, &args.steps).await?;
    let format = args.format.format;
    match format {
        Format::Json => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &result)?;
            std::io::Write::write_all(&mut out, b"\n")?;
        }
        format => outcome_rows(&result).print(format)?,
    }
    crate::cmd::notice(crate::cli::LogFormat::Text, &summary(&result));
    Ok(ExitCode::SUCCESS)
}

/// The filters as given, for comparing a repeated request: the flags' names and text.
fn asked(filter: &FilterArgs) -> Value {
    let mut given = BTreeMap::new();
    let mut put = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            given.insert(name.to_string(), Value::from(value));
        }
    };
    put("state", filter.state.map(|state| state.to_string()));
    put("kind", filter.kind.map(|kind| kind.to_string()));
    put("step", filter.step.clone());
    put("reason", filter.reason.map(|reason| reason.to_string()));
    put("scenario", filter.scenario.clone());
    put("actor", filter.actor.clone());
    put("since", filter.since.clone());
    put("until", filter.until.clone());
    put("min_retries", filter.min_retries.map(|n| n.to_string()));
    put("q", filter.q.clone());
    Value::Object(given.into_iter().collect())
}

/// One row per matched target: recovered (with its event's seq and attempt), skipped (with
/// why), or, in a dry run, matched (with the attempt it was seen at).
fn outcome_rows(result: &BulkResult) -> Rows {
    let mut rows = Rows::new(&["kind", "id", "status", "result", "seq", "attempt", "why"]);
    let recovered: std::collections::HashMap<String, &Value> = result
        .recovered
        .iter()
        .map(|event| {
            let id = event["job_variants_id"]
                .as_str()
                .or(event["job_id"].as_str())
                .unwrap_or_default()
                .to_string();
            (id, event)
        })
        .collect();
    for target in &result.targets {
        let skipped = result.skipped.iter().find(|skip| skip.id == target.id);
        let (outcome, seq, attempt, why) = match (recovered.get(&target.id.to_string()), skipped) {
            (Some(event), _) => (
                "recovered",
                event["seq"].clone(),
                event["attempt"].clone(),
                event["why"].clone(),
            ),
            (None, Some(skip)) => (
                "skipped",
                Value::Null,
                Value::from(target.attempt),
                Value::from(skip.message.clone()),
            ),
            (None, None) => (
                "matched",
                Value::Null,
                Value::from(target.attempt),
                Value::from(target.why.clone()),
            ),
        };
        rows.push(vec![
            Value::from(target.kind.to_string()),
            Value::from(target.id.to_string()),
            Value::from(target.status.clone()),
            Value::from(outcome),
            seq,
            attempt,
            why,
        ]);
    }
    rows
}

/// The counts, for stderr.
fn summary(result: &BulkResult) -> String {
    if result.dry_run {
        return format!(
            "{} matching; dry run: nothing recovered (run again without --dry-run to recover \
             them)",
            result.matched
        );
    }
    let repeated = if result.repeated {
        " (the stored result of this request id: nothing changed this time)"
    } else {
        ""
    };
    format!(
        "{} matching, {} recovered, {} skipped; request id {}{repeated}",
        result.matched,
        result.recovered.len(),
        result.skipped.len(),
        result.request_id
    )
}
