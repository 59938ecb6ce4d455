//! The recovery watchdog: finds stuck and failed work in the pipeline tables, retries it, and
//! records each retry through `store::append` in the transaction that makes the state change.
//!
//! Four scenarios (docs/operations.md), each one SQL condition used twice: unlocked, to
//! detect candidates, and again for one target under `FOR NO KEY UPDATE SKIP LOCKED`, to
//! claim it. A retry is then:
//!
//! 1. claim: re-check the condition and lock the target's row, skipping a row another
//!    instance holds; a target no longer in the condition is left alone;
//! 2. limit: at the limit, note the target as needing intervention (once per retry_count)
//!    and change nothing;
//! 3. state change: touch the variant, set it back to done, or set the job done;
//! 4. append, with `expected_attempt` from what detection read, so a retry another instance
//!    recorded in between is a conflict, not a second retry;
//! 5. commit: the state change and its event land together or not at all.
//!
//! `run` drives it: a sweep of every managed job at start and every `sweep_every`, and a
//! sweep of the jobs a notification names as soon as it arrives.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;
use uuid::Uuid;

use crate::config::WatchdogSettings;
use crate::event::{NewRetry, RetryEvent, RetryReason, Target};
use crate::shutdown;
use crate::store::{self, AppendError, HistoryFilter};

/// Why the watchdog retries a target. Stored as `detail.scenario` of the event.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Scenario {
    /// A variant is `failed` while its job runs (or failed) at a managed step: set it back to
    /// `done` at its step so that step re-runs.
    Failed,
    /// A variant is `done` at an earlier step than its running job and has sat still for
    /// `stuck_after`: touch it so the pipeline advances it.
    Lagging,
    /// A variant is `done`, not behind its job, has sat still for `stuck_after`, and another
    /// variant of the job has moved further: touch it.
    Stale,
    /// A job runs at the final step, all its variants are done there, and nothing has moved
    /// for `stuck_after`: set the job `done`. A job-level retry.
    FinalStep,
}

impl Scenario {
    /// Every scenario, in the order a sweep handles them.
    pub const ALL: [Scenario; 4] = [
        Scenario::Failed,
        Scenario::Lagging,
        Scenario::Stale,
        Scenario::FinalStep,
    ];

    /// The reason its retries are recorded with.
    pub fn reason(self) -> RetryReason {
        match self {
            Scenario::Failed => RetryReason::Failed,
            Scenario::Lagging | Scenario::Stale => RetryReason::Stuck,
            Scenario::FinalStep => RetryReason::ManualRecovery,
        }
    }

