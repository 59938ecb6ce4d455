//! Rebuild (`replay`) and audit (`verify`): everything derived from the log is recomputed
//! from the log and compared with what is stored.

use std::time::Duration;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::chain::{ChainWalk, StoredEvent, STORED_EVENTS};
use crate::event::Target;
use crate::projection::{
    self, problem_drifts, CountDrift, OutcomeDrift, ProblemRow, Projection, RollupDrift,
    PROJECTIONS,
};
use crate::sqlstate;

/// What a replay changed (or, in a dry run, would change).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// Events in the log when the replay ran.
    pub events: i64,
    /// The projections rebuilt.
    pub projections: Vec<&'static str>,
    /// Every count that differed from the log before the replay (retry_counts).
    pub changes: Vec<CountDrift>,
    /// Every rollup row that differed from the log below its checkpoint (retry_rollup).
    pub rollup_changes: Vec<RollupDrift>,
    /// Every open retry and outcome-rollup row that differed from the log and the outcomes
    /// (retry_outcomes).
    pub outcome_changes: Vec<OutcomeDrift>,
    /// Counts still drifting after the last pass: something keeps writing them by hand.
    pub unsettled: Vec<CountDrift>,
    /// False for `--dry-run`: nothing was written.
    pub applied: bool,
}

/// Rebuilds every projection from the log. With `dry_run` it only reports what would change
/// and writes nothing.
pub async fn replay(pool: &PgPool, dry_run: bool) -> Result<ReplayReport, sqlx::Error> {
    replay_projections(pool, PROJECTIONS, dry_run).await
}

/// Rebuilds the given projections from the log (see [`replay`]). Appends keep running
/// meanwhile: neither rebuild locks the log.
pub async fn replay_projections(
    pool: &PgPool,
    projections: &[Projection],
    dry_run: bool,
) -> Result<ReplayReport, sqlx::Error> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
        .fetch_one(pool)
        .await?;
    let mut report = ReplayReport {
        events,
        projections: projections.iter().map(|p| p.name).collect(),
        changes: Vec::new(),
        rollup_changes: Vec::new(),
        outcome_changes: Vec::new(),
        unsettled: Vec::new(),
        applied: !dry_run,
    };
    for projection in projections {
        match projection.name {
            "retry_counts" if dry_run => {
                let mut conn = pool.acquire().await?;
                report.changes = projection::count_drift(&mut conn).await?;
            }
            "retry_counts" => {
                (report.changes, report.unsettled) = rebuild_counts_until_settled(pool).await?;
            }
            projection::ROLLUP => {
                // One transaction: the checkpoint row it locks keeps the projector out.
                let mut tx = pool.begin().await?;
                let position = projection::rollup_position(&mut tx).await?;
                report.rollup_changes = projection::rollup_drift(&mut tx, position).await?;
                if dry_run {
                    tx.rollback().await?;
                } else {
                    projection::rebuild_rollup(&mut tx).await?;
                    tx.commit().await?;
                }
            }
            "retry_outcomes" => {
                // The open retries, then the report's rollup up to the checkpoint it shares
                // with retry_rollup (whose row lock keeps the projector out meanwhile).
                let mut tx = pool.begin().await?;
                let position: i64 = sqlx::query_scalar(
                    "SELECT position::text::bigint FROM projection_checkpoint
                      WHERE projection = $1 FOR UPDATE",
                )
                .bind(projection::ROLLUP)
                .fetch_one(&mut *tx)
                .await?;
                report.outcome_changes = projection::open_drift(&mut tx).await?;
                report
                    .outcome_changes
                    .extend(stream_head_drift(&mut tx).await?);
                report
                    .outcome_changes
                    .extend(projection::outcome_rollup_drift(&mut tx, position).await?);
                if dry_run {
                    tx.rollback().await?;
                } else {
                    projection::rebuild_open(&mut tx).await?;
                    projection::rebuild_outcome_rollup(&mut tx, position).await?;
                    tx.commit().await?;
                }
            }
            other => unreachable!("projection {other} has no replay"),
        }
    }
    Ok(report)
}

/// Head rows and event ids that differ from the log (`retry_stream_head_drift()`); the open
/// retries' rebuild (`retry_open_rebuild()`) rebuilds them too.
async fn stream_head_drift(conn: &mut PgConnection) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<ProblemRow> = sqlx::query_as(
        "SELECT job_id, job_variants_id, problem FROM retry_stream_head_drift() ORDER BY 1, 2, 3",
    )
    .fetch_all(conn)
    .await?;
    Ok(problem_drifts(rows))
}

/// How many rebuild passes replay makes before it reports what still drifts.
const REBUILD_PASSES: u32 = 50;

