//! The one write path into the log, and the reads of it.
//!
//! `append` hands a [`NewRetry`] to the SQL function `record_retry` inside the caller's
//! transaction. That function is the single implementation of the append rules (validation,
//! target lock, idempotency, gapless attempt, limit, hash chain, inline projection); the CLI,
//! the HTTP API and clients in other languages all go through it too.

use sqlx::{PgConnection, Postgres, Transaction};
use thiserror::Error;
use uuid::Uuid;

use crate::event::{NewRetry, RetryEvent, Target};

/// The columns of `retry_history` that [`RetryEvent`] reads (everything but `txid`).
pub const EVENT_COLUMNS: &str = "seq, event_id, job_id, job_variants_id, reason, step, \
     from_status, to_status, attempt, actor, detail, occurred_at, recorded_at, hash";

/// Why an append was refused. Every variant but `Database` is the caller's mistake or a
/// condition the caller can act on; none of them has written anything.
#[derive(Debug, Error)]
pub enum AppendError {
    /// A field is malformed: reason, step, actor, status, detail, occurred_at, ...
    #[error("{0}")]
    InvalidInput(String),
    /// No job or variant with that id.
    #[error("{0}")]
    UnknownTarget(String),
    /// The variant belongs to another job than the one named.
    #[error("{0}")]
    WrongJob(String),
    /// The target's retry_count already reached the caller's limit.
    #[error("{0}")]
    LimitReached(String),
    /// The event_id is already recorded for another target.
    #[error("{0}")]
    EventIdReused(String),
    /// Another writer got there first (`expected_attempt` is stale, or the caller's
    /// isolation level detected a concurrent update); retry with a fresh read.
    #[error("{0}")]
    Conflict(String),
    /// Anything else: the database failed, not the input.
    #[error("database error while appending a retry: {0}")]
    Database(#[source] sqlx::Error),
}

impl AppendError {
    /// True when the error is about the input or the target's state rather than a fault.
    pub fn is_caller_error(&self) -> bool {
        !matches!(self, AppendError::Database(_))
    }
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        let Some(db) = error.as_database_error() else {
            return AppendError::Database(error);
        };
        let message = db.message().to_string();
        match db.code().as_deref() {
            // invalid_parameter_value, raised by record_retry's validation; and
            // invalid_text_representation / character_not_in_repertoire from binding.
            Some("22023" | "22P02" | "22021") => AppendError::InvalidInput(message),
            Some("RL001") => AppendError::UnknownTarget(message),
            Some("RL002") => AppendError::WrongJob(message),
            Some("RL004") => AppendError::LimitReached(message),
            Some("RL005") => AppendError::EventIdReused(message),
            Some("RL009") => AppendError::Conflict(message),
            // The unique (stream, attempt) index is the backstop of the target lock.
            Some("23505") if db.constraint() == Some("retry_history_stream_attempt_key") => {
                AppendError::Conflict(format!("conflict: {message}"))
            }
            Some("23505") if db.constraint() == Some("retry_history_event_id_key") => {
                AppendError::EventIdReused(message)
            }
            // serialization_failure, deadlock_detected: the caller's transaction lost a race.
            Some("40001" | "40P01") => AppendError::Conflict(format!(
                "conflict: a concurrent transaction changed the target ({message}); retry"
            )),
            _ => AppendError::Database(error),
        }
    }
}

/// Appends one retry inside the caller's transaction and returns the stored event.
///
/// The event, its attempt number and the target's `retry_count` all commit — or roll back —
/// with `tx`, so the state change the caller makes in the same transaction and the event that
/// records it cannot be separated. An `event_id` already stored for this target returns the
/// original event and writes nothing.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    retry: &NewRetry,
) -> Result<RetryEvent, AppendError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM record_retry(
             job_id => $1, job_variants_id => $2, reason => $3, step => $4, actor => $5,
             detail => $6, event_id => $7, occurred_at => $8, from_status => $9,
             to_status => $10, expected_attempt => $11, max_retries => $12)"
    );
    let event = sqlx::query_as::<_, RetryEvent>(&sql)
        .bind(retry.target.job_id())
        .bind(retry.target.job_variants_id())
        .bind(retry.reason.as_ref())
        .bind(retry.step.as_deref())
        .bind(&retry.actor)
        .bind(&retry.detail)
        .bind(retry.event_id)
        .bind(retry.occurred_at)
        .bind(retry.from_status.as_deref())
        .bind(retry.to_status.as_deref())
        .bind(retry.expected_attempt)
        .bind(retry.max_retries)
        .persistent(true)
        .fetch_one(&mut **tx)
        .await?;
    Ok(event)
}

/// Why a read of the log could not answer.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Neither the pipeline tables nor the log know the id.
    #[error("unknown {kind} {id}: no such row and no retries recorded for it")]
    UnknownTarget { kind: &'static str, id: Uuid },
    #[error("database error while reading the retry log: {0}")]
    Database(#[from] sqlx::Error),
}

/// One target's events, attempt 1 first.
pub async fn load_stream(
    conn: &mut PgConnection,
    target: Target,
) -> Result<Vec<RetryEvent>, sqlx::Error> {
    // Two spellings so that both use the (job_id, job_variants_id, attempt) index.
    let stream = match target {
        Target::Job { .. } => "job_id = $1 AND job_variants_id IS NULL",
        Target::Variant { .. } => "job_id = $1 AND job_variants_id = $2",
    };
    let sql = format!("SELECT {EVENT_COLUMNS} FROM retry_history WHERE {stream} ORDER BY attempt");
    sqlx::query_as(&sql)
        .bind(target.job_id())
        .bind(target.job_variants_id())
        .fetch_all(conn)
        .await
}

/// A job's own events and all of its variants' events, in log order.
pub async fn load_job_history(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Vec<RetryEvent>, ReadError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM retry_history WHERE job_id = $1 ORDER BY seq");
    let events: Vec<RetryEvent> = sqlx::query_as(&sql)
        .bind(job_id)
        .fetch_all(&mut *conn)
        .await?;
    if events.is_empty() {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)")
                .bind(job_id)
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Err(ReadError::UnknownTarget {
                kind: "job",
                id: job_id,
            });
        }
    }
    Ok(events)
}

/// A variant's events, attempt 1 first. The variant's job is looked up so the read uses the
/// stream index; a variant whose row was deleted is still found in the log.
pub async fn load_variant_history(
    conn: &mut PgConnection,
    job_variants_id: Uuid,
) -> Result<Vec<RetryEvent>, ReadError> {
    let job_id: Option<Uuid> =
        sqlx::query_scalar("SELECT job_id FROM jobs_variants WHERE job_variants_id = $1")
            .bind(job_variants_id)
            .fetch_optional(&mut *conn)
            .await?;
    let events: Vec<RetryEvent> = match job_id {
        Some(job_id) => {
            let target = Target::Variant {
                job_id,
                job_variants_id,
            };
            load_stream(conn, target).await?
        }
        None => {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM retry_history
                  WHERE job_variants_id = $1 ORDER BY attempt"
            );
            sqlx::query_as(&sql)
                .bind(job_variants_id)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    if events.is_empty() && job_id.is_none() {
        return Err(ReadError::UnknownTarget {
            kind: "variant",
            id: job_variants_id,
        });
    }
    Ok(events)
}
