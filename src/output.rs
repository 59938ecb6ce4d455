//! Printing data: the same rows as a human table, JSON (an array of objects keyed by column
//! name, for scripts) or CSV. A table printed on a terminal is fitted to its width unless
//! `--wide`: headers wrap at their `_`, the widest columns other than ids are cut (`…`), and a
//! table that cannot fit its ids (or too many columns) becomes one record per row, like psql's
//! expanded display. Ids are never cut, in a table or a record: a column is an id when its
//! name is one of [`ID_COLUMNS`] (`job_id`, `job_variants_id`, `event_id`, `id`, and `target`,
//! which reads `variant <uuid>`), the names every table of retrylog gives its ids. Anything
//! else (a pipe, a file) gets every value whole.
//!
//! A table is for people: every cell shows control, bidirectional and zero-width characters
//! escaped (`text::for_table`), wherever it goes — a `detail`, or a pipeline's own row, may
//! hold any of them. JSON stays exact (JSON escapes what it must). CSV is for spreadsheets:
//! a text cell a spreadsheet would evaluate as a formula is neutralised ([`csv_cell`]); every
//! CSV retrylog writes goes through here.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use serde_json::{Map, Value};

use crate::event::RetryEvent;
use crate::intervention::Intervention;
use crate::outcome::{RetryOutcome, OPEN};
use crate::text::for_table;
use crate::why::why;

/// How a command prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// An array of row objects keyed by column name.
    Json,
    /// A header line, then one line per row; a text cell beginning with = + - @ ' tab or
    /// carriage return gets a leading ' so a spreadsheet shows it rather than evaluating it
    /// (numbers stay numbers; --format json is exact).
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

    /// Writes the rows in `format` to `out`, every value whole.
    pub fn write(&self, format: Format, out: &mut impl Write) -> std::io::Result<()> {
        self.write_fitted(format, None, out)
    }

    /// Writes the rows; a table is fitted into `width` columns when one is given.
    fn write_fitted(
        &self,
        format: Format,
        width: Option<u16>,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        match format {
            Format::Table => {
                let cells: Vec<Vec<String>> = self
                    .rows
                    .iter()
                    .map(|row| row.iter().map(|cell| for_table(&cell_text(cell))).collect())
                    .collect();
                match width.map(|width| fit(&self.columns, &cells, usize::from(width))) {
                    None | Some(Fit::Whole) => self.write_table(&cells, None, out),
                    Some(Fit::Columns(widths)) => self.write_table(&cells, Some(&widths), out),
                    Some(Fit::Records(width)) => self.write_records(&cells, width, out),
                }
            }
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, &self.to_json())?;
                writeln!(out)
            }
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(&self.columns).map_err(csv_io)?;
                for row in &self.rows {
                    writer
                        .write_record(row.iter().map(csv_cell))
                        .map_err(csv_io)?;
                }
                writer.flush()
            }
        }
    }

    /// The rows as `--format json` prints them (and the HTTP API answers): an array of
    /// objects keyed by column name.
    pub fn to_json(&self) -> Value {
        Value::Array(
            (0..self.rows.len())
                .filter_map(|i| self.object(i))
                .collect(),
        )
    }

    /// Row `index` as one object keyed by column name (the element of [`Rows::to_json`]):
    /// what the API answers for a write, which stores one event.
    pub fn object(&self, index: usize) -> Option<Value> {
        let row = self.rows.get(index)?;
        let object: Map<String, Value> = self
            .columns
            .iter()
            .map(|column| column.to_string())
            .zip(row.iter().cloned())
            .collect();
        Some(Value::Object(object))
    }

    /// Prints the rows on stdout: a table fitted to the terminal (see [`fit_tables`]).
    pub fn print(&self, format: Format) -> std::io::Result<()> {
        let width = TABLE_WIDTH.get().copied().flatten();
        self.write_fitted(format, width, &mut std::io::stdout().lock())
    }

    /// The table; with `widths`, each column that wide: headers wrapped at `_`, the cells of
    /// every column but an id cut (`…` where cut).
    fn write_table(
        &self,
        cells: &[Vec<String>],
        widths: Option<&[usize]>,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let mut table = comfy_table::Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(self.columns.iter().enumerate().map(|(i, column)| {
            widths.map_or_else(
                || column.to_string(),
                |widths| wrap_header(column, widths[i]),
            )
        }));
        for row in cells {
            table.add_row(row.iter().enumerate().map(|(i, cell)| match widths {
                Some(widths) if !is_id(self.columns[i]) => elide(cell, widths[i]),
                _ => cell.clone(),
            }));
        }
        writeln!(out, "{table}")
    }

    /// Each row as a record, one `column │ value` line per column (psql's expanded display),
    /// values cut to what `width` leaves them, ids whole (the terminal wraps one too long).
    fn write_records(
        &self,
        cells: &[Vec<String>],
        width: usize,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let label = self
            .columns
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0);
        let room = width.saturating_sub(label + 3).max(1);
        for (n, row) in cells.iter().enumerate() {
            let title = format!("─[ {} ]", n + 1);
            let rule = "─".repeat(width.saturating_sub(title.chars().count()));
            writeln!(out, "{title}{rule}")?;
            for (column, value) in self.columns.iter().zip(row) {
                if is_id(column) {
                    writeln!(out, "{column:<label$} │ {value}")?;
                } else {
                    writeln!(out, "{column:<label$} │ {}", elide(value, room))?;
                }
            }
        }
        if cells.is_empty() {
            writeln!(out, "(no rows)")?;
        }
        Ok(())
    }
}

