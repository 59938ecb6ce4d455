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
//! A target's last retry is its stream's head row (`retry_stream_head`: seq, attempt, reason,
//! step, scenario, time), read by key, with the event itself (its detail and actor) fetched by
//! seq from its partition; the log is never scanned. The stuck targets come from a census of
//! the detection ([`census`]), read a few at a time in the page's order.
//!
//! Paging is by keyset, never by offset: a page asks for the rows after (or before) the sort key
//! of the row it ended on, so a page costs the same however deep it is, and rows appended
//! between two fetches neither repeat nor shift the rows not yet shown. A target retried while
//! someone pages moves to the front of the last-retry order (its key changed): it is shown at
//! most once.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::config::Steps;
use crate::error::CallerMistake;
use crate::event::RetryReason;

pub mod census;
pub use census::StuckCensus;

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
#[derive(Debug, Clone, PartialEq)]
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

    /// Its stream, as (job_id, stream key): the variant's id, or the nil uuid for a job's
    /// own retries.
    fn target(&self) -> (Uuid, Uuid) {
        match self.kind.as_str() {
            "job" => (self.job_id, Uuid::nil()),
            _ => (self.job_id, self.id),
        }
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
    /// For `state=stuck`: when the stuck targets were detected (a census's time, or now).
    /// The rows are stuck now; the count is the detection's.
    pub stuck_as_of: Option<DateTime<Utc>>,
}

/// The page of targets `filter` keeps, in `sort` order, at `position`.
///
/// Two statements, the count first: it reads at most one match past [`COUNT_BOUND`], from
/// the smallest set a filter names (a state's own rows, the text index) or else from the head
/// rows in last-retry order. When that set held every match (the count is exact), the page
/// reads the same set and sorts what matched; otherwise there are more than the bound, and
/// the page walks its order's index from the cursor until the page is full.
///
/// With `spare`, a pool, a page whose rows do not depend on its count reads the two at once,
/// the count on an idle connection of the pool when it has one. `state=stuck` reads the
/// targets of a census instead (`stuck`: one taken now, or a server's shared one), a few at a
/// time in the page's order ([`census`]).
pub async fn page(
    conn: &mut PgConnection,
    spare: Option<&PgPool>,
    filter: &Filter,
    stuck: Stuck<'_>,
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
    let at = At {
        sort,
        cursor: cursor.map(|(_, cursor)| cursor),
        forward,
        position,
        limit,
    };
    let text_index = match &filter.q {
        Some(_) => text_index(conn).await?,
        None => false,
    };
    if filter.state != Some(State::Stuck) {
        return read(conn, spare, filter, text_index, &at).await;
    }
    let (census, shared) = match stuck {
        Stuck::Detect(rule) => (Arc::new(census::Census::take(conn, rule).await?), None),
        Stuck::Census { rule, census, pool } => {
            (census.get(pool, rule).await?, Some((census, rule)))
        }
    };
    let recheck = shared.map(|(_, rule)| rule);
    let (mut page, gone) = census::read(conn, filter, text_index, &census, &at, recheck).await?;
    if let Some((shared, _)) = shared {
        if !gone.is_empty() {
            shared.forget(&census, &gone).await;
        }
    }
    page.stuck_as_of = Some(census.taken_at);
    Ok(page)
}

/// Where `state=stuck` takes its targets from.
#[derive(Debug, Clone, Copy)]
pub enum Stuck<'a> {
    /// The watchdog's detection, run for this page: `retrylog targets`, a bulk recovery.
    Detect(&'a StuckRule),
    /// A census shared by a server's requests ([`StuckCensus`]), taken on `pool`; the rows
    /// a page shows are checked again.
    Census {
        rule: &'a StuckRule,
        census: &'a Arc<StuckCensus>,
        pool: &'a PgPool,
    },
}

/// Which page, in which order: what [`page`] was asked, its cursor checked.
struct At<'a> {
    sort: Sort,
    cursor: Option<&'a Cursor>,
    /// A next page (descending), or a previous one (read ascending, then turned).
    forward: bool,
    position: &'a Position,
    limit: i64,
}

