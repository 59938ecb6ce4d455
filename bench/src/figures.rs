//! The figure table every benchmark prints: a line per figure with retrylog's value, the
//! baseline's, the ratio, the goal and whether it was met; and the arithmetic and number
//! formatting behind it (medians, percentiles, milliseconds, thousands).

use std::time::Duration;

use serde_json::Value;

use retrylog::output::{Format, Rows};

/// How a figure is counted: both ways, a higher ratio is better for retrylog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Something per second; the ratio is retrylog ÷ baseline.
    PerSecond,
    /// A time in milliseconds; the ratio is baseline ÷ retrylog ("times as fast").
    Millis,
    /// A size in bytes (WAL per event); the ratio is baseline ÷ retrylog ("times as small").
    Bytes,
}

/// What a line has to show to meet its goal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The ratio is at least this.
    AtLeast(f64),
    /// retrylog's figure is below this, in the line's unit.
    Under(f64),
    /// A check holds (the line's `clean`): verify is clean, two answers are equal.
    Holds(&'static str),
}

/// One line of the output, before it is formatted.
#[derive(Debug, Clone)]
pub struct Line {
    pub figure: &'static str,
    /// What was measured, for people (the table's only description of the line).
    pub condition: String,
    pub connections: Option<u32>,
    pub events: Option<u64>,
    pub unit: Unit,
    /// retrylog's figure (`None` for a line that only checks something).
    pub ours: Option<f64>,
    /// The baseline's name and figure.
    pub baseline: Option<(String, f64)>,
    pub goal: Option<Goal>,
    /// For a check (verify, equal answers): whether it held.
    pub clean: Option<bool>,
}

/// A verify run: was it clean, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct VerifyFigure {
    pub events: u64,
    pub streams: u64,
    pub mismatches: usize,
    pub seconds: f64,
}

impl Line {
    /// A line with a figure, no baseline and no goal yet.
    pub fn new(figure: &'static str, condition: String, unit: Unit, ours: f64) -> Self {
        Line {
            figure,
            condition,
            connections: None,
            events: None,
            unit,
            ours: Some(ours),
            baseline: None,
            goal: None,
            clean: None,
        }
    }

    /// A line that only checks something: no figure, the goal that `what` holds, and
    /// whether it did.
    pub fn check(figure: &'static str, condition: String, what: &'static str, held: bool) -> Self {
        Line {
            figure,
            condition,
            connections: None,
            events: None,
            unit: Unit::Millis,
            ours: None,
            baseline: None,
            goal: Some(Goal::Holds(what)),
            clean: Some(held),
        }
    }

    /// The verify line: its speed, and the check that it is clean.
    pub fn verify(condition: &str, verify: &VerifyFigure) -> Self {
        let mut line = Line::new(
            "verify events/s",
            format!(
                "{condition}: {} events in {} streams, {}",
                thousands(verify.events as f64),
                thousands(verify.streams as f64),
                if verify.mismatches == 0 {
                    "clean".to_string()
                } else {
                    format!("{} mismatch(es)", verify.mismatches)
                }
            ),
            Unit::PerSecond,
            verify.events as f64 / verify.seconds,
        )
        .events(verify.events)
        .goal(Goal::Holds("clean"));
        line.clean = Some(verify.mismatches == 0);
        line
    }

    pub fn baseline(mut self, name: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    pub fn events(mut self, events: u64) -> Self {
        self.events = Some(events);
        self
    }

    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = Some(connections);
        self
    }

    /// How many times better than the baseline retrylog is.
    fn ratio(&self) -> Option<f64> {
        let ours = self.ours?;
        let (_, baseline) = self.baseline.as_ref()?;
        Some(match self.unit {
            Unit::PerSecond => ours / baseline,
            Unit::Millis | Unit::Bytes => baseline / ours,
        })
    }

    fn met(&self) -> Option<bool> {
        match (self.goal?, self.ratio(), self.ours) {
            (Goal::AtLeast(minimum), Some(ratio), _) => Some(ratio >= minimum),
            (Goal::Under(limit), _, Some(ours)) => Some(ours < limit),
            (Goal::Holds(_), _, _) => self.clean,
            _ => None,
        }
    }
}

