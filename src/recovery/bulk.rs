//! A bulk recovery: the one recovery by hand (`manual.rs`) for every target a filter of the
//! targets list matches (`crate::targets`, the rows `retrylog targets` and the Targets page
//! show), each with its own `manual_recovery` event, the whole request idempotent by its
//! request id. `retrylog recover --state …`, `POST /api/v1/recover/bulk` and the Targets page's
//! bulk form all call [`recover_many`].
//!
//! One request is:
//!
//! 1. check the input (the note as a single recovery checks it, unless a dry run, which
//!    records none; `max` within 1..=500); nothing is read before;
//! 2. a dry run (the preview) stops after step 4's match and writes nothing: it answers every
//!    matching target with the last attempt it saw ([`Seen`]);
//! 3. claim the request id: insert its row in `retrylog_bulk_recovery`, in the transaction
//!    the whole request then runs in. A duplicate sent meanwhile waits on the primary key,
//!    then finds the row committed and answers the stored result (another body under that id
//!    is refused, [`BulkError::RequestIdReused`]): only one of them recovers anything;
//! 4. match: the filter, narrowed to the preview's targets when the request carries them, at
//!    most `max` + 1 rows. More than `max` refuses the request with the count, and the
//!    transaction rolls back: nothing was written;
//! 5. plan: each matched target expects the attempt after the one it was seen at (the
//!    preview's, else this match's); a previewed target whose attempt moved, or that no longer
//!    matches, is skipped, not forced;
//! 6. execute the plan ([`execute`]): lock the targets, then every recoverable one's state
//!    change and `manual_recovery` event in one batch (`store::append_many`, the batch door
//!    the watchdog uses), each event recorded only as its expected attempt, so a retry
//!    recorded between the match and the lock is `record_retry`'s RL009 and a skip, not a
//!    second retry. A refusal that belongs to the target (changed, not recoverable, gone) takes
//!    it out of the batch, which is written again without it; anything else (a fault, a
//!    missing right) ends the request. The event is the one a recovery by hand records
//!    (`manual::recovery_event`), to the status it would choose;
//! 7. store the result under the request id and commit: the events, the state changes and the
//!    result land together, or (a fault anywhere) nothing does, and the request may be sent
//!    again as it was.
//!
//! One transaction, not one per target: a duplicate waiting on step 3 holds no more than its
//! own connection while the first finishes (with a transaction per target, eight duplicates
//! could take every connection of the pool and leave the first none to recover with), and a
//! request is never half-done. The price: the recovered rows stay locked until the commit, so
//! the pipeline's own update of one of them waits that long (a fraction of a second for 500
//! targets, docs/performance.md); the watchdog skips locked rows. The jobs are locked, then the
//! variants, each in id order, so two bulk requests over the same targets queue rather than
//! deadlock.
//!
//! Each target's event id derives from the request id and the target, which also tells a bulk
//! recovery's events apart in the log.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Acquire, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::manual::{
    default_to_status, recovery_event, Locked, ManualRecoveryError, MAX_NOTE_CHARS,
};
use crate::config::Steps;
use crate::error::CallerMistake;
use crate::event::{NewRetry, RetryEvent, Target};
use crate::output::event_object;
use crate::store::{self, AppendError, EVENT_COLUMNS};
use crate::targets::{self, Filter, Kind, Position, Sort, Stuck, StuckRule, TargetRow};

/// The most targets one request recovers, and its `max` when none is given. A larger match is
/// refused with its count: narrow the filter (by `since`/`until`, `step`, `kind`) and send
/// several requests. It keeps a request to seconds and a preview page to one screen of hidden
/// fields.
pub const MAX_TARGETS: i64 = 500;

/// The longest request id kept (characters).
pub const MAX_REQUEST_ID_CHARS: usize = 200;

/// A target as a preview saw it: the last attempt of its stream then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub kind: Kind,
    pub id: Uuid,
    pub attempt: i32,
}

