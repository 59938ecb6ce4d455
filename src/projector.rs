//! The asynchronous projector: keeps `retry_rollup` and `retry_outcome_rollup` up with the log
//! and the outcomes, after the append, and recounts the targets created from the pipeline's
//! rows once caught up.
//!
//! 1. **No gaps.** It tails the log by transaction id, never past the oldest transaction of
//!    this database still running (`retrylog_horizon()`): an event appended by a
//!    transaction that commits after a later one is applied when it becomes visible, never
//!    skipped.
//! 2. **Exactly-once effect.** Each batch applies its range and moves the checkpoint in one
//!    transaction; a projector killed mid-batch leaves neither, and its successor resumes
//!    from the checkpoint.
//! 3. **One at a time.** A lease row (`projector_lease`) elects the runner; other instances
//!    stand by and take over when its session ends or it stops renewing the lease for its
//!    ttl. Only a role that may update the lease (the owner, the operator capability) can
//!    take it: unlike an advisory lock, a reader or a writer cannot stall the projector. The
//!    checkpoint row is also locked per batch (which needs UPDATE on it too), so even two
//!    runners could not apply one range twice.
//! 4. **Failures are said.** A batch that fails for any reason but a lost connection is
//!    recorded on the lease (`failure`, cleared by the next batch that succeeds): `status`
//!    and `verify` show a projection that cannot advance, and `serve` logs the real cause.

