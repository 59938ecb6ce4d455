//! The detection plans of `retrylog-bench recovery`: `EXPLAIN (ANALYZE, FORMAT JSON)` of
//! each scenario's detection query (`Scenario::detect_sql`, the exact query the watchdog
//! runs) as a custom and as a generic plan, read into which index reads which table.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use retrylog::config::WatchdogSettings;
use retrylog::recovery::{Scenario, DETECT_BATCH};

use crate::figures::{median, thousands};
use crate::progress;

/// One detection query's plans.
#[derive(Debug, Clone)]
pub struct Detection {
    pub scenario: Scenario,
    pub custom: PlanSummary,
    pub generic: PlanSummary,
}

/// EXPLAIN (ANALYZE, FORMAT JSON) of each scenario's detection query with the watchdog's
/// parameters (steps, stuck_after, no job list, the batch limit): `repeats` times as a
/// custom plan (the statement with its parameters bound, planned for those values), then
/// `repeats` times as the generic plan (PREPARE, `plan_cache_mode = force_generic_plan`,
/// EXECUTE). Reports the median execution time and the last plan of each.
pub async fn explain_detections(
    pool: &PgPool,
    settings: &WatchdogSettings,
    repeats: u32,
) -> anyhow::Result<Vec<Detection>> {
    let mut conn = pool.acquire().await?;
    let progress = progress::spinner();
    let mut detections = Vec::new();
    for scenario in Scenario::ALL {
        let sql = scenario.detect_sql(false);
        progress.set_message(format!(
            "EXPLAIN ANALYZE detection of {scenario}, custom plan"
        ));
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let custom = explain_repeatedly(&mut conn, &explain, Some(settings), repeats)
            .await
            .with_context(|| format!("explaining the detection of {scenario}"))?;

        progress.set_message(format!(
            "EXPLAIN ANALYZE detection of {scenario}, generic plan"
        ));
        sqlx::raw_sql(&format!(
            "PREPARE bench_detect (text[], float8, uuid[], bigint) AS {sql};
             SET plan_cache_mode = force_generic_plan;"
        ))
        .execute(&mut *conn)
        .await?;
        // EXECUTE takes no protocol parameters: the server writes the values as literals.
        let execute: String = sqlx::query_scalar(
            "SELECT format('EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE bench_detect(%L, %s, NULL, %s)',
                           $1::text[], $2::float8, $3::bigint)",
        )
        .bind(settings.steps.names())
        .bind(settings.stuck_after.as_secs_f64())
        .bind(DETECT_BATCH)
        .fetch_one(&mut *conn)
        .await?;
        let generic = explain_repeatedly(&mut conn, &execute, None, repeats)
            .await
            .with_context(|| format!("explaining the generic plan of {scenario}'s detection"));
        sqlx::raw_sql("DEALLOCATE bench_detect; RESET plan_cache_mode;")
            .execute(&mut *conn)
            .await?;
        let generic = generic?;
        detections.push(Detection {
            scenario,
            custom,
            generic,
        });
    }
    progress.finish_and_clear();
    for detection in &detections {
        for (kind, plan) in [
            ("custom", &detection.custom),
            ("generic", &detection.generic),
        ] {
            eprintln!(
                "retrylog-bench: detection of {} ({kind} plan): {} row(s), execution {:.1} ms \
                 (median of {repeats}), planning {:.1} ms; {}",
                detection.scenario,
                thousands(plan.rows),
                plan.execution_ms,
                plan.planning_ms,
                plan.access_summary(),
            );
            for line in &plan.tree {
                eprintln!("retrylog-bench:     {line}");
            }
        }
    }
    Ok(detections)
}

/// Runs one EXPLAIN `repeats` times, with the detection parameters of `settings` bound (or
/// none, when `explain` carries them); the last plan, with the median execution time.
async fn explain_repeatedly(
    conn: &mut PgConnection,
    explain: &str,
    settings: Option<&WatchdogSettings>,
    repeats: u32,
) -> anyhow::Result<PlanSummary> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats {
        let mut query = sqlx::query_scalar(explain).persistent(false);
        if let Some(settings) = settings {
            query = query
                .bind(settings.steps.names())
                .bind(settings.stuck_after.as_secs_f64())
                .bind(None::<Vec<Uuid>>)
                .bind(DETECT_BATCH);
        }
        let plan: Value = query.fetch_one(&mut *conn).await?;
        let summary = PlanSummary::from_explain(&plan)?;
        times.push(Duration::from_secs_f64(summary.execution_ms / 1000.0));
        last = Some(summary);
    }
    let mut summary = last.context("no EXPLAIN ran")?;
    summary.execution_ms = median(times).as_secs_f64() * 1000.0;
    Ok(summary)
}

