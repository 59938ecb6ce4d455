//! `report trend --format svg`: the trend as a hand-written SVG line chart — retries per
//! bucket on top (solid) with the recovered ones among them (dashed, the group's colour), the
//! retry rate below, one colour per group, a shared time axis and a legend with each group's
//! totals.
//!
//! Every colour that is not a group's is both an attribute, so the file stands alone (light),
//! and a class (`chart-bg`, `chart-ink`, `chart-muted`, `chart-axis`, `chart-grid`,
//! `chart-key`), so the dashboard's stylesheet recolours the chart it embeds from its own
//! colour variables: dark with the page. CSS beats an SVG presentation attribute.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::report::{Bucket, Trend, TrendSource};
use crate::window::Moment;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
/// The retries panel.
const TOP_Y: f64 = 90.0;
const TOP_H: f64 = 270.0;
/// The rate panel.
const RATE_Y: f64 = 410.0;
const RATE_H: f64 = 150.0;
/// The legend lists at most this many groups (the rest are counted).
const LEGEND_GROUPS: usize = 22;
/// The dash of the recovered lines.
const DASH: &str = "6 4";

/// Tableau 10: distinct for the usual handful of groups, readable for colour-blind eyes.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// One group's lines.
struct Series {
    name: String,
    retries: Vec<i64>,
    /// Of `retries`, the recovered ones.
    recovered: Vec<i64>,
    rates: Vec<Option<f64>>,
}

/// How a line is drawn.
#[derive(Clone, Copy)]
struct Stroke<'a> {
    colour: &'a str,
    width: f64,
    /// Dashed, with hollow dots: the recovered series.
    dashed: bool,
    /// The path's class, naming its series (`retries`, `recovered`, `rate`).
    class: &'a str,
}

