//! One retry by the watchdog, the step that hands it to `store::append` (retry → store → projector
//! → report/http): claim → limit → state change → append → commit, in one transaction (the
//! numbered steps in [`crate::recovery`]). With `--error-column`, the target's error text is
//! read right after the claim and kept in the event's (or the note's) `detail.error`.

use serde_json::json;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use super::error_column;
use super::scenario::{Candidate, Scenario};
use crate::config::WatchdogSettings;
use crate::event::{NewRetry, RetryEvent, Target};
use crate::intervention::{self, NewIntervention};
use crate::sqlstate;
use crate::store::{self, AppendError};

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Retried: the state change and this event committed together.
    Retried(Box<RetryEvent>),
    /// At the limit: nothing changed; `noted` when this was the first time at this count.
    AtLimit { noted: bool },
    /// Left alone: no longer in the condition, locked by another instance, or retried by
    /// another instance since detection read it.
    Skipped(&'static str),
}

/// Why one candidate could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The database connection went away; the sweep stops and `run` reconnects.
    #[error("lost the database connection")]
    ConnectionLost(#[source] sqlx::Error),
    /// This target's transaction failed and rolled back; the sweep goes on with the next.
    #[error("retrying {target} failed")]
    Target {
        target: Target,
        #[source]
        source: sqlx::Error,
    },
    /// The log refused this target's retry (the transaction rolled back); the sweep goes on.
    #[error("the retry of {target} was refused")]
    Refused {
        target: Target,
        #[source]
        source: AppendError,
    },
}

impl RecoveryError {
    fn for_target(target: Target, error: sqlx::Error) -> Self {
        if sqlstate::connection_lost(&error) {
            RecoveryError::ConnectionLost(error)
        } else {
            RecoveryError::Target {
                target,
                source: error,
            }
        }
    }
}

/// Handles one candidate in a transaction of its own on `conn`; see the numbered steps in
/// [`crate::recovery`].
pub async fn recover(
    conn: &mut PgConnection,
    scenario: Scenario,
    candidate: &Candidate,
    settings: &WatchdogSettings,
    limit: i32,
) -> Result<Outcome, RecoveryError> {
    let target = candidate.target();
    let fail = |error| RecoveryError::for_target(target, error);
    let mut tx = conn.begin().await.map_err(fail)?;

    // 1. Claim, re-checking the condition on the row as it is now. For a job, first wait for
    //    its variants: a pipeline transaction still setting one to `failed` reads as `done`
    //    until it commits, and the job must not be closed over it. The claim is the next
    //    statement, so it sees what that transaction committed.
    let id = candidate.job_variants_id.unwrap_or(candidate.job_id);
    if scenario == Scenario::FinalStep {
        sqlx::query("SELECT 1 FROM jobs_variants WHERE job_id = $1 FOR SHARE")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    let claimed: Option<Candidate> = sqlx::query_as(&scenario.claim_sql())
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;
    let Some(claimed) = claimed else {
        return Ok(Outcome::Skipped(
            "no longer in the condition, or held by another instance",
        ));
    };
    if claimed.last_attempt != candidate.last_attempt {
        return Ok(Outcome::Skipped(
            "retried by another instance since detection",
        ));
    }

    // The pipeline's error text, if it keeps one: read under the claim's lock and before the
    // state change, it is the error that caused this retry (or the note).
    let error = match &settings.error_column {
        Some(column) => error_column::capture(&mut tx, target, column)
            .await
            .map_err(fail)?,
        None => None,
    };

    // 2. The limit: note the target once, change nothing.
    if claimed.retry_count >= limit {
        let detail = with_error(
            intervention_detail(&claimed, scenario, settings, limit),
            error,
        );
        let noted = note_intervention(&mut tx, scenario, &claimed, settings, limit, detail)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        if noted {
            tracing::warn!(
                target = %target,
                job_id = %claimed.job_id,
                reason = %scenario.reason(),
                scenario = %scenario,
                retry_count = claimed.retry_count,
                max_retries = limit,
                "{target} needs manual intervention: {} retries reached the limit of {limit}",
                claimed.retry_count
            );
        }
        return Ok(Outcome::AtLimit { noted });
    }

    // 3. The state change.
    sqlx::query(scenario.state_change_sql())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;

    // 4. The event, in the same transaction.
    let mut retry = NewRetry::new(target, scenario.reason(), settings.instance.clone())
        .with_detail(with_error(claimed.detail(scenario, settings), error))
        .with_status_change(claimed.status.clone(), scenario.to_status())
        .with_expected_attempt(candidate.last_attempt.unwrap_or(0) + 1)
        .with_max_retries(limit);
    if let Some(step) = &claimed.step {
        retry = retry.with_step(step.clone());
    }
    let event = match store::append(&mut tx, &retry).await {
        Ok(event) => event,
        Err(AppendError::Conflict(_)) => {
            return Ok(Outcome::Skipped(
                "retried by another instance since detection",
            ));
        }
        Err(AppendError::LimitReached { .. }) => {
            // The shared limit was lowered since this sweep read it; the next sweep notes it.
            return Ok(Outcome::Skipped(
                "the shared retry limit was lowered meanwhile",
            ));
        }
        Err(AppendError::Database(error)) => return Err(fail(error)),
        Err(refused) => {
            return Err(RecoveryError::Refused {
                target,
                source: refused,
            })
        }
    };

    // 5. Commit both.
    tx.commit().await.map_err(fail)?;
    tracing::info!(
        target = %target,
        job_id = %event.job_id,
        reason = %event.reason,
        scenario = %scenario,
        attempt = event.attempt,
        step = event.step.as_deref().unwrap_or(""),
        idle_seconds = claimed.idle_seconds.round() as i64,
        "retried {target} ({scenario}, attempt {})",
        event.attempt
    );
    Ok(Outcome::Retried(Box::new(event)))
}

/// Records that `candidate` reached the limit; false when it was already noted at this count.
async fn note_intervention(
    tx: &mut Transaction<'_, Postgres>,
    scenario: Scenario,
    candidate: &Candidate,
    settings: &WatchdogSettings,
    limit: i32,
    detail: serde_json::Value,
) -> Result<bool, sqlx::Error> {
    intervention::note(
        tx,
        &NewIntervention {
            target: candidate.target(),
            retry_count: candidate.retry_count,
            max_retries: limit,
            scenario: scenario.as_ref(),
            reason: scenario.reason(),
            step: candidate.step.as_deref(),
            status: &candidate.status,
            actor: &settings.instance,
            detail,
        },
    )
    .await
}

/// `detail` with the pipeline's error text as `error`, when there is one.
fn with_error(mut detail: serde_json::Value, error: Option<String>) -> serde_json::Value {
    if let (Some(fields), Some(error)) = (detail.as_object_mut(), error) {
        fields.insert("error".into(), json!(error));
    }
    detail
}

/// A note's `detail`: the facts of the retry it did not make, the count and the limit.
fn intervention_detail(
    candidate: &Candidate,
    scenario: Scenario,
    settings: &WatchdogSettings,
    limit: i32,
) -> serde_json::Value {
    let mut detail = candidate.detail(scenario, settings);
    let fields = detail.as_object_mut().expect("a JSON object");
    fields.insert("retry_count".into(), json!(candidate.retry_count));
    fields.insert("max_retries".into(), json!(limit));
    detail
}