/// The figures as rows: formatted for people in a table; plain numbers in JSON and CSV, with
/// `machine_columns` (connections, events, unit) as columns of their own after the condition.
pub fn figure_table(lines: &[Line], format: Format, machine_columns: &[&'static str]) -> Rows {
    let table = format == Format::Table;
    let mut columns = vec!["figure", "condition"];
    if !table {
        columns.extend_from_slice(machine_columns);
    }
    columns.extend_from_slice(&[
        "retrylog",
        "baseline",
        "baseline_value",
        "ratio",
        "goal",
        "met",
    ]);
    let value = |unit: Unit, value: f64| match (unit, table) {
        (Unit::PerSecond, true) => Value::from(format!("{}/s", thousands(value))),
        (Unit::PerSecond, false) => Value::from((value * 10.0).round() / 10.0),
        (Unit::Millis, true) => Value::from(millis(value)),
        (Unit::Millis, false) => Value::from((value * 1000.0).round() / 1000.0),
        (Unit::Bytes, true) => Value::from(format!("{} B", thousands(value))),
        (Unit::Bytes, false) => Value::from(value.round()),
    };
    let mut rows = Rows::new(&columns);
    for line in lines {
        let ratio = line.ratio();
        let met = line.met();
        let cells = columns
            .iter()
            .map(|column| match *column {
                "figure" => Value::from(line.figure),
                "condition" => Value::from(line.condition.clone()),
                "connections" => line.connections.map_or(Value::Null, Value::from),
                "events" => line.events.map_or(Value::Null, Value::from),
                "unit" => match (line.ours, line.unit) {
                    (None, _) => Value::Null,
                    (Some(_), Unit::PerSecond) => Value::from("per second"),
                    (Some(_), Unit::Millis) => Value::from("ms"),
                    (Some(_), Unit::Bytes) => Value::from("bytes"),
                },
                "retrylog" => line.ours.map_or(Value::Null, |ours| value(line.unit, ours)),
                "baseline" => line
                    .baseline
                    .as_ref()
                    .map_or(Value::Null, |(name, _)| Value::from(name.clone())),
                "baseline_value" => line
                    .baseline
                    .as_ref()
                    .map_or(Value::Null, |&(_, baseline)| value(line.unit, baseline)),
                "ratio" => match ratio {
                    Some(ratio) if table => Value::from(format!("{ratio:.2}×")),
                    Some(ratio) => Value::from((ratio * 1000.0).round() / 1000.0),
                    None => Value::Null,
                },
                "goal" => match line.goal {
                    Some(Goal::AtLeast(minimum)) if table => {
                        Value::from(format!("≥ {}×", short(minimum)))
                    }
                    Some(Goal::AtLeast(minimum)) => Value::from(minimum),
                    Some(Goal::Under(limit)) => match line.unit {
                        Unit::Millis => Value::from(format!("< {} ms", short(limit))),
                        Unit::PerSecond => Value::from(format!("< {}/s", short(limit))),
                        Unit::Bytes => Value::from(format!("< {} B", thousands(limit))),
                    },
                    Some(Goal::Holds(what)) => Value::from(what),
                    None => Value::Null,
                },
                "met" => match met {
                    Some(yes) if table => Value::from(if yes { "yes" } else { "NO" }),
                    Some(yes) => Value::from(yes),
                    None => Value::Null,
                },
                _ => Value::Null,
            })
            .collect();
        rows.push(cells);
    }
    rows
}

/// 2.0 → "2.0", 0.67 → "0.67", 100.0 → "100.0": at least one decimal, at most two.
fn short(value: f64) -> String {
    let text = format!("{value:.2}");
    match text.strip_suffix('0') {
        Some(shorter) => shorter.to_string(),
        None => text,
    }
}

/// A time for people: "0.253 ms", "4.21 ms", "42.1 ms", "4,512 ms".
fn millis(value: f64) -> String {
    if value >= 100.0 {
        format!("{} ms", thousands(value))
    } else if value >= 10.0 {
        format!("{value:.1} ms")
    } else if value >= 1.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.3} ms")
    }
}

/// 1234567.8 → "1,234,568".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// A duration in milliseconds, the unit of `Unit::Millis`.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn median_takes_the_middle_sample() {
        let samples = [3, 1, 2].map(Duration::from_secs).to_vec();
        assert_eq!(median(samples), Duration::from_secs(2));
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_millis(99));
        assert_eq!(
            percentile(&mut samples[..1], 0.99),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn goals_and_times_print_short() {
        assert_eq!(short(1.0), "1.0");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(0.67), "0.67");
        assert_eq!(short(100.0), "100.0");
        assert_eq!(millis(0.2534), "0.253 ms");
        assert_eq!(millis(4.214), "4.21 ms");
        assert_eq!(millis(42.14), "42.1 ms");
        assert_eq!(millis(4512.3), "4,512 ms");
    }

    #[test]
    fn ratios_favour_retrylog_in_both_units() {
        let rate = Line::new("x", String::new(), Unit::PerSecond, 300.0).baseline("b", 100.0);
        assert_eq!(rate.ratio(), Some(3.0));
        let time = Line::new("x", String::new(), Unit::Millis, 2.0)
            .baseline("b", 200.0)
            .goal(Goal::AtLeast(100.0));
        assert_eq!(time.ratio(), Some(100.0));
        assert_eq!(time.met(), Some(true));
        let slow = Line::new("x", String::new(), Unit::Millis, 2.5).goal(Goal::Under(2.0));
        assert_eq!(slow.met(), Some(false));
    }
}
