//! Read-only audit and trend queries, at the end of the flow (retry → store (log + inline
//! projection) → projector → report/http): what `retrylog report` shows, as typed rows
//! (printing is the command's job, `cmd/report.rs`).
//!
//! Where each report reads (retry → log + `retry_count` → rollup → here):
//!
//! - `top_jobs`, `top_variants`, `stats`, `alerts` (`audit.rs`) read the `retry_count`
//!   columns, the inline projection that is never behind the log, through the indexes the
//!   original change defined.
//! - `trend` (`trend.rs`) reads the asynchronous rollup (`retry_rollup`,
//!   `retry_rollup_created`) and `outcomes` (`outcomes.rs`) the outcomes' rollup
//!   (`retry_outcome_rollup`), which the projector keeps in the same batches; the command first
//!   brings both up to date with [`bring_rollup_up_to_date`].
//! - With [`Moment::AsOf`](crate::window::Moment::AsOf) every report is reconstructed from the
//!   log instead: a target's count as of T is its opening balance plus its events recorded at
//!   or before T, targets created after T are left out, and status, step and `updated_at` are
//!   today's (the pipeline tables keep no history of them).
//!
//! Every time a user gives is parsed by [`crate::window`] and bound as a parameter.

mod audit;
mod outcomes;
mod trend;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::error::CallerMistake;
use crate::window::WindowError;

pub use audit::{
    alerts, stats, top_jobs, top_variants, Alert, AlertWhy, KindStats, TopJob, TopVariant,
};
pub use outcomes::{outcomes, OutcomeGroupBy, OutcomeRow, Outcomes, OutcomesQuery, OutcomesSource};
pub use trend::{
    bring_rollup_up_to_date, check_window, trend, Bucket, GroupBy, Trend, TrendQuery, TrendRow,
    TrendSource, MAX_BUCKETS, NO_RETRIES, NO_VALUE,
};

/// Why a report could not answer.
#[derive(Debug, Error)]
pub enum ReportError {
    /// A time flag is invalid, or two contradict each other (exit code 2).
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The trend window holds more buckets than a report shows (exit code 2).
    #[error(
        "the window from {from} holds {buckets} {bucket} buckets, more than {MAX_BUCKETS}: \
         use a wider --bucket or a shorter --since"
    )]
    TooManyBuckets {
        from: DateTime<Utc>,
        buckets: i64,
        bucket: Bucket,
    },
    /// The report would need events that were archived out of the log (`retrylog
    /// archive`): answering from what is left would be a wrong number (exit code 2).
    #[error(
        "{what} needs events recorded before {horizon}, which were archived (the log's events \
         recorded from {archived_from} to {horizon} are in archive files, retry_archive lists \
         them): ask for a time from {horizon} on"
    )]
    Archived {
        what: &'static str,
        archived_from: DateTime<Utc>,
        horizon: DateTime<Utc>,
    },
    /// Anything else: the database failed, not the input.
    #[error("database error while reading a report")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for ReportError {
    fn is_caller_mistake(&self) -> bool {
        !matches!(self, ReportError::Database(_))
    }
}

/// Refuses a report read from the log (`--as-of`) that needs the events recorded from
/// `needs_from` on, when some of those were archived: the log no longer holds them.
async fn ensure_in_log(
    conn: &mut sqlx::PgConnection,
    what: &'static str,
    needs_from: DateTime<Utc>,
) -> Result<(), ReportError> {
    match crate::archive::horizon(conn).await? {
        Some((archived_from, horizon)) if needs_from < horizon => Err(ReportError::Archived {
            what,
            archived_from,
            horizon,
        }),
        _ => Ok(()),
    }
}
