//! The audit reports, at the end of the flow (retry → store (log + inline projection) →
//! projector → report/http): top jobs and variants, stats and alerts, read from the
//! `retry_count` columns the append keeps in its own transaction, or as of T from the log.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::ReportError;
use crate::window::Moment;

// The two pipeline tables as a report sees them. Every report query binds the as-of instant
// as $1 (NULL for today) and selects from one of these, so a report is written once and the
// live form still plans onto the retry_count indexes (the subquery is flattened).

/// `jobs` today.
const JOBS_NOW: &str = "SELECT job_id, status, current_step, retry_count, created_at, updated_at
       FROM jobs";

/// `jobs` as of $1: opening balance + job-level events recorded at or before $1 (those
/// archived counted by the stream's base: [`in_log`] refuses a $1 before the archive
/// horizon), and only jobs created by then. Reads the log up to $1 (it has no index on recorded_at).
const JOBS_AS_OF: &str = "SELECT j.job_id, j.status, j.current_step,
            (coalesce(o.balance, 0) + coalesce(b.attempt, 0) + coalesce(e.events, 0))::integer
                AS retry_count,
            j.created_at, j.updated_at
       FROM jobs j
       LEFT JOIN retry_opening_balance o
              ON o.job_id = j.job_id AND o.job_variants_id IS NULL
       LEFT JOIN retry_stream_base b
              ON b.job_id = j.job_id AND b.job_variants_id IS NULL
       LEFT JOIN (SELECT job_id, count(*) AS events FROM retry_history
                   WHERE job_variants_id IS NULL AND recorded_at <= $1
                   GROUP BY job_id) e ON e.job_id = j.job_id
      WHERE j.created_at <= $1";

/// `jobs_variants` today.
const VARIANTS_NOW: &str = "SELECT job_variants_id, job_id, creation_order, status, current_step,
            retry_count, created_at, updated_at
       FROM jobs_variants";

/// `jobs_variants` as of $1 (see [`JOBS_AS_OF`]).
const VARIANTS_AS_OF: &str = "SELECT v.job_variants_id, v.job_id, v.creation_order, v.status,
            v.current_step,
            (coalesce(o.balance, 0) + coalesce(b.attempt, 0) + coalesce(e.events, 0))::integer
                AS retry_count,
            v.created_at, v.updated_at
       FROM jobs_variants v
       LEFT JOIN retry_opening_balance o ON o.job_variants_id = v.job_variants_id
       LEFT JOIN retry_stream_base b ON b.job_variants_id = v.job_variants_id
       LEFT JOIN (SELECT job_variants_id, count(*) AS events FROM retry_history
                   WHERE job_variants_id IS NOT NULL AND recorded_at <= $1
                   GROUP BY job_variants_id) e ON e.job_variants_id = v.job_variants_id
      WHERE v.created_at <= $1";

/// Refuses an as-of moment whose counts would need archived events (see
/// [`super::ensure_in_log`]); today's counts need no log.
async fn in_log(
    conn: &mut PgConnection,
    what: &'static str,
    moment: Moment,
) -> Result<(), ReportError> {
    match moment {
        Moment::Now(_) => Ok(()),
        Moment::AsOf(at) => super::ensure_in_log(conn, what, at).await,
    }
}

fn jobs_source(moment: Moment) -> &'static str {
    match moment {
        Moment::Now(_) => JOBS_NOW,
        Moment::AsOf(_) => JOBS_AS_OF,
    }
}

fn variants_source(moment: Moment) -> &'static str {
    match moment {
        Moment::Now(_) => VARIANTS_NOW,
        Moment::AsOf(_) => VARIANTS_AS_OF,
    }
}

/// A row of `report top-jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TopJob {
    pub job_id: Uuid,
    pub status: String,
    pub current_step: Option<String>,
    /// Today's count, or the count as of the report's moment.
    pub retry_count: i32,
    pub created_at: DateTime<Utc>,
    /// Breaks ties: the most recently updated job first.
    pub updated_at: DateTime<Utc>,
}

