//! Runs the projections in `projections/*.sql`: state derived from the log.
//!
//! Each file defines plain SQL functions (see the file's header). retrylog installs them on
//! every migrate; record_retry applies `retry_counts` (and keeps `retry_open`) inline, the
//! projector (`projector.rs`) applies `retry_rollup` and the outcomes' rollup asynchronously,
//! replay rebuilds and verify compares — all through the same SQL.

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
pub const PROJECTIONS: &[Projection] = &[
    Projection {
        name: "retry_counts",
        sql: include_str!("../projections/retry_counts.sql"),
    },
    Projection {
        name: "retry_rollup",
        sql: include_str!("../projections/retry_rollup.sql"),
    },
    Projection {
        name: "retry_outcomes",
        sql: include_str!("../projections/retry_outcomes.sql"),
    },
];

/// Looks a projection up by name, naming the known ones when there is no such projection.
pub fn find(name: &str) -> Result<&'static Projection, String> {
    PROJECTIONS
        .iter()
        .find(|projection| projection.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = PROJECTIONS.iter().map(|p| p.name).collect();
            let (last, others) = known.split_last().expect("there are projections");
            format!(
                "unknown projection \"{name}\" (expected {} or {last})",
                others.join(", ")
            )
        })
}

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
    let rows: Vec<DriftRow> = sqlx::query_as(
        "SELECT job_id, job_variants_id, retry_count, expected, opening_balance, events
           FROM retry_counts_drift()
          ORDER BY job_id, job_variants_id NULLS FIRST",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(CountDrift::from).collect())
}

/// Resets every drifted `retry_count` to opening balance + the whole log. Returns every
/// count that drifted, each with whether this pass wrote it.
///
/// Optimistic: a row whose count changed after the statement read it (an append committed
/// meanwhile) is skipped, not overwritten; [`crate::replay`] runs passes until nothing drifts.
pub async fn rebuild_retry_counts(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Vec<(CountDrift, bool)>, sqlx::Error> {
    let rows: Vec<DriftRow> = sqlx::query_as(
        "SELECT job_id, job_variants_id, retry_count, expected, opening_balance, events, written
           FROM retry_counts_rebuild()
          ORDER BY job_id, job_variants_id NULLS FIRST",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let written = row.written.unwrap_or(false);
            (row.into(), written)
        })
        .collect())
}

/// A row of `retry_counts_drift()` or `retry_counts_rebuild()`.
#[derive(sqlx::FromRow)]
struct DriftRow {
    job_id: Uuid,
    job_variants_id: Option<Uuid>,
    retry_count: i32,
    expected: i64,
    opening_balance: i32,
    events: i64,
    /// Only from `retry_counts_rebuild()`.
    #[sqlx(default)]
    written: Option<bool>,
}

impl From<DriftRow> for CountDrift {
    fn from(row: DriftRow) -> Self {
        CountDrift {
            target: Target::from_columns(row.job_id, row.job_variants_id),
            retry_count: row.retry_count,
            expected: row.expected,
            opening_balance: row.opening_balance,
            events: row.events,
        }
    }
}

/// The asynchronous rollup projection: its name and its row in `projection_checkpoint`.
pub const ROLLUP: &str = "retry_rollup";

/// A rollup row that differs from what the log says below the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollupDrift {
    /// The UTC hour of the row.
    pub hour: chrono::DateTime<chrono::Utc>,
    /// `job` or `variant`.
    pub kind: String,
    /// `None` for a row of targets created.
    pub reason: Option<String>,
    pub step: Option<String>,
    pub scenario: Option<String>,
    /// What the rollup holds (`None`: no row).
    pub stored: Option<i64>,
    /// What the log says (`None`: there should be no row); for targets created, what the
    /// pipeline's rows say.
    pub expected: Option<i64>,
    /// `missing from the rollup`, `not in the log`, `counts differ`, `catch-up cells differ`,
    /// `targets created not counted`.
    pub problem: String,
}

impl std::fmt::Display for RollupDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: Option<i64>| value.map_or("no row".to_string(), |n| n.to_string());
        let source = match self.reason {
            Some(_) => "the log says",
            None => "the pipeline's rows say",
        };
        write!(
            f,
            "retry_rollup {} {} reason={} step={} scenario={}: {} (stored {}, {source} {})",
            self.hour.format("%Y-%m-%d %H:00Z"),
            self.kind,
            self.reason.as_deref().unwrap_or("-"),
            self.step.as_deref().unwrap_or("-"),
            self.scenario.as_deref().unwrap_or("-"),
            self.problem,
            show(self.stored),
            show(self.expected),
        )
    }
}

