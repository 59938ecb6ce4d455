//! What `verify` remembers (migration 0017), so that a plain `verify` costs what is new: the
//! events appended since the last clean verify, each stream's chain continued from its
//! verified head, plus drift checks that read what is new and the counts and head rows of the
//! streams walked and of one slice of the others ([`drift`], [`rotation`]);
//! `verify --full` re-reads the whole log, runs every whole-log drift check, recomputes the
//! rollups and compares the closed partitions with their digests ([`digest`]). Beside the
//! flow (retry → store → projector → report/http): it reads the log and the projections and
//! writes only its own state.
//!
//! 1. **The position is a txid horizon.** Each run reads in one REPEATABLE READ snapshot whose
//!    first statement takes the snapshot's xmin: every transaction below it has ended, so every
//!    event with a smaller txid is in the snapshot. A clean run advances the position to that
//!    xmin, never past an event a running transaction has yet to commit (which the projector
//!    does for the same reason; an event with a lower seq may commit after a higher one).
//! 2. **New events, by txid.** A plain run reads the events with txid at or above the stored
//!    horizon that lie beyond their stream's verified head, in stream and attempt order, and
//!    walks each stream on from its head. Within a snapshot a stream has no holes (its writers
//!    queue on the target's row), so an event that committed late still arrives in order.
//!    Events at or above the horizon that are already verified (visible to the last run, but
//!    above its xmin) sit at or below their head and are skipped: each event is walked once.
//! 3. **Only a clean run advances.** A run that finds a mismatch records how many and bumps
//!    the generation; a clean run advances only if the generation is still the one it read,
//!    so a clean run that started before a failing one cannot move the position past the
//!    tamper the failing one found. What a `--full` finds stands until a `--full` is clean:
//!    a plain run, which does not re-read those events, is not clean meanwhile. Writing takes
//!    the operator capability; a reader's verify checks the same and records nothing.
//! 4. **One scheduled verifier.** `serve --verify-every` runs a plain verify on the instance
//!    holding the lease row (`verify_lease`, taken when expired, renewed by each run): a row
//!    with an expiry, which works through a transaction-mode pooler where a session lock does
//!    not.

pub mod digest;
pub mod drift;
pub mod rotation;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::chain::{ChainWalk, StoredEvent, STORED_EVENTS};
use crate::event::Target;
use crate::replay::{self, VerifyReport};

/// How much of the log a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Scope {
    /// The events since the stored position, from each stream's verified head.
    New,
    /// Every event, from each stream's genesis (`verify --full`).
    Full,
}

/// The stored state (one row of `verify_state`).
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct State {
    /// Every event with a txid below this was verified by a clean run.
    pub horizon: i64,
    /// Bumped by every run that records itself.
    pub generation: i64,
    /// Events verified so far.
    pub events: i64,
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub full_verified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What the last recorded run found.
    pub mismatches: i32,
    /// What the last `--full` found, standing until a `--full` is clean.
    pub full_mismatches: i32,
    /// The rotation's cursor: the last head-row key a clean plain run checked (job_id, then
    /// stream); `None` starts from the lowest.
    pub rotation_job_id: Option<uuid::Uuid>,
    pub rotation_stream: Option<uuid::Uuid>,
    /// Whole rounds of the rotation clean plain runs completed.
    pub rotation_rounds: i64,
}

impl State {
    /// The rotation's cursor as a key.
    pub fn rotation_cursor(&self) -> Option<rotation::Key> {
        self.rotation_job_id.zip(self.rotation_stream)
    }
}

/// Reads the state.
pub async fn load(conn: &mut PgConnection) -> Result<State, sqlx::Error> {
    sqlx::query_as(
        "SELECT horizon::text::bigint AS horizon, generation, events, verified_at,
                full_verified_at, checked_at, mismatches, full_mismatches, rotation_job_id,
                rotation_stream, rotation_rounds
           FROM verify_state",
    )
    .fetch_one(conn)
    .await
}

/// What became of a run's result in `verify_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    /// Clean: the position and the heads advanced.
    Advanced,
    /// Not clean: the mismatches were recorded, the position stays.
    Failed,
    /// Another run recorded itself meanwhile: this clean run did not advance the state.
    Superseded,
    /// The role may not write the state (it takes the operator capability): nothing recorded.
    NotPermitted,
}

/// One run: what it read, what it found, and what it recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scope: Scope,
    /// The position the run started from (0 for a full run).
    pub since_txid: i64,
    /// The run's own horizon: where a clean run moves the position.
    pub up_to_txid: i64,
    /// The lowest and highest seq among the events walked.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Events verified before this run and not read again (0 for a full run).
    pub verified_before: i64,
    /// For a plain run, the mismatches the last `--full` found in events verified before,
    /// which a plain run does not re-read: while any stand, a plain run is not clean.
    pub standing_full_mismatches: i32,
    /// A plain run's slice of the rotation: the other streams whose counts and head rows it
    /// checked (`None` for a full run, which checks them all).
    pub rotation: Option<rotation::Slice>,
    /// Whole rounds of the rotation completed before this run.
    pub rotation_rounds: i64,
    /// The events walked, their streams, and what does not match.
    #[serde(flatten)]
    pub report: VerifyReport,
    pub recorded: Recorded,
}

