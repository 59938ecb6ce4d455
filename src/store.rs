//! The one write path into the log, and the reads of it.
//!
//! `append` hands a [`NewRetry`] to the SQL function `record_retry` inside the caller's
//! transaction. That function is the single implementation of the append rules (validation,
//! target lock, idempotency, gapless attempt, limit, hash chain, inline projection); the CLI,
//! the HTTP API and clients in other languages all go through it too.

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres, Transaction};
use thiserror::Error;
use uuid::Uuid;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::error::CallerMistake;
use crate::event::{contains_nul, number_out_of_range, NewRetry, RetryEvent, RetryReason, Target};
use crate::sqlstate;

/// The columns of `retry_history` that [`RetryEvent`] reads (everything but `txid`).
pub const EVENT_COLUMNS: &str = "seq, event_id, job_id, job_variants_id, reason, step, \
     from_status, to_status, attempt, actor, db_role, detail, occurred_at, recorded_at, hash";

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
    /// The target's retry_count already reached the retry limit (shared or the caller's).
    /// Said with the documented way past it, `retrylog recover` for the target (the API says
    /// its own, `POST /api/v1/recover`).
    #[error("{refusal}; an operator recovers it by hand: {}", recover_command(.target))]
    LimitReached {
        /// record_retry's message: the target, its count and the limit.
        refusal: String,
        /// The target, when the door knows it (`append` does; an error converted alone
        /// does not).
        target: Option<Target>,
    },
    /// The event_id is already recorded for another target.
    #[error("{0}")]
    EventIdReused(String),
    /// Another writer got there first (`expected_attempt` is stale, or the caller's
    /// isolation level detected a concurrent update); retry with a fresh read.
    #[error("{0}")]
    Conflict(String),
    /// The session's role lacks the capability (`force` without the operator capability).
    #[error("{0}")]
    NotPermitted(String),
    /// Anything else: the database failed, not the input.
    #[error("database error while appending a retry")]
    Database(#[source] sqlx::Error),
}

/// `retrylog recover` for `target`, as the limit's refusal names it; the command alone when
/// the target is not known.
fn recover_command(target: &Option<Target>) -> String {
    match target {
        Some(Target::Job { job_id }) => {
            format!("retrylog recover --job-id {job_id} --note \"why\"")
        }
        Some(Target::Variant {
            job_variants_id, ..
        }) => format!("retrylog recover --variant-id {job_variants_id} --note \"why\""),
        None => "retrylog recover".into(),
    }
}

