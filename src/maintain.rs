//! Partition maintenance: the log's partitions are created ahead of time, so an append never
//! lands in the DEFAULT safety net. The rules live in SQL (`retry_history_maintain()`,
//! sql/retry_partitions.sql); this module is how `migrate`, `retrylog maintain` (cron) and
//! `serve` call it. In `serve` every instance tries, and the holder of a lease row does the
//! work: a row with an expiry rather than a session advisory lock, because a transaction
//! pooler (pgbouncer) or Citus cannot keep a session lock.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// Creates the partitions that are due (`retry_history_maintain()`); returns their names.
/// A name followed by "(events moved from retry_history_default)" says appends had landed in
/// the safety net for its range and were moved into it.
pub async fn create_partitions(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT retry_history_maintain()")
        .fetch_all(conn)
        .await
}

/// What a leased maintenance step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeasedRun {
    /// Another instance holds the lease until it expires.
    Skipped { holder: String },
    /// This instance held the lease and created these partitions (often none).
    Ran { created: Vec<String> },
}

/// One maintenance step for `serve`: takes the lease if it is free, expired or already ours
/// (renewing it for `ttl`), then creates what is due and records the result in the lease
/// row. The lease is kept until it expires, so one instance does the work per `ttl`.
pub async fn run_leased(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
) -> Result<LeasedRun, sqlx::Error> {
    let taken: Option<String> = sqlx::query_scalar(
        "UPDATE retrylog_maintenance_lease
            SET holder = $1, taken_at = now(),
                expires_at = now() + make_interval(secs => $2)
          WHERE expires_at < now() OR holder = $1
         RETURNING holder",
    )
    .bind(holder)
    .bind(ttl.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    if taken.is_none() {
        let holder: Option<String> =
            sqlx::query_scalar("SELECT holder FROM retrylog_maintenance_lease")
                .fetch_one(pool)
                .await?;
        return Ok(LeasedRun::Skipped {
            holder: holder.unwrap_or_default(),
        });
    }
    let mut tx = pool.begin().await?;
    let created = create_partitions(&mut tx).await?;
    sqlx::query(
        "UPDATE retrylog_maintenance_lease
            SET last_run_at = now(),
                last_result = CASE WHEN cardinality($1::text[]) = 0 THEN 'nothing due'
                                   ELSE 'created ' || array_to_string($1, ', ') END",
    )
    .bind(&created)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LeasedRun::Ran { created })
}

/// How often `serve` runs its maintenance step; the lease lasts two of these, so one instance
/// keeps it while it runs and another takes over within two periods of its end.
pub const SERVE_EVERY: Duration = Duration::from_secs(300);

/// `serve`'s maintenance loop: a leased step at start and every [`SERVE_EVERY`] until stopping
/// is requested. A failure is logged and tried again next time: an append never waits for
/// maintenance (the DEFAULT partition catches what no partition covers yet).
pub async fn run(pool: PgPool, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let holder = format!("serve {}", uuid::Uuid::new_v4());
    loop {
        match run_leased(&pool, &holder, SERVE_EVERY * 2).await {
            Ok(LeasedRun::Ran { created }) if !created.is_empty() => {
                tracing::info!(partitions = %created.join(", "), "created log partitions ahead");
            }
            Ok(LeasedRun::Ran { .. }) => tracing::debug!("partition maintenance: nothing due"),
            Ok(LeasedRun::Skipped { holder }) => {
                tracing::debug!(%holder, "partition maintenance is another instance's");
            }
            Err(error) => tracing::warn!(%error, "partition maintenance failed"),
        }
        if crate::shutdown::sleep(SERVE_EVERY, &mut shutdown).await {
            return;
        }
    }
}