/// The column names whose values are ids: UUIDs, or a target's label (`variant <uuid>`). An id
/// cut with `…` cannot be searched for, pasted into `--variant-id` or told from its siblings
/// (they share their first 30 characters), so ids are never cut on a terminal: other columns
/// give way first, and a table that cannot fit its ids becomes records. The dashboard links
/// the cells of the same columns to target pages.
pub const ID_COLUMNS: &[&str] = &["job_id", "job_variants_id", "event_id", "id", "target"];

/// Whether the column holds ids (see [`ID_COLUMNS`]).
fn is_id(column: &str) -> bool {
    ID_COLUMNS.contains(&column)
}

/// How a table meets a width.
#[derive(Debug, PartialEq, Eq)]
enum Fit {
    /// It fits as it is.
    Whole,
    /// It fits with each column this wide: ids whole, headers wrapped at their `_`, the widest
    /// other columns cut to a common cap (none below [`MIN_FITTED_COLUMN`]).
    Columns(Vec<usize>),
    /// Its ids, or its columns at their narrowest, do not fit: one record per row instead,
    /// this wide.
    Records(usize),
}

/// The narrowest a cut column gets before the table turns into records.
const MIN_FITTED_COLUMN: usize = 12;

/// A header's pieces, each ending after a `_` (`avg_`, `retry_`, `count`): where it may wrap.
fn header_pieces(header: &str) -> Vec<&str> {
    header.split_inclusive('_').collect()
}

