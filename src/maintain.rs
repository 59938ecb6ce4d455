//! Partition maintenance: the log's partitions are created ahead of time, so an append never
//! lands in the DEFAULT safety net. The rules live in SQL (`retry_history_maintain()`,
//! sql/retry_partitions.sql); this module is how `migrate`, `retrylog maintain` (cron) and
//! `serve` call it. In `serve` every instance tries, and the holder of a lease row does the
//! work: a row with an expiry rather than a session advisory lock, because a transaction
//! pooler (pgbouncer) or Citus cannot keep a session lock.
//!
//! The same step records the digest of each partition whose range is over
//! (`verify_state::digest`, checked by `verify --full`) and, with a retention policy
//! (`--keep 13months --archive-to DIR`, off by default), archives the partitions older than it
//! (`crate::archive`), under the same lease: one instance archives at a time.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::archive::{self, ArchiveError, Archived};
use crate::verify_state::digest;

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

/// The retention policy of the maintenance step: keep `months` whole months before the
/// current one (UTC) in the database, archive every older partition into `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Whole months kept before the current one (`--keep 13months`).
    pub months: u32,
    /// Where the archive files go (`--archive-to DIR`, created if missing).
    pub to: PathBuf,
}

impl Retention {
    /// From the two flags: both or neither (clap requires them together).
    pub fn from_flags(keep: Option<u32>, to: Option<PathBuf>) -> Option<Retention> {
        match (keep, to) {
            (Some(months), Some(to)) => Some(Retention { months, to }),
            _ => None,
        }
    }

    /// Where the policy puts the archive's `before` at `now`.
    pub fn before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        archive::keep_before(self.months, now)
    }
}

/// What a step did besides creating partitions.
#[derive(Debug, Default)]
pub struct Step {
    /// The partitions created (see [`create_partitions`]).
    pub created: Vec<String>,
    /// The closed partitions whose digest was recorded.
    pub digested: Vec<String>,
    /// The partitions archived under the retention policy.
    pub archived: Vec<Archived>,
}

/// Why a step failed: the database, or the archive (which names its own reasons: the
/// owner, a rollup behind, a directory it cannot write).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// The step itself, without a lease (the caller holds it, or runs it by hand): partitions
/// ahead, then the digests of the closed ones (so a partition is digested before retention
/// could archive it), then the archive. Each in its own transaction: a failed archive keeps
/// what the first two did.
pub async fn step(
    pool: &PgPool,
    retention: Option<&Retention>,
    now: DateTime<Utc>,
) -> Result<Step, StepError> {
    let mut tx = pool.begin().await?;
    let created = create_partitions(&mut tx).await?;
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    let digested = digest::record_closed(&mut tx, now).await?;
    tx.commit().await?;
    let archived = match retention {
        Some(retention) => archive::run(pool, retention.before(now), &retention.to).await?,
        None => Vec::new(),
    };
    Ok(Step {
        created,
        digested,
        archived,
    })
}

/// One maintenance step for `serve`: takes the lease if it is free, expired or already ours
/// (renewing it for `ttl`), then creates what is due and records the result in the lease
/// row. The lease is kept until it expires, so one instance does the work per `ttl`.
pub async fn run_leased(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
) -> Result<LeasedRun, sqlx::Error> {
    match run_leased_step(pool, holder, ttl, None).await {
        Ok(Leased::Ran(step)) => Ok(LeasedRun::Ran {
            created: step.created,
        }),
        Ok(Leased::Skipped { holder }) => Ok(LeasedRun::Skipped { holder }),
        Err(StepError::Database(error)) => Err(error),
        Err(StepError::Archive(_)) => unreachable!("no retention, no archive"),
    }
}

/// What [`run_leased_step`] did.
#[derive(Debug)]
pub enum Leased {
    /// Another instance holds the lease until it expires.
    Skipped { holder: String },
    /// This instance held the lease and took the step.
    Ran(Step),
}

/// [`run_leased`] with the whole step: the digests, and the archive under `retention`. The
/// lease row records what the step did, or why it failed.
pub async fn run_leased_step(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
    retention: Option<&Retention>,
) -> Result<Leased, StepError> {
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
        return Ok(Leased::Skipped {
            holder: holder.unwrap_or_default(),
        });
    }
    let result = step(pool, retention, Utc::now()).await;
    let said = match &result {
        Ok(step) => step.summary(),
        Err(error) => format!("failed: {error}"),
    };
    sqlx::query("UPDATE retrylog_maintenance_lease SET last_run_at = now(), last_result = $1")
        .bind(&said)
        .execute(pool)
        .await?;
    result.map(Leased::Ran)
}

impl Step {
    /// What the step did, in a line (the lease row's `last_result`): "nothing due" when
    /// nothing.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.created.is_empty() {
            parts.push(format!("created {}", self.created.join(", ")));
        }
        if !self.digested.is_empty() {
            parts.push(format!("digested {}", self.digested.join(", ")));
        }
        if !self.archived.is_empty() {
            let names: Vec<&str> = self.archived.iter().map(|a| a.partition.as_str()).collect();
            parts.push(format!("archived {}", names.join(", ")));
        }
        if parts.is_empty() {
            "nothing due".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// How often `serve` runs its maintenance step; the lease lasts two of these, so one instance
/// keeps it while it runs and another takes over within two periods of its end.
pub const SERVE_EVERY: Duration = Duration::from_secs(300);

/// `serve`'s maintenance loop: a leased step at start and every [`SERVE_EVERY`] until stopping
/// is requested. A failure is logged and tried again next time: an append never waits for
/// maintenance (the DEFAULT partition catches what no partition covers yet).
pub async fn run(
    pool: PgPool,
    retention: Option<Retention>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let holder = format!("serve {}", uuid::Uuid::new_v4());
    loop {
        match run_leased_step(&pool, &holder, SERVE_EVERY * 2, retention.as_ref()).await {
            Ok(Leased::Ran(step)) => {
                if !step.created.is_empty() {
                    tracing::info!(partitions = %step.created.join(", "), "created log partitions ahead");
                }
                if !step.digested.is_empty() {
                    tracing::info!(partitions = %step.digested.join(", "), "recorded closed partitions' digests");
                }
                for archived in &step.archived {
                    tracing::info!(
                        partition = %archived.partition,
                        events = archived.events,
                        file = %archived.file.display(),
                        "archived under the retention policy"
                    );
                }
                if step.created.is_empty() && step.digested.is_empty() && step.archived.is_empty() {
                    tracing::debug!("partition maintenance: nothing due");
                }
            }
            Ok(Leased::Skipped { holder }) => {
                tracing::debug!(%holder, "partition maintenance is another instance's");
            }
            Err(error) => tracing::warn!(%error, "partition maintenance failed"),
        }
        if crate::shutdown::sleep(SERVE_EVERY, &mut shutdown).await {
            return;
        }
    }
}