/// Runs `retry_counts_rebuild` passes until no count drifts. Returns what drifted before the
/// first pass (what replay changed) and what still drifts after the last one (empty when
/// replay settled).
///
/// 1. Each pass writes only rows whose count is still the one it read, so a concurrent append
///    is never overwritten; the next pass fixes that row instead.
/// 2. Each pass waits at most `lock_timeout` for a row an appender holds, then gives way and
///    tries again: an appender that holds one row and waits for another that this pass
///    already wrote must never deadlock with replay.
/// 3. A pass that wrote every row it found drifted is the last one.
async fn rebuild_counts_until_settled(
    pool: &PgPool,
) -> Result<(Vec<CountDrift>, Vec<CountDrift>), sqlx::Error> {
    let mut pause = Duration::from_millis(10);
    let mut first: Option<Vec<CountDrift>> = None;
    let mut unsettled = Vec::new();
    for _ in 0..REBUILD_PASSES {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '200ms'")
            .execute(&mut *tx)
            .await?;
        match projection::rebuild_retry_counts(&mut tx).await {
            Ok(rows) => {
                tx.commit().await?;
                unsettled = rows
                    .iter()
                    .filter(|(_, written)| !written)
                    .map(|(drift, _)| drift.clone())
                    .collect();
                first.get_or_insert_with(|| rows.into_iter().map(|(drift, _)| drift).collect());
                if unsettled.is_empty() {
                    break;
                }
            }
            Err(error) if gave_way(&error) => {
                tx.rollback().await?;
                tracing::debug!(%error, "replay gave way to appenders; trying again");
            }
            Err(error) => return Err(error),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    match first {
        Some(first) => Ok((first, unsettled)),
        // Every pass gave way: nothing was written, everything still drifts.
        None => {
            let mut conn = pool.acquire().await?;
            let drift = projection::count_drift(&mut conn).await?;
            Ok((drift.clone(), drift))
        }
    }
}

/// lock_not_available (our lock_timeout) or deadlock_detected: contention, not a fault.
fn gave_way(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            code == sqlstate::LOCK_NOT_AVAILABLE || code == sqlstate::DEADLOCK_DETECTED
        })
}

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Mismatch {
    /// A projected count differs from opening balance + events.
    Count(CountDrift),
    /// An event's stored hash is not sha256(previous hash ‖ its canonical bytes): the event
    /// was changed, or the one before it was removed or changed.
    BrokenLink {
        target: Target,
        seq: i64,
        attempt: i32,
        expected_hash: String,
        stored_hash: String,
    },
    /// A rollup row differs from the log below the projector's checkpoint.
    Rollup(RollupDrift),
    /// An outcome contradicts the log or the notes, a retry followed by another has none, or
    /// something derived from the outcomes (the open retries, their rollup) differs.
    Outcome(OutcomeDrift),
    /// A stream's head row or an event id (`retry_stream_head`, `retry_event_id`: the
    /// append's next attempt, previous hash and idempotency key) differs from the log.
    StreamHead(OutcomeDrift),
    /// An asynchronous projection cannot advance: its last batch failed and none has
    /// succeeded since. The projector records the failure (`projector_lease`).
    ProjectionStuck {
        projection: &'static str,
        /// Its checkpoint (a txid): every event below it is applied.
        checkpoint: i64,
        /// The first event it has not applied (the one it stops at), by seq.
        seq: Option<i64>,
        /// What the database said when the batch failed.
        failure: String,
    },
    /// A closed month's partition no longer holds what its digest, recorded by the
    /// maintenance step once the month was over, says it held (`retry_partition_digest`,
    /// checked by `verify --full`): events were added, removed or their hashes changed.
    PartitionDigest {
        partition: String,
        /// What was recorded and what is there now.
        differs: String,
    },
    /// The stream's attempts are not 1..n: events are missing.
    AttemptGap {
        target: Target,
        /// The attempt that should come next.
        expected_attempt: i32,
        /// The attempt found instead.
        found_attempt: i32,
    },
}