    /// The condition as SQL over `$1` (the steps, text[]) and `$2` (stuck_after in seconds),
    /// followed by `scope`, a condition on `j` (the job) or `v` (the variant).
    fn sql(self, scope: &str) -> String {
        match self {
            Scenario::Failed => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                  WHERE v.status = 'failed'
                    AND j.status IN ('running', 'failed')
                    AND array_position($1::text[], j.current_step) IS NOT NULL
                    AND array_position($1::text[], v.current_step) IS NOT NULL
                    -- failed needs no idle time; this only gives $2 its type
                    AND $2::float8 IS NOT NULL
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(false)
            ),
            Scenario::Lagging => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                  WHERE j.status = 'running' AND v.status = 'done'
                    AND array_position($1::text[], v.current_step)
                        < array_position($1::text[], j.current_step)
                    AND v.updated_at <= now() - make_interval(secs => $2::float8)
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(false)
            ),
            Scenario::Stale => format!(
                "{}
                   FROM jobs j JOIN jobs_variants v ON v.job_id = j.job_id
                   CROSS JOIN LATERAL (
                       SELECT o.job_variants_id, o.current_step
                         FROM jobs_variants o
                        WHERE o.job_id = v.job_id AND o.job_variants_id <> v.job_variants_id
                          AND array_position($1::text[], o.current_step)
                              > array_position($1::text[], v.current_step)
                        ORDER BY array_position($1::text[], o.current_step) DESC,
                                 o.job_variants_id
                        LIMIT 1) ahead
                  WHERE j.status = 'running' AND v.status = 'done'
                    AND array_position($1::text[], v.current_step)
                        >= array_position($1::text[], j.current_step)
                    AND v.updated_at <= now() - make_interval(secs => $2::float8)
                    {NOT_NOTED_VARIANT} {scope}",
                variant_columns(true)
            ),
            Scenario::FinalStep => format!(
                "SELECT j.job_id, NULL::uuid AS job_variants_id, j.status AS job_status,
                        j.current_step AS job_step, j.status, j.current_step AS step,
                        extract(epoch FROM now() - greatest(j.updated_at, agg.last_update))::float8
                            AS idle_seconds,
                        j.retry_count,
                        (SELECT h.attempt FROM retry_history h
                          WHERE h.job_id = j.job_id AND h.job_variants_id IS NULL
                          ORDER BY h.attempt DESC LIMIT 1) AS last_attempt,
                        NULL::uuid AS ahead_variant_id, NULL::text AS ahead_step,
                        agg.variants
                   FROM jobs j
                   CROSS JOIN LATERAL (
                       SELECT count(*)::int AS variants,
                              count(*) FILTER (WHERE o.status = 'done'
                                  AND o.current_step = j.current_step)::int AS finished,
                              max(o.updated_at) AS last_update
                         FROM jobs_variants o WHERE o.job_id = j.job_id) agg
                  WHERE j.status = 'running'
                    AND j.current_step = ($1::text[])[cardinality($1::text[])]
                    AND agg.variants > 0 AND agg.finished = agg.variants
                    -- implied by the next condition; lets the plan drop jobs before their
                    -- variants are aggregated
                    AND j.updated_at <= now() - make_interval(secs => $2::float8)
                    AND greatest(j.updated_at, agg.last_update)
                        <= now() - make_interval(secs => $2::float8)
                    AND NOT EXISTS (
                        SELECT 1 FROM retry_intervention i
                         WHERE i.job_id = j.job_id AND i.job_variants_id IS NULL
                           AND i.retry_count = j.retry_count)
                    {scope}"
            ),
        }
    }

    /// Detection: the candidates among every managed job, or (`scoped`) among the jobs `$3`.
    /// This is the exact query [`detect`] runs, so EXPLAIN can read it: `$1` the managed
    /// steps (`text[]`), `$2` the idle threshold in seconds (`float8`), `$3` the jobs
    /// (`uuid[]`, unused unless `scoped`), `$4` the limit (`bigint`).
    pub fn detect_sql(self, scoped: bool) -> String {
        let scope = if scoped { "AND j.job_id = ANY($3)" } else { "" };
        let order = match self {
            Scenario::FinalStep => "j.updated_at",
            _ => "v.updated_at",
        };
        format!("{} ORDER BY {order} LIMIT $4", self.sql(scope))
    }

    /// Claim: the same condition for the one target `$3`, locking its row unless another
    /// transaction holds it. NO KEY UPDATE, the lock `record_retry` takes as well, so a
    /// pipeline inserting variants (a key-share lock on the job) is not held up.
    fn claim_sql(self) -> String {
        match self {
            Scenario::FinalStep => format!(
                "{} FOR NO KEY UPDATE OF j SKIP LOCKED",
                self.sql("AND j.job_id = $3")
            ),
            _ => format!(
                "{} FOR NO KEY UPDATE OF v SKIP LOCKED",
                self.sql("AND v.job_variants_id = $3")
            ),
        }
    }

    /// The state change that is the retry, over `$1` (the target's id).
    fn state_change_sql(self) -> &'static str {
        match self {
            Scenario::Failed => {
                "UPDATE jobs_variants SET status = 'done', updated_at = now()
                  WHERE job_variants_id = $1"
            }
            Scenario::Lagging | Scenario::Stale => {
                "UPDATE jobs_variants SET updated_at = now() WHERE job_variants_id = $1"
            }
            Scenario::FinalStep => {
                "UPDATE jobs SET status = 'done', updated_at = now() WHERE job_id = $1"
            }
        }
    }

    /// The status the state change sets.
    fn to_status(self) -> &'static str {
        "done"
    }
}