/// What an operator asks to recover.
#[derive(Debug, Clone)]
pub struct BulkRequest {
    /// Which targets: the targets list's filter, its times resolved.
    pub filter: Filter,
    /// What `state=stuck` means (the watchdog's steps and stuck_after).
    pub stuck: StuckRule,
    /// The filter as the caller gave it (query keys and their text): what a repeated request
    /// is compared by, since a relative time (`since=7d`) resolves differently each time.
    pub asked: Value,
    /// The targets a preview showed, with the attempt each was seen at: the request recovers
    /// only these, and skips each that changed. `None`: what matches now.
    pub seen: Option<Vec<Seen>>,
    /// Why: every event's `detail.note`.
    pub note: String,
    /// Who: `cli:alice`, an admin token's name.
    pub actor: String,
    /// The most targets it may recover; more matches refuse the request.
    pub max: i64,
    /// Only match and answer: write nothing.
    pub dry_run: bool,
    /// The idempotency key of the whole request.
    pub request_id: String,
}

/// A matched target, as the answer lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matched {
    pub kind: Kind,
    pub id: Uuid,
    pub job_id: Uuid,
    pub status: String,
    pub step: Option<String>,
    pub retry_count: i32,
    /// The last attempt seen: what an execution of this preview expects to follow.
    pub attempt: i32,
    pub last_reason: String,
    pub why: String,
}

/// A target left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub kind: Kind,
    pub id: Uuid,
    /// `changed` (a retry since it was seen, or no longer matching), `not_recoverable` (a
    /// status no recovery changes) or `gone` (no such row any more).
    pub reason: String,
    /// The same in words.
    pub message: String,
}

/// What a request did (or, for a dry run, would act on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkResult {
    pub request_id: String,
    pub dry_run: bool,
    /// How many targets matched.
    pub matched: usize,
    /// Every matched target, newest last retry first.
    pub targets: Vec<Matched>,
    /// The `manual_recovery` events recorded, one per recovered target (the objects
    /// `POST /api/v1/recover` answers).
    pub recovered: Vec<Value>,
    pub skipped: Vec<Skipped>,
    /// True when this answer is the stored result of an earlier request with this id: nothing
    /// was done this time.
    pub repeated: bool,
}

/// Why a bulk recovery was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The note (or another field a single recovery checks) is refused.
    #[error(transparent)]
    Invalid(ManualRecoveryError),
    /// The note holds a NUL character (only JSON can send one).
    #[error("invalid --note: it holds a NUL character (\\u0000)")]
    NoteHasNul,
    /// `max` outside 1..=500.
    #[error(
        "--max {0} is out of range: a bulk recovery acts on 1 to {MAX_TARGETS} targets (narrow \
         the filter and send several)"
    )]
    MaxOutOfRange(i64),
    /// Neither a filter nor a selection: it would act on every target.
    #[error(
        "name the targets: a filter (--state, --kind, --step, --reason, --scenario, --actor, \
         --since, --until, --min-retries, --q) or the targets of a preview"
    )]
    NoFilter,
    /// An empty, overlong or unprintable request id.
    #[error(
        "invalid --request-id: {0} (1 to {MAX_REQUEST_ID_CHARS} characters, no control \
         characters)"
    )]
    RequestId(String),
    /// More targets match than `max`; nothing was written.
    #[error(
        "{count} targets match, more than --max {max}: nothing was recovered (narrow the filter, \
         or raise --max up to {MAX_TARGETS})"
    )]
    TooMany {
        /// "612", or "more than 1,000".
        count: String,
        max: i64,
    },
    /// The request id names an earlier request with another body.
    #[error(
        "--request-id \"{0}\" was used for another request (its filter, targets, note, max or \
         actor differ): nothing was done; use a new request id"
    )]
    RequestIdReused(String),
    /// A target's recovery failed for a reason that is not the target's (a fault, a missing
    /// right): the request stopped there.
    #[error("recovering {kind} {id}")]
    Target {
        kind: Kind,
        id: Uuid,
        #[source]
        source: ManualRecoveryError,
    },
    #[error("database error during a bulk recovery")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for BulkError {
    fn is_caller_mistake(&self) -> bool {
        match self {
            BulkError::Invalid(error) | BulkError::Target { source: error, .. } => {
                error.is_caller_mistake()
            }
            BulkError::Database(_) => false,
            _ => true,
        }
    }
}

