//! The targets list, at the reading end of the flow (retry → store (log + inline projection) →
//! projector → report/http): every job and variant with at least one retry in the log, each
//! with its last retry, narrowed by state and by the last retry's facts, one keyset page at a
//! time. `retrylog targets`, `GET /api/v1/targets` and the dashboard's Targets page all read
//! it through [`page`].
//!
//! The states reuse the definitions they name rather than repeat them: `stuck` is
//! [`Scenario::candidates_sql`], the watchdog's own detection; `needs_intervention` is an open
//! note (`retry_intervention` at the target's current count), as `report alerts` reads it;
//! `retrying` is a row in `retry_open`; `recovered` and `gave_up` are the last retry's row in
//! `retry_outcome`.
//!
//! Paging is by keyset, never by offset: a page asks for the rows after (or before) the sort key
//! of the row it ended on, so a page costs the same however deep it is, and rows appended
//! between two fetches neither repeat nor shift the rows not yet shown. A target retried while
//! someone pages moves to the front of the last-retry order (its key changed): it is shown at
//! most once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::config::Steps;
use crate::error::CallerMistake;
use crate::event::RetryReason;
use crate::recovery::Scenario;

/// Matches are counted exactly up to this many; beyond it the count says "more than".
pub const COUNT_BOUND: i64 = 1_000;

/// Rows a page holds unless asked otherwise, and at most.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// Which targets a `state` filter keeps.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    strum::Display,
    strum::AsRefStr,
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum State {
    /// The target's row is `failed`.
    Failed,
    /// The target's row is `running`.
    Running,
    /// One of the watchdog's scenarios would pick it up now.
    Stuck,
    /// Its last retry is open: no result known yet (a row in `retry_open`).
    Retrying,
    /// The retry limit stopped it and no retry has changed its count since (`report alerts`).
    NeedsIntervention,
    /// Its last retry's outcome is recovered.
    Recovered,
    /// Its last retry's outcome is gave_up.
    GaveUp,
}

/// A job or a variant.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    strum::Display,
    strum::AsRefStr,
    strum::EnumString,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Job,
    Variant,
}

/// The order of the rows; both descending.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, strum::Display, strum::AsRefStr,
)]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Sort {
    /// Most recent last retry first; ties by the retry's seq.
    #[default]
    LastRetry,
    /// Most retried first; ties by the target's id.
    RetryCount,
}

/// What a page narrows the targets to; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub state: Option<State>,
    pub kind: Option<Kind>,
    /// The last retry's step (exact).
    pub step: Option<String>,
    /// The last retry's reason.
    pub reason: Option<RetryReason>,
    /// The last retry's `detail.scenario` (exact).
    pub scenario: Option<String>,
    /// The last retry's actor (exact).
    pub actor: Option<String>,
    /// The last retry occurred at or after / at or before.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// At least this many retries (the target's `retry_count`).
    pub min_retries: Option<i32>,
    /// Text in the last retry's `detail.error`, `detail.message` or `detail.note`
    /// (case-insensitive substring).
    pub q: Option<String>,
    /// Only these targets (job or variant ids): a selection of rows, as a bulk recovery
    /// narrows its filter to the rows an operator ticked. Empty: no narrowing.
    pub ids: Vec<Uuid>,
}

/// What `stuck` needs to know: the watchdog's steps and its stuck_after.
#[derive(Debug, Clone)]
pub struct StuckRule {
    pub steps: Steps,
    pub stuck_after: std::time::Duration,
}

/// Where a page starts: the sort key of the row the previous page ended on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
pub enum Cursor {
    /// After/before this last retry (its time, then its seq).
    LastRetry {
        /// The last retry's occurred_at.
        t: DateTime<Utc>,
        /// Its seq.
        n: i64,
    },
    /// After/before this count, then this target id.
    RetryCount {
        /// The target's retry_count.
        c: i32,
        /// The target's id.
        id: Uuid,
    },
}

impl Cursor {
    /// The opaque text a URL carries: base64url of the JSON.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serialises"))
    }

    /// Reads a cursor; the error is clap's value message (the flag names itself).
    pub fn parse(text: &str) -> Result<Cursor, String> {
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                "not a cursor this server gave out (copy the `next` or `previous` value whole)"
                    .to_string()
            })
    }

    fn sort(&self) -> Sort {
        match self {
            Cursor::LastRetry { .. } => Sort::LastRetry,
            Cursor::RetryCount { .. } => Sort::RetryCount,
        }
    }
}