/// The columns every variant scenario reads. Only the stale scenario has a variant `ahead`.
fn variant_columns(ahead: bool) -> String {
    let (ahead_id, ahead_step) = if ahead {
        ("ahead.job_variants_id", "ahead.current_step")
    } else {
        ("NULL::uuid", "NULL::text")
    };
    format!(
        "SELECT v.job_id, v.job_variants_id, j.status AS job_status,
                j.current_step AS job_step, v.status, v.current_step AS step,
                extract(epoch FROM now() - v.updated_at)::float8 AS idle_seconds,
                v.retry_count,
                (SELECT h.attempt FROM retry_history h
                  WHERE h.job_id = v.job_id AND h.job_variants_id = v.job_variants_id
                  ORDER BY h.attempt DESC LIMIT 1) AS last_attempt,
                {ahead_id} AS ahead_variant_id, {ahead_step} AS ahead_step,
                NULL::int AS variants"
    )
}

/// A variant already noted at its current count is not a candidate again: the note stands
/// until a retry (an operator's) changes the count.
const NOT_NOTED_VARIANT: &str = "AND NOT EXISTS (
        SELECT 1 FROM retry_intervention i
         WHERE i.job_id = v.job_id AND i.job_variants_id = v.job_variants_id
           AND i.retry_count = v.retry_count)";

/// A target in a scenario's condition, with the facts that put it there.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Candidate {
    pub job_id: Uuid,
    /// `None` for the job-level final-step scenario.
    pub job_variants_id: Option<Uuid>,
    pub job_status: String,
    pub job_step: Option<String>,
    /// The target's status and step.
    pub status: String,
    pub step: Option<String>,
    /// Seconds since the target (for final_step: anything in the job) was last updated.
    pub idle_seconds: f64,
    pub retry_count: i32,
    /// The last attempt in the target's stream when detection read it.
    pub last_attempt: Option<i32>,
    /// Stale: the variant that moved further, and its step.
    pub ahead_variant_id: Option<Uuid>,
    pub ahead_step: Option<String>,
    /// Final step: how many variants the job has.
    pub variants: Option<i32>,
}

impl Candidate {
    /// The stream a retry of this candidate joins.
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }

    /// The event's `detail`: the scenario and the facts that triggered it.
    fn detail(&self, scenario: Scenario, settings: &WatchdogSettings) -> serde_json::Value {
        let mut detail = json!({
            "scenario": scenario,
            "job_status": self.job_status,
            "job_step": self.job_step,
            "idle_seconds": self.idle_seconds.round() as i64,
            "stuck_after_seconds": settings.stuck_after.as_secs(),
        });
        let fields = detail.as_object_mut().expect("a JSON object");
        if self.job_variants_id.is_some() {
            fields.insert("variant_step".into(), json!(self.step));
        }
        if let Some(ahead) = &self.ahead_variant_id {
            fields.insert("ahead_variant_id".into(), json!(ahead));
            fields.insert("ahead_step".into(), json!(self.ahead_step));
        }
        if let Some(variants) = self.variants {
            fields.insert("variants_done".into(), json!(variants));
        }
        detail
    }
}

/// Which jobs a sweep looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every job at a managed step: the periodic sweep.
    Everything,
    /// Only these jobs: the ones notifications named.
    Jobs(Vec<Uuid>),
}

/// Candidates one detection query returns at most; a sweep repeats while a round is full.
pub const DETECT_BATCH: i64 = 1000;

/// Reads the candidates of `scenario` within `scope`, longest idle first.
pub async fn detect(
    conn: &mut PgConnection,
    scenario: Scenario,
    settings: &WatchdogSettings,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let jobs = match scope {
        Scope::Everything => None,
        Scope::Jobs(jobs) => Some(jobs.as_slice()),
    };
    sqlx::query_as(&scenario.detect_sql(jobs.is_some()))
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(jobs)
        .bind(limit)
        .fetch_all(conn)
        .await
}

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
        if connection_lost(&error) {
            RecoveryError::ConnectionLost(error)
        } else {
            RecoveryError::Target {
                target,
                source: error,
            }
        }
    }
}

/// True when `error` means the session is gone (network, server shutdown, the backend
/// terminated) rather than that one statement failed.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // Class 08: connection exception; class 57: the server shuts down or an administrator
        // terminated the backend (pg_terminate_backend raises 57P01).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

