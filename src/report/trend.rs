//! The trend report, at the end of the flow (retry → store → projector → report/http): retries
//! per UTC bucket and group with the retry rate and how many of them recovered, read from the
//! rollups the projector keeps, or as of T from the log and the outcomes.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::ReportError;
use crate::projector;
use crate::window::Moment;

/// The width of a trend bucket; all buckets are UTC.
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
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum Bucket {
    /// One UTC hour.
    Hour,
    /// One UTC day.
    Day,
    /// One ISO week, Monday 00:00 UTC to the next Monday.
    Week,
}

impl Bucket {
    /// The start of the bucket holding `at` (what `date_trunc(unit, at, 'UTC')` returns).
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let hour = at
            .with_nanosecond(0)
            .and_then(|at| at.with_second(0))
            .and_then(|at| at.with_minute(0))
            .expect("every UTC hour has a minute 0");
        match self {
            Bucket::Hour => hour,
            Bucket::Day => hour - Duration::hours(i64::from(hour.hour())),
            Bucket::Week => {
                let day = hour - Duration::hours(i64::from(hour.hour()));
                day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
            }
        }
    }

    /// The start of the bucket after the one starting at `start` (UTC has no DST).
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        start
            + match self {
                Bucket::Hour => Duration::hours(1),
                Bucket::Day => Duration::days(1),
                Bucket::Week => Duration::weeks(1),
            }
    }
}

/// What a trend splits each bucket by.
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
    strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum GroupBy {
    /// Job-level or variant retries; the rate divides by targets of that kind created.
    Kind,
    /// stuck, failed, manual_recovery.
    Reason,
    /// The step retried ("(none)" when the event names none).
    Step,
    /// The detail's "scenario" ("(none)" when it has none).
    Scenario,
}

impl GroupBy {
    /// The group as a column of `retry_rollup`.
    fn rollup_column(self) -> &'static str {
        match self {
            GroupBy::Kind => "kind",
            GroupBy::Reason => "reason::text",
            GroupBy::Step => "step",
            GroupBy::Scenario => "scenario",
        }
    }

    /// The group as an expression over `retry_history` (the rollup's definition of it).
    fn log_expression(self) -> &'static str {
        match self {
            GroupBy::Kind => "CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END",
            GroupBy::Reason => "reason::text",
            // Bounded like the rollup's key (projections/retry_rollup.sql).
            GroupBy::Step => "left(coalesce(step, ''), 200)",
            GroupBy::Scenario => "left(coalesce(detail ->> 'scenario', ''), 200)",
        }
    }
}

/// The rollup column that counts, per row, the events that are their target's first in this
/// bucket and group: summed over a bucket's hours, the targets retried in it.
fn first_column(bucket: Bucket, by: GroupBy) -> &'static str {
    match (bucket, by) {
        (Bucket::Hour, GroupBy::Kind) => "first_hour_kind",
        (Bucket::Hour, GroupBy::Reason) => "first_hour_reason",
        (Bucket::Hour, GroupBy::Step) => "first_hour_step",
        (Bucket::Hour, GroupBy::Scenario) => "first_hour_scenario",
        (Bucket::Day, GroupBy::Kind) => "first_day_kind",
        (Bucket::Day, GroupBy::Reason) => "first_day_reason",
        (Bucket::Day, GroupBy::Step) => "first_day_step",
        (Bucket::Day, GroupBy::Scenario) => "first_day_scenario",
        (Bucket::Week, GroupBy::Kind) => "first_week_kind",
        (Bucket::Week, GroupBy::Reason) => "first_week_reason",
        (Bucket::Week, GroupBy::Step) => "first_week_step",
        (Bucket::Week, GroupBy::Scenario) => "first_week_scenario",
    }
}

/// The most buckets one trend shows (a bit over a year of hours).
pub const MAX_BUCKETS: i64 = 10_000;

/// The group shown for an event without a step or scenario.
pub const NO_VALUE: &str = "(none)";
/// The one group of a window without any retry (so its buckets still show their creations).
pub const NO_RETRIES: &str = "(no retries)";

/// Grouped counts as a trend query returns them: (bucket, group, retries, targets retried).
type RetriedCounts = (DateTime<Utc>, String, i64, i64);
/// Targets created as a trend query returns them: (bucket, kind, created).
type CreatedCounts = (DateTime<Utc>, String, i64);
/// Recovered retries as a trend query returns them: (bucket, group, recovered).
type RecoveredCounts = (DateTime<Utc>, String, i64);