impl CallerMistake for AppendError {
    /// Every refusal but `Database` is about the input or the target's state.
    fn is_caller_mistake(&self) -> bool {
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
            // Raised by record_retry's validation; and the binding's own refusals of a
            // malformed value, bytes outside the encoding, or a NUL in jsonb.
            Some(
                sqlstate::INVALID_PARAMETER_VALUE
                | sqlstate::INVALID_TEXT_REPRESENTATION
                | sqlstate::CHARACTER_NOT_IN_REPERTOIRE
                | sqlstate::UNTRANSLATABLE_CHARACTER,
            ) => AppendError::InvalidInput(message),
            // An id of the other kind of target: the flag it belongs in (`--variant-id` is
            // the CLI's and the API's name of `job_variants_id`).
            Some(sqlstate::UNKNOWN_TARGET) => match sqlstate::column(&error) {
                Some("job_id") => AppendError::UnknownTarget(format!("{message}: use --job-id")),
                Some("job_variants_id") => {
                    AppendError::UnknownTarget(format!("{message}: use --variant-id"))
                }
                _ => AppendError::UnknownTarget(message),
            },
            Some(sqlstate::WRONG_JOB) => AppendError::WrongJob(message),
            // The SQL hint is for SQL callers; this door says the CLI's way (see Display).
            Some(sqlstate::LIMIT_REACHED) => AppendError::LimitReached {
                refusal: message,
                target: None,
            },
            Some(sqlstate::EVENT_ID_REUSED) => AppendError::EventIdReused(message),
            Some(sqlstate::INSUFFICIENT_PRIVILEGE) => AppendError::NotPermitted(message),
            Some(sqlstate::ATTEMPT_CONFLICT) => AppendError::Conflict(message),
            // The head row's key is the backstop of the target lock (a stream's first
            // append), the event-id table's key that of the idempotency check.
            Some(sqlstate::UNIQUE_VIOLATION)
                if db.constraint() == Some("retry_stream_head_pkey") =>
            {
                AppendError::Conflict(format!("conflict: {message}"))
            }
            Some(sqlstate::UNIQUE_VIOLATION) if db.constraint() == Some("retry_event_id_pkey") => {
                AppendError::EventIdReused(message)
            }
            // The caller's transaction lost a race.
            Some(sqlstate::SERIALIZATION_FAILURE | sqlstate::DEADLOCK_DETECTED) => {
                AppendError::Conflict(format!(
                    "conflict: a concurrent transaction changed the target ({message}); retry"
                ))
            }
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
    // jsonb cannot hold U+0000; say which field rather than let the server's encoding
    // error speak for it.
    if contains_nul(&retry.detail) {
        return Err(AppendError::InvalidInput(
            "detail contains a NUL character (\\u0000), which PostgreSQL cannot store".into(),
        ));
    }
    // Nor a number outside numeric's range: the server would refuse the bound value before
    // record_retry runs, as 22003 naming neither the detail nor the number.
    if let Some(problem) = number_out_of_range(&retry.detail) {
        return Err(AppendError::InvalidInput(problem.to_string()));
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM record_retry(
             job_id => $1, job_variants_id => $2, reason => $3, step => $4, actor => $5,
             detail => $6, event_id => $7, occurred_at => $8, from_status => $9,
             to_status => $10, expected_attempt => $11, max_retries => $12,
             force => $13)"
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
        .bind(retry.force)
        .persistent(true)
        .fetch_one(&mut **tx)
        .await
        .map_err(|error| match AppendError::from(error) {
            AppendError::LimitReached { refusal, .. } => AppendError::LimitReached {
                refusal,
                target: Some(retry.target),
            },
            refused => refused,
        })?;
    Ok(event)
}

/// Rows `record_retries` takes in one call (sql/record_retries.sql); [`append_many`] refuses
/// more before sending anything.
pub const MAX_BATCH_ROWS: usize = 1000;

/// Appends `retries` inside the caller's transaction in one round trip (the SQL batch door,
/// `record_retries`) and returns the stored events in the order of `retries`.
///
/// Each row follows the rules of [`append`]; rows of one target get consecutive attempts in
/// the order given. All or nothing: the first refused row fails the call, its error (mapped
/// as [`append`]'s) names the row, counting from 0, and its target (`row 37 (variant …):
/// …`), and nothing of the batch is written. The caller's transaction is then aborted, as
/// after any failed statement: roll it back, or wrap the call in a savepoint to go on.
pub async fn append_many(
    tx: &mut Transaction<'_, Postgres>,
    retries: &[NewRetry],
) -> Result<Vec<RetryEvent>, AppendError> {
    if retries.len() > MAX_BATCH_ROWS {
        return Err(AppendError::InvalidInput(format!(
            "a batch of {} retries is over the limit of {MAX_BATCH_ROWS} per call; split it",
            retries.len()
        )));
    }
    let mut rows = Vec::with_capacity(retries.len());
    for (row, retry) in retries.iter().enumerate() {
        let refused = |problem: String| {
            AppendError::InvalidInput(format!("row {row} ({}): {problem}", retry.target))
        };
        // As in `append`, but for every text too: one NUL anywhere would fail the whole
        // jsonb parameter without naming the row.
        let texts = [
            ("actor", Some(retry.actor.as_str())),
            ("step", retry.step.as_deref()),
            ("from_status", retry.from_status.as_deref()),
            ("to_status", retry.to_status.as_deref()),
        ];
        if let Some((field, _)) = texts
            .iter()
            .find(|(_, text)| text.is_some_and(|t| t.contains('\0')))
        {
            return Err(refused(format!(
                "{field} contains a NUL character (\\u0000), which PostgreSQL cannot store"
            )));
        }
        if contains_nul(&retry.detail) {
            return Err(refused(
                "detail contains a NUL character (\\u0000), which PostgreSQL cannot store".into(),
            ));
        }
        if let Some(problem) = number_out_of_range(&retry.detail) {
            return Err(refused(problem.to_string()));
        }
        rows.push(batch_row(retry));
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM record_retries($1) WITH ORDINALITY AS e ORDER BY ordinality"
    );
    sqlx::query_as::<_, RetryEvent>(&sql)
        .bind(serde_json::Value::Array(rows))
        .persistent(true)
        .fetch_all(&mut **tx)
        .await
        .map_err(|error| match AppendError::from(error) {
            AppendError::LimitReached { refusal, .. } => {
                let target = refused_row(&refusal)
                    .and_then(|row| retries.get(row))
                    .map(|retry| retry.target);
                AppendError::LimitReached { refusal, target }
            }
            refused => refused,
        })
}

/// One row of `record_retries`' input: record_retry's parameter names, the unset ones left
/// out (record_retry's defaults).
fn batch_row(retry: &NewRetry) -> serde_json::Value {
    let mut row = serde_json::Map::new();
    let mut set = |key: &str, value: serde_json::Value| {
        if !value.is_null() {
            row.insert(key.into(), value);
        }
    };
    set("job_id", json!(retry.target.job_id()));
    set("job_variants_id", json!(retry.target.job_variants_id()));
    set("reason", json!(retry.reason.as_ref()));
    set("step", json!(retry.step));
    set("actor", json!(retry.actor));
    set("detail", retry.detail.clone());
    set("event_id", json!(retry.event_id));
    // RFC 3339 to the microsecond, as timestamptz keeps it (and as a bound value is sent).
    set(
        "occurred_at",
        json!(retry
            .occurred_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))),
    );
    set("from_status", json!(retry.from_status));
    set("to_status", json!(retry.to_status));
    set("expected_attempt", json!(retry.expected_attempt));
    set("max_retries", json!(retry.max_retries));
    if retry.force {
        set("force", json!(true));
    }
    serde_json::Value::Object(row)
}