impl At<'_> {
    /// The page of `rows` (read in the page's direction, at most `limit + 1`), with its
    /// cursors and the count given.
    fn page(&self, mut rows: Vec<TargetRow>, counted: i64) -> Page {
        let sort = self.sort;
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let (next, previous) = if self.forward {
            let previous = match self.position {
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
        Page {
            rows,
            next: next.map(|cursor| cursor.encode()),
            previous: previous.map(|cursor| cursor.encode()),
            count: counted.min(COUNT_BOUND),
            count_exact: counted <= COUNT_BOUND,
            stuck_as_of: None,
        }
    }
}

/// [`page`] for every state but `stuck`.
async fn read(
    conn: &mut PgConnection,
    spare: Option<&PgPool>,
    filter: &Filter,
    text_index: bool,
    at: &At<'_>,
) -> Result<Page, anyhow::Error> {
    let reads = Reads {
        filter,
        stuck: None,
        text_index,
    };
    let driver = reads.driver();
    // The walk of the order, unless the count turns out exact (then the driving set held
    // every match: it is read again and sorted).
    let ordered = match at.sort {
        Sort::LastRetry => Driver::Head,
        Sort::RetryCount => Driver::Targets,
    };
    // Whatever the count, the page walks the order when the driving set is the order's own.
    if driver == ordered || driver == Driver::Head {
        if let Some(mut other) = spare.and_then(PgPool::try_acquire) {
            let (counted, rows) = tokio::try_join!(
                count(&mut other, &reads, driver),
                ordered_rows(conn, &reads, ordered, at),
            )?;
            return Ok(at.page(rows, counted));
        }
    }
    let counted = count(conn, &reads, driver).await?;
    let walk = if counted <= COUNT_BOUND && driver != Driver::Head {
        driver
    } else {
        ordered
    };
    let rows = ordered_rows(conn, &reads, walk, at).await?;
    Ok(at.page(rows, counted))
}

/// How many targets `driver`'s statement keeps, up to one past the bound.
async fn count(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    driver: Driver,
) -> Result<i64, sqlx::Error> {
    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (SELECT 1");
    reads.push_from(&mut count, driver, None);
    reads.push_where(&mut count, driver, None);
    count.push(" LIMIT ").push_bind(COUNT_BOUND + 1).push(") m");
    count.build_query_scalar().fetch_one(&mut *conn).await
}

/// The rows of the page `at`, walking `walk`.
async fn ordered_rows(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    walk: Driver,
    at: &At<'_>,
) -> Result<Vec<TargetRow>, sqlx::Error> {
    let cursor = at.cursor.map(|cursor| (cursor, at.forward));
    let rows = if (walk, at.sort) == (Driver::Targets, Sort::RetryCount) {
        // In count order, the first `most` targets from the cursor are sorted before anything
        // is probed (`Driver::TargetsInOrder`). Too few rows back: either the targets ran out
        // (the page is complete) or the filters kept too few of them (read eight times as
        // many, and at last all).
        let mut most = Some((at.limit + 1) * 4);
        loop {
            let walk = Driver::TargetsInOrder { most };
            let rows = walk_rows(conn, reads, walk, at).await?;
            let Some(read) = most else { break rows };
            if rows.len() as i64 > at.limit || targets_from(conn, reads, cursor, read).await? < read
            {
                break rows;
            }
            most = (read < (at.limit + 1) * 256).then_some(read * 8);
        }
    } else {
        walk_rows(conn, reads, walk, at).await?
    };
    Ok(rows)
}

/// The rows of the page `at`, walking `walk`.
async fn walk_rows(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    walk: Driver,
    at: &At<'_>,
) -> Result<Vec<TargetRow>, sqlx::Error> {
    let mut query = rows_query(reads, walk, at.cursor.map(|cursor| (cursor, at.forward)));
    query.push(order_by(at.sort, at.forward, ""));
    query.push(" LIMIT ").push_bind(at.limit + 1);
    query.push(") p").push(order_by(at.sort, at.forward, "p."));
    query.build_query_as().fetch_all(&mut *conn).await
}

/// How many targets there are from the cursor in count order, up to `most`.
async fn targets_from(
    conn: &mut PgConnection,
    reads: &Reads<'_>,
    cursor: Option<(&Cursor, bool)>,
    most: i64,
) -> Result<i64, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new("SELECT count(*) FROM ");
    reads.push_targets_in_order(&mut query, cursor, Some(most));
    query.build_query_scalar().fetch_one(&mut *conn).await
}

/// The rows `walk` reads, from the cursor, before their ORDER BY and LIMIT; the caller
/// closes the inner query with `) p`.
fn rows_query<'q>(
    reads: &Reads<'_>,
    walk: Driver,
    cursor: Option<(&Cursor, bool)>,
) -> QueryBuilder<'q, Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(
        "SELECT p.*,
                (SELECT h.detail FROM retry_history h
                  WHERE h.seq = p.last_seq AND h.recorded_at = p.last_recorded_at)
                    AS last_detail,
                (SELECT o.outcome::text FROM retry_outcome o WHERE o.seq = p.last_seq)
                    AS last_outcome
           FROM (SELECT t.kind, t.id, t.job_id, t.status, t.current_step AS step,
                        t.retry_count, s.last_seq, s.attempt AS last_attempt,
                        s.last_reason::text AS last_reason, s.last_step,
                        s.last_occurred_at AS last_retry_at, s.last_recorded_at",
    );
    reads.push_from(&mut query, walk, cursor);
    reads.push_where(&mut query, walk, cursor);
    query
}

