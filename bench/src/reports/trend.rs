//! The trend measured: `report::trend` from the rollup against a plain GROUP BY over the raw
//! log and the pipeline tables, timed in turns; the two answers must be equal.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use retrylog::report::{self, Bucket, GroupBy, Trend, TrendQuery, NO_VALUE};
use retrylog::window::Moment;

use super::WINDOW_DAYS;
use crate::figures::median;
use crate::progress;

/// The trend of one grouping at one stage.
#[derive(Debug)]
pub struct TrendFigure {
    pub by: GroupBy,
    /// Medians: `report::trend` from the rollup; the GROUP BY over the log.
    pub rollup: Duration,
    pub group_by: Duration,
    /// Rollup rows in the window, buckets and groups of the answer.
    pub rollup_rows: i64,
    pub buckets: usize,
    pub groups: usize,
    /// Where the two answers differ (empty: equal).
    pub mismatches: Vec<String>,
}

/// A trend's group as an expression over `retry_history`, written here rather than taken
/// from `report`, so that the baseline checks the rollup against an independent definition.
fn log_group(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Kind => "CASE WHEN job_variants_id IS NULL THEN 'job' ELSE 'variant' END",
        GroupBy::Reason => "reason::text",
        GroupBy::Step => "coalesce(step, '')",
        GroupBy::Scenario => "coalesce(detail ->> 'scenario', '')",
    }
}

/// The trend's answer from the raw log: (day, group, retries, targets retried) and (day,
/// kind, targets created).
type LogTrend = (
    Vec<(DateTime<Utc>, String, i64, i64)>,
    Vec<(DateTime<Utc>, String, i64)>,
);

/// The baseline: what a plain GROUP BY over the log and the pipeline tables answers for the
/// days from `from` on.
async fn log_trend(
    conn: &mut PgConnection,
    by: GroupBy,
    from: DateTime<Utc>,
) -> Result<LogTrend, sqlx::Error> {
    let retried = sqlx::query_as(&format!(
        "SELECT date_trunc('day', occurred_at, 'UTC'), {group}, count(*),
                count(DISTINCT (job_id, job_variants_id))
           FROM retry_history
          WHERE occurred_at >= $1
          GROUP BY 1, 2",
        group = log_group(by)
    ))
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    let created = sqlx::query_as(
        "SELECT date_trunc('day', created_at, 'UTC'), 'job', count(*)
           FROM jobs WHERE created_at >= $1 GROUP BY 1
         UNION ALL
         SELECT date_trunc('day', created_at, 'UTC'), 'variant', count(*)
           FROM jobs_variants WHERE created_at >= $1 GROUP BY 1",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    Ok((retried, created))
}

/// Where the rollup's trend and the log's answer differ; empty when they are equal.
fn compare(trend: &Trend, (retried, created): &LogTrend) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let by = trend.query.by;
    let mut expected: HashMap<(DateTime<Utc>, String), (i64, i64)> = HashMap::new();
    for (bucket, group, retries, targets) in retried {
        let group = if group.is_empty() {
            NO_VALUE.to_string()
        } else {
            group.clone()
        };
        expected.insert((*bucket, group), (*retries, *targets));
    }
    let mut created_by_kind: HashMap<(DateTime<Utc>, &str), i64> = HashMap::new();
    let mut created_all: HashMap<DateTime<Utc>, i64> = HashMap::new();
    for (bucket, kind, count) in created {
        *created_by_kind.entry((*bucket, kind.as_str())).or_default() += count;
        *created_all.entry(*bucket).or_default() += count;
    }

    let mut mismatches = Vec::new();
    let mut shown: HashSet<(DateTime<Utc>, String)> = HashSet::new();
    let mut buckets: HashSet<DateTime<Utc>> = HashSet::new();
    for row in &trend.rows {
        let key = (row.bucket, row.group.clone());
        let (retries, targets) = expected.get(&key).copied().unwrap_or((0, 0));
        let targets_created = match by {
            GroupBy::Kind => created_by_kind
                .get(&(row.bucket, row.group.as_str()))
                .copied()
                .unwrap_or(0),
            _ => created_all.get(&row.bucket).copied().unwrap_or(0),
        };
        let got = (row.retries, row.targets_retried, row.targets_created);
        let want = (retries, targets, targets_created);
        if got != want {
            mismatches.push(format!(
                "--by {by} {} {}: the rollup says (retries, targets retried, targets created) \
                 = {got:?}, the log {want:?}",
                row.bucket.format("%Y-%m-%d"),
                row.group
            ));
        }
        shown.insert(key);
        buckets.insert(row.bucket);
    }
    for (key, counts) in &expected {
        if !shown.contains(key) {
            mismatches.push(format!(
                "--by {by} {} {}: the log has {counts:?}, the rollup's trend has no such row",
                key.0.format("%Y-%m-%d"),
                key.1
            ));
        }
    }
    for bucket in created_all.keys() {
        if !buckets.contains(bucket) {
            mismatches.push(format!(
                "--by {by} {}: targets were created that day, the rollup's trend has no row",
                bucket.format("%Y-%m-%d")
            ));
        }
    }
    mismatches.sort();
    mismatches
}

