//! The outcomes report, at the end of the flow (retry → store → projector → report/http): what
//! became of the retries of a window, per reason, step, scenario or attempt — how many
//! recovered, were retried again, gave up or are still open, the success rate and how long a
//! recovery took. Read from `retry_outcome_rollup` and `retry_outcome_recovery_time` (today)
//! or from the log and the outcomes (as of T).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::{ReportError, NO_VALUE};
use crate::event::RetryReason;
use crate::recovery::Scenario;
use crate::window::Moment;

/// What `report outcomes` splits the retries by.
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
pub enum OutcomeGroupBy {
    /// stuck, failed, manual_recovery (all three always listed).
    Reason,
    /// The step retried ("(none)" when the event names none).
    Step,
    /// The detail's "scenario" (the watchdog's four always listed; "(none)" when it has none).
    Scenario,
    /// The attempt number (1, 2, ...; every number up to the highest retried is listed).
    Attempt,
}

impl OutcomeGroupBy {
    /// The group as an expression over `retry_history h` (the rollup's definition of it).
    fn log_expression(self) -> &'static str {
        match self {
            OutcomeGroupBy::Reason => "h.reason::text",
            OutcomeGroupBy::Step => "left(coalesce(h.step, ''), 200)",
            OutcomeGroupBy::Scenario => "left(coalesce(h.detail ->> 'scenario', ''), 200)",
            OutcomeGroupBy::Attempt => "h.attempt::text",
        }
    }

    /// The groups listed even without a retry.
    fn always_listed(self) -> Vec<String> {
        match self {
            OutcomeGroupBy::Reason => [
                RetryReason::Stuck,
                RetryReason::Failed,
                RetryReason::ManualRecovery,
            ]
            .iter()
            .map(|reason| reason.to_string())
            .collect(),
            OutcomeGroupBy::Scenario => Scenario::ALL.iter().map(|s| s.to_string()).collect(),
            OutcomeGroupBy::Step | OutcomeGroupBy::Attempt => Vec::new(),
        }
    }
}

/// What `report outcomes` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomesQuery {
    pub by: OutcomeGroupBy,
    /// The window holds the retries that occurred from the start of the UTC day holding this
    /// instant (the projection keeps times to recover per day).
    pub since: DateTime<Utc>,
}

/// One group of `report outcomes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeRow {
    /// The reason, step, scenario or attempt; "(none)" for an empty step or scenario.
    pub group: String,
    /// Retries of the window in the group.
    pub retries: i64,
    pub recovered: i64,
    pub retried_again: i64,
    pub gave_up: i64,
    /// Retries with no outcome yet (as of the moment).
    pub open: i64,
    /// recovered ÷ (recovered + retried_again + gave_up); `None` when none is resolved.
    pub success_rate: Option<f64>,
    /// Time from the retry to its recovery, nearest-rank median and 90th percentile over the
    /// recovered retries, to two significant figures; `None` when none recovered.
    pub median_seconds_to_recover: Option<f64>,
    pub p90_seconds_to_recover: Option<f64>,
}

/// Where the report was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomesSource {
    /// `retry_outcome_rollup` and `retry_outcome_recovery_time` (today).
    Rollup,
    /// The log and the outcomes: retries recorded and outcomes observed by the as-of instant.
    Log,
}

/// The outcomes report: one row per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcomes {
    pub query: OutcomesQuery,
    /// The window's start: the start of the UTC day holding `since`.
    pub from: DateTime<Utc>,
    pub source: OutcomesSource,
    pub rows: Vec<OutcomeRow>,
}

/// Retries per group and outcome: (group, outcome, retries).
type Counts = (String, String, i64);
/// Recovered retries per group and time to recover: (group, ms, recovered).
type Times = (String, i64, i64);