/// Of `targets` (some stuck ones), the rows the rest of `filter` keeps, in `sort` order.
async fn rows_among(
    conn: &mut PgConnection,
    filter: &Filter,
    text_index: bool,
    targets: &StuckTargets,
    sort: Sort,
) -> Result<Vec<TargetRow>, sqlx::Error> {
    let reads = Reads {
        filter,
        stuck: Some(targets),
        text_index,
    };
    let mut query = rows_query(&reads, Driver::Stuck, None);
    query.push(") p").push(order_by(sort, true, "p."));
    query.build_query_as().fetch_all(&mut *conn).await
}

/// Of `targets`, how many the rest of `filter` keeps, up to `bound + 1`.
async fn count_among(
    conn: &mut PgConnection,
    filter: &Filter,
    text_index: bool,
    targets: &StuckTargets,
    bound: i64,
) -> Result<i64, sqlx::Error> {
    let reads = Reads {
        filter,
        stuck: Some(targets),
        text_index,
    };
    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (SELECT 1");
    reads.push_from(&mut count, Driver::Stuck, None);
    reads.push_where(&mut count, Driver::Stuck, None);
    count.push(" LIMIT ").push_bind(bound + 1).push(") m");
    count.build_query_scalar().fetch_one(&mut *conn).await
}

/// The sort key's ORDER BY (over `t` and `s`, or the page's `p.` columns): descending for a
/// next page, ascending to read a previous one.
fn order_by(sort: Sort, forward: bool, page: &str) -> String {
    let direction = if forward { "DESC" } else { "ASC" };
    match (sort, page) {
        (Sort::LastRetry, "") => {
            format!(" ORDER BY s.last_occurred_at {direction}, s.last_seq {direction}")
        }
        (Sort::LastRetry, p) => {
            format!(" ORDER BY {p}last_retry_at {direction}, {p}last_seq {direction}")
        }
        (Sort::RetryCount, "") => {
            format!(" ORDER BY t.retry_count {direction}, t.id {direction}")
        }
        (Sort::RetryCount, p) => format!(" ORDER BY {p}retry_count {direction}, {p}id {direction}"),
    }
}

/// The stream key of a job's own retries (`retry_stream_head.stream`, `retry_open.stream`).
const JOB_STREAM: &str = "'00000000-0000-0000-0000-000000000000'::uuid";

/// Some of the stuck targets, as (job_id, stream) pairs: what one statement reads of a census.
#[derive(Debug, Default)]
struct StuckTargets {
    job_ids: Vec<Uuid>,
    streams: Vec<Uuid>,
}

/// Whether the log has the trigram index on the text `q` searches (migration 0020 creates it
/// only where pg_trgm could be installed).
async fn text_index(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('retry_history_detail_text') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
}

/// Where a statement starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The head rows in last-retry order (`retry_stream_head_last_retry`).
    Head,
    /// The targets in retry-count order (the pipeline's `idx_*_retry_count`).
    Targets,
    /// The same, for a page in count order: the first `most` targets from the cursor on,
    /// sorted by (count, id) before any head row or event is probed, so the targets past the
    /// page are never probed. Left to the planner, it sorted each group of one count by id
    /// (no index has both) after probing every member of the group: 200-270 ms for a later
    /// page whose cursor sat in a group of 30,000 targets. Without a LIMIT inside, the
    /// planner sorted every target instead (170 ms).
    TargetsInOrder { most: Option<i64> },
    /// The targets of a status (the pipeline's `idx_*_status_retry_count`).
    Status(&'static str),
    /// The open notes (`retry_intervention`).
    Notes,
    /// The stuck candidates, bound.
    Stuck,
    /// The retries whose text matches `q` (`retry_history_detail_text`).
    Text,
    /// The open retries (`retry_open`).
    Open,
    /// The retries that gave up (`retry_outcome_gave_up`), each found in the log by seq.
    GaveUp,
}

/// What one page reads: the filter and what was looked up for it.
struct Reads<'a> {
    filter: &'a Filter,
    stuck: Option<&'a StuckTargets>,
    text_index: bool,
}