/// A stream's last event walked: its verified head once the run is clean.
struct Head {
    target: Target,
    attempt: i32,
    hash: Vec<u8>,
    seq: i64,
}

/// An event since the position, with its stream's verified head.
#[derive(sqlx::FromRow)]
struct NewEvent {
    #[sqlx(flatten)]
    event: StoredEvent,
    head_attempt: Option<i32>,
    head_hash: Option<Vec<u8>>,
}

/// The events a plain run reads: since the horizon and beyond their stream's head, grouped by
/// stream in attempt order. Through the log's parent table by txid, whatever its layout. Each
/// event's head is one probe of `verify_stream_head`'s key (two cases: a job-level stream's
/// NULL is indexable as `IS NULL`, not as `IS NOT DISTINCT FROM`), so the run reads no more
/// heads than it has new events.
fn new_events_sql() -> String {
    format!(
        "WITH new AS ({STORED_EVENTS} WHERE txid >= $1::bigint::text::xid8)
         SELECT new.*, v.attempt AS head_attempt, v.hash AS head_hash
           FROM new
           LEFT JOIN LATERAL (
                (SELECT v.attempt, v.hash FROM verify_stream_head v
                  WHERE v.job_id = new.job_id AND v.job_variants_id = new.job_variants_id)
                UNION ALL
                (SELECT v.attempt, v.hash FROM verify_stream_head v
                  WHERE new.job_variants_id IS NULL
                    AND v.job_id = new.job_id AND v.job_variants_id IS NULL)
                LIMIT 1) v ON true
          WHERE new.attempt > coalesce(v.attempt, 0)
          ORDER BY new.job_id, new.job_variants_id, new.attempt"
    )
}

/// Events a run of `scope` would read now, for a progress bar: an index range for a plain
/// run, a count of the log for a full one.
pub async fn pending(conn: &mut PgConnection, scope: Scope) -> Result<i64, sqlx::Error> {
    match scope {
        Scope::Full => {
            sqlx::query_scalar("SELECT count(*) FROM retry_history")
                .fetch_one(conn)
                .await
        }
        Scope::New => {
            sqlx::query_scalar(
                "SELECT count(*) FROM retry_history
                  WHERE txid >= (SELECT horizon FROM verify_state)",
            )
            .fetch_one(conn)
            .await
        }
    }
}

/// Verifies the log (all of it, or what is new) and the projections (the rollups on a full
/// run only), then records the result if the role may; a plain run checks a slice of
/// [`rotation::DEFAULT_SLICE`] streams besides those it walks. `progress` is called with the
/// events walked so far.
pub async fn run(
    pool: &PgPool,
    scope: Scope,
    progress: impl FnMut(u64),
) -> Result<Run, sqlx::Error> {
    run_sliced(pool, scope, rotation::DEFAULT_SLICE, progress).await
}

