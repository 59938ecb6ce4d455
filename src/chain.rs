//! The hash chain check, in one place: a walk over a stream's events in attempt order that
//! recomputes each link in Rust from the event's canonical bytes (format v1 or v2, chosen per
//! event by `event::CanonicalEvent`). `verify` walks every stream of the log with it; the
//! dashboard's target page and `GET /api/v1/chain` walk one target's streams with it — so a
//! chain has one verdict wherever it is shown.

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::event::{CanonicalEvent, RetryReason, Target, GENESIS_HASH};
use crate::replay::Mismatch;
use crate::store::ReadError;

/// The columns a link is checked from; `verify` adds its order, a target's check its filter.
pub(crate) const STORED_EVENTS: &str =
    "SELECT seq, event_id, job_id, job_variants_id, reason, step, from_status, to_status,
            attempt, actor, db_role, occurred_at, detail::text AS detail_text, hash
       FROM retry_history";

/// One event as stored, with everything its hash covers and the hash itself: a
/// [`RetryEvent`](crate::event::RetryEvent) but for its detail, read as jsonb's text (the
/// form the hash covers) and never parsed, which keeps `verify`'s pass over the whole log
/// cheap.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// The log position, named in a broken link.
    pub seq: i64,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub job_variants_id: Option<Uuid>,
    pub reason: RetryReason,
    pub step: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub attempt: i32,
    pub actor: String,
    /// `None` for an event recorded before migration 0006: hashed in format v1.
    pub db_role: Option<String>,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// `detail::text`: jsonb's normalised text, the form the hash covers.
    pub detail_text: String,
    /// The hash `record_retry` stored.
    pub hash: Vec<u8>,
}

impl StoredEvent {
    /// The stream the event belongs to.
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }

    fn canonical(&self) -> CanonicalEvent<'_> {
        CanonicalEvent {
            event_id: self.event_id,
            job_id: self.job_id,
            job_variants_id: self.job_variants_id,
            reason: self.reason,
            step: self.step.as_deref(),
            from_status: self.from_status.as_deref(),
            to_status: self.to_status.as_deref(),
            attempt: self.attempt,
            actor: &self.actor,
            occurred_at: self.occurred_at,
            detail_text: &self.detail_text,
            db_role: self.db_role.as_deref(),
        }
    }
}

/// A walk over events that arrive grouped by stream, each stream in attempt order.
#[derive(Debug)]
pub struct ChainWalk {
    /// The stream being walked.
    current: Option<Target>,
    /// The stored hash of the stream's previous event (the genesis hash before attempt 1).
    previous_hash: Vec<u8>,
    /// The attempt the next event of the stream must have.
    next_attempt: i32,
    /// Events checked so far.
    pub events: u64,
    /// Streams begun so far.
    pub streams: u64,
}

impl Default for ChainWalk {
    fn default() -> Self {
        ChainWalk {
            current: None,
            previous_hash: GENESIS_HASH.to_vec(),
            next_attempt: 1,
            events: 0,
            streams: 0,
        }
    }
}

impl ChainWalk {
    /// A walk over one stream whose events up to `attempt` were archived (`retrylog
    /// archive`): its first remaining event must be `attempt + 1` and link to `hash`, the
    /// stream's base, instead of attempt 1 and the genesis hash.
    pub fn from_base(target: Target, attempt: i32, hash: &[u8]) -> Self {
        ChainWalk {
            current: Some(target),
            previous_hash: hash.to_vec(),
            next_attempt: attempt + 1,
            events: 0,
            streams: 1,
        }
    }

    /// Where the walk stands: the last attempt it passed and that event's stored hash.
    pub fn position(&self) -> (i32, &[u8]) {
        (self.next_attempt - 1, &self.previous_hash)
    }