/// The SVG document for `trend` (read at `moment`).
pub fn render(trend: &Trend, moment: Moment) -> String {
    // 1. Columns: buckets in order, one series per group.
    let mut buckets: Vec<DateTime<Utc>> = trend.rows.iter().map(|row| row.bucket).collect();
    buckets.dedup();
    let mut series: Vec<Series> = Vec::new();
    for row in &trend.rows {
        let index = match series.iter().position(|s| s.name == row.group) {
            Some(index) => index,
            None => {
                series.push(Series {
                    name: row.group.clone(),
                    retries: vec![0; buckets.len()],
                    recovered: vec![0; buckets.len()],
                    rates: vec![None; buckets.len()],
                });
                series.len() - 1
            }
        };
        let column = buckets
            .binary_search(&row.bucket)
            .expect("every row's bucket is a column");
        series[index].retries[column] = row.retries;
        series[index].recovered[column] = row.recovered;
        series[index].rates[column] = row.retry_rate;
    }

    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |column: usize| {
        if buckets.len() <= 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * column as f64 / (buckets.len() - 1) as f64
        }
    };

    let mut svg = String::new();
    let bucket = trend.query.bucket;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect class="chart-bg" width="100%" height="100%" fill="#ffffff"/>"##
    );

    // 2. Title and what the chart was read from.
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="32" font-size="20" font-weight="bold" class="chart-ink" fill="#222">Retries per {bucket} by {by}</text>"##,
        by = trend.query.by,
    );
    let source = match (trend.source, moment) {
        (TrendSource::Log, Moment::AsOf(at)) => format!(
            "as of {} · counted from retry_history",
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        _ => "from the retry_rollup projection".to_string(),
    };
    let filling = if trend.to == bucket.start_of(moment.time()) {
        format!(" · the last {bucket} is still filling")
    } else {
        String::new()
    };
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="54" class="chart-muted" fill="#555">{} to {} (buckets in UTC) · {}{}</text>"##,
        label(trend.from, bucket, true),
        label(trend.to, bucket, true),
        escape(&source),
        filling,
    );

    if buckets.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="16" class="chart-muted" fill="#777">no buckets in this window</text></svg>"##,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }

    // 3. The retries panel: each group's retries, and dashed in its colour the recovered ones
    //    among them (never above the solid line). A group with nothing recovered in the window
    //    has no dashed line, rather than one hiding in the axis.
    let max_retries = series
        .iter()
        .flat_map(|s| s.retries.iter().copied())
        .max()
        .unwrap_or(0);
    let (retry_top, retry_step) = nice_scale(max_retries as f64, true);
    panel(
        &mut svg,
        TOP_Y,
        TOP_H,
        retry_top,
        retry_step,
        "retries",
        |value| format!("{value:.0}"),
    );
    let y_retries = |value: f64| TOP_Y + TOP_H - TOP_H * value / retry_top;
    let counts = |counts: &[i64]| -> Vec<Option<(f64, f64)>> {
        counts
            .iter()
            .enumerate()
            .map(|(column, &n)| Some((x(column), y_retries(n as f64))))
            .collect()
    };
    let dots = buckets.len() <= 62;
    for (index, s) in series.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let solid = Stroke {
            colour,
            width: 2.2,
            dashed: false,
            class: "retries",
        };
        line(&mut svg, &counts(&s.retries), solid, dots);
        if s.recovered.iter().any(|&n| n > 0) {
            let dashed = Stroke {
                width: 1.8,
                dashed: true,
                class: "recovered",
                ..solid
            };
            line(&mut svg, &counts(&s.recovered), dashed, dots);
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-size="11" class="chart-muted" fill="#777">solid: retries · dashed: of them recovered (the target moved on; outcome observed{})</text>"##,
        TOP_Y - 8.0,
        match moment {
            Moment::AsOf(at) => format!(" by {}", at.format("%Y-%m-%d %H:%M UTC")),
            Moment::Now(_) => String::new(),
        },
    );

    // 4. The rate panel: targets retried ÷ targets created; gaps where nothing was created.
    let max_rate = series
        .iter()
        .flat_map(|s| s.rates.iter().flatten().copied())
        .fold(0.0, f64::max);
    let (rate_top, rate_step) = nice_scale(max_rate.max(0.05), false);
    panel(
        &mut svg,
        RATE_Y,
        RATE_H,
        rate_top,
        rate_step,
        "retry rate",
        |value| format!("{:.0}%", value * 100.0),
    );
    let y_rate = |value: f64| RATE_Y + RATE_H - RATE_H * value / rate_top;
    for (index, s) in series.iter().enumerate() {
        let points: Vec<Option<(f64, f64)>> = s
            .rates
            .iter()
            .enumerate()
            .map(|(column, rate)| rate.map(|rate| (x(column), y_rate(rate))))
            .collect();
        let stroke = Stroke {
            colour: PALETTE[index % PALETTE.len()],
            width: 1.6,
            dashed: false,
            class: "rate",
        };
        line(&mut svg, &points, stroke, dots);
    }
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-size="11" class="chart-muted" fill="#777">rate = targets retried ÷ targets created in the bucket{}; gaps: nothing created</text>"##,
        RATE_Y - 8.0,
        if trend.query.by == crate::report::GroupBy::Kind {
            " of that kind"
        } else {
            ""
        },
    );

    // 5. The time axis, under both panels: a tick per bucket (when they fit), a label on
    //    round ones.
    let step = label_step(&buckets, bucket);
    for (column, start) in buckets.iter().enumerate() {
        let cx = x(column);
        let labelled = is_labelled(*start, column, step, bucket);
        if labelled || buckets.len() <= 120 {
            let _ = writeln!(
                svg,
                r##"<line x1="{cx:.1}" y1="{}" x2="{cx:.1}" y2="{}" class="chart-axis" stroke="#999"/>"##,
                RATE_Y + RATE_H,
                RATE_Y + RATE_H + if labelled { 6.0 } else { 3.0 }
            );
        }
        if labelled {
            let _ = writeln!(
                svg,
                r##"<text x="{cx:.1}" y="{}" text-anchor="middle" class="chart-ink" fill="#333">{}</text>"##,
                RATE_Y + RATE_H + 20.0,
                label(*start, bucket, false)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" class="chart-muted" fill="#555">{} (UTC)</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0,
        match bucket {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Week => "ISO week (starting Monday)",
        }
    );

    // 6. The legend: the two strokes of the retries panel, then each group with its totals in
    //    the window (retries / recovered).
    let legend_x = WIDTH - RIGHT + 24.0;
    let _ = writeln!(
        svg,
        r##"<text x="{legend_x}" y="{TOP_Y}" font-weight="bold" class="chart-ink" fill="#222">{}<tspan font-weight="normal" font-size="11" class="chart-muted" fill="#555"> (retries / recovered)</tspan></text>"##,
        trend.query.by
    );
    for (row, (name, dash)) in [("retries", None), ("recovered", Some(DASH))]
        .into_iter()
        .enumerate()
    {
        let y = TOP_Y + 20.0 + 18.0 * row as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" class="chart-key" stroke="#555" stroke-width="2"{}/><text x="{}" y="{}" font-size="11" class="chart-muted" fill="#555">{name}</text>"##,
            legend_x + 22.0,
            dash.map_or_else(String::new, |dash| format!(r#" stroke-dasharray="{dash}""#)),
            legend_x + 30.0,
            y + 4.0,
        );
    }
    let first_group_y = TOP_Y + 20.0 + 18.0 * 2.0 + 8.0;
    for (index, s) in series.iter().enumerate().take(LEGEND_GROUPS) {
        let y = first_group_y + 20.0 * index as f64;
        let total: i64 = s.retries.iter().sum();
        let recovered: i64 = s.recovered.iter().sum();
        let _ = writeln!(
            svg,
            r##"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}" class="chart-ink" fill="#222">{} ({total} / {recovered})</text>"##,
            legend_x + 22.0,
            PALETTE[index % PALETTE.len()],
            legend_x + 30.0,
            y + 4.0,
            escape(&truncate(&s.name, 20)),
        );
    }
    if series.len() > LEGEND_GROUPS {
        let _ = writeln!(
            svg,
            r##"<text x="{legend_x}" y="{}" class="chart-muted" fill="#777">… and {} more</text>"##,
            first_group_y + 20.0 * LEGEND_GROUPS as f64,
            series.len() - LEGEND_GROUPS
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A panel's frame: horizontal grid lines with their values, and the axis title.
fn panel(
    svg: &mut String,
    y: f64,
    height: f64,
    top: f64,
    step: f64,
    title: &str,
    value_label: impl Fn(f64) -> String,
) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let ticks = (top / step).round() as usize;
    for tick in 0..=ticks {
        let value = step * tick as f64;
        let ty = y + height - height * value / top;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" class="{}" stroke="{}"/><text x="{}" y="{:.1}" text-anchor="end" class="chart-ink" fill="#333">{}</text>"##,
            LEFT + plot_w,
            if tick == 0 {
                "chart-axis"
            } else {
                "chart-grid"
            },
            if tick == 0 { "#999" } else { "#e5e5e5" },
            LEFT - 8.0,
            ty + 4.0,
            value_label(value),
        );
    }
    let _ = writeln!(
        svg,
        r##"<text transform="translate({}, {}) rotate(-90)" text-anchor="middle" class="chart-muted" fill="#555">{title}</text>"##,
        LEFT - 52.0,
        y + height / 2.0
    );
}

/// A polyline through the points; `None` breaks it. Dots mark the points when there are few
/// (hollow on a dashed line, so they read apart from the solid line's where the two meet).
fn line(svg: &mut String, points: &[Option<(f64, f64)>], stroke: Stroke, dots: bool) {
    let Stroke {
        colour,
        width,
        dashed,
        class,
    } = stroke;
    let dash = if dashed {
        format!(r#" stroke-dasharray="{DASH}""#)
    } else {
        String::new()
    };
    let dot = |svg: &mut String, px: f64, py: f64| {
        let _ = if dashed {
            writeln!(
                svg,
                r##"<circle cx="{px:.1}" cy="{py:.1}" r="2.6" class="chart-bg" fill="#ffffff" stroke="{colour}" stroke-width="1.4"/>"##
            )
        } else {
            writeln!(
                svg,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="2.6" fill="{colour}"/>"#
            )
        };
    };
    let mut path = String::new();
    let mut pen_down = false;
    for point in points {
        match point {
            Some((px, py)) => {
                let _ = write!(path, "{}{px:.1},{py:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = writeln!(
            svg,
            r#"<path class="{class}" d="{}" fill="none" stroke="{colour}" stroke-width="{width}"{dash} stroke-linejoin="round"/>"#,
            path.trim_end()
        );
    }
    // A point with no neighbour draws no line: it always gets its dot.
    for (index, point) in points.iter().enumerate() {
        let Some((px, py)) = point else { continue };
        let alone = (index == 0 || points[index - 1].is_none())
            && points.get(index + 1).is_none_or(Option::is_none);
        if alone && !dots {
            dot(svg, *px, *py);
        }
    }
    if dots {
        for (px, py) in points.iter().flatten() {
            dot(svg, *px, *py);
        }
    }
}

/// A top of the axis at or above `max` and a step giving four to six round ticks; whole
/// numbers when `integer`.
fn nice_scale(max: f64, integer: bool) -> (f64, f64) {
    if max <= 0.0 {
        return (
            if integer { 5.0 } else { 1.0 },
            if integer { 1.0 } else { 0.2 },
        );
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude);
    let step = if integer { step.ceil().max(1.0) } else { step };
    ((max / step).ceil() * step, step)
}

/// At most this many labels fit under the axis.
const MAX_LABELS: usize = 9;

/// How many buckets apart the axis labels are: a round number of hours (1, 2, 3, 6, 12 or
/// whole days), days (1, 2, 3, 7, 14, ...) or weeks (1, 2, 4, ...), so at most [`MAX_LABELS`] fit.
fn label_step(buckets: &[DateTime<Utc>], bucket: Bucket) -> usize {
    let candidates: &[usize] = match bucket {
        Bucket::Hour => &[1, 2, 3, 6, 12, 24, 48, 168, 336, 672],
        Bucket::Day => &[1, 2, 3, 7, 14, 28, 56, 112, 364],
        Bucket::Week => &[1, 2, 4, 8, 13, 26, 52],
    };
    candidates
        .iter()
        .copied()
        .find(|step| buckets.len().div_ceil(*step) <= MAX_LABELS)
        .unwrap_or_else(|| buckets.len().div_ceil(MAX_LABELS))
}

/// Whether the bucket at `column` carries a label: hours on multiples of the step (midnight
/// for whole days), days and weeks every `step` from the first.
fn is_labelled(start: DateTime<Utc>, column: usize, step: usize, bucket: Bucket) -> bool {
    use chrono::Timelike;
    match bucket {
        Bucket::Hour if step < 24 => (start.hour() as usize).is_multiple_of(step),
        Bucket::Hour => {
            start.hour() == 0 && ((start.timestamp() / 86_400) as usize).is_multiple_of(step / 24)
        }
        Bucket::Day | Bucket::Week => column.is_multiple_of(step),
    }
}

/// A bucket's label: short under the axis (an hour shows its date at midnight), whole in the
/// subtitle.
fn label(start: DateTime<Utc>, bucket: Bucket, long: bool) -> String {
    use chrono::Timelike;
    let format = match (bucket, long) {
        (Bucket::Hour, false) if start.hour() == 0 => "%m-%d",
        (Bucket::Hour, false) => "%H:00",
        (Bucket::Hour, true) => "%Y-%m-%d %H:00",
        (Bucket::Day, false) => "%m-%d",
        (Bucket::Day, true) => "%Y-%m-%d",
        (Bucket::Week, false) => "W%V",
        (Bucket::Week, true) => "%G-W%V (%Y-%m-%d)",
    };
    start.format(format).to_string()
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(chars - 1).collect();
        short.push('…');
        short
    }
}

/// Text as XML character data.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_cover_the_maximum() {
        assert_eq!(nice_scale(0.0, true), (5.0, 1.0));
        assert_eq!(nice_scale(7.0, true), (8.0, 2.0));
        assert_eq!(nice_scale(3.0, true), (3.0, 1.0));
        assert_eq!(nice_scale(42.0, true), (50.0, 10.0));
        let (top, step) = nice_scale(0.37, false);
        assert!(top >= 0.37 && (top / step).round() <= 6.0, "{top} {step}");
    }

    #[test]
    fn group_names_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