/// What became of the retries of the window, per group, today (from the outcomes' rollup,
/// which the caller brings up to date first) or as of T (from the log and the outcomes).
pub async fn outcomes(
    conn: &mut PgConnection,
    query: OutcomesQuery,
    moment: Moment,
) -> Result<Outcomes, ReportError> {
    let from = query
        .since
        .duration_trunc(Duration::days(1))
        .unwrap_or(query.since);
    let (counts, times, source): (Vec<Counts>, Vec<Times>, _) = match moment {
        Moment::Now(_) => {
            // One dimension's rows: index ranges on (dimension, hour) and (dimension, day).
            let counts = sqlx::query_as(
                "SELECT value, outcome, sum(retries)::bigint
                   FROM retry_outcome_rollup
                  WHERE dimension = $1 AND hour >= $2
                  GROUP BY 1, 2",
            )
            .bind(query.by.as_ref())
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            let times = sqlx::query_as(
                "SELECT value, ttr_ms, sum(recovered)::bigint
                   FROM retry_outcome_recovery_time
                  WHERE dimension = $1 AND day >= $2
                  GROUP BY 1, 2",
            )
            .bind(query.by.as_ref())
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            (counts, times, OutcomesSource::Rollup)
        }
        Moment::AsOf(as_of) => {
            // The retries recorded by then, each with the outcome observed by then: what
            // retrylog knew at that instant, by the projection's definitions. Events archived
            // before the window's start cannot have occurred in it.
            super::ensure_in_log(&mut *conn, "report outcomes --as-of", from).await?;
            let decided = format!(
                "SELECT {group} AS value,
                        CASE WHEN r.observed_at <= $2 THEN r.outcome::text ELSE 'open' END
                            AS outcome,
                        CASE WHEN r.observed_at <= $2 AND r.outcome = 'recovered'
                             THEN retry_outcome_ttr_bucket((extract(epoch FROM
                                      r.resolved_at - h.occurred_at) * 1000)::bigint)
                        END AS ttr_ms
                   FROM retry_history h
                   LEFT JOIN retry_outcome r ON r.seq = h.seq
                  WHERE h.occurred_at >= $1 AND h.recorded_at <= $2",
                group = query.by.log_expression(),
            );
            let counts = sqlx::query_as(&format!(
                "SELECT value, outcome, count(*) FROM ({decided}) d GROUP BY 1, 2"
            ))
            .bind(from)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
            let times = sqlx::query_as(&format!(
                "SELECT value, ttr_ms, count(*) FROM ({decided}) d
                  WHERE ttr_ms IS NOT NULL GROUP BY 1, 2"
            ))
            .bind(from)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
            (counts, times, OutcomesSource::Log)
        }
    };
    Ok(Outcomes {
        query,
        from,
        source,
        rows: assemble(query.by, counts, times),
    })
}

/// One row per group: the groups always listed, then the ones seen, in their order.
fn assemble(by: OutcomeGroupBy, counts: Vec<Counts>, times: Vec<Times>) -> Vec<OutcomeRow> {
    #[derive(Default)]
    struct Tally {
        by_outcome: BTreeMap<String, i64>,
        /// ms to recover → recovered retries.
        recovered_ms: BTreeMap<i64, i64>,
    }
    let mut groups: BTreeMap<GroupKey, Tally> = BTreeMap::new();
    for group in by.always_listed() {
        groups.entry(GroupKey::new(by, group)).or_default();
    }
    for (group, outcome, retries) in counts {
        let tally = groups.entry(GroupKey::new(by, group)).or_default();
        *tally.by_outcome.entry(outcome).or_default() += retries;
    }
    for (group, ttr_ms, recovered) in times {
        let tally = groups.entry(GroupKey::new(by, group)).or_default();
        *tally.recovered_ms.entry(ttr_ms).or_default() += recovered;
    }
    if by == OutcomeGroupBy::Attempt {
        // Every attempt up to the highest one, so a gap reads as an empty row.
        let highest = groups.keys().filter_map(|key| key.attempt).max();
        for attempt in 1..=highest.unwrap_or(0) {
            groups
                .entry(GroupKey::new(by, attempt.to_string()))
                .or_default();
        }
    }
    groups
        .into_iter()
        .map(|(key, tally)| {
            let count = |outcome: &str| tally.by_outcome.get(outcome).copied().unwrap_or(0);
            let (recovered, retried_again, gave_up) =
                (count("recovered"), count("retried_again"), count("gave_up"));
            let resolved = recovered + retried_again + gave_up;
            let seconds =
                |p: f64| nearest_rank(&tally.recovered_ms, p).map(|ms| ms as f64 / 1000.0);
            OutcomeRow {
                group: key.shown,
                retries: tally.by_outcome.values().sum(),
                recovered,
                retried_again,
                gave_up,
                open: count("open"),
                success_rate: (resolved > 0).then(|| recovered as f64 / resolved as f64),
                median_seconds_to_recover: seconds(0.5),
                p90_seconds_to_recover: seconds(0.9),
            }
        })
        .collect()
}