/// The rollup's checkpoint: every event with `txid` below it is applied.
pub async fn rollup_position(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT position::text::bigint FROM projection_checkpoint WHERE projection = $1",
    )
    .bind(ROLLUP)
    .fetch_one(conn)
    .await
}

/// Every rollup row that differs from the log below `up_to`, from a week after the archive
/// horizon on (`retry_archive_horizon()`, migration 0019): the hours before it keep what the
/// archived events made them, and a day or week that began before it counts its first
/// retries with events the log no longer holds.
pub async fn rollup_drift(
    conn: &mut PgConnection,
    up_to: i64,
) -> Result<Vec<RollupDrift>, sqlx::Error> {
    type Row = (
        chrono::DateTime<chrono::Utc>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT hour, kind, reason::text, step, scenario, stored_retries, expected_retries,
                problem
           FROM retry_rollup_drift($1::bigint::text::xid8)
          WHERE hour >= retry_archive_horizon() + interval '7 days'
          ORDER BY 1, 2, 3, 4, 5",
    )
    .bind(up_to)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(hour, kind, reason, step, scenario, stored, expected, problem)| RollupDrift {
                hour,
                kind,
                reason,
                step,
                scenario,
                stored,
                expected,
                problem,
            },
        )
        .collect())
}

/// Empties the rollup and the outcomes' report projection (they share the checkpoint),
/// applies everything below the current horizon, moving the checkpoint there, and recounts
/// the targets created from the pipeline's rows; returns the number of events applied.
///
/// Locks the checkpoint row first, so a running projector waits instead of applying a batch
/// on top of the rebuild.
pub async fn rebuild_rollup(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT 1 FROM projection_checkpoint WHERE projection = $1 FOR UPDATE")
        .bind(ROLLUP)
        .execute(&mut **tx)
        .await?;
    let horizon: i64 = sqlx::query_scalar("SELECT retrylog_horizon()::text::bigint")
        .fetch_one(&mut **tx)
        .await?;
    let kept = ArchivedHours::keep(tx, "retry_rollup", "hour").await?;
    sqlx::query("SELECT retry_rollup_reset()")
        .execute(&mut **tx)
        .await?;
    let applied: i64 = sqlx::query_scalar("SELECT retry_rollup_apply('1', $1::bigint::text::xid8)")
        .bind(horizon)
        .fetch_one(&mut **tx)
        .await?;
    // The targets created, from every row of the pipeline (the reset emptied the window).
    sqlx::query("SELECT retry_rollup_count_created('0')")
        .execute(&mut **tx)
        .await?;
    kept.restore(tx).await?;
    rebuild_outcome_rollup(tx, horizon).await?;
    sqlx::query(
        "UPDATE projection_checkpoint
            SET position = $2::bigint::text::xid8, events_applied = $3, updated_at = now()
          WHERE projection = $1",
    )
    .bind(ROLLUP)
    .bind(horizon)
    .bind(applied)
    .execute(&mut **tx)
    .await?;
    Ok(applied)
}

/// Something derived from the outcomes (`projections/retry_outcomes.sql`) that differs from
/// what the log, the outcomes and the notes say, or an outcome that contradicts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeDrift {
    /// The target it is about; `None` for a row of the report's projection, which spans
    /// targets.
    pub target: Option<Target>,
    /// What is wrong, naming the event (seq, attempt) or the projection row.
    pub problem: String,
}

impl std::fmt::Display for OutcomeDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.target {
            Some(target) => write!(f, "{target}: {}", self.problem),
            None => write!(f, "{}", self.problem),
        }
    }
}

/// Outcomes that contradict the log or the notes, and retries followed by another without an
/// outcome (`retry_outcome_problems()`).
pub async fn outcome_problems(conn: &mut PgConnection) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<ProblemRow> = sqlx::query_as(
        "SELECT job_id, job_variants_id, problem FROM retry_outcome_problems() ORDER BY seq",
    )
    .fetch_all(conn)
    .await?;
    Ok(problem_drifts(rows))
}

/// A problem a check found, as (job_id, job_variants_id, problem): job_id NULL for one that
/// belongs to no target.
pub type ProblemRow = (Option<Uuid>, Option<Uuid>, String);

/// [`ProblemRow`]s as drifts of their targets: the one reading of every check that reports
/// its problems as text.
pub fn problem_drifts(rows: Vec<ProblemRow>) -> Vec<OutcomeDrift> {
    rows.into_iter()
        .map(|(job_id, job_variants_id, problem)| OutcomeDrift {
            target: job_id.map(|job_id| Target::from_columns(job_id, job_variants_id)),
            problem,
        })
        .collect()
}