/// `header` on lines at most `width` wide, broken after a `_`; a piece wider than `width`
/// is cut.
fn wrap_header(header: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for piece in header_pieces(header) {
        if !line.is_empty() && line.chars().count() + piece.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        line.push_str(piece);
    }
    lines.push(line);
    lines
        .iter()
        .map(|line| elide(line, width.max(1)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How `columns` and `cells` fit into `width` characters: as they are; with headers wrapped,
/// ids whole and the widest other columns cut to a common cap; or as records.
fn fit(columns: &[&str], cells: &[Vec<String>], width: usize) -> Fit {
    let count = columns.len();
    let cell_width: Vec<usize> = (0..count)
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header_width: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    let header_piece: Vec<usize> = columns
        .iter()
        .map(|c| {
            header_pieces(c)
                .iter()
                .map(|piece| piece.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    // UTF8_FULL_CONDENSED: a border before each column and after the last, one space of
    // padding on each side of a cell.
    let room = width.saturating_sub(3 * count + 1);
    let natural: usize = (0..count).map(|i| cell_width[i].max(header_width[i])).sum();
    if natural <= room {
        return Fit::Whole;
    }
    // Each column's width when the cells of all but the ids are cut to `cap`, every header
    // wrapped as far as it goes.
    let widths = |cap: usize| -> Vec<usize> {
        (0..count)
            .map(|i| {
                if is_id(columns[i]) {
                    cell_width[i].max(header_piece[i])
                } else {
                    cell_width[i].min(cap).max(header_piece[i].min(cap))
                }
            })
            .collect()
    };
    let widest = (0..count)
        .filter(|i| !is_id(columns[*i]))
        .map(|i| cell_width[i])
        .max()
        .unwrap_or(0)
        .max(MIN_FITTED_COLUMN);
    for cap in (MIN_FITTED_COLUMN..=widest).rev() {
        let mut widths = widths(cap);
        let used: usize = widths.iter().sum();
        if used > room {
            continue;
        }
        // What is left unwraps headers, leftmost first, each only as a whole.
        let mut spare = room - used;
        for (i, width) in widths.iter_mut().enumerate() {
            let more = header_width[i].saturating_sub(*width);
            if more > 0 && more <= spare {
                *width += more;
                spare -= more;
            }
        }
        return Fit::Columns(widths);
    }
    Fit::Records(width)
}

/// `text` cut to `max` characters, the last one `…` when anything was cut.
fn elide(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// The width tables printed on stdout are fitted to; `None`: no limit. Set once per process.
static TABLE_WIDTH: OnceLock<Option<u16>> = OnceLock::new();

/// Decides, once per process, how wide the tables [`Rows::print`] prints may be: the
/// terminal's width when stdout is a terminal and `wide` is false, else unlimited (a pipe or
/// a file gets every value whole).
pub fn fit_tables(wide: bool) {
    let width = if wide || !std::io::stdout().is_terminal() {
        None
    } else {
        terminal_size::terminal_size_of(std::io::stdout()).map(|(width, _)| width.0)
    };
    let _ = TABLE_WIDTH.set(width.filter(|width| *width > 0));
}

/// A cell as text: strings bare, null empty, anything else as JSON.
fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A CSV writer's error as the I/O error it wraps when it is one: csv's own conversion hides
/// the cause (its error has no `source`), and a closed pipe must stay recognisable as one
/// (`cmd::exit::closed_pipe`).
fn csv_io(error: csv::Error) -> std::io::Error {
    if error.is_io_error() {
        if let csv::ErrorKind::Io(io) = error.into_kind() {
            return io;
        }
        unreachable!("is_io_error says it is one");
    }
    std::io::Error::other(error)
}

/// What a text cell may not begin with in CSV: OWASP's list of the characters that make a
/// spreadsheet evaluate a cell (`=`, `+`, `-`, `@`, tab, carriage return), and `'`, the
/// neutralising quote itself, so that the rule can be undone exactly.
const FORMULA_STARTS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// A cell as CSV writes it. A JSON number (`seq`, `attempt`, a count, a rate, seconds) is a
/// number and is written as it is, `-3` included. Every other cell is text — also a text
/// column's value that looks like a number, such as a step named `-3` — and text beginning
/// with one of [`FORMULA_STARTS`] gets one leading `'` (OWASP's CSV injection rule): a
/// spreadsheet shows `'=HYPERLINK(…)` instead of evaluating it. Since text that began with
/// `'` gets one too, removing one leading `'` from every cell that has one gives back the
/// exact values.
fn csv_cell(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        other => {
            let text = cell_text(other);
            if text.starts_with(FORMULA_STARTS) {
                format!("'{text}")
            } else {
                text
            }
        }
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
    "why",
    "from_status",
    "to_status",
    "actor",
    "db_role",
    "occurred_at",
    "recorded_at",
    "event_id",
    "detail",
    "hash",
];

/// One event as the API answers a write that stored it: an object keyed by column name, the
/// JSON row of [`event_rows`].
pub fn event_object(event: RetryEvent) -> Value {
    event_rows(&[event], Format::Json)
        .object(0)
        .expect("one event, one row")
}

/// Events as rows. The table is for people, so it leaves out the ids a target label already
/// says and shortens the hash; JSON and CSV keep every column whole. `why` is each event's
/// reason, step and detail in words ([`crate::why`]).
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
                "why" => Value::from(why(event.reason, event.step.as_deref(), &event.detail)),
                "from_status" => event.from_status.clone().map_or(Value::Null, Value::from),
                "to_status" => event.to_status.clone().map_or(Value::Null, Value::from),
                "actor" => Value::from(event.actor.clone()),
                "db_role" => event.db_role.clone().map_or(Value::Null, Value::from),
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
/// `reason` the one the retry would have had (and its `why` that retry's), its times when it
/// was noted.
///
/// After `to_status`, each retry's outcome (`open` when `outcomes` has none), when it was
/// resolved (JSON and CSV) and the seconds from the retry to its result.
pub fn history_rows(
    events: &[RetryEvent],
    notes: &[Intervention],
    outcomes: &HashMap<i64, RetryOutcome>,
    format: Format,
) -> Rows {
    let table = format == Format::Table;
    let listed = event_rows(events, format);
    let at = listed
        .columns
        .iter()
        .position(|column| *column == "to_status")
        .map_or(listed.columns.len(), |i| i + 1);
    let outcome_columns: &[&'static str] = if table {
        &["outcome", "seconds_to_result"]
    } else {
        &["outcome", "resolved_at", "seconds_to_result"]
    };
    let mut columns = vec!["entry"];
    columns.extend(listed.columns[..at].iter().copied());
    columns.extend(outcome_columns);
    columns.extend(listed.columns[at..].iter().copied());
    let mut rows = Rows::new(&columns);
    let mut notes = notes.iter().peekable();
    for (event, mut cells) in events.iter().zip(listed.rows) {
        while let Some(note) = notes.next_if(|note| note.noted_at < event.recorded_at) {
            rows.push(note_cells(note, &columns, format));
        }
        let outcome = outcomes.get(&event.seq);
        let seconds = outcome.map(|o| {
            let millis = (o.resolved_at - event.occurred_at)
                .num_milliseconds()
                .max(0);
            Value::from(millis as f64 / 1000.0)
        });
        let mut added = vec![Value::from(
            outcome.map_or(OPEN.to_string(), |o| o.outcome.to_string()),
        )];
        if !table {
            added.push(outcome.map_or(Value::Null, |o| {
                Value::from(timestamp(o.resolved_at, table))
            }));
        }
        added.push(seconds.unwrap_or(Value::Null));
        let tail = cells.split_off(at);
        let mut row = vec![Value::from("retry")];
        row.extend(cells);
        row.extend(added);
        row.extend(tail);
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
            "why" => Value::from(why(note.reason, note.step.as_deref(), &note.detail)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|row| row.iter().map(|cell| cell.to_string()).collect())
            .collect()
    }

    #[test]
    fn a_table_that_fits_stays_whole_else_its_widest_columns_give_way_first() {
        let columns = ["n", "detail"];
        let rows = cells(&[&["1", &"x".repeat(40)]]);
        // Borders and padding take 3 × 2 + 1 = 7.
        assert_eq!(fit(&columns, &rows, 49), Fit::Whole);
        assert_eq!(fit(&columns, &rows, 30), Fit::Columns(vec![1, 22]));
        assert_eq!(fit(&columns, &rows, 15), Fit::Records(15));
    }

    #[test]
    fn ids_are_never_cut_other_columns_give_way_and_a_table_that_cannot_fit_them_is_records() {
        let id = "0a000000-0000-4000-8000-000000000002";
        let target = format!("variant {id}");
        let columns = ["job_id", "target", "detail"];
        let rows = cells(&[&[id, &target, &"x".repeat(60)]]);
        // 36 + 44 + 60 and 10 of borders: 150 whole.
        assert_eq!(fit(&columns, &rows, 150), Fit::Whole);
        // The detail gives way, down to 12; the ids stay whole.
        assert_eq!(fit(&columns, &rows, 120), Fit::Columns(vec![36, 44, 30]));
        assert_eq!(fit(&columns, &rows, 102), Fit::Columns(vec![36, 44, 12]));
        // Less: records, the ids whole in them too.
        assert_eq!(fit(&columns, &rows, 101), Fit::Records(101));
        let mut out = Vec::new();
        let rows_of = Rows {
            columns: columns.to_vec(),
            rows: vec![vec![
                Value::from(id),
                Value::from(target.clone()),
                Value::from("x".repeat(60)),
            ]],
        };
        rows_of
            .write_fitted(Format::Table, Some(40), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&format!("job_id │ {id}\n")), "{text}");
        assert!(text.contains(&format!("target │ {target}\n")), "{text}");
        assert!(
            text.contains(&format!("detail │ {}…\n", "x".repeat(30))),
            "{text}"
        );
    }

    #[test]
    fn headers_wrap_at_their_underscores_before_a_narrow_table_becomes_records() {
        // report stats: numbers under long headers.
        let columns = ["kind", "total", "avg_retry_count", "max_retry_count"];
        let rows = cells(&[&["variant", "4", "0.75", "3"]]);
        // Whole: 7 + 5 + 15 + 15 and 13 of borders = 55.
        assert_eq!(fit(&columns, &rows, 55), Fit::Whole);
        // One short: both long headers could wrap; the room left unwraps the first again.
        assert_eq!(fit(&columns, &rows, 54), Fit::Columns(vec![7, 5, 15, 6]));
        assert_eq!(fit(&columns, &rows, 40), Fit::Columns(vec![7, 5, 6, 6]));
        assert_eq!(wrap_header("avg_retry_count", 6), "avg_\nretry_\ncount");
        assert_eq!(wrap_header("avg_retry_count", 10), "avg_retry_\ncount");
        let mut out = Vec::new();
        let stats = Rows {
            columns: columns.to_vec(),
            rows: vec![vec![
                Value::from("variant"),
                Value::from(4),
                Value::from(0.75),
                Value::from(3),
            ]],
        };
        stats
            .write_fitted(Format::Table, Some(40), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with('┌'), "{text}");
        assert!(
            text.lines().all(|line| line.chars().count() <= 40),
            "{text}"
        );
        assert!(text.contains("┆ 0.75   ┆"), "{text}");
    }

    #[test]
    fn csv_neutralises_text_a_spreadsheet_would_evaluate_and_keeps_numbers() {
        for (text, written) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("+1", "'+1"),
            ("-3", "'-3"),
            ("\tcmd", "'\tcmd"),
            ("\rcmd", "'\rcmd"),
            ("'quoted", "''quoted"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(csv_cell(&Value::from(text)), written, "{text:?}");
        }
        assert_eq!(csv_cell(&Value::from(-3)), "-3");
        assert_eq!(csv_cell(&Value::from(-0.5)), "-0.5");
        assert_eq!(csv_cell(&Value::Null), "");
        assert_eq!(csv_cell(&serde_json::json!({"a": "=1"})), "{\"a\":\"=1\"}");
    }

    #[test]
    fn removing_one_leading_quote_gives_back_every_text_cell() {
        for text in ["=1+1", "'=1+1", "''", "'", "plain", "-", "@"] {
            let written = csv_cell(&Value::from(text));
            assert_eq!(written.strip_prefix('\'').unwrap_or(&written), text);
        }
    }

    #[test]
    fn cut_values_end_in_an_ellipsis() {
        assert_eq!(elide("abcdef", 4), "abc…");
        assert_eq!(elide("abc", 4), "abc");
    }
}