/// A group's sort key: the always-listed ones in their order, then attempts by number, then
/// the rest by name, "(none)" last.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    rank: (usize, Option<i32>, bool),
    attempt: Option<i32>,
    shown: String,
}

impl GroupKey {
    fn new(by: OutcomeGroupBy, group: String) -> Self {
        let listed = by.always_listed();
        let position = listed
            .iter()
            .position(|g| *g == group)
            .unwrap_or(listed.len());
        let attempt = match by {
            OutcomeGroupBy::Attempt => group.parse().ok(),
            _ => None,
        };
        let shown = if group.is_empty() {
            NO_VALUE.to_string()
        } else {
            group
        };
        GroupKey {
            rank: (position, attempt, shown == NO_VALUE),
            attempt,
            shown,
        }
    }
}

/// The nearest-rank `p` quantile of a histogram (value → how many): the smallest value with at
/// least ⌈p·n⌉ values at or below it.
fn nearest_rank(histogram: &BTreeMap<i64, i64>, p: f64) -> Option<i64> {
    let total: i64 = histogram.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    histogram.iter().find_map(|(&value, &count)| {
        seen += count;
        (seen >= rank).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_is_the_smallest_value_covering_the_rank() {
        let histogram: BTreeMap<i64, i64> = [(10, 1), (20, 2), (30, 1)].into();
        assert_eq!(nearest_rank(&histogram, 0.5), Some(20)); // rank 2 of 4
        assert_eq!(nearest_rank(&histogram, 0.9), Some(30)); // rank 4 of 4
        assert_eq!(nearest_rank(&histogram, 0.25), Some(10));
        assert_eq!(nearest_rank(&BTreeMap::new(), 0.5), None);
    }

    #[test]
    fn groups_list_every_reason_and_fill_attempt_gaps() {
        let counts = vec![
            ("failed".into(), "recovered".into(), 2),
            ("failed".into(), "retried_again".into(), 1),
            ("failed".into(), "open".into(), 1),
            ("stuck".into(), "gave_up".into(), 1),
        ];
        let times = vec![("failed".into(), 1_500, 2)];
        let rows = assemble(OutcomeGroupBy::Reason, counts, times);
        let groups: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["stuck", "failed", "manual_recovery"]);
        assert_eq!(rows[1].retries, 4);
        assert_eq!(rows[1].success_rate, Some(2.0 / 3.0));
        assert_eq!(rows[1].median_seconds_to_recover, Some(1.5));
        assert_eq!(rows[0].success_rate, Some(0.0));
        assert_eq!(rows[2].retries, 0);
        assert_eq!(rows[2].success_rate, None);
        assert_eq!(rows[2].median_seconds_to_recover, None);

        let rows = assemble(
            OutcomeGroupBy::Attempt,
            vec![
                ("3".into(), "open".into(), 1),
                ("1".into(), "open".into(), 2),
            ],
            vec![],
        );
        let groups: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["1", "2", "3"]);
        assert_eq!(rows[1].retries, 0);
    }
}