/// What `report trend` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendQuery {
    pub bucket: Bucket,
    pub by: GroupBy,
    /// The window starts at the start of the bucket holding this instant.
    pub since: DateTime<Utc>,
}

/// A row of `report trend`: one bucket and group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendRow {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    /// The kind, reason, step or scenario; "(none)" for an empty step or scenario.
    pub group: String,
    /// Events in the bucket and group.
    pub retries: i64,
    /// Of those events, the ones whose outcome is `recovered` (the target moved on after the
    /// retry), as observed by the moment: bucketed by the retry's `occurred_at` like
    /// `retries`, whenever the recovery was observed. The others are open, retried again or
    /// gave up.
    pub recovered: i64,
    /// Distinct targets with an event in the bucket and group.
    pub targets_retried: i64,
    /// Targets created in the bucket: of the group's kind for `--by kind`, all otherwise.
    pub targets_created: i64,
    /// targets_retried ÷ targets_created; `None` when nothing was created in the bucket. Not a
    /// cohort rate: targets retried may have been created in earlier buckets, so it can pass 1.
    pub retry_rate: Option<f64>,
}

/// Where a trend was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrendSource {
    /// The rollups (today): `retry_rollup`, `retry_outcome_rollup`.
    Rollup,
    /// The raw log, events recorded at or before the as-of instant, and their outcomes
    /// observed by then.
    Log,
}

/// A trend: every bucket of the window × every group, in bucket then group order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    pub query: TrendQuery,
    /// The first bucket's start: the start of the bucket holding `since`.
    pub from: DateTime<Utc>,
    /// The last bucket's start.
    pub to: DateTime<Utc>,
    pub source: TrendSource,
    pub rows: Vec<TrendRow>,
}

/// Retries per bucket and group with the retry rate and the recovered ones, read from the
/// rollups (today) or from the log and the outcomes (as of T).
///
/// Every bucket from the window's start to the moment's bucket appears with every group: with
/// `--by kind` both kinds, otherwise each group seen in the window, so a bucket with creations
/// and no retries shows rate 0. A window without any retry has the one group "(no retries)".
/// The rollup is read as it stands: bring it up to date first ([`bring_rollup_up_to_date`]).
pub async fn trend(
    conn: &mut PgConnection,
    query: TrendQuery,
    moment: Moment,
) -> Result<Trend, ReportError> {
    check_window(&query, moment)?;
    let from = query.bucket.start_of(query.since);
    let unit = query.bucket.as_ref();
    let (retried, recovered, created, source): (
        Vec<RetriedCounts>,
        Vec<RecoveredCounts>,
        Vec<CreatedCounts>,
        _,
    ) = match moment {
        Moment::Now(_) => {
            // The rollup's primary key starts with the hour: both reads are index ranges.
            let retried = sqlx::query_as(&format!(
                "SELECT date_trunc($1, hour, 'UTC'), {group}, sum(retries)::bigint,
                            sum({first})::bigint
                       FROM retry_rollup
                      WHERE hour >= $2
                      GROUP BY 1, 2",
                group = query.by.rollup_column(),
                first = first_column(query.bucket, query.by),
            ))
            .bind(unit)
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            // The outcomes' rollup is kept in the same batches under the same checkpoint, so
            // it counts exactly the retries `retry_rollup` counts; one dimension's rows, by
            // the same group values, an index range on (dimension, hour).
            let recovered = sqlx::query_as(
                "SELECT date_trunc($1, hour, 'UTC'), value, sum(retries)::bigint
                       FROM retry_outcome_rollup
                      WHERE dimension = $3 AND hour >= $2 AND outcome = 'recovered'
                      GROUP BY 1, 2",
            )
            .bind(unit)
            .bind(from)
            .bind(query.by.as_ref())
            .fetch_all(&mut *conn)
            .await?;
            let created: Vec<CreatedCounts> = sqlx::query_as(
                "SELECT date_trunc($1, hour, 'UTC'), kind, sum(created)::bigint
                       FROM retry_rollup_created
                      WHERE hour >= $2
                      GROUP BY 1, 2",
            )
            .bind(unit)
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            (retried, recovered, created, TrendSource::Rollup)
        }
        Moment::AsOf(as_of) => {
            // The rollup cannot forget events, so the past is read from the log: a scan
            // of the window's events, and of the targets created in it. Events archived
            // before the window's start cannot have occurred in it.
            super::ensure_in_log(&mut *conn, "report trend --as-of", from).await?;
            let retried = sqlx::query_as(&format!(
                "SELECT date_trunc($1, occurred_at, 'UTC'), {group}, count(*),
                            count(DISTINCT (job_id, job_variants_id))
                       FROM retry_history
                      WHERE occurred_at >= $2 AND recorded_at <= $3
                      GROUP BY 1, 2",
                group = query.by.log_expression(),
            ))
            .bind(unit)
            .bind(from)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
            // A retry counts as recovered as of T when it was recorded by T and its outcome
            // observed by T (outcomes are append-only: one row per retry, never changed).
            let recovered = sqlx::query_as(&format!(
                "SELECT date_trunc($1, h.occurred_at, 'UTC'), {group}, count(*)
                       FROM retry_history h
                       JOIN retry_outcome r ON r.seq = h.seq
                      WHERE h.occurred_at >= $2 AND h.recorded_at <= $3
                        AND r.observed_at <= $3 AND r.outcome = 'recovered'
                      GROUP BY 1, 2",
                group = query.by.log_expression(),
            ))
            .bind(unit)
            .bind(from)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
            let created: Vec<CreatedCounts> = sqlx::query_as(
                "SELECT date_trunc($1, created_at, 'UTC'), 'job', count(*)
                       FROM jobs WHERE created_at >= $2 AND created_at <= $3 GROUP BY 1
                     UNION ALL
                     SELECT date_trunc($1, created_at, 'UTC'), 'variant', count(*)
                       FROM jobs_variants WHERE created_at >= $2 AND created_at <= $3
                      GROUP BY 1",
            )
            .bind(unit)
            .bind(from)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
            (retried, recovered, created, TrendSource::Log)
        }
    };
    Ok(assemble_trend(
        query,
        from,
        moment.time(),
        source,
        retried,
        recovered,
        created,
    ))
}