use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::projection::ROLLUP;
use crate::shutdown;

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
    /// How often, once caught up, the targets created are recounted from the pipeline's rows
    /// (the trend's denominator; see [`count_created`]).
    pub count_created_every: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        ProjectorSettings {
            batch_events: DEFAULT_BATCH_EVENTS,
            poll: Duration::from_secs(1),
            standby_poll: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            count_created_every: Duration::from_secs(60),
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
    // 1. Lock the checkpoint: a replay or a second runner waits here. Renew the lease if this
    //    session holds it (its row lock also keeps a takeover out until this batch ends).
    sqlx::query(
        "UPDATE projector_lease SET renewed_at = now()
          WHERE projection = $1 AND holder_pid = pg_backend_pid()",
    )
    .bind(ROLLUP)
    .execute(&mut *tx)
    .await?;
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
    // The outcomes' report projection follows the same range and checkpoint.
    sqlx::query(
        "SELECT retry_outcome_rollup_apply($1::bigint::text::xid8, $2::bigint::text::xid8)",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
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
    sqlx::query(
        "UPDATE projector_lease SET failed_at = NULL, failure = NULL
          WHERE projection = $1 AND failure IS NOT NULL",
    )
    .bind(ROLLUP)
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

/// Recounts the targets created in the hours not yet settled from the pipeline's own rows
/// (`retry_rollup_count_created`, through the BRIN indexes on `created_at`), unless the last
/// recount is younger than `at_most_every`; true when it recounted. No trigger counts them
/// on the pipeline's inserts (invariant 10 in docs/architecture.md: the pipeline's own writes
/// keep ≥ 0.95× their speed without retrylog).
pub async fn count_created(
    conn: &mut PgConnection,
    at_most_every: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT retry_rollup_count_created(make_interval(secs => $1))")
        .bind(at_most_every.as_secs_f64())
        .fetch_one(conn)
        .await
}

/// One step of the projector: a batch, and once that has caught up, the recount of the
/// targets created (unless the last is younger than `count_created_every`). A step that
/// fails is recorded on the lease (see [`record_failure`]) before the error is returned.
async fn advance(
    conn: &mut PgConnection,
    batch_events: i64,
    count_created_every: Duration,
) -> Result<Batch, sqlx::Error> {
    let result = match run_batch(conn, batch_events).await {
        Ok(batch) if batch.caught_up => count_created(conn, count_created_every)
            .await
            .map(|_| batch),
        other => other,
    };
    if let Err(error) = &result {
        record_failure(conn, error).await;
    }
    result
}

/// Runs batches until the checkpoint reaches the horizon, then recounts the targets created;
/// returns the events applied. A batch or recount that fails is recorded on the lease.
pub async fn catch_up(conn: &mut PgConnection, batch_events: i64) -> Result<i64, sqlx::Error> {
    let mut applied = 0;
    loop {
        let batch = advance(conn, batch_events, Duration::ZERO).await?;
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

/// Records why a batch failed on the lease row, for `status` and `verify`; best effort, on
/// the same session (its transaction has rolled back). Nothing to record for a lost
/// connection, which says nothing about the projection.
pub async fn record_failure(conn: &mut PgConnection, error: &sqlx::Error) {
    if crate::sqlstate::connection_lost(error) {
        return;
    }
    let cause = error
        .as_database_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| error.to_string());
    let recorded = sqlx::query(
        "UPDATE projector_lease SET failed_at = now(), failure = left($2, 2000)
          WHERE projection = $1",
    )
    .bind(ROLLUP)
    .bind(&cause)
    .execute(conn)
    .await;
    if let Err(error) = recorded {
        tracing::debug!(%error, "could not record the projector's failure");
    }
}

/// Whether this session's role may run the projector (UPDATE on its lease and checkpoint):
/// the owner and the operator capability. A reader's `report trend` reads the rollup as it
/// stands instead, and so does any trend read on a hot standby (`--read-url`), which can
/// write nothing, or through a transaction pooler (`connect/pooler.rs` marks those
/// checkouts), where the lease would outlive the session that took it: there the projector of
/// `serve` (on the primary, on `--direct-url`) keeps the rollup.
pub async fn may_run(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT has_table_privilege('projector_lease', 'UPDATE')
            AND has_table_privilege('projection_checkpoint', 'UPDATE')
            AND NOT pg_is_in_recovery()
            AND current_setting('retrylog.pooled', true) IS DISTINCT FROM 'on'",
    )
    .fetch_one(conn)
    .await
}

/// Brings the rollup up to date once, if this role may run the projector and no other
/// instance leads it: take the lead, catch up, give the lead back. Used by `retrylog project`
/// and before a trend is read.
///
/// Runs on a connection of its own, detached from the pool: the lease names this session,
/// and a session that ends frees it even if the catch-up fails half-way.
pub async fn catch_up_once(pool: &PgPool, batch_events: i64) -> Result<Freshness, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let freshness = if may_run(&mut conn).await? && try_lead(&mut conn).await? {
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

/// Tries to become (or stay) the runner on this connection's session; false when another
/// live session holds a lease it renewed within its ttl. A role without UPDATE on the lease
/// gets permission denied.
///
/// The lease is free when nobody holds it, when its holder's backend is gone (a pid no
/// longer in pg_stat_activity, or one that a new backend reuses: the start times differ
/// where this role may see them), or when the holder stopped renewing it for `ttl`.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let taken: Option<bool> = sqlx::query_scalar(
        "UPDATE projector_lease l
            SET holder_pid = pg_backend_pid(), holder_role = session_user,
                holder_name = current_setting('application_name'),
                taken_at = CASE WHEN l.holder_pid = pg_backend_pid() THEN l.taken_at
                                ELSE now() END,
                renewed_at = now()
          WHERE l.projection = $1
            AND (l.holder_pid IS NULL
                 OR l.holder_pid = pg_backend_pid()
                 OR l.renewed_at < now() - l.ttl
                 OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = l.holder_pid
                                   AND (a.backend_start IS NULL
                                        OR a.backend_start <= l.taken_at)))
         RETURNING true",
    )
    .bind(ROLLUP)
    .fetch_optional(conn)
    .await?;
    Ok(taken.unwrap_or(false))
}

