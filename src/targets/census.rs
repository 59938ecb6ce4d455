//! The stuck census: the watchdog's detection over the whole pipeline (`state=stuck`), taken
//! once and shared by a server's requests for a while, instead of run for every page.
//!
//! The detection reads every variant of every running job (`Scenario::candidates_sql`): on
//! 100,000 jobs × 4 variants it takes over a second, which an operator paging through the stuck
//! targets would pay on every page. `serve` keeps one census per process
//! ([`StuckCensus`], in the HTTP context): a page of `state=stuck` reads the targets of a
//! census younger than [`USED_FOR`], and a census older than [`RENEWED_AFTER`] is renewed in
//! the background, so while someone looks the census is at most a few seconds past its
//! renewal and no request waits for it; after [`USED_FOR`] without one, the next request
//! takes a census itself.
//!
//! What a page shows stays true now: the rows a page is about to return are checked against
//! the detection again, scoped to their jobs (`no_longer_stuck`); a row no longer stuck is
//! not shown, the page reads on past it, and the census forgets it. What a census cannot
//! show is a target that became stuck after it was taken, or one retried since (its place in
//! the order moved): it appears at the next renewal. The page says when its census was taken
//! (`Page::stuck_as_of`), and its count is the census's. `retrylog targets` and a bulk
//! recovery take a census of their own for each page, unshared.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    count_among, rows_among, At, Cursor, Filter, Kind, Page, Sort, StuckRule, StuckTargets,
    TargetRow, COUNT_BOUND, JOB_STREAM,
};
use crate::recovery::Scenario;

/// A census is used for this long after it was taken; an older one is taken again before a
/// page reads it.
pub const USED_FOR: Duration = Duration::from_secs(60);

/// A census this old is renewed in the background by the next request that reads it.
pub const RENEWED_AFTER: Duration = Duration::from_secs(15);

/// The stuck targets detected at one moment under one rule, each with its place in both
/// orders of the list.
#[derive(Debug)]
pub struct Census {
    pub rule: StuckRule,
    /// When the detection ran (its statement's start).
    pub taken_at: DateTime<Utc>,
    taken: Instant,
    members: Vec<Member>,
    /// `members`' indexes in each order of the list, descending.
    by_last_retry: Vec<u32>,
    by_retry_count: Vec<u32>,
}

/// A stuck target and its sort keys when the census was taken.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Member {
    job_id: Uuid,
    stream: Uuid,
    last_occurred_at: DateTime<Utc>,
    last_seq: i64,
    retry_count: i32,
}

impl Member {
    fn target(&self) -> (Uuid, Uuid) {
        (self.job_id, self.stream)
    }

    fn kind(&self) -> Kind {
        if self.stream.is_nil() {
            Kind::Job
        } else {
            Kind::Variant
        }
    }

    /// The job's id or the variant's.
    fn id(&self) -> Uuid {
        match self.kind() {
            Kind::Job => self.job_id,
            Kind::Variant => self.stream,
        }
    }

    /// Its sort key as a page's cursor holds it.
    fn key(&self, sort: Sort) -> Cursor {
        match sort {
            Sort::LastRetry => Cursor::LastRetry {
                t: self.last_occurred_at,
                n: self.last_seq,
            },
            Sort::RetryCount => Cursor::RetryCount {
                c: self.retry_count,
                id: self.id(),
            },
        }
    }
}

/// The order of two keys of one sort.
fn compare(a: &Cursor, b: &Cursor) -> Ordering {
    match (a, b) {
        (Cursor::LastRetry { t, n }, Cursor::LastRetry { t: t2, n: n2 }) => (t, n).cmp(&(t2, n2)),
        (Cursor::RetryCount { c, id }, Cursor::RetryCount { c: c2, id: id2 }) => {
            (c, id).cmp(&(c2, id2))
        }
        _ => unreachable!("a page's cursor is checked against its sort"),
    }
}

impl Census {
    /// Runs the detection now.
    pub async fn take(conn: &mut PgConnection, rule: &StuckRule) -> Result<Census, sqlx::Error> {
        let taken = Instant::now();
        let taken_at = Utc::now();
        let members = detect(conn, rule, None).await?;
        Ok(Census::of(rule.clone(), taken_at, taken, members))
    }

    fn of(rule: StuckRule, taken_at: DateTime<Utc>, taken: Instant, members: Vec<Member>) -> Self {
        let order = |sort: Sort| {
            let mut order: Vec<u32> = (0..members.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                compare(
                    &members[b as usize].key(sort),
                    &members[a as usize].key(sort),
                )
            });
            order
        };
        Census {
            by_last_retry: order(Sort::LastRetry),
            by_retry_count: order(Sort::RetryCount),
            rule,
            taken_at,
            taken,
            members,
        }
    }

    /// How many stuck targets it holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The census without `gone`, the (job_id, stream) pairs found no longer stuck.
    fn without(&self, gone: &HashSet<(Uuid, Uuid)>) -> Census {
        let members = self
            .members
            .iter()
            .filter(|member| !gone.contains(&member.target()))
            .cloned()
            .collect();
        Census::of(self.rule.clone(), self.taken_at, self.taken, members)
    }

    /// The members `filter`'s kind and ids keep, in `sort` order (descending).
    fn kept(&self, filter: &Filter, sort: Sort) -> Vec<&Member> {
        let order = match sort {
            Sort::LastRetry => &self.by_last_retry,
            Sort::RetryCount => &self.by_retry_count,
        };
        order
            .iter()
            .map(|&i| &self.members[i as usize])
            .filter(|member| {
                filter.kind.is_none_or(|kind| member.kind() == kind)
                    && (filter.ids.is_empty() || filter.ids.contains(&member.id()))
            })
            .collect()
    }
}