/// Handles one candidate in a transaction of its own on `conn`; see the module's numbered
/// steps.
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

    // 2. The limit: note the target once, change nothing.
    if claimed.retry_count >= limit {
        let noted = note_intervention(&mut tx, scenario, &claimed, settings, limit)
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
        .with_detail(claimed.detail(scenario, settings))
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
        Err(AppendError::LimitReached(_)) => {
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
) -> Result<bool, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar(
        "INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         VALUES ($1, $2, $3, $4, $5, $6::retry_reason, $7, $8, $9, $10)
         ON CONFLICT ON CONSTRAINT retry_intervention_target_count_key DO NOTHING
         RETURNING seq",
    )
    .bind(candidate.job_id)
    .bind(candidate.job_variants_id)
    .bind(candidate.retry_count)
    .bind(limit)
    .bind(scenario.as_ref())
    .bind(scenario.reason().as_ref())
    .bind(candidate.step.as_deref())
    .bind(&candidate.status)
    .bind(&settings.instance)
    .bind(intervention_detail(candidate, scenario, settings, limit))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(seq.is_some())
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

/// A target the limit stopped: a row of `retry_intervention`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Intervention {
    /// Position among the notes.
    pub seq: i64,
    pub job_id: Uuid,
    /// `None` for a job.
    pub job_variants_id: Option<Uuid>,
    /// The count that reached the limit; the note is open while the target still has it.
    pub retry_count: i32,
    /// The limit in force then.
    pub max_retries: i32,
    /// The scenario the target was in, and the reason its retry would have had.
    pub scenario: String,
    pub reason: RetryReason,
    pub step: Option<String>,
    /// The target's status then (unchanged: the limit makes no state change).
    pub status: Option<String>,
    /// The watchdog instance that noted it.
    pub actor: String,
    /// The scenario's facts, with `retry_count` and `max_retries`.
    pub detail: serde_json::Value,
    pub noted_at: DateTime<Utc>,
}

impl Intervention {
    /// The target the note is about.
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }
}

/// The notes about a job and its variants (`job_variants_id` None) or about one variant,
/// oldest first, narrowed like a history: reason, step, actor, noted within the occurred
/// window, and noted by the recorded bound.
pub async fn load_interventions(
    conn: &mut PgConnection,
    job_id: Option<Uuid>,
    job_variants_id: Option<Uuid>,
    filter: &HistoryFilter,
) -> Result<Vec<Intervention>, sqlx::Error> {
    // A note happens and is recorded at once: noted_at stands for both times.
    let sql = format!(
        "SELECT seq, job_id, job_variants_id, retry_count, max_retries, scenario, reason, step,
                status, actor, detail, noted_at
           FROM retry_intervention
          WHERE ($1::uuid IS NULL OR job_id = $1) AND ($2::uuid IS NULL OR job_variants_id = $2)
                {filter}
          ORDER BY seq",
        filter = HistoryFilter::sql("noted_at", "noted_at"),
    );
    filter
        .bind(sqlx::query_as(&sql), job_id, job_variants_id)
        .fetch_all(conn)
        .await
}

/// What one sweep did, per scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepSummary {
    /// Candidates detection found.
    pub detected: usize,
    /// Retries recorded, by scenario.
    pub retried: Vec<(Scenario, RetryEvent)>,
    /// Targets newly noted as needing intervention.
    pub noted: usize,
    /// Candidates left alone (see [`Outcome::Skipped`]).
    pub skipped: usize,
    /// Candidates whose transaction failed and rolled back.
    pub failed: usize,
}

/// The limit in force: the shared one in `retrylog_settings` or this instance's, the lower.
pub async fn effective_limit(
    conn: &mut PgConnection,
    settings: &WatchdogSettings,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT least(max_retries, $1) FROM retrylog_settings")
        .bind(settings.max_retries)
        .fetch_one(conn)
        .await
}

