//! A recovery by hand: the operator's counterpart of the watchdog's claim (`claim.rs`), and the
//! one operation the CLI (`retrylog recover`), the API and the dashboard all call. Like the
//! watchdog's retry it hands its event to `store::append` in the transaction that makes the
//! state change (retry → store (log + inline projection) → projector → report/http); unlike
//! it, it passes the retry limit (`force`), because a human decided, and it says why (`note`).
//!
//! One [`recover_by_hand`] is:
//!
//! 1. lock the target's row (`FOR UPDATE`): the status read next is the one changed, and two
//!    recoveries of one target (or a recovery and the watchdog's claim) take turns;
//! 2. a repeated request (the same `event_id`, derived from a request id) returns the event
//!    the first one stored and changes nothing;
//! 3. refuse a target no recovery can change (nothing written: the transaction rolls back);
//! 4. the state change: the status the caller names, or the default for the target;
//! 5. append the `manual_recovery` event, forced past the limit, with the real from and to
//!    status, the actor and the note in `detail`;
//! 6. commit: both land or neither. The target's retry_count moves, which closes the
//!    watchdog's intervention note (a note is open while the count is the one it noted) and
//!    takes the target out of `report alerts`' needs_intervention rows.
//!
//! The retry limit's bypass is here and only here, so a change to who may pass it (a
//! database role for operators) has one place to adapt.

use serde_json::json;
use sqlx::{Postgres, Transaction};
use thiserror::Error;
use uuid::Uuid;

use crate::config::Steps;
use crate::error::CallerMistake;
use crate::event::{NewRetry, RetryEvent, RetryReason, Target};
use crate::store::{self, AppendError, WrongKind, EVENT_COLUMNS};

/// The statuses of `jobs` and `jobs_variants` (their CHECK constraint).
pub const STATUSES: &[&str] = &["pending", "running", "done", "failed"];

/// The longest note kept (characters): it must fit the 16 KiB detail with room to spare.
pub const MAX_NOTE_CHARS: usize = 4000;

/// The namespace of the event ids derived from request ids (UUID v5): the same request id
/// always names the same event, so a repeated request is recognised by the log itself.
const REQUEST_NAMESPACE: Uuid = uuid::uuid!("6f1c2a4e-0b7d-5c3a-9e21-72657472796c");

/// What to recover, as the operator asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualRecovery {
    /// The job or the variant; a variant is named by its id alone.
    pub target: ManualTarget,
    /// Why: required, kept in the event's `detail.note`.
    pub note: String,
    /// Who: an operator (`cli:alice`) or an API token's name.
    pub actor: String,
    /// The status to set instead of the default.
    pub to_status: Option<String>,
    /// Idempotency key: a repeated recovery with the same id stores one event.
    pub event_id: Option<Uuid>,
}

/// The target of a recovery by hand: the id the operator has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualTarget {
    Job(Uuid),
    Variant(Uuid),
}

impl ManualTarget {
    fn kind(self) -> &'static str {
        match self {
            ManualTarget::Job(_) => "job",
            ManualTarget::Variant(_) => "variant",
        }
    }

    fn id(self) -> Uuid {
        match self {
            ManualTarget::Job(id) | ManualTarget::Variant(id) => id,
        }
    }
}

/// The event id of a recovery asked for with `request_id`: the same request id gives the same
/// event id (UUID v5), so sending a request twice records it once.
pub fn request_event_id(request_id: &str) -> Uuid {
    Uuid::new_v5(&REQUEST_NAMESPACE, request_id.as_bytes())
}

/// What a recovery did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The `manual_recovery` event (the first one's, for a repeated request).
    pub event: RetryEvent,
    /// True when the request had been made before: nothing was written this time.
    pub repeated: bool,
}

/// Why a recovery was refused. None of them has written anything.
#[derive(Debug, Error)]
pub enum ManualRecoveryError {
    /// The note is empty or only blanks.
    #[error("a recovery needs a note saying why (--note): it is empty")]
    EmptyNote,
    /// The note is longer than [`MAX_NOTE_CHARS`].
    #[error("the note has {0} characters, more than {MAX_NOTE_CHARS}")]
    NoteTooLong(usize),
    /// `to_status` is not a status of the pipeline tables.
    #[error("unknown status \"{0}\" (expected pending, running, done or failed)")]
    UnknownStatus(String),
    /// No job or variant with that id.
    #[error("unknown {kind} {id}: no such row")]
    UnknownTarget { kind: &'static str, id: Uuid },
    /// The id names a target of the other kind (a job's id as the variant).
    #[error(transparent)]
    WrongKind(WrongKind),
    /// The target is in a status no recovery changes.
    #[error(
        "{target} is {status}: a recovery by hand changes only {recoverable} {kind}s \
         (name the status with --to-status to set another)"
    )]
    NotRecoverable {
        target: Target,
        kind: &'static str,
        status: String,
        recoverable: &'static str,
    },
    /// The log refused the event (an event id already used for another target, ...).
    #[error(transparent)]
    Refused(AppendError),
    /// Anything else: the database failed.
    #[error("database error while recovering a target")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for ManualRecoveryError {
    fn is_caller_mistake(&self) -> bool {
        match self {
            ManualRecoveryError::Refused(refused) => refused.is_caller_mistake(),
            ManualRecoveryError::Database(_) => false,
            _ => true,
        }
    }
}

impl From<AppendError> for ManualRecoveryError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Database(error) => ManualRecoveryError::Database(error),
            refused => ManualRecoveryError::Refused(refused),
        }
    }
}

/// The row of the target as the lock found it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Locked {
    pub job_id: Uuid,
    pub status: String,
    pub current_step: Option<String>,
}