/// Jobs with retry_count > 0, most retried first; ties go to the most recently updated.
pub async fn top_jobs(
    conn: &mut PgConnection,
    limit: i64,
    moment: Moment,
) -> Result<Vec<TopJob>, ReportError> {
    in_log(&mut *conn, "report top-jobs --as-of", moment).await?;
    let sql = format!(
        "SELECT job_id, status, current_step, retry_count, created_at, updated_at
           FROM ({source}) j
          WHERE retry_count > 0
          ORDER BY retry_count DESC, updated_at DESC, job_id
          LIMIT $2",
        source = jobs_source(moment)
    );
    Ok(sqlx::query_as(&sql)
        .bind(moment.as_of())
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// A row of `report top-variants`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TopVariant {
    pub job_variants_id: Uuid,
    pub job_id: Uuid,
    pub creation_order: i32,
    pub status: String,
    pub current_step: Option<String>,
    /// Today's count, or the count as of the report's moment.
    pub retry_count: i32,
    /// The variant's job, today (`None` if its row is gone).
    pub job_status: Option<String>,
    pub job_current_step: Option<String>,
    /// Breaks ties: the most recently updated variant first.
    pub updated_at: DateTime<Utc>,
}

/// Variants with retry_count > 0 with their job's status and step, most retried first; ties
/// go to the most recently updated.
pub async fn top_variants(
    conn: &mut PgConnection,
    limit: i64,
    moment: Moment,
) -> Result<Vec<TopVariant>, ReportError> {
    in_log(&mut *conn, "report top-variants --as-of", moment).await?;
    let sql = format!(
        "SELECT v.job_variants_id, v.job_id, v.creation_order, v.status, v.current_step,
                v.retry_count, j.status AS job_status, j.current_step AS job_current_step,
                v.updated_at
           FROM ({source}) v
           LEFT JOIN jobs j ON j.job_id = v.job_id
          WHERE v.retry_count > 0
          ORDER BY v.retry_count DESC, v.updated_at DESC, v.job_variants_id
          LIMIT $2",
        source = variants_source(moment)
    );
    Ok(sqlx::query_as(&sql)
        .bind(moment.as_of())
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// A row of `report stats`: the targets of one kind created in the window.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct KindStats {
    /// `job` or `variant`.
    pub kind: String,
    pub total: i64,
    /// retry_count 0 (or below, which only a hand-edited count can be).
    pub no_retry: i64,
    pub has_retry: i64,
    /// retry_count ≥ the `high` threshold.
    pub high_retry: i64,
    /// 0, not NULL, when the window holds no target, like every other column.
    pub avg_retry_count: f64,
    /// 0 when the window holds no target.
    pub max_retry_count: i32,
}

/// Jobs and variants created at or after `since` (and, as of T, at or before T): always one
/// row for each kind, jobs first.
pub async fn stats(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    high: i32,
    moment: Moment,
) -> Result<Vec<KindStats>, ReportError> {
    in_log(&mut *conn, "report stats --as-of", moment).await?;
    let aggregates = "count(*) AS total,
            count(*) FILTER (WHERE retry_count <= 0) AS no_retry,
            count(*) FILTER (WHERE retry_count > 0) AS has_retry,
            count(*) FILTER (WHERE retry_count >= $3) AS high_retry,
            coalesce(avg(retry_count), 0)::float8 AS avg_retry_count,
            coalesce(max(retry_count), 0) AS max_retry_count";
    let sql = format!(
        "SELECT 'job' AS kind, {aggregates} FROM ({jobs}) t WHERE created_at >= $2
         UNION ALL
         SELECT 'variant', {aggregates} FROM ({variants}) t WHERE created_at >= $2",
        jobs = jobs_source(moment),
        variants = variants_source(moment),
    );
    let mut rows: Vec<KindStats> = sqlx::query_as(&sql)
        .bind(moment.as_of())
        .bind(since)
        .bind(high)
        .fetch_all(conn)
        .await?;
    rows.sort_by(|a, b| a.kind.cmp(&b.kind));
    Ok(rows)
}

/// Why a target is on the alert list.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    strum::Display,
    strum::AsRefStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AlertWhy {
    /// The watchdog stopped at the retry limit and noted it (`retry_intervention`), and no
    /// retry has changed its count since: a human has to look. Listed whatever its age.
    NeedsIntervention,
    /// Running or failed with retry_count ≥ `--min`, updated within the window.
    HighRetry,
}

/// A row of `report alerts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// `job` or `variant`.
    pub kind: String,
    /// The job id or the variant id.
    pub id: Uuid,
    /// The job (itself for a job).
    pub job_id: Uuid,
    pub status: String,
    pub current_step: Option<String>,
    pub retry_count: i32,
    pub updated_at: DateTime<Utc>,
    pub why: AlertWhy,
}

/// Targets that need a human (an open intervention note), then jobs and variants that are
/// `running` or `failed` with retry_count ≥ `min` and updated at or after `updated_since`;
/// most retried first, then most recently updated. A target that is both is listed once, as
/// needing intervention.
///
/// As of T the count is T's, but status and `updated_at` are today's: a target listed at T is
/// listed again unless it has since left running/failed (`updated_at` only grows, so the
/// window's lower bound keeps it, and there is no upper bound). A note counts as of T when it
/// was noted by T and the target's count at T is still the one it was noted at.
pub async fn alerts(
    conn: &mut PgConnection,
    min: i32,
    updated_since: DateTime<Utc>,
    moment: Moment,
) -> Result<Vec<Alert>, ReportError> {
    in_log(&mut *conn, "report alerts --as-of", moment).await?;
    // One branch per kind and reason. On today's counts `status IN (...) AND retry_count >= $2`
    // is a range of the (status, retry_count) indexes; the notes drive their branches (a few
    // rows, each joined to its target by primary key).
    let high_retry = "t.status IN ('running', 'failed') AND t.retry_count >= $2
                      AND t.updated_at >= $3";
    let noted = "JOIN retry_intervention i
                   ON i.retry_count = t.retry_count AND ($1::timestamptz IS NULL OR i.noted_at <= $1)";
    let sql = format!(
        "SELECT 'job' AS kind, t.job_id AS id, t.job_id, t.status, t.current_step,
                t.retry_count, t.updated_at, 'needs_intervention' AS why
           FROM ({jobs}) t {noted} AND i.job_id = t.job_id AND i.job_variants_id IS NULL
         UNION ALL
         SELECT 'variant', t.job_variants_id, t.job_id, t.status, t.current_step,
                t.retry_count, t.updated_at, 'needs_intervention'
           FROM ({variants}) t {noted} AND i.job_id = t.job_id
                                       AND i.job_variants_id = t.job_variants_id
         UNION ALL
         SELECT 'job', t.job_id, t.job_id, t.status, t.current_step, t.retry_count,
                t.updated_at, 'high_retry'
           FROM ({jobs}) t WHERE {high_retry}
         UNION ALL
         SELECT 'variant', t.job_variants_id, t.job_id, t.status, t.current_step,
                t.retry_count, t.updated_at, 'high_retry'
           FROM ({variants}) t WHERE {high_retry}",
        jobs = jobs_source(moment),
        variants = variants_source(moment),
    );
    type Row = (
        String,
        Uuid,
        Uuid,
        String,
        Option<String>,
        i32,
        DateTime<Utc>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(moment.as_of())
        .bind(min)
        .bind(updated_since)
        .fetch_all(conn)
        .await?;
    let mut alerts: Vec<Alert> = rows
        .into_iter()
        .map(
            |(kind, id, job_id, status, current_step, retry_count, updated_at, why)| Alert {
                kind,
                id,
                job_id,
                status,
                current_step,
                retry_count,
                updated_at,
                why: why.parse().expect("the query names an AlertWhy"),
            },
        )
        .collect();
    alerts.sort_by(|a, b| {
        (
            a.why,
            std::cmp::Reverse(a.retry_count),
            std::cmp::Reverse(a.updated_at),
            &a.kind,
            a.id,
        )
            .cmp(&(
                b.why,
                std::cmp::Reverse(b.retry_count),
                std::cmp::Reverse(b.updated_at),
                &b.kind,
                b.id,
            ))
    });
    // A target needing intervention is not listed again for its high count: the sort put
    // its needs_intervention row before its high_retry row, whatever order the query gave.
    let mut listed = HashSet::new();
    alerts.retain(|alert| listed.insert((alert.kind.clone(), alert.id)));
    Ok(alerts)
}