/// Detects and handles every scenario within `scope`. Stops early, between two candidates,
/// when `shutdown` turns true; a transaction in flight always finishes first.
pub async fn sweep(
    pool: &PgPool,
    settings: &WatchdogSettings,
    scope: &Scope,
    shutdown: &watch::Receiver<bool>,
) -> Result<SweepSummary, RecoveryError> {
    let lost = RecoveryError::ConnectionLost;
    let mut summary = SweepSummary::default();
    // Waiting for a connection while the database is down ends when stopping is requested.
    let mut stop = shutdown.clone();
    let Some(conn) = shutdown::unless_requested(pool.acquire(), &mut stop).await else {
        return Ok(summary);
    };
    // One connection serves the whole sweep: it handles one candidate at a time.
    let mut conn = conn.map_err(lost)?;
    let limit = effective_limit(&mut conn, settings).await.map_err(lost)?;
    for scenario in Scenario::ALL {
        loop {
            let candidates = detect(&mut conn, scenario, settings, scope, DETECT_BATCH)
                .await
                .map_err(lost)?;
            summary.detected += candidates.len();
            let mut progressed = false;
            for candidate in &candidates {
                if *shutdown.borrow() {
                    return Ok(summary);
                }
                match recover(&mut conn, scenario, candidate, settings, limit).await {
                    Ok(Outcome::Retried(event)) => {
                        progressed = true;
                        summary.retried.push((scenario, *event));
                    }
                    Ok(Outcome::AtLimit { noted }) => {
                        progressed |= noted;
                        summary.noted += usize::from(noted);
                    }
                    Ok(Outcome::Skipped(why)) => {
                        tracing::debug!(target = %candidate.target(), %scenario, why, "skipped");
                        summary.skipped += 1;
                    }
                    Err(error @ (RecoveryError::Target { .. } | RecoveryError::Refused { .. })) => {
                        tracing::error!(%scenario, error = %error, cause = %error_cause(&error),
                                        "retry rolled back");
                        summary.failed += 1;
                    }
                    Err(lost @ RecoveryError::ConnectionLost(_)) => return Err(lost),
                }
            }
            // A full batch may hide more candidates; stop when a round made no progress, so
            // rows another instance holds are not polled in a loop.
            if (candidates.len() as i64) < DETECT_BATCH || !progressed {
                break;
            }
        }
    }
    Ok(summary)
}

/// Writes this instance's limit and channel where every door and the trigger read them, and
/// says when that changed what another instance (or the migration's default) had set.
pub async fn publish_settings(
    pool: &PgPool,
    settings: &WatchdogSettings,
) -> Result<(), sqlx::Error> {
    let previous: Option<(Option<i32>, String)> = sqlx::query_as(
        "UPDATE retrylog_settings s
            SET max_retries = $1, notify_channel = $2, updated_at = now(), updated_by = $3
           FROM (SELECT max_retries, notify_channel FROM retrylog_settings FOR UPDATE) old
          WHERE (old.max_retries, old.notify_channel) IS DISTINCT FROM ($1, $2)
         RETURNING old.max_retries, old.notify_channel",
    )
    .bind(settings.max_retries)
    .bind(&settings.channel)
    .bind(&settings.instance)
    .fetch_optional(pool)
    .await?;
    if let Some((max_retries, channel)) = previous {
        tracing::info!(
            max_retries = settings.max_retries,
            previous_max_retries = max_retries,
            channel = %settings.channel,
            previous_channel = %channel,
            "updated the shared settings every door reads"
        );
    }
    Ok(())
}

/// What woke the watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wake {
    /// A row of this job changed.
    Job(Uuid),
    /// Something changed that a job id does not describe, or notifications may have been
    /// lost (the listener reconnected): look at everything.
    Everything,
}

/// Jobs named by one wake-up round; past this many, one sweep of everything is cheaper.
const MOST_JOBS_PER_WAKE: usize = 1000;

