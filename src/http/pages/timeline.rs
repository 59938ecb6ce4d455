//! The target page's timeline: `history`'s rows for one target, narrowed by the filters of
//! `retrylog history` and `GET /api/v1/history` — one definition, [`HistoryArgs`] parsed from
//! the URL by the same [`flags::try_parse`] and resolved by the same `cmd::history::rows` — and
//! shown for people: each attempt with its outcome and its why, the target's own id said once
//! in the heading rather than on every row (a job's page names the variant an event is of),
//! and the detail as key/values that wrap rather than being cut.
//!
//! The history has no row limit (a target's events are bounded by its retry limit and the
//! recoveries by hand), so the timeline is one page: there is nothing to page through.

use serde_json::Value;
use uuid::Uuid;

use super::{typed, FilterError, FormProblem};
use crate::cli::HistoryArgs;
use crate::cmd::history;
use crate::http::{flags, ApiContext, Error};
use crate::output::{Format, Rows};
use crate::window::WindowError;

/// The fields of the timeline's form: `history`'s filters, by their parameter names.
pub const FIELDS: &[&str] = &["reason", "step", "actor", "since", "until"];

/// The free-text fields of the form (`reason` is a list), in the form's order, each with an
/// example of what it takes.
const TEXT_FIELDS: &[(&str, &str)] = &[
    ("step", "prepare"),
    ("actor", "cli:alice"),
    ("since", "7d"),
    ("until", "2026-11-01"),
];