/// Which page.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    First,
    /// The rows after this key (the next page).
    After(Cursor),
    /// The rows before this key (the previous page).
    Before(Cursor),
}

/// Why a page cannot be read as asked: always the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// A cursor from a listing in another order.
    #[error(
        "invalid {flag}: the cursor is for sort={cursor}, this listing is sort={sort}; start \
         again without {flag}"
    )]
    CursorForOtherSort {
        flag: &'static str,
        cursor: Sort,
        sort: Sort,
    },
}

impl CallerMistake for TargetsError {
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// One target and its last retry.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TargetRow {
    /// `job` or `variant`.
    pub kind: String,
    /// The job id or the variant id, whole.
    pub id: Uuid,
    /// The job (itself for a job).
    pub job_id: Uuid,
    /// The target's row today.
    pub status: String,
    pub step: Option<String>,
    pub retry_count: i32,
    /// The last retry: its seq, attempt, reason, step, detail, outcome (`None` while open)
    /// and time. The attempt is what a bulk recovery's preview saw: the recovery expects the
    /// next one, so a retry recorded in between makes it skip the target.
    pub last_seq: i64,
    pub last_attempt: i32,
    pub last_reason: String,
    pub last_step: Option<String>,
    pub last_detail: serde_json::Value,
    pub last_outcome: Option<String>,
    pub last_retry_at: DateTime<Utc>,
}

impl TargetRow {
    /// The last retry's why, in the words of every listing (`crate::why`).
    pub fn why(&self) -> String {
        let reason = RetryReason::parse(&self.last_reason).expect("the log holds known reasons");
        crate::why::why(reason, self.last_step.as_deref(), &self.last_detail)
    }

    fn cursor(&self, sort: Sort) -> Cursor {
        match sort {
            Sort::LastRetry => Cursor::LastRetry {
                t: self.last_retry_at,
                n: self.last_seq,
            },
            Sort::RetryCount => Cursor::RetryCount {
                c: self.retry_count,
                id: self.id,
            },
        }
    }
}

/// A page of targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<TargetRow>,
    /// The cursor of the next page (`after`), `None` at the end.
    pub next: Option<String>,
    /// The cursor of the previous page (`before`), `None` on the first.
    pub previous: Option<String>,
    /// How many targets match, exact up to [`COUNT_BOUND`].
    pub count: i64,
    /// False when there are more than [`COUNT_BOUND`] (`count` is then the bound).
    pub count_exact: bool,
}