impl Mismatch {
    /// The target the mismatch is about; `None` for a rollup row, which spans targets.
    pub fn target(&self) -> Option<Target> {
        match self {
            Mismatch::Count(drift) => Some(drift.target),
            Mismatch::BrokenLink { target, .. } | Mismatch::AttemptGap { target, .. } => {
                Some(*target)
            }
            Mismatch::Outcome(drift) | Mismatch::StreamHead(drift) => drift.target,
            Mismatch::Rollup(_)
            | Mismatch::ProjectionStuck { .. }
            | Mismatch::PartitionDigest { .. } => None,
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Count(drift) => write!(f, "{drift}"),
            Mismatch::Rollup(drift) => write!(f, "{drift}"),
            Mismatch::Outcome(drift) | Mismatch::StreamHead(drift) => write!(f, "{drift}"),
            Mismatch::PartitionDigest { partition, differs } => {
                write!(f, "{partition}: {differs}")
            }
            Mismatch::ProjectionStuck {
                projection,
                checkpoint,
                seq,
                failure,
            } => write!(
                f,
                "{projection} cannot advance: checkpoint txid {checkpoint}, stops at event seq \
                 {}: {failure}",
                seq.map_or("?".to_string(), |seq| seq.to_string())
            ),
            Mismatch::BrokenLink {
                target,
                seq,
                attempt,
                expected_hash,
                stored_hash,
            } => write!(
                f,
                "{target}: hash chain broken at attempt {attempt} (seq {seq}): stored {stored_hash}, \
                 recomputed {expected_hash} — the event was changed, or the one before it \
                 removed or changed"
            ),
            Mismatch::AttemptGap {
                target,
                expected_attempt,
                found_attempt,
            } => write!(
                f,
                "{target}: attempt {expected_attempt} is missing (the next stored attempt is \
                 {found_attempt})"
            ),
        }
    }
}

/// What `verify` checked and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Events whose hash link was recomputed.
    pub events: u64,
    /// Streams (targets with at least one event) walked.
    pub streams: u64,
    /// Everything that does not match; empty means the log and its projections agree.
    pub mismatches: Vec<Mismatch>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Recomputes every hash link and every projected count from the log.
///
/// Reads in one REPEATABLE READ snapshot: the log and the counts it is compared with are
/// from the same instant, so appends running meanwhile cannot show up as false mismatches.
/// `progress` is called with the number of events checked so far.
pub async fn verify(
    pool: &PgPool,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;

    let mut mismatches = Vec::new();
    let mut walk = ChainWalk::default();
    {
        // Index order of the stream key, so each stream arrives whole and in attempt order.
        let sql = format!("{STORED_EVENTS} ORDER BY job_id, job_variants_id, attempt");
        let mut rows = sqlx::query_as::<_, StoredEvent>(&sql).fetch(&mut *tx);
        while let Some(event) = rows.try_next().await? {
            walk.check(&event, &mut mismatches);
            if walk.events.is_multiple_of(10_000) {
                progress(walk.events);
            }
        }
    }
    progress(walk.events);
    mismatches.extend(projection_mismatches(&mut tx, true).await?);
    tx.rollback().await?;
    Ok(VerifyReport {
        events: walk.events,
        streams: walk.streams,
        mismatches,
    })
}

/// The projections compared with the log, in the caller's snapshot: the counts, the outcomes
/// and the open retries, a projection that cannot advance, and with `rollups` the trend's and
/// the outcomes' rollups up to their checkpoint. The full `verify` checks them all; the plain
/// one (`verify_state`) leaves out the rollups, whose expected rows are recomputed from every
/// event with window functions: most of a full verify's time, for derived counts that
/// `replay` rebuilds.
pub async fn projection_mismatches(
    tx: &mut PgConnection,
    rollups: bool,
) -> Result<Vec<Mismatch>, sqlx::Error> {
    let mut mismatches = Vec::new();
    mismatches.extend(
        projection::count_drift(&mut *tx)
            .await?
            .into_iter()
            .map(Mismatch::Count),
    );
    // The rollup is asynchronous: it is checked up to its checkpoint, which this snapshot
    // reads together with the rows written in the same transaction.
    let position = projection::rollup_position(&mut *tx).await?;
    if rollups {
        mismatches.extend(
            projection::rollup_drift(&mut *tx, position)
                .await?
                .into_iter()
                .map(Mismatch::Rollup),
        );
    }
    mismatches.extend(
        projection::outcome_problems(&mut *tx)
            .await?
            .into_iter()
            .chain(projection::open_drift(&mut *tx).await?)
            .map(Mismatch::Outcome),
    );
    if rollups {
        mismatches.extend(
            projection::outcome_rollup_drift(&mut *tx, position)
                .await?
                .into_iter()
                .map(Mismatch::Outcome),
        );
    }
    mismatches.extend(
        stream_head_drift(&mut *tx)
            .await?
            .into_iter()
            .map(Mismatch::StreamHead),
    );
    mismatches.extend(projection_stuck(&mut *tx).await?);
    Ok(mismatches)
}

/// The asynchronous projection, if it cannot advance (`projector_lease` records its last
/// failure): one row, so both a plain and a full verify check it.
pub async fn projection_stuck(tx: &mut PgConnection) -> Result<Option<Mismatch>, sqlx::Error> {
    let lag = crate::projector::lag(&mut *tx).await?;
    Ok(lag.failure.map(|failure| Mismatch::ProjectionStuck {
        projection: lag.projection,
        checkpoint: lag.position,
        seq: lag.failed_at_seq,
        failure,
    }))
}
