//! The read replica (`--read-url`): a hot standby that answers the reads (reports, history,
//! targets, the dashboard) while the primary takes the writes. Two things a standby does that
//! a primary does not are handled here: it lags, and it may cancel a read whose rows the
//! replay must remove (a recovery conflict).

use std::future::Future;

use sqlx::PgConnection;

use crate::sqlstate;

/// How far the standby is behind, as `/metrics` and the dashboard show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLag {
    /// Whether the server is a standby at all (a `--read-url` that names a primary reads
    /// current data: no lag).
    pub in_recovery: bool,
    /// Seconds between now and the commit time of the last transaction the standby replayed
    /// — or 0 while its WAL receiver streams and everything it received is replayed: an idle
    /// primary sends no transactions, and the last one's age is then no lag. `None` on a
    /// standby that has replayed no transaction since it started.
    pub seconds: Option<f64>,
}

/// Measures the standby's lag (see [`ReplicaLag::seconds`] for what an idle primary does to
/// the naive `now() - pg_last_xact_replay_timestamp()`).
pub async fn lag(conn: &mut PgConnection) -> Result<ReplicaLag, sqlx::Error> {
    let (in_recovery, seconds): (bool, Option<f64>) = sqlx::query_as(
        "SELECT pg_is_in_recovery(),
                CASE WHEN NOT pg_is_in_recovery() THEN 0
                     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                          AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver
                                       WHERE status = 'streaming') THEN 0
                     ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
                END",
    )
    .fetch_one(conn)
    .await?;
    Ok(ReplicaLag {
        in_recovery,
        seconds: seconds.map(|s| s.max(0.0)),
    })
}

/// Whether a standby cancelled the statement to let its replay go on ("canceling statement
/// due to conflict with recovery", SQLSTATE 40001, or 40P01 for a buffer-pin deadlock). On a
/// primary 40001 is a serialization failure, which the message tells apart.
pub fn is_recovery_conflict(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| {
        matches!(
            db.code().as_deref(),
            Some(sqlstate::SERIALIZATION_FAILURE | sqlstate::DEADLOCK_DETECTED)
        ) && db.message().contains("conflict with recovery")
    })
}

/// Whether any cause of `error` is a recovery conflict.
pub fn caused_by_recovery_conflict(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(is_recovery_conflict)
}

/// Runs a read; when the standby cancels it for a recovery conflict, runs it once more (the
/// replay that needed the rows has moved on by then). A second conflict is returned: the
/// caller answers "try again shortly" (HTTP 503 with Retry-After).
pub async fn read_retrying<T, F, Fut>(read: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    match read().await {
        Err(error) if caused_by_recovery_conflict(&error) => {
            tracing::info!(%error, "the read replica cancelled a read; reading once more");
            crate::metrics::replica_conflict();
            read().await
        }
        done => done,
    }
}