/// Times the trend by `by` from the rollup and by GROUP BY, `repeats` times each, taking
/// turns (rotating which goes first); compares the two answers of the first round.
pub async fn measure_trend(
    pool: &PgPool,
    by: GroupBy,
    repeats: u32,
) -> anyhow::Result<TrendFigure> {
    let now = Utc::now();
    let moment = Moment::Now(now);
    let query = TrendQuery {
        bucket: Bucket::Day,
        by,
        since: now - chrono::Duration::days(WINDOW_DAYS),
    };
    let from = Bucket::Day.start_of(query.since);
    let mut conn = pool.acquire().await?;
    let rollup_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_rollup WHERE hour >= $1")
        .bind(from)
        .fetch_one(&mut *conn)
        .await?;
    let progress = progress::spinner();
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let mut answer = None;
    let mut mismatches = Vec::new();
    for repeat in 0..repeats {
        progress.set_message(format!(
            "trend --by {by}: rollup and GROUP BY {}/{repeats}",
            repeat + 1
        ));
        let mut rollup_trend = None;
        let mut log_answer = None;
        for turn in 0..2 {
            if (turn + repeat) % 2 == 0 {
                let started = Instant::now();
                let trend = report::trend(&mut conn, query, moment).await?;
                ours.push(started.elapsed());
                rollup_trend = Some(trend);
            } else {
                let started = Instant::now();
                let log = log_trend(&mut conn, by, from).await?;
                baseline.push(started.elapsed());
                log_answer = Some(log);
            }
        }
        if repeat == 0 {
            let trend = rollup_trend.expect("both took their turn");
            mismatches = compare(&trend, &log_answer.expect("both took their turn"));
            answer = Some(trend);
        }
    }
    progress.finish_and_clear();
    let answer = answer.context("no trend was measured")?;
    let buckets = answer
        .rows
        .iter()
        .map(|row| row.bucket)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(TrendFigure {
        by,
        rollup: median(ours),
        group_by: median(baseline),
        rollup_rows,
        buckets,
        groups: answer.rows.len() / buckets.max(1),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use retrylog::report::{TrendRow, TrendSource};

    use super::*;

    #[test]
    fn compare_finds_every_difference() {
        let day = |d: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-11-0{d}T00:00:00Z"))
                .unwrap()
                .with_timezone(&Utc)
        };
        let row = |d: u32, group: &str, retries, targets, created| TrendRow {
            bucket: day(d),
            group: group.to_string(),
            retries,
            recovered: 0,
            targets_retried: targets,
            targets_created: created,
            retry_rate: None,
        };
        let trend = Trend {
            query: TrendQuery {
                bucket: Bucket::Day,
                by: GroupBy::Step,
                since: day(1),
            },
            from: day(1),
            to: day(2),
            source: TrendSource::Rollup,
            rows: vec![
                row(1, "(none)", 3, 2, 5),
                row(1, "segment", 0, 0, 5),
                row(2, "(none)", 0, 0, 0),
                row(2, "segment", 1, 1, 0),
            ],
        };
        let log: LogTrend = (
            vec![
                (day(1), String::new(), 3, 2),
                (day(2), "segment".into(), 1, 1),
            ],
            vec![(day(1), "job".into(), 1), (day(1), "variant".into(), 4)],
        );
        assert!(compare(&trend, &log).is_empty());

        let mut differs = log.clone();
        differs.0[1].3 = 2;
        differs.0.push((day(2), "prepare".into(), 1, 1));
        differs.1.push((day(3), "job".into(), 1));
        let mismatches = compare(&trend, &differs);
        assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    }
}