/// The page of targets `filter` keeps, in `sort` order, at `position`.
pub async fn page(
    conn: &mut PgConnection,
    filter: &Filter,
    stuck: &StuckRule,
    sort: Sort,
    position: &Position,
    limit: i64,
) -> Result<Page, anyhow::Error> {
    let (cursor, forward) = match position {
        Position::First => (None, true),
        Position::After(cursor) => (Some(("--after", cursor)), true),
        Position::Before(cursor) => (Some(("--before", cursor)), false),
    };
    if let Some((flag, cursor)) = cursor {
        if cursor.sort() != sort {
            return Err(TargetsError::CursorForOtherSort {
                flag,
                cursor: cursor.sort(),
                sort,
            }
            .into());
        }
    }
    let cursor = cursor.map(|(_, cursor)| cursor);

    let mut query = QueryBuilder::<Postgres>::new("");
    push_matches(&mut query, filter, stuck, sort, cursor, forward);
    query.push(order_by(sort, forward));
    query.push(" LIMIT ").push_bind(limit + 1);
    let mut rows: Vec<TargetRow> = query.build_query_as().fetch_all(&mut *conn).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let (next, previous) = if forward {
        let previous = match position {
            Position::After(_) => rows.first().map(|row| row.cursor(sort)),
            _ => None,
        };
        let next = more
            .then(|| rows.last().map(|row| row.cursor(sort)))
            .flatten();
        (next, previous)
    } else {
        rows.reverse();
        let previous = more
            .then(|| rows.first().map(|row| row.cursor(sort)))
            .flatten();
        (rows.last().map(|row| row.cursor(sort)), previous)
    };

    // The count reads at most one row past the bound, without order (an ORDER BY here made
    // the planner re-read the stuck candidates per row: minutes). Each match costs a few index
    // probes, so the bound is what keeps it affordable; see docs/performance.md, "Targets".
    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (");
    push_matches(&mut count, filter, stuck, sort, None, true);
    count.push(" LIMIT ").push_bind(COUNT_BOUND + 1).push(") m");
    let counted: i64 = count.build_query_scalar().fetch_one(&mut *conn).await?;

    Ok(Page {
        rows,
        next: next.map(|cursor| cursor.encode()),
        previous: previous.map(|cursor| cursor.encode()),
        count: counted.min(COUNT_BOUND),
        count_exact: counted <= COUNT_BOUND,
    })
}

/// The sort key's ORDER BY: descending for a next page, ascending to read a previous one.
fn order_by(sort: Sort, forward: bool) -> String {
    let direction = if forward { "DESC" } else { "ASC" };
    match sort {
        Sort::LastRetry => format!(" ORDER BY h.occurred_at {direction}, h.seq {direction}"),
        Sort::RetryCount => format!(" ORDER BY t.retry_count {direction}, t.id {direction}"),
    }
}

/// The matching targets, as a SELECT of [`TargetRow`]'s columns over `h` (the last retry), `t`
/// (the target) and `o` (the last retry's outcome), narrowed past `cursor` (forward: below it).
/// Only the filters given become SQL, so each combination gets a plan of its own.
fn push_matches(
    query: &mut QueryBuilder<'_, Postgres>,
    filter: &Filter,
    stuck: &StuckRule,
    sort: Sort,
    cursor: Option<&Cursor>,
    forward: bool,
) {
    if filter.state == Some(State::Stuck) {
        // The scenarios' conditions read $1 (the steps) and $2 (stuck_after): bound first, so
        // they get those numbers. The candidates are computed once, before the page's scan.
        query
            .push("WITH stuck_rule AS (SELECT ")
            .push_bind(stuck.steps.names().to_vec())
            .push("::text[] AS steps, ")
            .push_bind(stuck.stuck_after.as_secs_f64())
            .push(format!(
                "::float8 AS seconds),
                 stuck AS MATERIALIZED (
                     SELECT CASE WHEN c.job_variants_id IS NULL THEN 'job' ELSE 'variant' END
                                AS kind,
                            coalesce(c.job_variants_id, c.job_id) AS id
                       FROM ({}) c) ",
                Scenario::candidates_sql()
            ));
    }
    const COLUMNS: &str = "SELECT t.kind, t.id, t.job_id, t.status, t.current_step AS step,
                t.retry_count, h.seq AS last_seq, h.attempt AS last_attempt,
                h.reason::text AS last_reason, h.step AS last_step, h.detail AS last_detail,
                o.outcome::text AS last_outcome, h.occurred_at AS last_retry_at";
    let beyond = if forward { "<" } else { ">" };
    match sort {
        Sort::LastRetry => {
            // Driven by the log in time order (retry_history_occurred_at_seq): each retry that
            // is the latest of its stream, joined to its target by primary key.
            query.push(COLUMNS).push(
                " FROM retry_history h
                  CROSS JOIN LATERAL (
                      SELECT 'job'::text AS kind, j.job_id AS id, j.job_id, j.status,
                             j.current_step, j.retry_count
                        FROM jobs j WHERE h.job_variants_id IS NULL AND j.job_id = h.job_id
                      UNION ALL
                      SELECT 'variant', v.job_variants_id, v.job_id, v.status, v.current_step,
                             v.retry_count
                        FROM jobs_variants v WHERE v.job_variants_id = h.job_variants_id) t
                  LEFT JOIN retry_outcome o ON o.seq = h.seq
                 WHERE NOT EXISTS (
                       SELECT 1 FROM retry_history n
                        WHERE n.job_id = h.job_id AND n.attempt > h.attempt
                          AND (n.job_variants_id = h.job_variants_id
                               OR (n.job_variants_id IS NULL AND h.job_variants_id IS NULL)))",
            );
            if let Some(Cursor::LastRetry { t, n }) = cursor {
                query
                    .push(format!(" AND (h.occurred_at, h.seq) {beyond} ("))
                    .push_bind(*t)
                    .push(", ")
                    .push_bind(*n)
                    .push(")");
            }
            match filter.kind {
                Some(Kind::Job) => query.push(" AND h.job_variants_id IS NULL"),
                Some(Kind::Variant) => query.push(" AND h.job_variants_id IS NOT NULL"),
                None => query,
            };
            if let Some(min) = filter.min_retries {
                query.push(" AND t.retry_count >= ").push_bind(min);
            }
        }
        Sort::RetryCount => {
            // Driven by the targets in count order (the (retry_count, id) indexes, merged),
            // each joined to its latest retry through the stream key.
            let target =
                |query: &mut QueryBuilder<'_, Postgres>, kind: Kind, table: &str, id: &str| {
                    query.push(format!(
                        "SELECT '{kind}'::text AS kind, {id} AS id, job_id, status, current_step,
                            retry_count FROM {table} WHERE retry_count > 0"
                    ));
                    if let Some(min) = filter.min_retries {
                        query.push(" AND retry_count >= ").push_bind(min);
                    }
                    // A selection is read by primary key, not found in a scan.
                    if !filter.ids.is_empty() {
                        query
                            .push(format!(" AND {id} = ANY("))
                            .push_bind(filter.ids.clone())
                            .push(")");
                    }
                    if let Some(Cursor::RetryCount { c, id: after }) = cursor {
                        query
                            .push(format!(" AND (retry_count, {id}) {beyond} ("))
                            .push_bind(*c)
                            .push(", ")
                            .push_bind(*after)
                            .push(")");
                    }
                };
            query.push(COLUMNS).push(" FROM (");
            match filter.kind {
                Some(Kind::Job) => target(query, Kind::Job, "jobs", "job_id"),
                Some(Kind::Variant) => {
                    target(query, Kind::Variant, "jobs_variants", "job_variants_id")
                }
                None => {
                    target(query, Kind::Job, "jobs", "job_id");
                    query.push(" UNION ALL ");
                    target(query, Kind::Variant, "jobs_variants", "job_variants_id");
                }
            }
            query.push(
                ") t
                  CROSS JOIN LATERAL (
                      SELECT * FROM retry_history l
                       WHERE l.job_id = t.job_id
                         AND (l.job_variants_id = t.id
                              OR (t.kind = 'job' AND l.job_variants_id IS NULL))
                       ORDER BY l.attempt DESC LIMIT 1) h
                  LEFT JOIN retry_outcome o ON o.seq = h.seq
                 WHERE true",
            );
        }
    }
    push_filters(query, filter);
}