/// Lays the grouped counts out as the full grid of buckets × groups (see [`trend`]).
fn assemble_trend(
    query: TrendQuery,
    from: DateTime<Utc>,
    moment: DateTime<Utc>,
    source: TrendSource,
    retried: Vec<RetriedCounts>,
    recovered: Vec<RecoveredCounts>,
    created: Vec<CreatedCounts>,
) -> Trend {
    let show = |group: String| {
        if group.is_empty() {
            NO_VALUE.to_string()
        } else {
            group
        }
    };
    let retried: HashMap<(DateTime<Utc>, String), (i64, i64)> = retried
        .into_iter()
        .map(|(bucket, group, retries, targets)| ((bucket, show(group)), (retries, targets)))
        .collect();
    // Recovered retries are retries of the same bucket and group, so they add no group or
    // bucket of their own to the grid.
    let recovered: HashMap<(DateTime<Utc>, String), i64> = recovered
        .into_iter()
        .map(|(bucket, group, n)| ((bucket, show(group)), n))
        .collect();
    let mut created_by_kind: HashMap<(DateTime<Utc>, String), i64> = HashMap::new();
    let mut created_all: HashMap<DateTime<Utc>, i64> = HashMap::new();
    for (bucket, kind, count) in created {
        *created_by_kind.entry((bucket, kind)).or_default() += count;
        *created_all.entry(bucket).or_default() += count;
    }

    let groups: Vec<String> = match query.by {
        GroupBy::Kind => vec!["job".into(), "variant".into()],
        _ => {
            let seen: BTreeSet<&String> = retried.keys().map(|(_, group)| group).collect();
            if seen.is_empty() {
                vec![NO_RETRIES.into()]
            } else {
                seen.into_iter().cloned().collect()
            }
        }
    };
    // The last bucket is the moment's, or a later one when an event's occurred_at lies a few
    // minutes ahead (record_retry allows 5) or a creation is dated in the future.
    let to = retried
        .keys()
        .map(|(bucket, _)| *bucket)
        .chain(created_all.keys().copied())
        .chain([query.bucket.start_of(moment)])
        .max()
        .expect("the chain holds the moment's bucket");

    let mut buckets = Vec::new();
    let mut bucket = from;
    while bucket <= to {
        buckets.push(bucket);
        bucket = query.bucket.next(bucket);
    }
    let mut rows = Vec::with_capacity(buckets.len() * groups.len());
    for bucket in buckets {
        for group in &groups {
            let (retries, targets_retried) = retried
                .get(&(bucket, group.clone()))
                .copied()
                .unwrap_or((0, 0));
            let recovered = recovered
                .get(&(bucket, group.clone()))
                .copied()
                .unwrap_or(0);
            let targets_created = match query.by {
                GroupBy::Kind => created_by_kind
                    .get(&(bucket, group.clone()))
                    .copied()
                    .unwrap_or(0),
                _ => created_all.get(&bucket).copied().unwrap_or(0),
            };
            rows.push(TrendRow {
                bucket,
                group: group.clone(),
                retries,
                recovered,
                targets_retried,
                targets_created,
                retry_rate: (targets_created > 0)
                    .then(|| targets_retried as f64 / targets_created as f64),
            });
        }
    }
    Trend {
        query,
        from,
        to,
        source,
        rows,
    }
}