/// Runs the watchdog until `shutdown` turns true: sweeps at start and every `sweep_every`,
/// sweeps the notified jobs as notifications arrive, and reconnects with back-off when the
/// database goes away. Errors are logged, never returned.
pub async fn run(pool: PgPool, settings: WatchdogSettings, mut shutdown: watch::Receiver<bool>) {
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    // The listener logs through whatever subscriber the caller runs `run` under.
    let listener = tokio::spawn(
        listen(
            pool.clone(),
            settings.channel.clone(),
            wake_tx,
            shutdown.clone(),
        )
        .with_current_subscriber(),
    );
    tracing::info!(
        instance = %settings.instance,
        steps = %settings.steps,
        max_retries = settings.max_retries,
        stuck_after = ?settings.stuck_after,
        sweep_every = ?settings.sweep_every,
        channel = %settings.channel,
        "recovery watchdog started"
    );
    let mut backoff = MIN_BACKOFF;
    let mut next_sweep = Instant::now();
    loop {
        let scope = tokio::select! {
            biased;
            _ = shutdown::requested(&mut shutdown) => break,
            _ = tokio::time::sleep_until(next_sweep) => Scope::Everything,
            Some(wake) = wake_rx.recv() => gather(wake, &mut wake_rx),
        };
        if *shutdown.borrow() {
            break;
        }
        let everything = scope == Scope::Everything;
        match sweep(&pool, &settings, &scope, &shutdown).await {
            Ok(summary) => {
                backoff = MIN_BACKOFF;
                if summary.detected > 0 {
                    tracing::info!(
                        scope = if everything {
                            "everything"
                        } else {
                            "notified jobs"
                        },
                        detected = summary.detected,
                        retried = summary.retried.len(),
                        noted = summary.noted,
                        skipped = summary.skipped,
                        failed = summary.failed,
                        "sweep done"
                    );
                }
                if everything {
                    next_sweep = Instant::now() + settings.sweep_every;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, cause = %error_cause(&error), retry_in = ?backoff,
                               "watchdog lost its connection");
                // Whatever happened meanwhile, the sweep after the pause looks at everything.
                next_sweep = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // The listener stops on the same signal; wait so its connection closes cleanly.
    let _ = listener.await;
    tracing::info!("recovery watchdog stopped");
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn error_cause(error: &RecoveryError) -> String {
    std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_default()
}

/// The scope of one wake-up: `first` and whatever else is already queued.
fn gather(first: Wake, wakes: &mut mpsc::UnboundedReceiver<Wake>) -> Scope {
    let mut jobs = BTreeSet::new();
    let mut everything = false;
    let mut next = Some(first);
    while let Some(wake) = next {
        match wake {
            Wake::Job(job_id) => {
                jobs.insert(job_id);
            }
            Wake::Everything => everything = true,
        }
        next = wakes.try_recv().ok();
    }
    if everything || jobs.len() > MOST_JOBS_PER_WAKE {
        Scope::Everything
    } else {
        Scope::Jobs(jobs.into_iter().collect())
    }
}

/// LISTENs on `channel` and turns each notification into a [`Wake`]. Reconnects with
/// back-off; after every reconnect it asks for a sweep of everything, since notifications
/// sent while it was away are lost.
async fn listen(
    pool: PgPool,
    channel: String,
    wakes: mpsc::UnboundedSender<Wake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    while !*shutdown.borrow() {
        let connecting = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let Some(connected) = shutdown::unless_requested(connecting, &mut shutdown).await else {
            return;
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, channel = %channel,
                               "could not listen for pipeline changes");
                if shutdown::sleep(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if !first {
            tracing::info!(channel = %channel, "listening again");
            let _ = wakes.send(Wake::Everything);
        }
        first = false;
        loop {
            let Some(received) =
                shutdown::unless_requested(listener.try_recv(), &mut shutdown).await
            else {
                return;
            };
            match received {
                Ok(Some(notification)) => {
                    if wakes.send(wake_for(&notification)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // try_recv reconnected already; what was sent meanwhile is lost.
                    tracing::warn!(channel = %channel, "listener reconnected after losing its connection");
                    let _ = wakes.send(Wake::Everything);
                }
                Err(error) => {
                    tracing::warn!(%error, channel = %channel, "listener lost its connection");
                    break;
                }
            }
        }
    }
}

/// The job a notification names: `job_id` of a JSON payload (retrylog's trigger sends one;
/// a pipeline's own channel may too). Anything else wakes a sweep of everything.
fn wake_for(notification: &PgNotification) -> Wake {
    serde_json::from_str::<serde_json::Value>(notification.payload())
        .ok()
        .and_then(|payload| payload.get("job_id")?.as_str()?.parse().ok())
        .map_or(Wake::Everything, Wake::Job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scenario_records_its_reason() {
        assert_eq!(Scenario::Failed.reason(), RetryReason::Failed);
        assert_eq!(Scenario::Lagging.reason(), RetryReason::Stuck);
        assert_eq!(Scenario::Stale.reason(), RetryReason::Stuck);
        assert_eq!(Scenario::FinalStep.reason(), RetryReason::ManualRecovery);
        assert_eq!(Scenario::FinalStep.to_string(), "final_step");
    }

    #[test]
    fn a_wake_up_gathers_what_is_queued_and_folds_into_everything() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        tx.send(Wake::Job(b)).unwrap();
        tx.send(Wake::Job(a)).unwrap();
        assert_eq!(gather(Wake::Job(a), &mut rx), Scope::Jobs(vec![a, b]));
        tx.send(Wake::Everything).unwrap();
        assert_eq!(gather(Wake::Job(a), &mut rx), Scope::Everything);
    }
}