/// How a plan reads one table.
#[derive(Debug, Clone, PartialEq)]
struct Access {
    /// "jobs_variants v".
    relation: String,
    /// "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Seq Scan", with "Parallel" or
    /// "Backward" where the plan says so.
    node: String,
    /// The index, for the three index nodes.
    index: Option<String>,
    /// How often the node ran (a SubPlan or the inner side of a nested loop runs per row).
    loops: f64,
}

impl Access {
    fn describe(&self) -> String {
        let loops = if self.loops > 1.0 {
            format!(", {} loops", thousands(self.loops))
        } else {
            String::new()
        };
        match &self.index {
            Some(index) => format!("{}: {} {index}{loops}", self.relation, self.node),
            None => format!("{}: {}{loops}", self.relation, self.node),
        }
    }
}

/// What one EXPLAIN (ANALYZE, FORMAT JSON) says about a query.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSummary {
    /// Every scan of a table, in plan order.
    accesses: Vec<Access>,
    /// The plan as an indented tree, one node a line.
    pub tree: Vec<String>,
    /// Rows the query returned.
    pub rows: f64,
    pub planning_ms: f64,
    pub execution_ms: f64,
}

/// The plan nodes that read an index.
const INDEX_NODES: [&str; 3] = ["Index Scan", "Index Only Scan", "Bitmap Index Scan"];

impl PlanSummary {
    /// Reads `[{"Plan": {...}, "Planning Time": .., "Execution Time": ..}]`.
    fn from_explain(explain: &Value) -> anyhow::Result<PlanSummary> {
        let top = explain
            .get(0)
            .with_context(|| format!("EXPLAIN returned no plan: {explain}"))?;
        let plan = top
            .get("Plan")
            .with_context(|| format!("EXPLAIN output without a Plan: {top}"))?;
        let mut summary = PlanSummary {
            accesses: Vec::new(),
            tree: Vec::new(),
            rows: number(plan, "Actual Rows"),
            planning_ms: number(top, "Planning Time"),
            execution_ms: number(top, "Execution Time"),
        };
        summary.walk(plan, 0, None);
        Ok(summary)
    }

    /// Visits `node` and its children; `heap` is the relation of an enclosing Bitmap Heap
    /// Scan, which its Bitmap Index Scans read the index of.
    fn walk(&mut self, node: &Value, depth: usize, heap: Option<&str>) {
        let text = |key: &str| node.get(key).and_then(Value::as_str);
        let kind = text("Node Type").unwrap_or("?");
        let parallel = node.get("Parallel Aware").and_then(Value::as_bool) == Some(true);
        let relation = text("Relation Name").map(|name| match text("Alias") {
            Some(alias) if alias != name => format!("{name} {alias}"),
            _ => name.to_string(),
        });
        let index = text("Index Name");
        let backward = text("Scan Direction") == Some("Backward");
        let loops = number(node, "Actual Loops");

        let mut line = "  ".repeat(depth);
        if let Some(subplan) = text("Subplan Name") {
            line.push_str(&format!("{subplan}: "));
        }
        if parallel {
            line.push_str("Parallel ");
        }
        line.push_str(kind);
        if backward {
            line.push_str(" Backward");
        }
        if let Some(index) = index {
            line.push_str(&format!(" using {index}"));
        }
        if let Some(relation) = &relation {
            line.push_str(&format!(" on {relation}"));
        }
        line.push_str(&format!(
            " (rows {} × {} loop{}, {:.2} ms",
            thousands(number(node, "Actual Rows")),
            thousands(loops),
            if loops == 1.0 { "" } else { "s" },
            number(node, "Actual Total Time"),
        ));
        let removed = number(node, "Rows Removed by Filter");
        if removed > 0.0 {
            line.push_str(&format!(", {} removed by filter", thousands(removed)));
        }
        line.push(')');
        self.tree.push(line);

        if INDEX_NODES.contains(&kind) || kind == "Seq Scan" {
            self.accesses.push(Access {
                relation: relation
                    .clone()
                    .or_else(|| heap.map(str::to_string))
                    .unwrap_or_else(|| "?".to_string()),
                node: format!(
                    "{}{kind}{}",
                    if parallel { "Parallel " } else { "" },
                    if backward { " Backward" } else { "" }
                ),
                index: index.map(str::to_string),
                loops,
            });
        }
        let heap = if kind == "Bitmap Heap Scan" {
            relation.as_deref()
        } else {
            heap
        };
        if let Some(children) = node.get("Plans").and_then(Value::as_array) {
            for child in children {
                self.walk(child, depth + 1, heap);
            }
        }
    }