/// A timeline as the page shows it: the form as typed, its refusal if any, the entries.
#[derive(Debug)]
pub struct Timeline {
    /// Each field's value as typed (empty: not filtered), in [`FIELDS`]' order.
    pub values: Vec<(&'static str, String)>,
    /// Where a refusal of the URL's filters shows; refused, the timeline has no entries.
    pub problem: FormProblem,
    /// Whether any filter narrows the timeline (the page then offers to clear them).
    pub filtered: bool,
    /// Whether the entries say which variant each is of: a job's page, where the timeline
    /// holds its variants' events too.
    pub of_column: bool,
    pub entries: Vec<Entry>,
}

impl Timeline {
    /// The value of field `name` as typed.
    pub fn value(&self, name: &str) -> &str {
        self.values
            .iter()
            .find(|(field, _)| *field == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// The free-text fields, their values and examples, for the form.
    pub fn text_fields(&self) -> Vec<(&'static str, &str, &'static str)> {
        TEXT_FIELDS
            .iter()
            .map(|(name, example)| (*name, self.value(name), *example))
            .collect()
    }

    /// How many columns the table has (a detail spans them all).
    pub fn columns(&self) -> usize {
        if self.of_column {
            9
        } else {
            8
        }
    }

    /// Whether the form's reason list shows `reason` chosen.
    pub fn chosen(&self, reason: &str) -> bool {
        self.value("reason") == reason
    }

    /// The reasons the form lists.
    pub fn reasons(&self) -> &'static [&'static str] {
        <crate::event::RetryReason as strum::VariantNames>::VARIANTS
    }
}

/// One row of the timeline: a retry, or the watchdog's note where the retry limit stopped one.
#[derive(Debug)]
pub struct Entry {
    /// `retry`, or `needs_intervention` for a note.
    pub entry: String,
    /// The attempt's number; empty for a note.
    pub attempt: String,
    /// On a job's page, the variant the row is of; `None` for the job's own rows.
    pub of: Option<String>,
    pub occurred_at: String,
    pub reason: String,
    pub step: String,
    /// `from → to`, the status the retry moved the target between.
    pub change: String,
    /// The retry's outcome (`open` until the pipeline says) and the seconds it took; empty for
    /// a note.
    pub outcome: String,
    pub why: String,
    pub actor: String,
    /// The detail's keys and values, whole.
    pub detail: Vec<DetailValue>,
}

/// One key of an event's detail and its value, as text.
#[derive(Debug)]
pub struct DetailValue {
    pub key: String,
    /// A string as it is (no quotes), a number as written, an object or array as indented JSON.
    pub text: String,
    /// Whether `text` is indented JSON, kept on its lines.
    pub nested: bool,
}

/// The page's filters from the URL: blank fields left out (a form sends every field, and a
/// blank one filters nothing), the target added from the page's address.
fn args(params: &[(String, String)], variant: bool, id: Uuid) -> Result<HistoryArgs, FilterError> {
    let mut given: Vec<(String, String)> = Vec::with_capacity(params.len() + 1);
    for (name, value) in params {
        if name == "job_id" || name == "variant_id" {
            return Err(FilterError {
                field: Some(name.clone()),
                message: format!("{name}: the page's address names its target; leave it out"),
            });
        }
        if !value.trim().is_empty() {
            given.push((name.clone(), value.trim().to_string()));
        }
    }
    let target = if variant { "variant_id" } else { "job_id" };
    given.push((target.to_string(), id.to_string()));
    Ok(flags::try_parse(&given)?)
}

/// The timeline of the job or variant `id`, narrowed by the URL's `params`. A filter the
/// history refuses gives a timeline with the refusal and no entries; an id nobody knows is
/// the history's 404.
pub async fn load(
    ctx: &ApiContext,
    params: &[(String, String)],
    variant: bool,
    id: Uuid,
) -> Result<Timeline, Error> {
    let values: Vec<(&'static str, String)> = FIELDS
        .iter()
        .map(|name| (*name, typed(params, name, "").trim().to_string()))
        .collect();
    let filtered = values.iter().any(|(_, value)| !value.is_empty());
    let mut timeline = Timeline {
        values,
        problem: FormProblem::new(None, FIELDS),
        filtered,
        of_column: !variant,
        entries: Vec::new(),
    };
    let refused = |timeline: Timeline, problem: FilterError| {
        Ok(Timeline {
            problem: FormProblem::new(Some(problem), FIELDS),
            ..timeline
        })
    };
    let args = match args(params, variant, id) {
        Ok(args) => args,
        Err(problem) => return refused(timeline, problem),
    };
    let rows = match history::rows(ctx.reads(), &args, Format::Table).await {
        Ok(rows) => rows,
        Err(error) => match error.downcast::<WindowError>() {
            Ok(window) => return refused(timeline, window.into()),
            Err(other) => return Err(other.into()),
        },
    };
    timeline.entries = entries(&rows);
    Ok(timeline)
}

/// `history`'s table rows as entries.
fn entries(rows: &Rows) -> Vec<Entry> {
    let at = |name: &str| rows.columns.iter().position(|column| *column == name);
    let (target, detail) = (at("target"), at("detail"));
    rows.rows
        .iter()
        .map(|row| {
            let text = |name: &str| match at(name).map(|i| &row[i]) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            };
            let of = target
                .and_then(|i| row[i].as_str())
                .and_then(|target| target.strip_prefix("variant "))
                .map(str::to_string);
            let change = match (text("from_status"), text("to_status")) {
                (from, to) if from.is_empty() && to.is_empty() => String::new(),
                (from, to) if to.is_empty() => format!("{from} (kept)"),
                (from, to) => format!("{from} → {to}"),
            };
            let outcome = match at("seconds_to_result").and_then(|i| row[i].as_f64()) {
                Some(seconds) => format!("{} after {}", text("outcome"), took(seconds)),
                None => text("outcome"),
            };
            // The table's detail is the JSON text of the event's detail: read back, whole.
            let detail = detail
                .and_then(|i| row[i].as_str())
                .map(|json| serde_json::from_str(json).unwrap_or(Value::String(json.into())))
                .map_or_else(Vec::new, |value| key_values(&value));
            Entry {
                entry: text("entry"),
                attempt: text("attempt"),
                of,
                occurred_at: text("occurred_at"),
                reason: text("reason"),
                step: text("step"),
                change,
                outcome,
                why: text("why"),
                actor: text("actor"),
                detail,
            }
        })
        .collect()
}

/// How long a retry took to its result, for people: tenths of a second under a minute, else
/// its two largest units (`12m 5s`, `23h 0m`, `2d 3h`).
fn took(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds as u64;
    let (days, hours, minutes) = (whole / 86_400, whole / 3_600 % 24, whole / 60 % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m {}s", whole % 60),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// A detail's keys and values; a detail that is not an object is one value under `detail`.
fn key_values(detail: &Value) -> Vec<DetailValue> {
    let shown = |key: &str, value: &Value| match value {
        Value::String(text) => DetailValue {
            key: key.to_string(),
            text: text.clone(),
            nested: false,
        },
        Value::Object(_) | Value::Array(_) => DetailValue {
            key: key.to_string(),
            text: serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()),
            nested: true,
        },
        other => DetailValue {
            key: key.to_string(),
            text: other.to_string(),
            nested: false,
        },
    };
    match detail {
        Value::Object(map) => map.iter().map(|(key, value)| shown(key, value)).collect(),
        Value::Null => Vec::new(),
        other => vec![shown("detail", other)],
    }
}