impl Reads<'_> {
    /// The smallest set the filter names (`stuck` reads a census instead), in this order: the
    /// open notes (a few thousand at most), the text index, a status, the open retries, the
    /// retries that gave up, the targets retried at least `min_retries` times; else the head
    /// rows.
    fn driver(&self) -> Driver {
        if self.filter.state == Some(State::NeedsIntervention) {
            return Driver::Notes;
        }
        if self.filter.q.is_some() && self.text_index {
            return Driver::Text;
        }
        match self.filter.state {
            Some(State::Failed) => Driver::Status("failed"),
            Some(State::Running) => Driver::Status("running"),
            Some(State::Retrying) => Driver::Open,
            Some(State::GaveUp) => Driver::GaveUp,
            // The most retried, from the pipeline's own retry-count indexes.
            _ if self.filter.min_retries.is_some() => Driver::Targets,
            _ => Driver::Head,
        }
    }

    /// FROM: `s` (the head row), `t` (the target) and whatever the driver reads first; each
    /// table joined by its key, each lookup behind OFFSET 0 so the planner estimates it as
    /// the one row it is (joined as a plain table, the head row's two-column key multiplied
    /// its selectivities to "no row", and the plan sorted every target).
    ///
    /// `cursor` is read by [`Driver::TargetsInOrder`] alone (the others leave it to WHERE).
    fn push_from(
        &self,
        query: &mut QueryBuilder<'_, Postgres>,
        driver: Driver,
        cursor: Option<(&Cursor, bool)>,
    ) {
        let head = |by: &str| {
            format!(" CROSS JOIN LATERAL (SELECT * FROM retry_stream_head s WHERE {by} OFFSET 0) s")
        };
        match driver {
            Driver::Head => {
                query.push(" FROM retry_stream_head s");
            }
            Driver::Targets => {
                query.push(" FROM (");
                self.push_targets(query);
                query.push(") t");
                query.push(head("s.job_id = t.job_id AND s.stream = t.stream"));
                return;
            }
            Driver::TargetsInOrder { most } => {
                query.push(" FROM ");
                self.push_targets_in_order(query, cursor, most);
                query.push(head("s.job_id = t.job_id AND s.stream = t.stream"));
                return;
            }
            Driver::Status(status) => {
                query.push(" FROM (");
                let mut union = query.separated(" UNION ALL ");
                for (_, table, stream) in self.tables() {
                    union.push(format!(
                        "SELECT job_id, {stream} AS stream FROM {table}
                          WHERE status = '{status}' AND retry_count > 0"
                    ));
                    if let Some(min) = self.filter.min_retries {
                        union
                            .push_unseparated(" AND retry_count >= ")
                            .push_bind_unseparated(min);
                    }
                }
                query.push(") d");
                query.push(head("s.job_id = d.job_id AND s.stream = d.stream"));
            }
            Driver::Notes => {
                query.push(format!(
                    " FROM (SELECT DISTINCT i.job_id,
                                   coalesce(i.job_variants_id, {JOB_STREAM}) AS stream
                              FROM retry_intervention i) d"
                ));
                query.push(head("s.job_id = d.job_id AND s.stream = d.stream"));
            }
            Driver::Stuck => {
                let stuck = self.stuck.expect("stuck targets read for state=stuck");
                query
                    .push(" FROM unnest(")
                    .push_bind(stuck.job_ids.clone())
                    .push("::uuid[], ")
                    .push_bind(stuck.streams.clone())
                    .push("::uuid[]) d(job_id, stream)");
                query.push(head("s.job_id = d.job_id AND s.stream = d.stream"));
            }
            Driver::Text => {
                query.push(" FROM retry_history hq");
                query.push(head(&format!(
                    "s.job_id = hq.job_id AND s.stream = coalesce(hq.job_variants_id, {JOB_STREAM})
                     AND s.last_seq = hq.seq AND s.last_recorded_at = hq.recorded_at"
                )));
            }
            Driver::GaveUp => {
                query.push(
                    " FROM retry_outcome og
                      CROSS JOIN LATERAL (SELECT h.job_id, h.job_variants_id FROM retry_history h
                                           WHERE h.seq = og.seq OFFSET 0) hg",
                );
                query.push(head(&format!(
                    "s.job_id = hg.job_id AND s.stream = coalesce(hg.job_variants_id, {JOB_STREAM})
                     AND s.last_seq = og.seq"
                )));
            }
            Driver::Open => {
                query.push(" FROM retry_open r");
                query.push(head(
                    "s.job_id = r.job_id AND s.stream = r.stream AND s.last_seq = r.seq",
                ));
            }
        }
        // The target of the head row, by primary key.
        query.push(" CROSS JOIN LATERAL (");
        let mut union = query.separated(" UNION ALL ");
        for (kind, table, _) in self.tables() {
            let (id, by) = match kind {
                Kind::Job => ("job_id", "s.job_variants_id IS NULL AND job_id = s.job_id"),
                Kind::Variant => (
                    "job_variants_id",
                    "s.job_variants_id IS NOT NULL AND job_variants_id = s.job_variants_id",
                ),
            };
            union.push(format!(
                "SELECT '{kind}'::text AS kind, {id} AS id, job_id, status, current_step,
                        retry_count FROM {table} WHERE {by}"
            ));
        }
        query.push(" OFFSET 0) t");
    }

    /// The pipeline tables the kind filter keeps: kind, table, stream key.
    fn tables(&self) -> Vec<(Kind, &'static str, &'static str)> {
        let job = (Kind::Job, "jobs", JOB_STREAM);
        let variant = (Kind::Variant, "jobs_variants", "job_variants_id");
        match self.filter.kind {
            Some(Kind::Job) => vec![job],
            Some(Kind::Variant) => vec![variant],
            None => vec![job, variant],
        }
    }

    /// The targets (the driver [`Driver::Targets`]): no condition in the branches, so the
    /// planner flattens the union and pushes the conditions on `t` into each table, reading
    /// each in retry-count order from its own index and merging the two.
    fn push_targets(&self, query: &mut QueryBuilder<'_, Postgres>) {
        let mut union = query.separated(" UNION ALL ");
        for (kind, table, stream) in self.tables() {
            let id = match kind {
                Kind::Job => "job_id",
                Kind::Variant => "job_variants_id",
            };
            union.push(format!(
                "SELECT '{kind}'::text AS kind, {id} AS id, job_id, {stream} AS stream, status,
                        current_step, retry_count
                   FROM {table}"
            ));
        }
    }

    /// `(…) t`: the first `most` targets (all when `None`) from the cursor in count order,
    /// with the conditions on their own rows; sorted here, before any probe.
    fn push_targets_in_order(
        &self,
        query: &mut QueryBuilder<'_, Postgres>,
        cursor: Option<(&Cursor, bool)>,
        most: Option<i64>,
    ) {
        let direction = match cursor {
            Some((_, false)) => "ASC",
            _ => "DESC",
        };
        query.push("(SELECT * FROM (");
        self.push_targets(query);
        query.push(") t WHERE t.retry_count > 0");
        self.push_target_conditions(query, cursor);
        query.push(format!(
            " ORDER BY t.retry_count {direction}, t.id {direction}"
        ));
        match most {
            Some(most) => query.push(" LIMIT ").push_bind(most),
            None => query.push(" OFFSET 0"),
        };
        query.push(") t");
    }

    /// The conditions on the target's row alone (`t`): a count-order cursor, `min_retries`,
    /// the ids of a selection.
    fn push_target_conditions(
        &self,
        query: &mut QueryBuilder<'_, Postgres>,
        cursor: Option<(&Cursor, bool)>,
    ) {
        if let Some((Cursor::RetryCount { c, id }, forward)) = cursor {
            push_past(query, "t.retry_count, t.id", forward, *c, *id);
        }
        if let Some(min) = self.filter.min_retries {
            query.push(" AND t.retry_count >= ").push_bind(min);
        }
        // A selection of rows, as a bulk recovery narrows its filter to the rows ticked.
        if !self.filter.ids.is_empty() {
            query
                .push(" AND t.id = ANY(")
                .push_bind(self.filter.ids.clone())
                .push(")");
        }
    }

    /// WHERE, for the statement `driver` starts: the cursor (when given, with its direction)
    /// and the filters, on `t` (the target), `s` (the head row) and the last retry's row.
    fn push_where(
        &self,
        query: &mut QueryBuilder<'_, Postgres>,
        driver: Driver,
        cursor: Option<(&Cursor, bool)>,
    ) {
        let filter = self.filter;
        query.push(" WHERE t.retry_count > 0");
        if let Some((Cursor::LastRetry { t, n }, forward)) = cursor {
            push_past(query, "s.last_occurred_at, s.last_seq", forward, *t, *n);
        }
        self.push_target_conditions(query, cursor);
        if let Some(step) = &filter.step {
            query.push(" AND s.last_step = ").push_bind(step.clone());
        }
        // The head row keeps its last retry's `detail.scenario` (migration 0024).
        if let Some(scenario) = &filter.scenario {
            query
                .push(" AND s.last_scenario = ")
                .push_bind(scenario.clone());
        }
        if let Some(reason) = filter.reason {
            query
                .push(" AND s.last_reason = ")
                .push_bind(reason.as_ref().to_string())
                .push("::retry_reason");
        }
        if let Some(since) = filter.since {
            query.push(" AND s.last_occurred_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            query.push(" AND s.last_occurred_at <= ").push_bind(until);
        }
        // The last retry's own row, by its seq within its partition (the head row holds the
        // partition key): always, so a stream whose events were all archived is no target,
        // as when the listing read the log itself; with the filters on its detail and actor.
        // Each EXISTS here is a probe per row read (OFFSET 0 keeps it one): as a semi-join,
        // the planner misjudged how many rows a filter on the detail keeps and hashed the
        // whole log.
        query.push(
            " AND EXISTS (SELECT 1 FROM retry_history h
                           WHERE h.seq = s.last_seq AND h.recorded_at = s.last_recorded_at",
        );
        if let Some(actor) = &filter.actor {
            query.push(" AND h.actor = ").push_bind(actor.clone());
        }
        // With the text index driving, its row `hq` is this one, and is checked below.
        if let Some(q) = filter.q.as_ref().filter(|_| driver != Driver::Text) {
            push_text_match(query, "h", q);
        }
        query.push(" OFFSET 0)");
        if driver == Driver::GaveUp {
            query.push(" AND og.outcome = 'gave_up'");
        }
        // A job's own retries have an index of their own (they are few among the head rows).
        match filter.kind {
            Some(Kind::Job) => query.push(" AND s.job_variants_id IS NULL"),
            Some(Kind::Variant) => query.push(" AND s.job_variants_id IS NOT NULL"),
            None => query,
        };
        if let (Some(q), Driver::Text) = (&filter.q, driver) {
            // The driver's own rows: the text index finds them.
            push_text_match(query, "hq", q);
        }
        let Some(state) = filter.state else {
            return;
        };
        match state {
            State::Failed => {
                query.push(" AND t.status = 'failed'");
            }
            State::Running => {
                query.push(" AND t.status = 'running'");
            }
            // The open retry of the stream, if it is the last one: by the key retry_open has
            // as a table and as a view over the head rows alike.
            State::Retrying => {
                query.push(
                    " AND EXISTS (SELECT 1 FROM retry_open r2
                                   WHERE r2.job_id = s.job_id AND r2.stream = s.stream
                                     AND r2.seq = s.last_seq OFFSET 0)",
                );
            }
            State::Recovered => {
                query.push(
                    " AND EXISTS (SELECT 1 FROM retry_outcome o
                                   WHERE o.seq = s.last_seq AND o.outcome = 'recovered' OFFSET 0)",
                );
            }
            State::GaveUp => {
                query.push(
                    " AND EXISTS (SELECT 1 FROM retry_outcome o
                                   WHERE o.seq = s.last_seq AND o.outcome = 'gave_up' OFFSET 0)",
                );
            }
            // An open note: the limit noted the target at the count it still has.
            // The first EXISTS, on the head row alone (any note of the stream), is checked
            // as a walk reads each head row, before the target's row is probed: most streams
            // have no note at all.
            State::NeedsIntervention => {
                query.push(
                    " AND EXISTS (SELECT 1 FROM retry_intervention i
                                   WHERE i.job_id = s.job_id
                                     AND i.job_variants_id IS NOT DISTINCT FROM s.job_variants_id
                                   OFFSET 0)
                      AND EXISTS (SELECT 1 FROM retry_intervention i
                                   WHERE i.job_id = s.job_id
                                     AND i.job_variants_id IS NOT DISTINCT FROM s.job_variants_id
                                     AND i.retry_count = t.retry_count OFFSET 0)",
                );
            }
            // The driver's own rows: some of the stuck targets (`census::read`).
            State::Stuck => {}
        }
    }
}

