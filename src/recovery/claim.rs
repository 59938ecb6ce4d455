//! One retry by the watchdog, the step that hands it to `store::append` (retry → store → projector
//! → report/http): claim → limit → state change → append → commit, in one transaction (the
//! numbered steps in [`crate::recovery`]). With `--error-column`, the target's error text is
//! read right after the claim and kept in the event's (or the note's) `detail.error`.
//!
//! A sweep hands its candidates over in batches ([`recover_batch`]): the same steps for up
//! to `--batch-size` targets in one transaction, appended through `store::append_many`, so a
//! batch pays for one commit instead of one per retry. [`recover`] is the one-target form,
//! and the fallback when a batch fails for a reason no single target explains.

use std::collections::HashMap;

use serde_json::json;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use uuid::Uuid;

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
            warn_at_limit(scenario, &claimed, limit);
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
    let retry = new_retry(scenario, candidate, &claimed, settings, limit, error);
    let event = match store::append(&mut tx, &retry).await {
        Ok(event) => event,
        Err(AppendError::Database(error)) => return Err(fail(error)),
        Err(refused) => return refused_outcome(target, refused),
    };

    // 5. Commit both.
    tx.commit().await.map_err(fail)?;
    log_retried(scenario, &claimed, &event);
    Ok(Outcome::Retried(Box::new(event)))
}

/// The retry of `claimed`, as detection saw it in `candidate`: `expected_attempt` from what
/// detection read, so a retry another instance recorded in between is a conflict.
fn new_retry(
    scenario: Scenario,
    candidate: &Candidate,
    claimed: &Candidate,
    settings: &WatchdogSettings,
    limit: i32,
    error: Option<String>,
) -> NewRetry {
    let mut retry = NewRetry::new(
        claimed.target(),
        scenario.reason(),
        settings.instance.clone(),
    )
    .with_detail(with_error(claimed.detail(scenario, settings), error))
    .with_status_change(claimed.status.clone(), scenario.to_status())
    .with_expected_attempt(candidate.last_attempt.unwrap_or(0) + 1)
    .with_max_retries(limit);
    if let Some(step) = &claimed.step {
        retry = retry.with_step(step.clone());
    }
    retry
}

/// What a refused retry of `target` means for the sweep (never `AppendError::Database`).
fn refused_outcome(target: Target, refused: AppendError) -> Result<Outcome, RecoveryError> {
    match refused {
        AppendError::Conflict(_) => Ok(Outcome::Skipped(
            "retried by another instance since detection",
        )),
        // The shared limit was lowered since this sweep read it; the next sweep notes it.
        AppendError::LimitReached { .. } => Ok(Outcome::Skipped(
            "the shared retry limit was lowered meanwhile",
        )),
        refused => Err(RecoveryError::Refused {
            target,
            source: refused,
        }),
    }
}

