//! The asynchronous projector: keeps `retry_rollup` up with the log, after the append.
//!
//! 1. **No gaps.** It tails the log by transaction id, never past the oldest transaction of
//!    this database still running (`retrylog_horizon()`): an event appended by a
//!    transaction that commits after a later one is applied when it becomes visible, never
//!    skipped.
//! 2. **Exactly-once effect.** Each batch applies its range and moves the checkpoint in one
//!    transaction; a projector killed mid-batch leaves neither, and its successor resumes
//!    from the checkpoint.
//! 3. **One at a time.** A session-level advisory lock elects the runner; other instances
//!    stand by and take over when its session ends. The checkpoint row is also locked per
//!    batch, so even two runners could not apply one range twice.

use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::projection::ROLLUP;
use crate::shutdown;

/// The advisory lock key that elects the rollup's runner ("rollup" in ASCII).
pub const ROLLUP_LOCK: i64 = 0x726f_6c6c_7570;

/// Events one batch applies unless told otherwise: `serve`, `project` and `report trend`.
pub const DEFAULT_BATCH_EVENTS: i64 = 10_000;

/// How the projector paces itself.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Roughly how many events one batch (one transaction) applies; whole transactions only.
    pub batch_events: i64,
    /// Pause between polls once caught up.
    pub poll: Duration,
    /// Pause between attempts to take over while another instance runs.
    pub standby_poll: Duration,
    /// Longest pause between reconnect attempts after the database went away.
    pub max_backoff: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        ProjectorSettings {
            batch_events: DEFAULT_BATCH_EVENTS,
            poll: Duration::from_secs(1),
            standby_poll: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Events applied.
    pub events: i64,
    /// The checkpoint before and after.
    pub from: i64,
    pub to: i64,
    /// True when the checkpoint reached the horizon: nothing visible is left to apply.
    pub caught_up: bool,
}

/// Applies one batch: the events with `checkpoint <= txid < boundary`, where the boundary
/// is at most the horizon and cuts after about `batch_events` events.
pub async fn run_batch(conn: &mut PgConnection, batch_events: i64) -> Result<Batch, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // 1. Lock the checkpoint: a replay or a second runner waits here.
    let from: i64 = sqlx::query_scalar(
        "SELECT position::text::bigint FROM projection_checkpoint
          WHERE projection = $1 FOR UPDATE",
    )
    .bind(ROLLUP)
    .fetch_one(&mut *tx)
    .await?;
    // 2. The horizon: every transaction of this database below it has ended, so every event
    //    with a smaller txid is visible to the statements that follow (each takes a newer
    //    snapshot) and no new one can appear.
    let horizon: i64 = sqlx::query_scalar("SELECT retrylog_horizon()::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    if horizon <= from {
        tx.rollback().await?;
        return Ok(Batch {
            events: 0,
            from,
            to: from,
            caught_up: true,
        });
    }
    // 3. Cut the range after about batch_events events, between two transactions.
    let cut: Option<i64> = sqlx::query_scalar(
        // `h.txid`, not `txid`: ORDER BY would take the bigint output column of that name
        // and sort the whole backlog instead of walking the txid index.
        "SELECT h.txid::text::bigint FROM retry_history h
          WHERE h.txid >= $1::bigint::text::xid8 AND h.txid < $2::bigint::text::xid8
          ORDER BY h.txid OFFSET $3 LIMIT 1",
    )
    .bind(from)
    .bind(horizon)
    .bind(batch_events)
    .fetch_optional(&mut *tx)
    .await?;
    let to = match cut {
        None => horizon,
        Some(cut) if cut > from => cut,
        // One transaction holds more than a batch: take it whole.
        Some(_) => sqlx::query_scalar::<_, Option<i64>>(
            "SELECT min(txid)::text::bigint FROM retry_history
              WHERE txid > $1::bigint::text::xid8 AND txid < $2::bigint::text::xid8",
        )
        .bind(from)
        .bind(horizon)
        .fetch_one(&mut *tx)
        .await?
        .unwrap_or(horizon),
    };
    // 4. Apply and move the checkpoint in the same transaction.
    let events: i64 = sqlx::query_scalar(
        "SELECT retry_rollup_apply($1::bigint::text::xid8, $2::bigint::text::xid8)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE projection_checkpoint
            SET position = $2::bigint::text::xid8,
                events_applied = events_applied + $3,
                updated_at = now()
          WHERE projection = $1",
    )
    .bind(ROLLUP)
    .bind(to)
    .bind(events)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Batch {
        events,
        from,
        to,
        caught_up: to == horizon,
    })
}

/// Runs batches until the checkpoint reaches the horizon; returns the events applied.
pub async fn catch_up(conn: &mut PgConnection, batch_events: i64) -> Result<i64, sqlx::Error> {
    let mut applied = 0;
    loop {
        let batch = run_batch(conn, batch_events).await?;
        applied += batch.events;
        if batch.caught_up {
            return Ok(applied);
        }
    }
}

/// What a one-off [`catch_up_once`] found.
#[derive(Debug, Clone)]
pub enum Freshness {
    /// This process took the lead and applied everything visible: `applied` events.
    CaughtUp { applied: i64 },
    /// Another instance leads the projector; nothing was applied here.
    Behind(Lag),
}