    /// Checks the next event's link and number, pushing what is wrong to `problems`.
    ///
    /// Each link is checked against the *stored* previous hash, so one changed event is
    /// reported once instead of breaking every link after it.
    pub fn check(&mut self, event: &StoredEvent, problems: &mut Vec<Mismatch>) {
        let target = event.target();
        if self.current != Some(target) {
            self.current = Some(target);
            self.streams += 1;
            self.previous_hash = GENESIS_HASH.to_vec();
            self.next_attempt = 1;
        }
        if event.attempt != self.next_attempt {
            problems.push(Mismatch::AttemptGap {
                target,
                expected_attempt: self.next_attempt,
                found_attempt: event.attempt,
            });
        }
        let expected_hash = event.canonical().hash(&self.previous_hash);
        if expected_hash[..] != event.hash[..] {
            problems.push(Mismatch::BrokenLink {
                target,
                seq: event.seq,
                attempt: event.attempt,
                expected_hash: hex::encode(expected_hash),
                stored_hash: hex::encode(&event.hash),
            });
        }
        self.previous_hash.clone_from(&event.hash);
        self.next_attempt = event.attempt + 1;
        self.events += 1;
    }

    /// The stream the walk is in, if any.
    pub fn current(&self) -> Option<Target> {
        self.current
    }

    /// Begins `target`'s stream after its verified head instead of at its genesis: the next
    /// event must be `attempt + 1` and link to `hash`. A plain `verify` continues each
    /// stream from the head an earlier verify stored (`verify_state`).
    pub fn resume(&mut self, target: Target, attempt: i32, hash: &[u8]) {
        self.current = Some(target);
        self.streams += 1;
        self.previous_hash = hash.to_vec();
        self.next_attempt = attempt + 1;
    }
}

/// One stream's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ChainVerdict {
    pub target: Target,
    /// Events in the stream.
    pub events: u64,
    /// No link broken and attempts 1..n.
    pub intact: bool,
    /// The first attempt that breaks the chain (a changed link, or the first missing attempt).
    pub broken_at_attempt: Option<i32>,
    /// The verdict in words: `intact (3 events)`, `broken at attempt 2 (…)`, `no events`.
    pub verdict: String,
    /// Everything wrong with the stream, as `verify` reports it.
    pub problems: Vec<Mismatch>,
}

impl ChainVerdict {
    fn new(target: Target, events: u64, problems: Vec<Mismatch>) -> Self {
        let first = problems
            .iter()
            .min_by_key(|problem| broken_attempt(problem));
        let broken_at_attempt = first.map(broken_attempt);
        let verdict = match first {
            None if events == 0 => "no events".to_string(),
            None if events == 1 => "intact (1 event)".to_string(),
            None => format!("intact ({events} events)"),
            Some(problem) => format!(
                "broken at attempt {} ({})",
                broken_attempt(problem),
                what_differs(problem)
            ),
        };
        ChainVerdict {
            target,
            events,
            intact: problems.is_empty(),
            broken_at_attempt,
            verdict,
            problems,
        }
    }
}

/// The attempt at which a chain problem shows.
fn broken_attempt(problem: &Mismatch) -> i32 {
    match problem {
        Mismatch::BrokenLink { attempt, .. } => *attempt,
        Mismatch::AttemptGap {
            expected_attempt, ..
        } => *expected_attempt,
        _ => unreachable!("a chain walk reports only links and gaps"),
    }
}

/// What differs, in the words of a verdict.
fn what_differs(problem: &Mismatch) -> String {
    match problem {
        Mismatch::BrokenLink {
            seq,
            expected_hash,
            stored_hash,
            ..
        } => format!(
            "event seq {seq}: stored hash {}…, recomputed {}…: the event was changed, or the \
             one before it removed or changed",
            &stored_hash[..12],
            &expected_hash[..12]
        ),
        Mismatch::AttemptGap {
            expected_attempt,
            found_attempt,
            ..
        } => format!(
            "attempt {expected_attempt} is missing: the next stored attempt is {found_attempt}"
        ),
        _ => unreachable!("a chain walk reports only links and gaps"),
    }
}

/// A target's chain, and for a job its variants' chains.
#[derive(Debug, Clone, Serialize)]
pub struct TargetChains {
    /// The target's own stream (a job's job-level events).
    #[serde(flatten)]
    pub own: ChainVerdict,
    /// For a job, the chains of its variants that have events; `None` for a variant.
    pub variants: Option<VariantChains>,
}

/// A job's variants' chains, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct VariantChains {
    /// Variants with at least one event.
    pub chains: usize,
    /// Of those, the intact ones.
    pub intact: usize,
    /// Their events.
    pub events: u64,
    /// `4 variant chains intact, 1 broken`, or `no variant has events`.
    pub verdict: String,
    /// The broken ones, whole.
    pub broken: Vec<ChainVerdict>,
}