/// A target's open retry as `retry_open` holds it and as the log and the outcomes say it
/// should be: (job_id, job_variants_id, the seq it holds, the seq it should hold).
pub type OpenRow = (Uuid, Option<Uuid>, Option<i64>, Option<i64>);

/// Rows of `retry_open` that differ from the latest undecided retry of each target.
pub async fn open_drift(conn: &mut PgConnection) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<OpenRow> = sqlx::query_as(
        "SELECT job_id, job_variants_id, stored_seq, expected_seq FROM retry_open_drift()
          ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await?;
    Ok(open_drifts(rows))
}

/// [`OpenRow`]s that differ, as the mismatches verify reports (plain and `--full` alike).
pub fn open_drifts(rows: Vec<OpenRow>) -> Vec<OutcomeDrift> {
    let seq = |seq: Option<i64>| seq.map_or("none".to_string(), |seq| format!("seq {seq}"));
    rows.into_iter()
        .map(|(job_id, job_variants_id, stored, expected)| OutcomeDrift {
            target: Some(Target::from_columns(job_id, job_variants_id)),
            problem: format!(
                "retry_open holds {}, the log and the outcomes say {}",
                seq(stored),
                seq(expected)
            ),
        })
        .collect()
}

/// Rows of the outcomes' report projection (`retry_outcome_rollup`,
/// `retry_outcome_recovery_time`) that differ from the log and the outcomes below `up_to` (the
/// rollup's checkpoint, which they share).
pub async fn outcome_rollup_drift(
    conn: &mut PgConnection,
    up_to: i64,
) -> Result<Vec<OutcomeDrift>, sqlx::Error> {
    let rows: Vec<(String, String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT tablename, key, stored, expected
           FROM retry_outcome_rollup_drift($1::bigint::text::xid8)
          ORDER BY 1, 2",
    )
    .bind(up_to)
    .fetch_all(conn)
    .await?;
    let show = |value: Option<i64>| value.map_or("no row".to_string(), |n| n.to_string());
    Ok(rows
        .into_iter()
        .map(|(table, key, stored, expected)| OutcomeDrift {
            target: None,
            problem: format!(
                "{table} {key}: stored {}, the log and the outcomes say {}",
                show(stored),
                show(expected)
            ),
        })
        .collect())
}

/// Rebuilds `retry_open` from the log and the outcomes; returns how many targets it corrected.
pub async fn rebuild_open(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT retry_open_rebuild()")
        .fetch_one(&mut **tx)
        .await
}

/// Empties the outcomes' report projection and applies everything below `up_to` again (the
/// rollup's checkpoint: the caller holds its row lock).
pub async fn rebuild_outcome_rollup(
    tx: &mut Transaction<'_, Postgres>,
    up_to: i64,
) -> Result<(), sqlx::Error> {
    let kept = [
        ArchivedHours::keep(tx, "retry_outcome_rollup", "hour").await?,
        ArchivedHours::keep(tx, "retry_outcome_recovery_time", "day").await?,
    ];
    sqlx::query("SELECT retry_outcome_rollup_reset()")
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT retry_outcome_rollup_apply('1', $1::bigint::text::xid8)")
        .bind(up_to)
        .execute(&mut **tx)
        .await?;
    for kept in kept {
        kept.restore(tx).await?;
    }
    Ok(())
}

/// A rollup's rows before the archive horizon (`retry_archive_horizon()`, migration 0019),
/// set aside while a rebuild empties the table and put back after it: the log no longer holds
/// the archived events those rows count, so a rebuild from the log would lose the archived
/// months from the trend. Nothing is set aside before any archive.
struct ArchivedHours {
    table: &'static str,
    column: &'static str,
}

impl ArchivedHours {
    async fn keep(
        tx: &mut Transaction<'_, Postgres>,
        table: &'static str,
        column: &'static str,
    ) -> Result<Self, sqlx::Error> {
        sqlx::query(&format!(
            "CREATE TEMP TABLE {table}_archived ON COMMIT DROP AS
             SELECT * FROM {table} WHERE {column} < retry_archive_horizon()"
        ))
        .execute(&mut **tx)
        .await?;
        Ok(ArchivedHours { table, column })
    }

    async fn restore(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let ArchivedHours { table, column } = self;
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE {column} < retry_archive_horizon()"
        ))
        .execute(&mut **tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {table} SELECT * FROM {table}_archived"
        ))
        .execute(&mut **tx)
        .await?;
        sqlx::query(&format!("DROP TABLE {table}_archived"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
