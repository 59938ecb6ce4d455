//! The watchdog's notes of the targets the retry limit stopped (`retry_intervention`). Beside
//! the flow (retry → store (log + inline projection) → projector → report/http): where the
//! watchdog may not produce a retry, its claim writes a note here instead, in the same
//! transaction; `history` and `report alerts` read the notes back.
//!
//! A note stands for one target at one `retry_count`: written once however many sweeps and
//! instances see it (a unique key), append-only like the log, and open while the target's count
//! is unchanged.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::event::{RetryReason, Target};
use crate::store::HistoryFilter;

/// What the watchdog knows when the limit stops it: a note before the database numbers and
/// dates it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntervention<'a> {
    /// The job or variant the retry would have been for.
    pub target: Target,
    /// Its count, which reached `max_retries`.
    pub retry_count: i32,
    pub max_retries: i32,
    /// The scenario, and the reason its retry would have been recorded with.
    pub scenario: &'a str,
    pub reason: RetryReason,
    pub step: Option<&'a str>,
    /// The status the target keeps.
    pub status: &'a str,
    /// The watchdog instance writing the note.
    pub actor: &'a str,
    pub detail: serde_json::Value,
}

/// Writes `note` in the caller's transaction; false when the target was already noted at this
/// count (the note stands until a retry changes it).
pub async fn note(
    tx: &mut Transaction<'_, Postgres>,
    note: &NewIntervention<'_>,
) -> Result<bool, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar(
        "INSERT INTO retry_intervention (job_id, job_variants_id, retry_count, max_retries,
                                         scenario, reason, step, status, actor, detail)
         VALUES ($1, $2, $3, $4, $5, $6::retry_reason, $7, $8, $9, $10)
         ON CONFLICT ON CONSTRAINT retry_intervention_target_count_key DO NOTHING
         RETURNING seq",
    )
    .bind(note.target.job_id())
    .bind(note.target.job_variants_id())
    .bind(note.retry_count)
    .bind(note.max_retries)
    .bind(note.scenario)
    .bind(note.reason.as_ref())
    .bind(note.step)
    .bind(note.status)
    .bind(note.actor)
    .bind(&note.detail)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(seq.is_some())
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

/// How many targets of each kind (`job`, `variant`) have an open note: the `needs_intervention`
/// rows of `report alerts`, counted through the notes (a few rows) joined to their targets by key.
pub async fn open_counts(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'job', count(*) FROM retry_intervention i
            JOIN jobs t ON t.job_id = i.job_id AND t.retry_count = i.retry_count
           WHERE i.job_variants_id IS NULL
         UNION ALL
         SELECT 'variant', count(*) FROM retry_intervention i
            JOIN jobs_variants t ON t.job_variants_id = i.job_variants_id
                                AND t.retry_count = i.retry_count",
    )
    .fetch_all(conn)
    .await
}