/// Of `kept` (descending), those of the page `at`, in the order it reads them: from the top,
/// the keys below its cursor, or (a previous page) the keys above it, nearest first.
fn from_cursor<'c>(kept: &[&'c Member], at: &At<'_>) -> Vec<&'c Member> {
    let Some(cursor) = at.cursor else {
        return kept.to_vec();
    };
    let place = |member: &&&Member| compare(&member.key(at.sort), cursor);
    if at.forward {
        kept.iter()
            .filter(|member| place(member) == Ordering::Less)
            .copied()
            .collect()
    } else {
        kept.iter()
            .rev()
            .filter(|member| place(member) == Ordering::Greater)
            .copied()
            .collect()
    }
}

/// Targets a page reads from the census per statement at first; each further statement reads
/// twice as many, up to [`MOST_PER_READ`].
const FIRST_READ: usize = 64;
const MOST_PER_READ: usize = 2_000;

/// The page `at` of the stuck targets in `census` that the rest of `filter` keeps: the
/// members read in the page's order, a few at a time, each through the list's own statement
/// (its other filters, the target's and the head row's facts now). A member whose sort key
/// has changed since the census (retried since) is not shown, and with `recheck`, neither is
/// one the detection no longer finds; both are returned, to be forgotten. The count is the
/// census's: its members of the kind, or, under any other filter, those the statement keeps.
pub(super) async fn read(
    conn: &mut PgConnection,
    filter: &Filter,
    text_index: bool,
    census: &Census,
    at: &At<'_>,
    recheck: Option<&StuckRule>,
) -> Result<(Page, HashSet<(Uuid, Uuid)>), sqlx::Error> {
    let wanted = at.limit as usize + 1;
    let kept_by_kind = census.kept(filter, at.sort);
    let members = from_cursor(&kept_by_kind, at);
    let mut rows = Vec::new();
    let mut gone = HashSet::new();
    let mut read = 0;
    let mut per_read = FIRST_READ.max(wanted);
    while rows.len() < wanted && read < members.len() {
        let some = &members[read..(read + per_read).min(members.len())];
        read += some.len();
        let mut found: HashMap<(Uuid, Uuid), TargetRow> =
            rows_among(conn, filter, text_index, &targets(some), at.sort)
                .await?
                .into_iter()
                .map(|row| (row.target(), row))
                .collect();
        let mut kept = Vec::new();
        for member in some {
            match found.remove(&member.target()) {
                Some(row) if row.cursor(at.sort) == member.key(at.sort) => kept.push(row),
                Some(_) => {
                    gone.insert(member.target());
                }
                None => {}
            }
        }
        if let Some(rule) = recheck {
            let shown: Vec<(Uuid, Uuid)> = kept.iter().map(TargetRow::target).collect();
            let moved = no_longer_stuck(conn, rule, &shown).await?;
            kept.retain(|row| !moved.contains(&row.target()));
            gone.extend(moved);
        }
        rows.extend(kept);
        per_read = (per_read * 2).min(MOST_PER_READ);
    }

    let narrowed = filter.step.is_some()
        || filter.reason.is_some()
        || filter.scenario.is_some()
        || filter.actor.is_some()
        || filter.since.is_some()
        || filter.until.is_some()
        || filter.min_retries.is_some()
        || filter.q.is_some();
    let counted = if narrowed {
        let mut counted = 0;
        for some in kept_by_kind.chunks(MOST_PER_READ) {
            if counted > COUNT_BOUND {
                break;
            }
            counted += count_among(
                conn,
                filter,
                text_index,
                &targets(some),
                COUNT_BOUND - counted,
            )
            .await?;
        }
        counted
    } else {
        kept_by_kind
            .iter()
            .filter(|member| !gone.contains(&member.target()))
            .count() as i64
    };
    Ok((at.page(rows, counted), gone))
}

/// The (job_id, stream) arrays a statement binds.
fn targets(members: &[&Member]) -> StuckTargets {
    StuckTargets {
        job_ids: members.iter().map(|member| member.job_id).collect(),
        streams: members.iter().map(|member| member.stream).collect(),
    }
}