/// [`run`], a plain run checking a slice of `slice` streams besides those it walks.
pub async fn run_sliced(
    pool: &PgPool,
    scope: Scope,
    slice_size: i64,
    mut progress: impl FnMut(u64),
) -> Result<Run, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // 1. The first statement fixes the snapshot: its xmin is this run's horizon.
    let up_to: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&mut *tx)
            .await?;
    let state = load(&mut tx).await?;
    if scope == Scope::New {
        // A plain run reads by index only, what is new and its slice: a table read whole is
        // never its plan, though it may look cheaper while the table is small.
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await?;
    }
    let since = match scope {
        Scope::New => state.horizon,
        Scope::Full => 0,
    };

    // 2. The walk: every stream from its genesis, or the new events from each stream's head.
    let mut mismatches = Vec::new();
    let mut walk = ChainWalk::default();
    let mut heads: Vec<Head> = Vec::new();
    let mut seqs: Option<(i64, i64)> = None;
    {
        let full_sql = format!("{STORED_EVENTS} ORDER BY job_id, job_variants_id, attempt");
        let new_sql = new_events_sql();
        let mut rows = match scope {
            Scope::Full => sqlx::query_as::<_, StoredEvent>(&full_sql)
                .fetch(&mut *tx)
                .map_ok(|event| NewEvent {
                    event,
                    head_attempt: None,
                    head_hash: None,
                })
                .boxed(),
            Scope::New => sqlx::query_as::<_, NewEvent>(&new_sql)
                .bind(since)
                .fetch(&mut *tx)
                .boxed(),
        };
        while let Some(row) = rows.try_next().await? {
            let event = &row.event;
            let target = event.target();
            if walk.current() != Some(target) {
                if let (Some(attempt), Some(hash)) = (row.head_attempt, &row.head_hash) {
                    walk.resume(target, attempt, hash);
                }
            }
            walk.check(event, &mut mismatches);
            match heads.last_mut() {
                Some(head) if head.target == target => {
                    head.attempt = event.attempt;
                    head.hash.clone_from(&event.hash);
                    head.seq = event.seq;
                }
                _ => heads.push(Head {
                    target,
                    attempt: event.attempt,
                    hash: event.hash.clone(),
                    seq: event.seq,
                }),
            }
            seqs = Some(seqs.map_or((event.seq, event.seq), |(low, high)| {
                (low.min(event.seq), high.max(event.seq))
            }));
            if walk.events.is_multiple_of(10_000) {
                progress(walk.events);
            }
        }
    }
    progress(walk.events);

    // 3. The projections, in the same snapshot: on a full run every whole-log check, the
    //    rollups and the closed partitions' digests; on a plain one the counts and head rows
    //    of the streams just walked and of the rotation's next slice, and what is new.
    let mut slice = None;
    match scope {
        Scope::Full => {
            mismatches.extend(replay::projection_mismatches(&mut tx, true).await?);
            mismatches.extend(digest::mismatches(&mut tx).await?);
        }
        Scope::New => {
            let walked = drift::RunHeads {
                job_ids: heads.iter().map(|h| h.target.job_id()).collect(),
                job_variants_ids: heads.iter().map(|h| h.target.job_variants_id()).collect(),
                attempts: heads.iter().map(|h| h.attempt).collect(),
                hashes: heads.iter().map(|h| h.hash.clone()).collect(),
                seqs: heads.iter().map(|h| h.seq).collect(),
            };
            let taken = rotation::take(&mut tx, state.rotation_cursor(), slice_size).await?;
            mismatches.extend(drift::new_mismatches(&mut tx, since, &walked, &taken).await?);
            slice = Some(taken);
            mismatches.extend(replay::projection_stuck(&mut tx).await?);
        }
    }
    tx.rollback().await?;

    let mut report = VerifyReport {
        events: walk.events,
        streams: walk.streams,
        mismatches,
    };
    // Streams whose prefix was archived walk on from their base (src/archive/verify.rs).
    crate::archive::verify::rebase(pool, &mut report).await?;
    let standing = match scope {
        Scope::New => state.full_mismatches,
        Scope::Full => 0,
    };
    // Recorded on a checkout of its own: behind a transaction pooler the snapshot's ROLLBACK
    // ended the checkout's transaction, and a statement after it may reach another server
    // session (src/connect/pooler.rs).
    drop(conn);
    let mut conn = pool.acquire().await?;
    let recorded = record(
        &mut conn,
        scope,
        &state,
        up_to,
        &report,
        standing,
        &heads,
        slice.as_ref(),
    )
    .await?;
    Ok(Run {
        scope,
        since_txid: since,
        up_to_txid: up_to,
        first_seq: seqs.map(|(low, _)| low),
        last_seq: seqs.map(|(_, high)| high),
        verified_before: match scope {
            Scope::New => state.events,
            Scope::Full => 0,
        },
        standing_full_mismatches: standing,
        rotation: slice,
        rotation_rounds: state.rotation_rounds,
        report,
        recorded,
    })
}

/// Heads written per statement.
const HEADS_PER_STATEMENT: usize = 10_000;