/// The conditions on the last retry and the state, common to both orders.
fn push_filters(query: &mut QueryBuilder<'_, Postgres>, filter: &Filter) {
    if let Some(step) = &filter.step {
        query.push(" AND h.step = ").push_bind(step.clone());
    }
    if let Some(reason) = filter.reason {
        query
            .push(" AND h.reason = ")
            .push_bind(reason.as_ref().to_string())
            .push("::retry_reason");
    }
    if let Some(scenario) = &filter.scenario {
        query
            .push(" AND h.detail->>'scenario' = ")
            .push_bind(scenario.clone());
    }
    if let Some(actor) = &filter.actor {
        query.push(" AND h.actor = ").push_bind(actor.clone());
    }
    if let Some(since) = filter.since {
        query.push(" AND h.occurred_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND h.occurred_at <= ").push_bind(until);
    }
    if let Some(q) = &filter.q {
        // A substring, not a pattern: the user's % and _ are literal.
        let pattern = format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        query
            .push(
                " AND concat_ws(' ', h.detail->>'error', h.detail->>'message',
                                h.detail->>'note') ILIKE ",
            )
            .push_bind(pattern);
    }
    if !filter.ids.is_empty() {
        query
            .push(" AND t.id = ANY(")
            .push_bind(filter.ids.clone())
            .push(")");
    }
    let Some(state) = filter.state else {
        return;
    };
    query.push(match state {
        State::Failed => " AND t.status = 'failed'",
        State::Running => " AND t.status = 'running'",
        State::Retrying => " AND EXISTS (SELECT 1 FROM retry_open r WHERE r.seq = h.seq)",
        State::Recovered => " AND o.outcome = 'recovered'",
        State::GaveUp => " AND o.outcome = 'gave_up'",
        // An open note: the limit noted the target at the count it still has.
        State::NeedsIntervention => {
            " AND EXISTS (SELECT 1 FROM retry_intervention i
                           WHERE i.job_id = t.job_id AND i.retry_count = t.retry_count
                             AND (i.job_variants_id = t.id
                                  OR (t.kind = 'job' AND i.job_variants_id IS NULL)))"
        }
        State::Stuck => " AND (t.kind, t.id) IN (SELECT s.kind, s.id FROM stuck s)",
    });
}