/// Refuses a window of more than `MAX_BUCKETS` buckets. Pure: a caller checks it before it
/// writes anything on the trend's behalf (the rollup's catch-up).
pub fn check_window(query: &TrendQuery, moment: Moment) -> Result<(), ReportError> {
    let from = query.bucket.start_of(query.since);
    let width = query.bucket.next(from) - from;
    let buckets = (moment.time() - from).num_seconds() / width.num_seconds().max(1) + 1;
    if buckets > MAX_BUCKETS {
        return Err(ReportError::TooManyBuckets {
            from,
            buckets,
            bucket: query.bucket,
        });
    }
    Ok(())
}

/// Brings the rollup up to date before a trend reads it: applies what the log holds beyond the
/// checkpoint if this process can take the projector's lead, otherwise measures the lag. The
/// only write a report makes, and the projector's own (same batches, same checkpoint).
pub async fn bring_rollup_up_to_date(pool: &PgPool) -> Result<projector::Freshness, ReportError> {
    Ok(projector::catch_up_once(pool, projector::DEFAULT_BATCH_EVENTS).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::tests::at;

    #[test]
    fn buckets_start_on_the_utc_hour_day_and_monday() {
        let t = at("2026-11-05T13:47:12.5Z"); // a Thursday
        assert_eq!(Bucket::Hour.start_of(t), at("2026-11-05T13:00:00Z"));
        assert_eq!(Bucket::Day.start_of(t), at("2026-11-05T00:00:00Z"));
        assert_eq!(Bucket::Week.start_of(t), at("2026-11-02T00:00:00Z"));
        let monday = at("2026-11-02T00:00:00Z");
        assert_eq!(Bucket::Week.start_of(monday), monday);
        assert_eq!(Bucket::Week.next(monday), at("2026-11-09T00:00:00Z"));
    }

    #[test]
    fn every_bucket_and_group_of_the_window_is_a_row() {
        let query = TrendQuery {
            bucket: Bucket::Day,
            by: GroupBy::Step,
            since: at("2026-11-01T15:00:00Z"),
        };
        let day = |d: u32| at(&format!("2026-11-0{d}T00:00:00Z"));
        let trend = assemble_trend(
            query,
            day(1),
            at("2026-11-03T09:00:00Z"),
            TrendSource::Rollup,
            vec![(day(1), "".into(), 3, 2), (day(3), "segment".into(), 1, 1)],
            vec![(day(1), "".into(), 2), (day(3), "segment".into(), 1)],
            vec![(day(2), "job".into(), 2), (day(2), "variant".into(), 3)],
        );
        type Row<'a> = (u32, &'a str, i64, i64, i64, i64, Option<f64>);
        let got: Vec<Row> = trend
            .rows
            .iter()
            .map(|row| {
                (
                    row.bucket.day(),
                    row.group.as_str(),
                    row.retries,
                    row.recovered,
                    row.targets_retried,
                    row.targets_created,
                    row.retry_rate,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "(none)", 3, 2, 2, 0, None),
                (1, "segment", 0, 0, 0, 0, None),
                (2, "(none)", 0, 0, 0, 5, Some(0.0)),
                (2, "segment", 0, 0, 0, 5, Some(0.0)),
                (3, "(none)", 0, 0, 0, 0, None),
                (3, "segment", 1, 1, 1, 0, None),
            ]
        );
    }

    #[test]
    fn a_window_without_retries_still_shows_its_creations() {
        let query = TrendQuery {
            bucket: Bucket::Hour,
            by: GroupBy::Reason,
            since: at("2026-11-01T10:30:00Z"),
        };
        let trend = assemble_trend(
            query,
            at("2026-11-01T10:00:00Z"),
            at("2026-11-01T11:10:00Z"),
            TrendSource::Log,
            vec![],
            vec![],
            vec![(at("2026-11-01T11:00:00Z"), "job".into(), 4)],
        );
        assert_eq!(trend.rows.len(), 2);
        assert_eq!(trend.rows[1].group, NO_RETRIES);
        assert_eq!(trend.rows[1].targets_created, 4);
        assert_eq!(trend.rows[1].retry_rate, Some(0.0));
        assert_eq!(trend.rows[1].recovered, 0);
    }
}