/// Records a run: a clean one advances the position, the heads and (a plain one) the
/// rotation's cursor if no run recorded itself since it read the state; one with mismatches
/// records them and keeps the position and the cursor.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut PgConnection,
    scope: Scope,
    read: &State,
    up_to: i64,
    report: &VerifyReport,
    standing: i32,
    heads: &[Head],
    slice: Option<&rotation::Slice>,
) -> Result<Recorded, sqlx::Error> {
    let may_write: bool =
        sqlx::query_scalar("SELECT has_table_privilege('verify_state', 'UPDATE')")
            .fetch_one(&mut *conn)
            .await?;
    if !may_write {
        return Ok(Recorded::NotPermitted);
    }
    let mut tx = conn.begin().await?;
    if !report.is_clean() || standing > 0 {
        let found = i32::try_from(report.mismatches.len()).unwrap_or(i32::MAX);
        sqlx::query(
            "UPDATE verify_state
                SET generation = generation + 1, checked_at = now(), mismatches = $1,
                    full_mismatches = CASE WHEN $2 THEN $1 ELSE full_mismatches END,
                    checked_by = session_user",
        )
        .bind(found.saturating_add(standing))
        .bind(scope == Scope::Full)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Recorded::Failed);
    }
    // The row lock of this UPDATE orders concurrent recorders; the generation says whether
    // another one recorded since this run read the state.
    let advanced = sqlx::query(
        "UPDATE verify_state
            SET horizon = greatest(horizon, $1::bigint::text::xid8),
                generation = generation + 1,
                events = CASE WHEN $3 THEN $4 ELSE events + $4 END,
                verified_at = now(),
                full_verified_at = CASE WHEN $3 THEN now() ELSE full_verified_at END,
                checked_at = now(), mismatches = 0, full_mismatches = 0,
                checked_by = session_user,
                rotation_job_id = CASE WHEN $5 THEN $6 ELSE rotation_job_id END,
                rotation_stream = CASE WHEN $5 THEN $7 ELSE rotation_stream END,
                rotation_rounds = rotation_rounds + CASE WHEN $5 AND $6 IS NULL THEN 1 ELSE 0 END
          WHERE generation = $2",
    )
    .bind(up_to)
    .bind(read.generation)
    .bind(scope == Scope::Full)
    .bind(report.events as i64)
    .bind(slice.is_some())
    .bind(
        slice
            .and_then(|s| s.next_cursor())
            .map(|(job_id, _)| job_id),
    )
    .bind(
        slice
            .and_then(|s| s.next_cursor())
            .map(|(_, stream)| stream),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if advanced == 0 {
        tx.rollback().await?;
        return Ok(Recorded::Superseded);
    }
    for chunk in heads.chunks(HEADS_PER_STATEMENT) {
        // A head only moves forward: a slower run never sets a stream back.
        sqlx::query(
            "INSERT INTO verify_stream_head (job_id, job_variants_id, attempt, hash, seq)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::bytea[], $5::bigint[])
             ON CONFLICT ON CONSTRAINT verify_stream_head_key DO UPDATE
                SET attempt = excluded.attempt, hash = excluded.hash, seq = excluded.seq
              WHERE verify_stream_head.attempt < excluded.attempt",
        )
        .bind(chunk.iter().map(|h| h.target.job_id()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|h| h.target.job_variants_id())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|h| h.attempt).collect::<Vec<_>>())
        .bind(chunk.iter().map(|h| h.hash.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|h| h.seq).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Recorded::Advanced)
}

/// Whether the connected role may run the scheduled verify (take the lease, record runs):
/// the operator capability.
pub async fn may_schedule(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT has_table_privilege('verify_lease', 'UPDATE')
            AND has_table_privilege('verify_state', 'UPDATE')",
    )
    .fetch_one(conn)
    .await
}

/// Takes or renews the lease for `holder` until `ttl` from now; false while another holder's
/// lease runs.
pub async fn take_lease(
    conn: &mut PgConnection,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE verify_lease SET holder = $1, expires_at = now() + make_interval(secs => $2)
          WHERE expires_at < now() OR holder = $1",
    )
    .bind(holder)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// `serve --verify-every`: a plain verify every `every` on the instance holding the lease,
/// until `stopped`. The lease runs for one and a half periods, so a holder that stops is
/// replaced within two. Failures are logged; the next period tries again.
pub async fn run_every(pool: PgPool, every: Duration, mut stopped: watch::Receiver<bool>) {
    // host:pid and a random suffix: a restarted process on a reused pid is another holder.
    let holder = format!(
        "{} {}",
        crate::config::default_instance(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ttl = every + every / 2;
    loop {
        if *stopped.borrow() {
            return;
        }
        match scheduled_once(&pool, &holder, ttl).await {
            Ok(None) => tracing::debug!("verify: another instance holds the verify lease"),
            Ok(Some(run)) if run.is_clean() => tracing::info!(
                events = run.report.events,
                since_txid = run.since_txid,
                up_to_txid = run.up_to_txid,
                recorded = ?run.recorded,
                "verify clean"
            ),
            Ok(Some(run)) => {
                for mismatch in &run.report.mismatches {
                    tracing::error!(%mismatch, "verify mismatch");
                }
                tracing::error!(
                    mismatches = run.report.mismatches.len(),
                    standing_full_mismatches = run.standing_full_mismatches,
                    "verify is not clean; the position stays until a verify is clean"
                );
            }
            Err(error) => tracing::warn!(%error, "verify could not run; trying again next period"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// One scheduled period: the run, or `None` when another instance holds the lease.
async fn scheduled_once(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Run>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    if !take_lease(&mut conn, holder, ttl).await? {
        return Ok(None);
    }
    drop(conn);
    run(pool, Scope::New, |_| {}).await.map(Some)
}

impl Run {
    /// Whether nothing was wrong: nothing found, and nothing standing from a `--full`.
    pub fn is_clean(&self) -> bool {
        self.report.is_clean() && self.standing_full_mismatches == 0
    }
}