/// Gives the lease back (a lease whose session ended is free too).
pub async fn resign(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projector_lease
            SET holder_pid = NULL, holder_role = NULL, holder_name = NULL, taken_at = NULL,
                renewed_at = NULL
          WHERE projection = $1 AND holder_pid = pg_backend_pid()",
    )
    .bind(ROLLUP)
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
    /// The backend pid of the instance holding the runner's lease, if one runs.
    pub runner_pid: Option<i32>,
    /// That session's application_name.
    pub runner: Option<String>,
    /// The database role holding the lease.
    pub runner_role: Option<String>,
    /// True when a lease is held but was not renewed for its ttl: the runner is stuck or
    /// gone, and another instance may take over.
    pub stalled: bool,
    /// Why the last batch failed, while no batch has succeeded since: the projection cannot
    /// advance (see `verify`).
    pub failure: Option<String>,
    /// The first event the projection stops at (its seq), when it has failed.
    pub failed_at_seq: Option<i64>,
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
    // The lease, as the holder last wrote it.
    type LeaseRow = (
        Option<i32>,
        Option<String>,
        Option<String>,
        bool,
        Option<String>,
    );
    let (runner_pid, runner, runner_role, stalled, failure): LeaseRow = sqlx::query_as(
        "SELECT holder_pid, holder_name, holder_role,
                holder_pid IS NOT NULL AND renewed_at < now() - ttl, failure
           FROM projector_lease WHERE projection = $1",
    )
    .bind(ROLLUP)
    .fetch_one(&mut *conn)
    .await?;
    let failed_at_seq: Option<i64> = match failure {
        None => None,
        Some(_) => {
            sqlx::query_scalar(
                "SELECT min(seq) FROM retry_history WHERE txid >= $1::bigint::text::xid8",
            )
            .bind(position)
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok(Lag {
        projection: ROLLUP,
        position,
        events_applied,
        events_behind,
        seconds_behind: seconds_behind.unwrap_or(0.0).max(0.0),
        updated_at,
        runner_pid,
        runner,
        runner_role,
        stalled,
        failure,
        failed_at_seq,
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
            Err(error) if crate::sqlstate::connection_lost(&error) => {
                tracing::warn!(%error, retry_in = ?backoff, "projector lost its connection");
                if shutdown::sleep(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(settings.max_backoff);
            }
            // The real cause (recorded on the lease too): a batch the database refuses will
            // be refused again, so the back-off grows the same way, and status says why.
            Err(error) => {
                let cause = error
                    .as_database_error()
                    .map(|db| db.message().to_string())
                    .unwrap_or_else(|| error.to_string());
                tracing::error!(%cause, retry_in = ?backoff, "projector batch failed");
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
    // A dedicated connection, detached from the pool: the lease names this session's
    // backend, and must not be handed to anyone else.
    let Some(conn) = shutdown::unless_requested(pool.acquire(), shutdown).await else {
        return Ok(());
    };
    let mut conn = conn?.detach();
    sqlx::query("SET application_name = 'retrylog projector'")
        .execute(&mut conn)
        .await?;
    if !may_run(&mut conn).await? {
        tracing::error!(
            "this role may not run the projector (it needs the operator capability or to own \
             the schema); the trend rollup is not kept"
        );
        shutdown::requested(shutdown).await;
        return Ok(());
    }
    while !try_lead(&mut conn).await? {
        tracing::debug!("another instance runs the projector; standing by");
        if shutdown::sleep(settings.standby_poll, shutdown).await {
            return Ok(());
        }
    }
    tracing::info!("leading the retry_rollup projector");
    let mut last_report = tokio::time::Instant::now();
    loop {
        let batch = advance(
            &mut conn,
            settings.batch_events,
            settings.count_created_every,
        )
        .await?;
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
        // Renews the lease; false when another instance took it over meanwhile (this one
        // stalled past the ttl): stand by again.
        if !try_lead(&mut conn).await? {
            tracing::warn!("another instance took the projector's lease over; standing by");
            return Ok(());
        }
    }
}
