//! Printing data: the same rows as a human table, JSON (an array of objects keyed by column
//! name, for scripts) or CSV.

use std::io::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use serde_json::{Map, Value};

use crate::event::RetryEvent;
use crate::intervention::Intervention;

/// How a command prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// An array of row objects keyed by column name.
    Json,
    /// A header line, then one line per row.
    Csv,
}

/// Rows of typed cells under named columns: what every printing command produces.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Column names, also the JSON keys and the CSV header.
    pub columns: Vec<&'static str>,
    /// One `Value` per column; `Null` prints as an empty cell.
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// Rows with these column names and no data yet.
    pub fn new(columns: &[&'static str]) -> Self {
        Rows {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds one row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Writes the rows in `format` to `out`.
    pub fn write(&self, format: Format, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            Format::Table => {
                let mut table = comfy_table::Table::new();
                table.load_preset(UTF8_FULL_CONDENSED);
                table.set_header(self.columns.iter().copied());
                for row in &self.rows {
                    table.add_row(row.iter().map(cell_text));
                }
                writeln!(out, "{table}")
            }
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, &self.to_json())?;
                writeln!(out)
            }
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(&self.columns)?;
                for row in &self.rows {
                    writer.write_record(row.iter().map(cell_text))?;
                }
                writer.flush()
            }
        }
    }

    /// The rows as `--format json` prints them (and the HTTP API answers): an array of
    /// objects keyed by column name.
    pub fn to_json(&self) -> Value {
        let objects: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|column| column.to_string())
                    .zip(row.iter().cloned())
                    .collect();
                Value::Object(object)
            })
            .collect();
        Value::Array(objects)
    }

    /// Prints the rows on stdout.
    pub fn print(&self, format: Format) -> std::io::Result<()> {
        self.write(format, &mut std::io::stdout().lock())
    }
}

/// A cell as text: strings bare, null empty, anything else as JSON.
fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The columns every event listing has, in this order.
pub const EVENT_COLUMNS: &[&str] = &[
    "seq",
    "target",
    "job_id",
    "job_variants_id",
    "attempt",
    "reason",
    "step",
    "from_status",
    "to_status",
    "actor",
    "occurred_at",
    "recorded_at",
    "event_id",
    "detail",
    "hash",
];

/// Events as rows. The table is for people, so it leaves out the ids a target label already
/// says and shortens the hash; JSON and CSV keep every column whole.
pub fn event_rows(events: &[RetryEvent], format: Format) -> Rows {
    let table = format == Format::Table;
    let columns: Vec<&'static str> = EVENT_COLUMNS
        .iter()
        .copied()
        .filter(|column| {
            !table
                || !matches!(
                    *column,
                    "job_id" | "job_variants_id" | "recorded_at" | "event_id"
                )
        })
        .collect();
    let mut rows = Rows::new(&columns);
    for event in events {
        let cells = columns
            .iter()
            .map(|column| match *column {
                "seq" => Value::from(event.seq),
                "target" => Value::from(event.target().to_string()),
                "job_id" => Value::from(event.job_id.to_string()),
                "job_variants_id" => event
                    .job_variants_id
                    .map_or(Value::Null, |id| Value::from(id.to_string())),
                "attempt" => Value::from(event.attempt),
                "reason" => Value::from(event.reason.to_string()),
                "step" => event.step.clone().map_or(Value::Null, Value::from),
                "from_status" => event.from_status.clone().map_or(Value::Null, Value::from),
                "to_status" => event.to_status.clone().map_or(Value::Null, Value::from),
                "actor" => Value::from(event.actor.clone()),
                "occurred_at" => Value::from(timestamp(event.occurred_at, table)),
                "recorded_at" => Value::from(timestamp(event.recorded_at, table)),
                "event_id" => Value::from(event.event_id.to_string()),
                "detail" if table => Value::from(event.detail.to_string()),
                "detail" => event.detail.clone(),
                "hash" if table => Value::from(event.hash_hex()[..12].to_string()),
                "hash" => Value::from(event.hash_hex()),
                _ => Value::Null,
            })
            .collect();
        rows.push(cells);
    }
    rows
}

/// A history: the events, with each note of a target the retry limit stopped placed where it
/// happened, under an extra first column `entry` (`retry` or `needs_intervention`). A note has
/// no seq, attempt, event id or hash; its `from_status` is the status the target kept, its
/// `reason` the one the retry would have had, its times when it was noted.
pub fn history_rows(events: &[RetryEvent], notes: &[Intervention], format: Format) -> Rows {
    let listed = event_rows(events, format);
    let mut columns = vec!["entry"];
    columns.extend(listed.columns.iter().copied());
    let mut rows = Rows::new(&columns);
    let mut notes = notes.iter().peekable();
    for (event, cells) in events.iter().zip(listed.rows) {
        while let Some(note) = notes.next_if(|note| note.noted_at < event.recorded_at) {
            rows.push(note_cells(note, &columns, format));
        }
        let mut row = vec![Value::from("retry")];
        row.extend(cells);
        rows.push(row);
    }
    for note in notes {
        rows.push(note_cells(note, &columns, format));
    }
    rows
}

/// One note as a history row under `columns`.
fn note_cells(note: &Intervention, columns: &[&'static str], format: Format) -> Vec<Value> {
    let table = format == Format::Table;
    columns
        .iter()
        .map(|column| match *column {
            "entry" => Value::from("needs_intervention"),
            "target" => Value::from(note.target().to_string()),
            "job_id" => Value::from(note.job_id.to_string()),
            "job_variants_id" => note
                .job_variants_id
                .map_or(Value::Null, |id| Value::from(id.to_string())),
            "reason" => Value::from(note.reason.to_string()),
            "step" => note.step.clone().map_or(Value::Null, Value::from),
            "from_status" => note.status.clone().map_or(Value::Null, Value::from),
            "actor" => Value::from(note.actor.clone()),
            "occurred_at" | "recorded_at" => Value::from(timestamp(note.noted_at, table)),
            "detail" if table => Value::from(note.detail.to_string()),
            "detail" => note.detail.clone(),
            _ => Value::Null,
        })
        .collect()
}

/// RFC 3339 for machines; seconds precision, UTC, for people.
fn timestamp(at: chrono::DateTime<chrono::Utc>, table: bool) -> String {
    if table {
        at.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }
}