/// One process's census, shared by its requests (`serve`'s HTTP context).
#[derive(Debug)]
pub struct StuckCensus {
    /// The census in use. Held while a request takes one, so concurrent requests wait for
    /// that one detection instead of each running it.
    current: Mutex<Option<Arc<Census>>>,
    /// A renewal is running in the background.
    renewing: std::sync::atomic::AtomicBool,
    used_for: Duration,
    renewed_after: Duration,
}

impl Default for StuckCensus {
    fn default() -> Self {
        StuckCensus::with_ages(USED_FOR, RENEWED_AFTER)
    }
}

impl StuckCensus {
    /// A census used for `used_for` and renewed after `renewed_after` instead of
    /// [`USED_FOR`] and [`RENEWED_AFTER`].
    pub fn with_ages(used_for: Duration, renewed_after: Duration) -> StuckCensus {
        StuckCensus {
            current: Mutex::new(None),
            renewing: Default::default(),
            used_for,
            renewed_after,
        }
    }

    /// The census for `rule`: the current one while younger than [`USED_FOR`] (renewed in
    /// the background once older than [`RENEWED_AFTER`]), else one taken now. A census of
    /// another rule (a request's own `stuck_after`) is replaced.
    pub async fn get(
        self: &Arc<Self>,
        pool: &PgPool,
        rule: &StuckRule,
    ) -> Result<Arc<Census>, sqlx::Error> {
        let mut current = self.current.lock().await;
        if let Some(census) = current.as_ref() {
            if census.rule == *rule && census.taken.elapsed() < self.used_for {
                if census.taken.elapsed() >= self.renewed_after {
                    self.renew(pool, rule);
                }
                return Ok(census.clone());
            }
        }
        let census = Arc::new(Census::take(&mut *pool.acquire().await?, rule).await?);
        *current = Some(census.clone());
        Ok(census)
    }

    /// Takes a census in the background, unless one is already being taken; it replaces the
    /// current one when done. A failure is logged: the current census serves until it is too
    /// old, then a request takes one itself.
    fn renew(self: &Arc<Self>, pool: &PgPool, rule: &StuckRule) {
        use std::sync::atomic::Ordering;
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, pool, rule) = (self.clone(), pool.clone(), rule.clone());
        tokio::spawn(async move {
            let taken = match pool.acquire().await {
                Ok(mut conn) => Census::take(&mut conn, &rule).await,
                Err(error) => Err(error),
            };
            match taken {
                Ok(census) => *this.current.lock().await = Some(Arc::new(census)),
                Err(error) => tracing::warn!(%error, "renewing the stuck census failed"),
            }
            this.renewing.store(false, Ordering::Release);
        });
    }

    /// Drops `gone` from `census`, if it is still the current one (a newer census was taken
    /// after the check, so it knows better).
    pub async fn forget(&self, census: &Arc<Census>, gone: &HashSet<(Uuid, Uuid)>) -> Arc<Census> {
        let mut current = self.current.lock().await;
        let smaller = Arc::new(census.without(gone));
        if current.as_ref().is_some_and(|now| Arc::ptr_eq(now, census)) {
            *current = Some(smaller.clone());
        }
        smaller
    }
}

/// The detection ([`Scenario::candidates_sql`]) with the watchdog's steps ($1) and
/// stuck_after ($2), over every job or only `jobs` ($3): each target once, with its head
/// row's last retry and its count (a target never retried is no member of the list).
async fn detect(
    conn: &mut PgConnection,
    rule: &StuckRule,
    jobs: Option<&[Uuid]>,
) -> Result<Vec<Member>, sqlx::Error> {
    let sql = format!(
        "SELECT DISTINCT ON (c.job_id, s.stream)
                c.job_id, s.stream, s.last_occurred_at, s.last_seq, c.retry_count
           FROM ({}) c
           JOIN retry_stream_head s
             ON s.job_id = c.job_id AND s.stream = coalesce(c.job_variants_id, {JOB_STREAM})
          WHERE c.retry_count > 0",
        Scenario::candidates_sql(jobs.is_some())
    );
    let mut query = sqlx::query_as(&sql)
        .bind(rule.steps.names().to_vec())
        .bind(rule.stuck_after.as_secs_f64());
    if let Some(jobs) = jobs {
        query = query.bind(jobs);
    }
    query.fetch_all(&mut *conn).await
}

/// Of `targets` ((job_id, stream) pairs), those no longer stuck now: the detection again,
/// scoped to their jobs.
async fn no_longer_stuck(
    conn: &mut PgConnection,
    rule: &StuckRule,
    targets: &[(Uuid, Uuid)],
) -> Result<HashSet<(Uuid, Uuid)>, sqlx::Error> {
    if targets.is_empty() {
        return Ok(HashSet::new());
    }
    let jobs: Vec<Uuid> = targets
        .iter()
        .map(|&(job_id, _)| job_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let stuck: HashSet<(Uuid, Uuid)> = detect(conn, rule, Some(&jobs))
        .await?
        .iter()
        .map(Member::target)
        .collect();
    Ok(targets
        .iter()
        .filter(|target| !stuck.contains(target))
        .copied()
        .collect())
}