/// The event id of `target`'s recovery in request `request_id`: the same pair always gives
/// the same id (UUID v5), which no single recovery's request id gives (its name has no
/// newline).
pub fn target_event_id(request_id: &str, kind: Kind, id: Uuid) -> Uuid {
    super::request_event_id(&format!("bulk\n{request_id}\n{kind}\n{id}"))
}

/// Runs a bulk recovery (the numbered steps above). The refusals are [`BulkError`]s in the
/// chain; the listing's errors come as they are.
pub async fn recover_many(
    pool: &PgPool,
    request: &BulkRequest,
    steps: &Steps,
) -> anyhow::Result<BulkResult> {
    // 1. The input. A dry run records no note, so its note is not checked: a preview may come
    //    before the note is written.
    let note = request.note.trim();
    if !request.dry_run && note.is_empty() {
        return Err(BulkError::Invalid(ManualRecoveryError::EmptyNote).into());
    }
    let note_chars = note.chars().count();
    if !request.dry_run && note_chars > MAX_NOTE_CHARS {
        return Err(BulkError::Invalid(ManualRecoveryError::NoteTooLong(note_chars)).into());
    }
    // The request is stored whole (jsonb), which cannot hold a NUL.
    if note.contains('\0') {
        return Err(BulkError::NoteHasNul.into());
    }
    if !(1..=MAX_TARGETS).contains(&request.max) {
        return Err(BulkError::MaxOutOfRange(request.max).into());
    }
    check_request_id(&request.request_id)?;
    let seen: Option<HashMap<Uuid, Seen>> = request
        .seen
        .as_ref()
        .map(|seen| seen.iter().map(|target| (target.id, *target)).collect());
    if let Some(seen) = &seen {
        if seen.len() as i64 > request.max {
            return Err(BulkError::TooMany {
                count: seen.len().to_string(),
                max: request.max,
            }
            .into());
        }
    }
    let mut filter = request.filter.clone();
    if let Some(seen) = &seen {
        filter.ids = seen.keys().copied().collect();
        // An empty selection selects nothing, not everything.
        if filter.ids.is_empty() {
            filter.ids.push(Uuid::nil());
        }
    }

    // 2. A dry run: the match alone.
    if request.dry_run {
        let mut conn = pool.acquire().await?;
        let rows = matching(&mut conn, &filter, &request.stuck, request.max).await?;
        return Ok(BulkResult {
            request_id: request.request_id.clone(),
            dry_run: true,
            matched: rows.len(),
            targets: rows.iter().map(matched).collect(),
            recovered: Vec::new(),
            skipped: Vec::new(),
            repeated: false,
        });
    }

    // 3. Claim the request id; a duplicate waits here for the first to commit.
    let asked = json!({
        "filter": request.asked,
        "targets": request.seen,
        "note": note,
        "max": request.max,
        "actor": request.actor,
    });
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO retrylog_bulk_recovery (request_id, request, actor) VALUES ($1, $2, $3)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&request.request_id)
    .bind(&asked)
    .bind(&request.actor)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (stored, result): (Value, Value) = sqlx::query_as(
            "SELECT request, result FROM retrylog_bulk_recovery
              WHERE request_id = $1 AND result IS NOT NULL",
        )
        .bind(&request.request_id)
        .fetch_one(&mut *tx)
        .await?;
        if stored != asked {
            return Err(BulkError::RequestIdReused(request.request_id.clone()).into());
        }
        let mut result: BulkResult = serde_json::from_value(result)?;
        result.repeated = true;
        return Ok(result);
    }

    // 4. Match (in the request's transaction: each statement reads what is committed now).
    let rows = matching(&mut tx, &filter, &request.stuck, request.max).await?;

    // 5. Plan.
    let mut skipped = Vec::new();
    let mut plan = Vec::new();
    for row in &rows {
        let kind = kind_of(row);
        match seen.as_ref().and_then(|seen| seen.get(&row.id)) {
            Some(seen) if seen.attempt != row.last_attempt => skipped.push(Skipped {
                kind,
                id: row.id,
                reason: "changed".into(),
                message: format!(
                    "changed since the preview: its last attempt is {}, the preview saw {}",
                    row.last_attempt, seen.attempt
                ),
            }),
            _ => plan.push(Planned {
                kind,
                id: row.id,
                expected_attempt: row.last_attempt + 1,
            }),
        }
    }
    if seen.is_some() {
        // Each previewed target not matched now, once, in the preview's order.
        let mut found: HashSet<Uuid> = rows.iter().map(|row| row.id).collect();
        for target in request.seen.iter().flatten() {
            if found.insert(target.id) {
                skipped.push(Skipped {
                    kind: target.kind,
                    id: target.id,
                    reason: "changed".into(),
                    message: "changed since the preview: it no longer matches the filter".into(),
                });
            }
        }
    }

    // 6. Execute.
    let recovery = Recovery {
        note: note.to_string(),
        actor: request.actor.clone(),
        request_id: request.request_id.clone(),
        previewed: seen.is_some(),
    };
    let mut recovered = Vec::new();
    for (planned, done) in plan
        .iter()
        .zip(execute(&mut tx, &plan, &recovery, steps).await?)
    {
        match done {
            Done::Recovered(event) => recovered.push(event),
            Done::Skipped { reason, message } => skipped.push(Skipped {
                kind: planned.kind,
                id: planned.id,
                reason: reason.into(),
                message,
            }),
        }
    }

    // 7. Store the result and commit.
    let result = BulkResult {
        request_id: request.request_id.clone(),
        dry_run: false,
        matched: rows.len(),
        targets: rows.iter().map(matched).collect(),
        recovered,
        skipped,
        repeated: false,
    };
    sqlx::query(
        "UPDATE retrylog_bulk_recovery SET result = $2, finished_at = clock_timestamp()
          WHERE request_id = $1",
    )
    .bind(&request.request_id)
    .bind(serde_json::to_value(&result)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(result)
}