    /// Whether any index is read, and how each table is: "indexes: …; seq scans: …".
    pub fn access_summary(&self) -> String {
        let (indexed, scanned): (Vec<&Access>, Vec<&Access>) =
            self.accesses.iter().partition(|a| a.index.is_some());
        let list = |accesses: &[&Access]| {
            accesses
                .iter()
                .map(|a| a.describe())
                .collect::<Vec<_>>()
                .join("; ")
        };
        match (indexed.is_empty(), scanned.is_empty()) {
            (false, true) => format!("indexes only: {}", list(&indexed)),
            (false, false) => format!(
                "indexes: {}; sequential scans: {}",
                list(&indexed),
                list(&scanned)
            ),
            (true, _) => format!("no index; sequential scans: {}", list(&scanned)),
        }
    }
}

fn number(node: &Value, key: &str) -> f64 {
    node.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_plan_summary_names_every_index_and_sequential_scan() {
        let explain = json!([{
            "Plan": {
                "Node Type": "Limit", "Actual Rows": 2.0, "Actual Loops": 1.0,
                "Actual Total Time": 3.5,
                "Plans": [{
                    "Node Type": "Nested Loop", "Actual Rows": 2.0, "Actual Loops": 1.0,
                    "Plans": [
                        {"Node Type": "Bitmap Heap Scan", "Relation Name": "jobs_variants",
                         "Alias": "v", "Actual Rows": 2.0, "Actual Loops": 1.0,
                         "Plans": [{"Node Type": "Bitmap Index Scan",
                                    "Index Name": "idx_jobs_variants_status_retry_count",
                                    "Actual Rows": 2.0, "Actual Loops": 1.0}]},
                        {"Node Type": "Seq Scan", "Relation Name": "jobs", "Alias": "j",
                         "Parallel Aware": true, "Actual Rows": 1.0, "Actual Loops": 2.0,
                         "Rows Removed by Filter": 99.0},
                        {"Node Type": "Index Only Scan", "Parent Relationship": "SubPlan",
                         "Subplan Name": "SubPlan 1", "Scan Direction": "Backward",
                         "Index Name": "retry_history_stream_attempt_key",
                         "Relation Name": "retry_history", "Alias": "h",
                         "Actual Rows": 0.0, "Actual Loops": 2.0}
                    ]
                }]
            },
            "Planning Time": 0.25,
            "Execution Time": 3.75
        }]);
        let plan = PlanSummary::from_explain(&explain).unwrap();
        assert_eq!(plan.rows, 2.0);
        assert_eq!(plan.execution_ms, 3.75);
        assert_eq!(plan.planning_ms, 0.25);
        assert_eq!(
            plan.accesses
                .iter()
                .map(Access::describe)
                .collect::<Vec<_>>(),
            [
                "jobs_variants v: Bitmap Index Scan idx_jobs_variants_status_retry_count",
                "jobs j: Parallel Seq Scan, 2 loops",
                "retry_history h: Index Only Scan Backward retry_history_stream_attempt_key, \
                 2 loops",
            ]
        );
        assert_eq!(
            plan.access_summary(),
            "indexes: jobs_variants v: Bitmap Index Scan idx_jobs_variants_status_retry_count; \
             retry_history h: Index Only Scan Backward retry_history_stream_attempt_key, 2 \
             loops; sequential scans: jobs j: Parallel Seq Scan, 2 loops"
        );
        assert_eq!(plan.tree.len(), 6);
        assert_eq!(
            plan.tree[4],
            "    Parallel Seq Scan on jobs j (rows 1 × 2 loops, 0.00 ms, 99 removed by filter)"
        );
        assert!(plan.tree[5].starts_with(
            "    SubPlan 1: Index Only Scan Backward using retry_history_stream_attempt_key on \
             retry_history h"
        ));
    }

    #[test]
    fn a_plan_without_an_index_says_so() {
        let explain = json!([{
            "Plan": {"Node Type": "Seq Scan", "Relation Name": "jobs", "Alias": "jobs",
                     "Actual Rows": 5.0, "Actual Loops": 1.0},
            "Execution Time": 1.0
        }]);
        let plan = PlanSummary::from_explain(&explain).unwrap();
        assert_eq!(
            plan.access_summary(),
            "no index; sequential scans: jobs: Seq Scan"
        );
        assert!(PlanSummary::from_explain(&json!([])).is_err());
    }
}
