//! What became of each retry (`retry_outcome`, migrations/0009): recovered, retried again, gave
//! up, or still open. After the append in the flow (retry → store → outcome → projector →
//! report/http): the next retry (record_retry) and the limit's note decide theirs in their own
//! transaction; the watchdog observes the pipeline's rows for the rest ([`observe`]).
//! `history` shows each retry's outcome, `report outcomes` sums them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The result of a retry, once decided; a retry without one is open.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type, strum::Display, strum::AsRefStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[sqlx(type_name = "retry_outcome_kind", rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The target moved past the retried step (a job: it reached done).
    Recovered,
    /// The same target was retried again before it moved on.
    RetriedAgain,
    /// The limit stopped the target and the watchdog noted it as needing intervention.
    GaveUp,
}

/// What the shown outcome of a retry is called while nothing has decided it.
pub const OPEN: &str = "open";

/// A decided outcome: a row of `retry_outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RetryOutcome {
    /// The retry event's seq.
    pub seq: i64,
    pub outcome: OutcomeKind,
    /// When the result happened as far as the database shows it.
    pub resolved_at: DateTime<Utc>,
    /// When retrylog saw it.
    pub observed_at: DateTime<Utc>,
    /// The watchdog instance, or the role whose retry or note decided it.
    pub observed_by: String,
    /// What was seen (the target's status and step, the next retry, the note).
    pub evidence: serde_json::Value,
}

/// The outcomes of the retries `seqs`, as they stood at `observed_by` (all of them when
/// `None`): a retry missing from the map is open.
pub async fn load(
    conn: &mut PgConnection,
    seqs: &[i64],
    observed_by: Option<DateTime<Utc>>,
) -> Result<HashMap<i64, RetryOutcome>, sqlx::Error> {
    let outcomes: Vec<RetryOutcome> = sqlx::query_as(
        "SELECT seq, outcome, resolved_at, observed_at, observed_by, evidence
           FROM retry_outcome
          WHERE seq = ANY ($1) AND ($2::timestamptz IS NULL OR observed_at <= $2)",
    )
    .bind(seqs)
    .bind(observed_by)
    .fetch_all(conn)
    .await?;
    Ok(outcomes.into_iter().map(|o| (o.seq, o)).collect())
}

/// Decides `recovered` for every open retry (of `jobs` only, when given) whose target moved on
/// past the retried step in `steps` (the managed steps, in order), or reached done
/// (`retry_outcome_observe`, projections/retry_outcomes.sql); returns how many. `observer`
/// names who saw it.
pub async fn observe(
    conn: &mut PgConnection,
    steps: &[String],
    observer: &str,
    jobs: Option<&[Uuid]>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT retry_outcome_observe($1, $2, $3)")
        .bind(steps)
        .bind(observer)
        .bind(jobs)
        .fetch_one(conn)
        .await
}