/// The stored result of request `request_id`, if it ran (the dashboard's result page).
pub async fn stored_result(pool: &PgPool, request_id: &str) -> anyhow::Result<Option<BulkResult>> {
    let result: Option<Value> = sqlx::query_scalar(
        "SELECT result FROM retrylog_bulk_recovery WHERE request_id = $1 AND result IS NOT NULL",
    )
    .bind(request_id)
    .fetch_optional(pool)
    .await?;
    Ok(result.map(serde_json::from_value).transpose()?)
}

fn check_request_id(request_id: &str) -> Result<(), BulkError> {
    let chars = request_id.chars().count();
    if request_id.trim().is_empty() {
        return Err(BulkError::RequestId("it is empty".into()));
    }
    if chars > MAX_REQUEST_ID_CHARS {
        return Err(BulkError::RequestId(format!("it has {chars} characters")));
    }
    if request_id.chars().any(crate::text::is_refused) {
        return Err(BulkError::RequestId(format!(
            "\"{}\" holds a control, bidirectional or zero-width character",
            crate::text::escape(request_id, 60)
        )));
    }
    Ok(())
}

/// The matching targets, at most `max`; more is [`BulkError::TooMany`] with their count.
async fn matching(
    conn: &mut sqlx::PgConnection,
    filter: &Filter,
    stuck: &StuckRule,
    max: i64,
) -> anyhow::Result<Vec<TargetRow>> {
    // A selection is read by id (the retry-count order's plan), a filter from the log's end.
    let sort = if filter.ids.is_empty() {
        Sort::LastRetry
    } else {
        Sort::RetryCount
    };
    let page = targets::page(
        conn,
        None,
        filter,
        Stuck::Detect(stuck),
        sort,
        &Position::First,
        max,
    )
    .await?;
    if page.next.is_some() {
        let count = if page.count_exact {
            page.count.to_string()
        } else {
            format!("more than {}", targets::COUNT_BOUND)
        };
        return Err(BulkError::TooMany { count, max }.into());
    }
    let mut rows = page.rows;
    rows.sort_by_key(|row| std::cmp::Reverse((row.last_retry_at, row.last_seq)));
    Ok(rows)
}

fn kind_of(row: &TargetRow) -> Kind {
    if row.kind == "job" {
        Kind::Job
    } else {
        Kind::Variant
    }
}