/// The row a `record_retries` error names (`row 37 (…): …`).
fn refused_row(message: &str) -> Option<usize> {
    message
        .strip_prefix("row ")?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

impl AppendError {
    /// The row of an [`append_many`] batch this refusal names; `None` for a refusal of the
    /// batch as a whole, a fault, or an error of [`append`].
    pub fn batch_row(&self) -> Option<usize> {
        match self {
            AppendError::InvalidInput(message)
            | AppendError::UnknownTarget(message)
            | AppendError::WrongJob(message)
            | AppendError::EventIdReused(message)
            | AppendError::Conflict(message)
            | AppendError::NotPermitted(message)
            | AppendError::LimitReached {
                refusal: message, ..
            } => refused_row(message),
            AppendError::Database(_) => None,
        }
    }
}

/// An id given as one kind of target (`--variant-id`) that names the other (a job): said as
/// such, with the flag it belongs in, rather than as an unknown target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{id} is a {is}, not a {asked}: use --{is}-id")]
pub struct WrongKind {
    /// The id given.
    pub id: Uuid,
    /// What it names: `job` or `variant`.
    pub is: &'static str,
    /// What it was given as.
    pub asked: &'static str,
}

impl WrongKind {
    /// `Some` when `id`, unknown as a `asked` (`job` or `variant`), names a target of the other
    /// kind: a row of the pipeline's tables, or events in the log.
    pub async fn check(
        conn: &mut PgConnection,
        asked: &'static str,
        id: Uuid,
    ) -> Result<Option<WrongKind>, sqlx::Error> {
        let (is, sql) = match asked {
            "variant" => (
                "job",
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)
                     OR EXISTS (SELECT 1 FROM retry_history WHERE job_id = $1)",
            ),
            _ => (
                "variant",
                "SELECT EXISTS (SELECT 1 FROM jobs_variants WHERE job_variants_id = $1)
                     OR EXISTS (SELECT 1 FROM retry_history WHERE job_variants_id = $1)",
            ),
        };
        let other: bool = sqlx::query_scalar(sql).bind(id).fetch_one(conn).await?;
        Ok(other.then_some(WrongKind { id, is, asked }))
    }
}