/// Recovers one target by hand in the caller's transaction (the numbered steps above); the
/// caller commits. `steps` says which step is the final one (a job there goes to `done`).
pub async fn recover_by_hand(
    tx: &mut Transaction<'_, Postgres>,
    request: &ManualRecovery,
    steps: &Steps,
) -> Result<Recovered, ManualRecoveryError> {
    recover_expecting(tx, request, steps, None).await
}

/// [`recover_by_hand`], recording the event only as attempt `expected_attempt` (the attempt
/// after the last one a preview saw): a retry recorded since is `record_retry`'s RL009, the
/// `Refused(AppendError::Conflict)` a bulk recovery reports as "changed since the preview".
/// The state change of step 4 is rolled back with the caller's transaction.
pub async fn recover_expecting(
    tx: &mut Transaction<'_, Postgres>,
    request: &ManualRecovery,
    steps: &Steps,
    expected_attempt: Option<i32>,
) -> Result<Recovered, ManualRecoveryError> {
    // Input first: a refused request does not even take a lock.
    let note = request.note.trim();
    if note.is_empty() {
        return Err(ManualRecoveryError::EmptyNote);
    }
    let note_chars = note.chars().count();
    if note_chars > MAX_NOTE_CHARS {
        return Err(ManualRecoveryError::NoteTooLong(note_chars));
    }
    if let Some(status) = &request.to_status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ManualRecoveryError::UnknownStatus(status.clone()));
        }
    }

    // 1. Lock the row; read the status that the change replaces.
    let lock = match request.target {
        ManualTarget::Job(_) => {
            "SELECT job_id, status, current_step FROM jobs WHERE job_id = $1 FOR UPDATE"
        }
        ManualTarget::Variant(_) => {
            "SELECT job_id, status, current_step FROM jobs_variants
              WHERE job_variants_id = $1 FOR UPDATE"
        }
    };
    let id = request.target.id();
    let locked: Option<Locked> = sqlx::query_as(lock)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(locked) = locked else {
        let kind = request.target.kind();
        if let Some(wrong) = WrongKind::check(tx, kind, id).await? {
            return Err(ManualRecoveryError::WrongKind(wrong));
        }
        return Err(ManualRecoveryError::UnknownTarget { kind, id });
    };
    let target = match request.target {
        ManualTarget::Job(job_id) => Target::Job { job_id },
        ManualTarget::Variant(job_variants_id) => Target::Variant {
            job_id: locked.job_id,
            job_variants_id,
        },
    };

    // 2. A repeated request: the lock above waited for the first one to commit, so its event
    //    is visible now.
    if let Some(event_id) = request.event_id {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM retry_history WHERE event_id = $1");
        let first: Option<RetryEvent> = sqlx::query_as(&sql)
            .bind(event_id)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(event) = first.filter(|event| event.target() == target) {
            return Ok(Recovered {
                event,
                repeated: true,
            });
        }
    }

    // 3. What the recovery changes, or a refusal.
    let to_status = match &request.to_status {
        Some(status) => status.clone(),
        None => default_to_status(target, &locked, steps)?.to_string(),
    };

    // 4. The state change: the status, and `updated_at`, which is what re-triggers the
    //    pipeline (its trigger notifies on every change of the row).
    let change = match target {
        Target::Job { .. } => "UPDATE jobs SET status = $2, updated_at = now() WHERE job_id = $1",
        Target::Variant { .. } => {
            "UPDATE jobs_variants SET status = $2, updated_at = now() WHERE job_variants_id = $1"
        }
    };
    sqlx::query(change)
        .bind(id)
        .bind(&to_status)
        .execute(&mut **tx)
        .await?;

    // 5. The event, past the limit.
    let mut retry = recovery_event(target, &locked, to_status, note, &request.actor);
    if let Some(event_id) = request.event_id {
        retry = retry.with_event_id(event_id);
    }
    if let Some(attempt) = expected_attempt {
        retry = retry.with_expected_attempt(attempt);
    }
    let event = store::append(tx, &retry).await?;
    Ok(Recovered {
        event,
        repeated: false,
    })
}

/// The event of a recovery by hand of `target`, locked as `locked`, to `to_status`: forced
/// past the limit, its from_status the one read under the lock (record_retry would read the
/// row as the state change left it), the note (already checked and trimmed) in its detail.
pub(crate) fn recovery_event(
    target: Target,
    locked: &Locked,
    to_status: String,
    note: &str,
    actor: &str,
) -> NewRetry {
    let mut retry = NewRetry::new(target, RetryReason::ManualRecovery, actor)
        .with_status_change(locked.status.clone(), to_status)
        .with_detail(json!({ "note": note, "recovered_by_hand": true }))
        .forced();
    if let Some(step) = &locked.current_step {
        retry = retry.with_step(step.clone());
    }
    retry
}

/// The default change: a failed, running or done variant goes to `done` at its step (so the
/// step re-runs, as the watchdog's `failed` scenario does; a done variant is touched); a
/// running or failed job goes to `done` at the final step and back to `running` elsewhere.
pub(crate) fn default_to_status(
    target: Target,
    locked: &Locked,
    steps: &Steps,
) -> Result<&'static str, ManualRecoveryError> {
    let status = locked.status.as_str();
    match target {
        Target::Variant { .. } if matches!(status, "failed" | "running" | "done") => Ok("done"),
        Target::Job { .. } if matches!(status, "running" | "failed") => {
            if locked.current_step.as_deref() == Some(steps.last()) {
                Ok("done")
            } else {
                Ok("running")
            }
        }
        _ => Err(ManualRecoveryError::NotRecoverable {
            target,
            kind: target.kind(),
            status: status.to_string(),
            recoverable: match target {
                Target::Job { .. } => "running or failed",
                Target::Variant { .. } => "failed, running or done",
            },
        }),
    }
}