fn matched(row: &TargetRow) -> Matched {
    Matched {
        kind: kind_of(row),
        id: row.id,
        job_id: row.job_id,
        status: row.status.clone(),
        step: row.step.clone(),
        retry_count: row.retry_count,
        attempt: row.last_attempt,
        last_reason: row.last_reason.clone(),
        why: row.why(),
    }
}

/// One target of the plan: which, and the attempt its event must be.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub kind: Kind,
    pub id: Uuid,
    pub expected_attempt: i32,
}

/// What every target's recovery shares.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub note: String,
    pub actor: String,
    pub request_id: String,
    /// Whether the targets come from a preview (the skip's words say so).
    pub previewed: bool,
}

/// What became of one planned target.
#[derive(Debug, Clone)]
pub enum Done {
    /// Its event, as `POST /api/v1/recover` answers it.
    Recovered(Value),
    /// Left alone: the [`Skipped`] reason and message.
    Skipped {
        reason: &'static str,
        message: String,
    },
}

/// Recovers each planned target in `tx`, all of them appended in one batch (`record_retries`,
/// through `store::append_many`): the targets are locked first (the jobs, then the variants,
/// each in id order: two requests over the same targets queue, never deadlock), each one gone
/// or not recoverable is a skip, the others' state changes and events are written together
/// under a savepoint. A target the log refuses (a retry recorded since its match) is taken out
/// and the rest written again, so one target's refusal never undoes the others. The answer
/// has one [`Done`] per target, in the plan's order. An error that is not the target's ends
/// the run, and the caller's transaction with it.
pub async fn execute(
    tx: &mut Transaction<'_, Postgres>,
    plan: &[Planned],
    recovery: &Recovery,
    steps: &Steps,
) -> Result<Vec<Done>, BulkError> {
    let skipped = |error: &ManualRecoveryError| {
        skip(error, recovery.previewed).map(|(reason, message)| Done::Skipped { reason, message })
    };
    let mut done: Vec<Option<Done>> = vec![None; plan.len()];

    // 1. Lock every planned row, reading the status the change replaces.
    let mut locked: HashMap<(Kind, Uuid), Locked> = HashMap::new();
    for (kind, sql) in [
        (
            Kind::Job,
            "SELECT job_id AS id, job_id, status, current_step FROM jobs
              WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE",
        ),
        (
            Kind::Variant,
            "SELECT job_variants_id AS id, job_id, status, current_step FROM jobs_variants
              WHERE job_variants_id = ANY($1) ORDER BY job_variants_id FOR UPDATE",
        ),
    ] {
        let ids: Vec<Uuid> = plan
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let rows: Vec<(Uuid, Uuid, String, Option<String>)> =
            sqlx::query_as(sql).bind(&ids).fetch_all(&mut **tx).await?;
        for (id, job_id, status, current_step) in rows {
            let row = Locked {
                job_id,
                status,
                current_step,
            };
            locked.insert((kind, id), row);
        }
    }

    // 2. Each target: gone, recovered already (its event id is the request's, so only a
    //    request run again finds one), not recoverable, or one to recover.
    let event_ids: Vec<Uuid> = plan
        .iter()
        .map(|p| target_event_id(&recovery.request_id, p.kind, p.id))
        .collect();
    let sql = format!("SELECT {EVENT_COLUMNS} FROM retry_history WHERE event_id = ANY($1)");
    let mut earlier: HashMap<Uuid, RetryEvent> = sqlx::query_as(&sql)
        .bind(&event_ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|event: RetryEvent| (event.event_id, event))
        .collect();
    let note = recovery.note.trim();
    let mut pending: Vec<(usize, String, NewRetry)> = Vec::new();
    for (i, planned) in plan.iter().enumerate() {
        let Some(row) = locked.get(&(planned.kind, planned.id)) else {
            let gone = ManualRecoveryError::UnknownTarget {
                kind: match planned.kind {
                    Kind::Job => "job",
                    Kind::Variant => "variant",
                },
                id: planned.id,
            };
            done[i] = skipped(&gone);
            continue;
        };
        let target = match planned.kind {
            Kind::Job => Target::Job { job_id: planned.id },
            Kind::Variant => Target::Variant {
                job_id: row.job_id,
                job_variants_id: planned.id,
            },
        };
        if let Some(event) = earlier
            .remove(&event_ids[i])
            .filter(|event| event.target() == target)
        {
            done[i] = Some(recovered(event));
            continue;
        }
        match default_to_status(target, row, steps) {
            Err(refused) => done[i] = skipped(&refused),
            Ok(to_status) => {
                let retry =
                    recovery_event(target, row, to_status.to_string(), note, &recovery.actor)
                        .with_event_id(event_ids[i])
                        .with_expected_attempt(planned.expected_attempt);
                pending.push((i, to_status.to_string(), retry));
            }
        }
    }

    // 3. The state changes (the status, and `updated_at`, which re-triggers the pipeline) and
    //    the events, under a savepoint: a target the log refuses is taken out, the rest again.
    while !pending.is_empty() {
        let mut savepoint = tx.begin().await?;
        for (kind, sql) in [
            (
                Kind::Job,
                "UPDATE jobs SET status = c.to_status, updated_at = now()
                   FROM unnest($1::uuid[], $2::text[]) AS c(id, to_status)
                  WHERE job_id = c.id",
            ),
            (
                Kind::Variant,
                "UPDATE jobs_variants SET status = c.to_status, updated_at = now()
                   FROM unnest($1::uuid[], $2::text[]) AS c(id, to_status)
                  WHERE job_variants_id = c.id",
            ),
        ] {
            let (ids, statuses): (Vec<Uuid>, Vec<&str>) = pending
                .iter()
                .filter(|(i, ..)| plan[*i].kind == kind)
                .map(|(i, to_status, _)| (plan[*i].id, to_status.as_str()))
                .unzip();
            if !ids.is_empty() {
                sqlx::query(sql)
                    .bind(&ids)
                    .bind(&statuses)
                    .execute(&mut *savepoint)
                    .await?;
            }
        }
        let batch: Vec<NewRetry> = pending.iter().map(|(.., retry)| retry.clone()).collect();
        match store::append_many(&mut savepoint, &batch).await {
            Ok(events) => {
                savepoint.commit().await?;
                for ((i, ..), event) in pending.drain(..).zip(events) {
                    done[i] = Some(recovered(event));
                }
            }
            Err(AppendError::Database(error)) => return Err(error.into()),
            Err(refused) => {
                savepoint.rollback().await?;
                let row = refused.batch_row().filter(|row| *row < pending.len());
                let error = ManualRecoveryError::Refused(refused);
                let Some(row) = row else {
                    // A refusal of the batch as a whole is not a target's: it ends the run.
                    let (i, ..) = pending[0];
                    return Err(BulkError::Target {
                        kind: plan[i].kind,
                        id: plan[i].id,
                        source: error,
                    });
                };
                let (i, ..) = pending.remove(row);
                done[i] = match skipped(&error) {
                    Some(skip) => Some(skip),
                    None => {
                        return Err(BulkError::Target {
                            kind: plan[i].kind,
                            id: plan[i].id,
                            source: error,
                        })
                    }
                };
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// A recovered target's answer: its event, as `POST /api/v1/recover` answers it.
fn recovered(event: RetryEvent) -> Done {
    Done::Recovered(event_object(event))
}

/// A refusal that belongs to the target, as a skip; `None` for one that belongs to the
/// request (a fault, a missing right), which stops it.
fn skip(error: &ManualRecoveryError, previewed: bool) -> Option<(&'static str, String)> {
    match error {
        ManualRecoveryError::Refused(AppendError::Conflict(_)) => Some((
            "changed",
            if previewed {
                "changed since the preview: a retry was recorded since".to_string()
            } else {
                "changed since it was matched: a retry was recorded meanwhile".to_string()
            },
        )),
        ManualRecoveryError::NotRecoverable {
            kind,
            status,
            recoverable,
            ..
        } => Some((
            "not_recoverable",
            format!("it is {status}: a recovery by hand changes only {recoverable} {kind}s"),
        )),
        ManualRecoveryError::UnknownTarget { .. } | ManualRecoveryError::WrongKind(_) => {
            Some(("gone", "no such row any more".to_string()))
        }
        _ => None,
    }
}
