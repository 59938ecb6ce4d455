//! Runs the projections in `projections/*.sql`: state derived from the log.
//!
//! Each file defines plain SQL functions (see the file's header). retrylog installs them on
//! every migrate, record_retry applies `retry_counts` inline, replay rebuilds and verify
//! compares — all through the same SQL.

use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::event::Target;

/// One projection: its name and the SQL that defines it.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    /// The name `replay --projection` and `verify` use.
    pub name: &'static str,
    /// `projections/<name>.sql`, embedded at build time so the binary and its SQL never differ.
    pub sql: &'static str,
}

/// Every projection, in the order they are installed and rebuilt.
pub const PROJECTIONS: &[Projection] = &[Projection {
    name: "retry_counts",
    sql: include_str!("../projections/retry_counts.sql"),
}];

/// (Re)installs every projection's functions. Idempotent; part of `migrate`.
pub async fn install(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for projection in PROJECTIONS {
        sqlx::raw_sql(projection.sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A `retry_count` that differs from what the log says it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountDrift {
    /// The job or variant whose count is off.
    pub target: Target,
    /// The count stored on the row now.
    pub retry_count: i32,
    /// Opening balance + events: what replay would set.
    pub expected: i64,
    /// The count captured from the counter-only era.
    pub opening_balance: i32,
    /// Events of this target in the log.
    pub events: i64,
}

impl std::fmt::Display for CountDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: retry_count is {}, the log says {} (opening balance {} + {} events)",
            self.target, self.retry_count, self.expected, self.opening_balance, self.events
        )
    }
}

/// Every target whose `retry_count` differs from opening balance + events.
pub async fn count_drift(conn: &mut PgConnection) -> Result<Vec<CountDrift>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<Uuid>, i32, i64, i32, i64)> = sqlx::query_as(
        "SELECT job_id, job_variants_id, retry_count, expected, opening_balance, events
           FROM retry_counts_drift()
          ORDER BY job_id, job_variants_id NULLS FIRST",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(job_id, job_variants_id, retry_count, expected, opening_balance, events)| {
                CountDrift {
                    target: Target::from_columns(job_id, job_variants_id),
                    retry_count,
                    expected,
                    opening_balance,
                    events,
                }
            },
        )
        .collect())
}

/// Resets every `retry_count` to opening balance + the whole log; returns the rows changed.
///
/// Takes a SHARE lock on `retry_history` first: appends wait until the transaction ends, so
/// none can commit between the read of the log and the write of the counts (a concurrent +1
/// would otherwise be overwritten by the stale total).
pub async fn rebuild_retry_counts(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    sqlx::query("LOCK TABLE retry_history IN SHARE MODE")
        .execute(&mut **tx)
        .await?;
    sqlx::query_scalar("SELECT retry_counts_rebuild()")
        .fetch_one(&mut **tx)
        .await
}