/// Brings the rollup up to date once, if no other instance leads the projector: take the
/// lead, catch up, give the lead back. Used by `retrylog project` and before a trend is read.
///
/// Runs on a connection of its own, detached from the pool: the lead is a session advisory
/// lock, and closing the session releases it even if the catch-up fails half-way.
pub async fn catch_up_once(pool: &PgPool, batch_events: i64) -> Result<Freshness, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let freshness = if try_lead(&mut conn).await? {
        let applied = catch_up(&mut conn, batch_events).await;
        let resigned = resign(&mut conn).await;
        let applied = applied?;
        resigned?;
        Freshness::CaughtUp { applied }
    } else {
        Freshness::Behind(lag(&mut conn).await?)
    };
    conn.close().await?;
    Ok(freshness)
}

/// Tries to become the runner on this connection's session; false when another holds it.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ROLLUP_LOCK)
        .fetch_one(conn)
        .await
}

/// Gives the runner's lock back (it also goes when the session ends).
pub async fn resign(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(ROLLUP_LOCK)
        .execute(conn)
        .await
        .map(|_| ())
}

/// How far the rollup is behind the log.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// The projection's name.
    pub projection: &'static str,
    /// The checkpoint: every event with a smaller txid is applied.
    pub position: i64,
    /// Events applied since the last rebuild.
    pub events_applied: i64,
    /// Events not applied yet.
    pub events_behind: i64,
    /// Age of the oldest event not applied yet, in seconds (0 when none).
    pub seconds_behind: f64,
    /// When the checkpoint last moved.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The backend pid of the instance holding the runner's lock, if one runs.
    pub runner_pid: Option<i32>,
    /// That session's application_name.
    pub runner: Option<String>,
}

/// Measures the rollup's lag and who runs it.
pub async fn lag(conn: &mut PgConnection) -> Result<Lag, sqlx::Error> {
    let (position, events_applied, updated_at): (i64, i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT position::text::bigint, events_applied, updated_at
               FROM projection_checkpoint WHERE projection = $1",
        )
        .bind(ROLLUP)
        .fetch_one(&mut *conn)
        .await?;
    let (events_behind, seconds_behind): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(recorded_at))::float8
           FROM retry_history WHERE txid >= $1::bigint::text::xid8",
    )
    .bind(position)
    .fetch_one(&mut *conn)
    .await?;
    // An advisory lock on a bigint key shows its high and low halves as classid and objid.
    let runner: Option<(i32, Option<String>)> = sqlx::query_as(
        "SELECT l.pid, a.application_name
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
    )
    .bind(ROLLUP_LOCK)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Lag {
        projection: ROLLUP,
        position,
        events_applied,
        events_behind,
        seconds_behind: seconds_behind.unwrap_or(0.0).max(0.0),
        updated_at,
        runner_pid: runner.as_ref().map(|(pid, _)| *pid),
        runner: runner.and_then(|(_, name)| name),
    })
}

/// Runs the projector until `shutdown` turns true: stands by while another instance leads,
/// catches up and polls while leading, and reconnects with back-off when the database goes
/// away. Errors are logged, never returned: a lost connection is a pause, not an exit.
pub async fn run(pool: PgPool, settings: ProjectorSettings, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    while !*shutdown.borrow() {
        match lead_while_possible(&pool, &settings, &mut shutdown).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "projector lost its connection");
                if shutdown::sleep(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(settings.max_backoff);
            }
        }
    }
}

/// One session: wait for the lead, then apply batches until shutdown or an error.
async fn lead_while_possible(
    pool: &PgPool,
    settings: &ProjectorSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), sqlx::Error> {
    // A dedicated connection, detached from the pool: the advisory lock lives as long as
    // this session, and must not be handed to anyone else.
    let Some(conn) = shutdown::unless_requested(pool.acquire(), shutdown).await else {
        return Ok(());
    };
    let mut conn = conn?.detach();
    sqlx::query("SET application_name = 'retrylog projector'")
        .execute(&mut conn)
        .await?;
    while !try_lead(&mut conn).await? {
        tracing::debug!("another instance runs the projector; standing by");
        if shutdown::sleep(settings.standby_poll, shutdown).await {
            return Ok(());
        }
    }
    tracing::info!("leading the retry_rollup projector");
    let mut last_report = tokio::time::Instant::now();
    loop {
        let batch = run_batch(&mut conn, settings.batch_events).await?;
        if batch.events > 0 || last_report.elapsed() >= Duration::from_secs(60) {
            let lag = lag(&mut conn).await?;
            tracing::info!(
                applied = batch.events,
                position = batch.to,
                events_behind = lag.events_behind,
                seconds_behind = lag.seconds_behind,
                "retry_rollup projector"
            );
            last_report = tokio::time::Instant::now();
        }
        if *shutdown.borrow() {
            resign(&mut conn).await?;
            return Ok(());
        }
        if batch.caught_up && shutdown::sleep(settings.poll, shutdown).await {
            resign(&mut conn).await?;
            return Ok(());
        }
    }
}