/// `q` as an ILIKE pattern of a substring: the user's `%`, `_` and `\` are literal.
fn substring_pattern(q: &str) -> String {
    format!(
        "%{}%",
        q.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// ` AND` the condition that the retry `alias`'s text holds `q`, case-insensitively. The text
/// is its `detail.error`, `detail.message` and `detail.note` joined by a space (what
/// `concat_ws(' ', …)` gives), written with immutable operators only so that an index can hold
/// it (migration 0020, `retry_history_detail_text`). A retry without any of the three keys has
/// no text, which no `q` matches (an empty `q` is no filter): the index leaves those out
/// (migration 0025), and the condition says so first, so that the planner may read the index
/// for it.
fn push_text_match(query: &mut QueryBuilder<'_, Postgres>, alias: &str, q: &str) {
    query
        .push(format!(
            " AND {alias}.detail ?| ARRAY['error', 'message', 'note']
              AND substr(coalesce(' ' || ({alias}.detail->>'error'), '')
                         || coalesce(' ' || ({alias}.detail->>'message'), '')
                         || coalesce(' ' || ({alias}.detail->>'note'), ''), 2) ILIKE "
        ))
        .push_bind(substring_pattern(q));
}

/// ` AND (columns) < (a, b)` going forward in a descending order, `>` going back: the rows
/// past a cursor's two keys.
fn push_past<'q, A, B>(
    query: &mut QueryBuilder<'q, Postgres>,
    columns: &str,
    forward: bool,
    a: A,
    b: B,
) where
    A: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    B: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    let beyond = if forward { "<" } else { ">" };
    query
        .push(format!(" AND ({columns}) {beyond} ("))
        .push_bind(a)
        .push(", ")
        .push_bind(b)
        .push(")");
}
