//! The figures of `retrylog-bench recovery` as lines of the table: the detection plans, the
//! first sweep against the counter-only baseline, the checks, the steady sweeps, verify.

use std::time::Duration;

use super::{watchdog_settings, Figures, RecoveryArgs, MAX_RETRIES};
use crate::figures::{median, ms, thousands, Goal, Line, Unit};

/// Issue 24's goal: the watchdog, retrying in batches, against the counter-only listener it
/// replaces.
const SWEEP_GOAL: f64 = 1.5;

/// Every figure as a line of the table.
pub fn figure_lines(args: &RecoveryArgs, figures: &Figures) -> Vec<Line> {
    let mut lines = Vec::new();
    let scale = format!(
        "{} jobs, {} variants",
        thousands(figures.jobs as f64),
        thousands(figures.variants as f64)
    );
    for detection in &figures.detections {
        for (kind, plan) in [
            ("custom", &detection.custom),
            ("generic", &detection.generic),
        ] {
            lines.push(Line::new(
                "detection",
                format!(
                    "{} ({kind} plan), {} row(s), median of {}: {}",
                    detection.scenario,
                    thousands(plan.rows),
                    args.explain_repeats,
                    plan.access_summary()
                ),
                Unit::Millis,
                plan.execution_ms,
            ));
        }
    }

    let first = &figures.first;
    let retried = first.summary.retried.len();
    let baseline_total: Duration = figures.baseline.values().sum();
    let baseline_conditions: i64 = figures.seeded.values().map(|s| s.baseline).sum();
    lines.push(Line::new(
        "first sweep",
        format!(
            "recovery::sweep(Scope::Everything) at start, {scale}: {} detected, {} retried, {} \
             noted at the limit, {} skipped, {} failed",
            thousands(first.summary.detected as f64),
            thousands(retried as f64),
            first.summary.noted,
            first.summary.skipped,
            first.summary.failed,
        ),
        Unit::Millis,
        ms(first.took),
    ));
    lines.push(
        Line::new(
            "retries/s",
            format!(
                "first sweep, in batches of {} per transaction: {} retries in {:.2} s \
                 (detection, claims and {} notes included)",
                watchdog_settings().batch_size,
                thousands(retried as f64),
                first.took.as_secs_f64(),
                first.summary.noted
            ),
            Unit::PerSecond,
            retried as f64 / first.took.as_secs_f64(),
        )
        .baseline(
            format!(
                "counter-only UPDATE, {} conditions, no detection",
                thousands(baseline_conditions as f64)
            ),
            baseline_conditions as f64 / baseline_total.as_secs_f64(),
        )
        .goal(Goal::AtLeast(SWEEP_GOAL)),
    );
    for &(scenario, retried, noted, took) in &first.scenarios {
        let baseline = figures.seeded.get(&scenario).map_or(0, |s| s.baseline);
        let mut line = Line::new(
            "retries/s",
            format!(
                "{scenario}: {} retried, {noted} noted, {:.2} s of the sweep",
                thousands(retried as f64),
                took.as_secs_f64()
            ),
            Unit::PerSecond,
            retried as f64 / took.as_secs_f64().max(f64::EPSILON),
        );
        if let Some(time) = figures.baseline.get(&scenario) {
            line = line.baseline(
                format!(
                    "counter-only UPDATE, {} conditions",
                    thousands(baseline as f64)
                ),
                baseline as f64 / time.as_secs_f64().max(f64::EPSILON),
            );
        }
        lines.push(line);
    }
    for (scenario, check) in &figures.checks {
        lines.push(Line::check(
            "retried once",
            format!(
                "{scenario}: seeded {}, the log has {} event(s) of the watchdog, {} target(s) \
                 with exactly one",
                thousands(check.seeded as f64),
                thousands(check.events as f64),
                thousands(check.once as f64)
            ),
            "= seeded",
            check.retried_once(),
        ));
    }
    let at_limit: i64 = figures.checks.values().map(|c| c.at_limit).sum();
    let noted: i64 = figures.checks.values().map(|c| c.noted).sum();
    let noted_only: i64 = figures.checks.values().map(|c| c.noted_only).sum();
    lines.push(Line::check(
        "interventions",
        format!(
            "at the limit ({MAX_RETRIES}): seeded {at_limit}, noted {noted}, {noted_only} of \
             them with no event and no state change; {} event(s) on targets not seeded",
            figures.strays
        ),
        "= seeded",
        figures.checks.values().all(|c| c.noted_once()) && figures.strays == 0,
    ));

    if let Some(&(second, detected)) = figures.steady.first() {
        lines.push(Line::new(
            "steady sweep",
            format!("the second sweep, nothing left to do ({detected} detected), {scale}"),
            Unit::Millis,
            ms(second),
        ));
    }
    if figures.steady.len() > 1 {
        let detected: usize = figures.steady.iter().map(|&(_, d)| d).sum();
        let caches = figures
            .plan_cache
            .iter()
            .map(|(s, c)| format!("{s} {}/{}", c.generic, c.generic + c.custom))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(Line::new(
            "steady sweep",
            format!(
                "median of {} sweeps with nothing to do ({detected} detected); detections \
                 planned generically: {caches}",
                figures.steady.len()
            ),
            Unit::Millis,
            ms(median(
                figures.steady.iter().map(|&(took, _)| took).collect(),
            )),
        ));
    }

    lines.push(Line::verify("after the sweeps", &figures.verify));
    lines
}