/// The line an operator sees when a target is first noted at the limit.
fn warn_at_limit(scenario: Scenario, claimed: &Candidate, limit: i32) {
    let target = claimed.target();
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

/// The line of a committed retry.
fn log_retried(scenario: Scenario, claimed: &Candidate, event: &RetryEvent) {
    let target = claimed.target();
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

/// What became of each candidate of a batch, in the batch's order.
pub type BatchOutcomes = Vec<Result<Outcome, RecoveryError>>;

/// Handles `candidates` (at most [`store::MAX_BATCH_ROWS`]) in one transaction on `conn`: the
/// numbered steps of [`crate::recovery`] for all of them at once, so the batch pays for one
/// commit. A target another instance holds, out of the condition or retried since detection
/// is skipped; one at the limit is noted; the others are changed and appended together
/// (`store::append_many`). A retry the log refuses is taken out and the rest appended again
/// (under a savepoint), so one target's refusal never undoes the others; each retried target's
/// state change still commits with its event. Any other failure of the batch rolls it back
/// and hands each candidate to [`recover`] alone, which says which one failed. Only a lost
/// connection is the batch's error.
pub async fn recover_batch(
    conn: &mut PgConnection,
    scenario: Scenario,
    candidates: &[Candidate],
    settings: &WatchdogSettings,
    limit: i32,
) -> Result<BatchOutcomes, RecoveryError> {
    match try_batch(conn, scenario, candidates, settings, limit).await {
        Ok(outcomes) => Ok(outcomes),
        Err(error) if sqlstate::connection_lost(&error) => {
            Err(RecoveryError::ConnectionLost(error))
        }
        Err(error) => {
            tracing::warn!(%scenario, %error, candidates = candidates.len(),
                           "the batch rolled back; retrying its candidates one at a time");
            let mut outcomes = Vec::with_capacity(candidates.len());
            for candidate in candidates {
                match recover(conn, scenario, candidate, settings, limit).await {
                    Err(lost @ RecoveryError::ConnectionLost(_)) => return Err(lost),
                    outcome => outcomes.push(outcome),
                }
            }
            Ok(outcomes)
        }
    }
}

/// [`recover_batch`] in one transaction; any database error rolls all of it back.
async fn try_batch(
    conn: &mut PgConnection,
    scenario: Scenario,
    candidates: &[Candidate],
    settings: &WatchdogSettings,
    limit: i32,
) -> Result<BatchOutcomes, sqlx::Error> {
    let id_of = |candidate: &Candidate| candidate.job_variants_id.unwrap_or(candidate.job_id);
    let ids: Vec<Uuid> = candidates.iter().map(id_of).collect();
    let mut tx = conn.begin().await?;

    // 1. Claim them all, as `recover` claims one (a job waits for its variants first; in one
    //    order, so two batches share-locking the same variants queue rather than deadlock).
    if scenario == Scenario::FinalStep {
        sqlx::query(
            "SELECT 1 FROM jobs_variants WHERE job_id = ANY($1)
              ORDER BY job_variants_id FOR SHARE",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    let mut claimed: HashMap<Uuid, Candidate> = sqlx::query_as(&scenario.claim_many_sql())
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|claimed: Candidate| (id_of(&claimed), claimed))
        .collect();

    // 2. Skip, note at the limit, or keep for the retry; as `recover` decides for one.
    let mut outcomes: Vec<Option<Result<Outcome, RecoveryError>>> =
        candidates.iter().map(|_| None).collect();
    let mut noted = Vec::new();
    let mut retries = Vec::new();
    for (index, candidate) in candidates.iter().enumerate() {
        let Some(claimed) = claimed.remove(&ids[index]) else {
            outcomes[index] = Some(Ok(Outcome::Skipped(
                "no longer in the condition, or held by another instance",
            )));
            continue;
        };
        if claimed.last_attempt != candidate.last_attempt {
            outcomes[index] = Some(Ok(Outcome::Skipped(
                "retried by another instance since detection",
            )));
            continue;
        }
        let error = match &settings.error_column {
            Some(column) => error_column::capture(&mut tx, claimed.target(), column).await?,
            None => None,
        };
        if claimed.retry_count >= limit {
            let detail = with_error(
                intervention_detail(&claimed, scenario, settings, limit),
                error,
            );
            let first =
                note_intervention(&mut tx, scenario, &claimed, settings, limit, detail).await?;
            outcomes[index] = Some(Ok(Outcome::AtLimit { noted: first }));
            if first {
                noted.push(claimed);
            }
            continue;
        }
        retries.push((index, claimed, error));
    }

    // 3 and 4. The state changes and the events, under a savepoint: a retry the log refuses
    //    is taken out and the rest go again.
    let mut retried = Vec::new();
    while !retries.is_empty() {
        let mut savepoint = Connection::begin(&mut *tx).await?;
        let targets: Vec<Uuid> = retries.iter().map(|(index, ..)| ids[*index]).collect();
        sqlx::query(&scenario.state_change_many_sql())
            .bind(&targets)
            .execute(&mut *savepoint)
            .await?;
        let batch: Vec<NewRetry> = retries
            .iter()
            .map(|(index, claimed, error)| {
                new_retry(
                    scenario,
                    &candidates[*index],
                    claimed,
                    settings,
                    limit,
                    error.clone(),
                )
            })
            .collect();
        match store::append_many(&mut savepoint, &batch).await {
            Ok(events) => {
                savepoint.commit().await?;
                retried = retries.drain(..).zip(events).collect();
            }
            Err(AppendError::Database(error)) => return Err(error),
            Err(refused) => {
                savepoint.rollback().await?;
                // A refusal of no row in particular is a fault of the batch.
                let Some(row) = refused.batch_row().filter(|row| *row < retries.len()) else {
                    return Err(sqlx::Error::Protocol(format!(
                        "record_retries refused the batch without naming a row: {refused}"
                    )));
                };
                let (index, claimed, _) = retries.remove(row);
                outcomes[index] = Some(refused_outcome(claimed.target(), refused));
            }
        }
    }

    // 5. Commit everything the batch decided.
    tx.commit().await?;
    for claimed in &noted {
        warn_at_limit(scenario, claimed, limit);
    }
    for ((index, claimed, _), event) in retried {
        log_retried(scenario, &claimed, &event);
        outcomes[index] = Some(Ok(Outcome::Retried(Box::new(event))));
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every candidate of the batch has an outcome"))
        .collect())
}