/// Why a read of the log could not answer.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Neither the pipeline tables nor the log know the id.
    #[error("unknown {kind} {id}: no such row and no retries recorded for it")]
    UnknownTarget { kind: &'static str, id: Uuid },
    /// The id names a target of the other kind.
    #[error(transparent)]
    WrongKind(#[from] WrongKind),
    #[error("database error while reading the retry log")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for ReadError {
    fn is_caller_mistake(&self) -> bool {
        matches!(
            self,
            ReadError::UnknownTarget { .. } | ReadError::WrongKind(_)
        )
    }
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

/// Which events of a history to show. Every field set narrows the list; the default keeps
/// every event. Times are inclusive at both ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only events of this reason.
    pub reason: Option<RetryReason>,
    /// Only events of this step (exact match).
    pub step: Option<String>,
    /// Only events by this actor (exact match).
    pub actor: Option<String>,
    /// Only events that occurred at or after this instant.
    pub occurred_since: Option<DateTime<Utc>>,
    /// Only events that occurred at or before this instant.
    pub occurred_until: Option<DateTime<Utc>>,
    /// Only events recorded at or before this instant: the history as it stood then.
    pub recorded_until: Option<DateTime<Utc>>,
}

impl HistoryFilter {
    /// The filter as SQL over `$3`..`$8` (`$1` and `$2` are the stream), for a table whose
    /// occurrence and recording times are the columns `occurred` and `recorded`: each
    /// condition holds when its parameter is NULL, so one statement serves every combination
    /// and the stream index still drives the scan.
    pub(crate) fn sql(occurred: &str, recorded: &str) -> String {
        format!(
            "AND ($3::text IS NULL OR reason::text = $3)
             AND ($4::text IS NULL OR step = $4)
             AND ($5::text IS NULL OR actor = $5)
             AND ($6::timestamptz IS NULL OR {occurred} >= $6)
             AND ($7::timestamptz IS NULL OR {occurred} <= $7)
             AND ($8::timestamptz IS NULL OR {recorded} <= $8)"
        )
    }

    /// Binds the stream (`$1`, `$2`) and this filter (`$3`..`$8`) to `query`.
    pub(crate) fn bind<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
        job_id: Option<Uuid>,
        job_variants_id: Option<Uuid>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(job_id)
            .bind(job_variants_id)
            .bind(self.reason.map(|reason| reason.as_ref().to_string()))
            .bind(self.step.as_deref())
            .bind(self.actor.as_deref())
            .bind(self.occurred_since)
            .bind(self.occurred_until)
            .bind(self.recorded_until)
    }
}

/// Reads the events of `stream` (a WHERE condition over `$1` job and `$2` variant) that pass
/// `filter`, in `order`.
async fn load_filtered(
    conn: &mut PgConnection,
    stream: &str,
    order: &str,
    job_id: Option<Uuid>,
    job_variants_id: Option<Uuid>,
    filter: &HistoryFilter,
) -> Result<Vec<RetryEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM retry_history
          WHERE {stream} {filter}
          ORDER BY {order}",
        filter = HistoryFilter::sql("occurred_at", "recorded_at"),
    );
    filter
        .bind(sqlx::query_as(&sql), job_id, job_variants_id)
        .fetch_all(conn)
        .await
}

/// A job's own events and all of its variants' events, in log order.
pub async fn load_job_history(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Vec<RetryEvent>, ReadError> {
    load_job_history_filtered(conn, job_id, &HistoryFilter::default()).await
}

/// The events of a job and its variants that pass `filter`, in log order. A job that exists
/// (as a row, or in the log) with no matching event is an empty list, not an error.
pub async fn load_job_history_filtered(
    conn: &mut PgConnection,
    job_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<RetryEvent>, ReadError> {
    let events = load_filtered(conn, "job_id = $1", "seq", Some(job_id), None, filter).await?;
    if events.is_empty() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)
                 OR EXISTS (SELECT 1 FROM retry_history WHERE job_id = $1)",
        )
        .bind(job_id)
        .fetch_one(&mut *conn)
        .await?;
        if !known {
            if let Some(wrong) = WrongKind::check(conn, "job", job_id).await? {
                return Err(wrong.into());
            }
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
    load_variant_history_filtered(conn, job_variants_id, &HistoryFilter::default()).await
}

/// A variant's events that pass `filter`, attempt 1 first. A variant that exists (as a row,
/// or in the log) with no matching event is an empty list, not an error.
pub async fn load_variant_history_filtered(
    conn: &mut PgConnection,
    job_variants_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<RetryEvent>, ReadError> {
    let job_id: Option<Uuid> =
        sqlx::query_scalar("SELECT job_id FROM jobs_variants WHERE job_variants_id = $1")
            .bind(job_variants_id)
            .fetch_optional(&mut *conn)
            .await?;
    // With the job known, both columns name the stream and its index serves the read; a
    // variant whose row is gone is looked up by its id alone.
    let stream = match job_id {
        Some(_) => "job_id = $1 AND job_variants_id = $2",
        None => "job_variants_id = $2",
    };
    let events = load_filtered(
        conn,
        stream,
        "attempt",
        job_id,
        Some(job_variants_id),
        filter,
    )
    .await?;
    if events.is_empty() && job_id.is_none() {
        let logged: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM retry_history WHERE job_variants_id = $1)",
        )
        .bind(job_variants_id)
        .fetch_one(&mut *conn)
        .await?;
        if !logged {
            if let Some(wrong) = WrongKind::check(conn, "variant", job_variants_id).await? {
                return Err(wrong.into());
            }
            return Err(ReadError::UnknownTarget {
                kind: "variant",
                id: job_variants_id,
            });
        }
    }
    Ok(events)
}