impl VariantChains {
    fn new(chains: Vec<ChainVerdict>) -> Self {
        let intact = chains.iter().filter(|chain| chain.intact).count();
        let events = chains.iter().map(|chain| chain.events).sum();
        let broken: Vec<ChainVerdict> = chains.iter().filter(|c| !c.intact).cloned().collect();
        let plural = |n: usize| if n == 1 { "chain" } else { "chains" };
        let verdict = match (intact, broken.len()) {
            (0, 0) => "no variant has events".to_string(),
            (intact, 0) => format!(
                "{intact} variant {} intact ({events} events)",
                plural(intact)
            ),
            (0, broken) => format!("{broken} variant {} broken", plural(broken)),
            (intact, broken) => {
                format!(
                    "{intact} variant {} intact, {broken} broken",
                    plural(intact)
                )
            }
        };
        VariantChains {
            chains: chains.len(),
            intact,
            events,
            verdict,
            broken,
        }
    }
}

/// Walks `target`'s chain, and for a job every variant's chain too, reading the streams by
/// the stream index.
pub async fn check_target(
    conn: &mut PgConnection,
    target: Target,
) -> Result<TargetChains, sqlx::Error> {
    let events: Vec<StoredEvent> = match target {
        Target::Job { job_id } => {
            sqlx::query_as(&format!(
                "{STORED_EVENTS} WHERE job_id = $1 ORDER BY job_variants_id NULLS FIRST, attempt"
            ))
            .bind(job_id)
            .fetch_all(&mut *conn)
            .await?
        }
        Target::Variant {
            job_id,
            job_variants_id,
        } => {
            sqlx::query_as(&format!(
                "{STORED_EVENTS} WHERE job_id = $1 AND job_variants_id = $2 ORDER BY attempt"
            ))
            .bind(job_id)
            .bind(job_variants_id)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    // One walk per stream, so each stream's count and problems are its own.
    let mut own = ChainVerdict::new(target, 0, Vec::new());
    let mut variants = Vec::new();
    let bases = crate::archive::bases_of(&mut *conn, target.job_id()).await?;
    for stream in events.chunk_by(|a, b| a.target() == b.target()) {
        // A stream whose prefix was archived walks from its base.
        let mut walk = match bases.get(&stream[0].target()) {
            Some(base) => ChainWalk::from_base(base.target, base.attempt, &base.hash),
            None => ChainWalk::default(),
        };
        let mut problems = Vec::new();
        for event in stream {
            walk.check(event, &mut problems);
        }
        let verdict = ChainVerdict::new(stream[0].target(), walk.events, problems);
        if verdict.target == target {
            own = verdict;
        } else {
            variants.push(verdict);
        }
    }
    Ok(TargetChains {
        own,
        variants: matches!(target, Target::Job { .. }).then(|| VariantChains::new(variants)),
    })
}

/// The target an id names: a job, or a variant with its job (from the variant's row, or from
/// the log when the row is gone). An id that neither the pipeline's tables nor the log know is
/// [`ReadError::UnknownTarget`].
pub async fn find_target(
    conn: &mut PgConnection,
    id: Uuid,
    variant: bool,
) -> Result<Target, ReadError> {
    let job_id: Option<Uuid> = if variant {
        sqlx::query_scalar(
            "(SELECT job_id FROM jobs_variants WHERE job_variants_id = $1)
             UNION ALL (SELECT job_id FROM retry_history WHERE job_variants_id = $1 LIMIT 1)
             LIMIT 1",
        )
    } else {
        sqlx::query_scalar(
            "(SELECT job_id FROM jobs WHERE job_id = $1)
             UNION ALL (SELECT job_id FROM retry_history WHERE job_id = $1 LIMIT 1)
             LIMIT 1",
        )
    }
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match (job_id, variant) {
        (Some(job_id), true) => Ok(Target::Variant {
            job_id,
            job_variants_id: id,
        }),
        (Some(job_id), false) => Ok(Target::Job { job_id }),
        (None, variant) => Err(ReadError::UnknownTarget {
            kind: if variant { "variant" } else { "job" },
            id,
        }),
    }
}
