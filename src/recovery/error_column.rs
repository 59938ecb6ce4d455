//! The pipeline's own error text, kept with each retry: many pipelines keep a row's last error
//! in a column of `jobs` or `jobs_variants` and overwrite it on the next failure. With
//! `--error-column NAME` the watchdog's claim (`claim.rs`) copies the target's value into the
//! event's `detail.error` in the transaction of the retry, so the history keeps the error that
//! caused each attempt (and `why` shows it) however the row changes afterwards.
//!
//! The pipeline's text must never stop a retry, so it is made to pass the text rule instead of
//! being refused by it: its first [`MAX_ERROR_CHARS`] characters are kept, every character the
//! rule refuses is written `\u{XXXX}` ([`crate::text::escape`]), and a longer value says its
//! length. Escaped, the kept text is at most about 9,000 bytes of JSON, well within the
//! detail's 16 KiB.

use sqlx::PgPool;

use crate::error::CallerMistake;
use crate::event::Target;

/// The most characters of the error column's value a retry keeps.
pub const MAX_ERROR_CHARS: usize = 1000;

/// Why `serve` refuses its `--error-column`.
#[derive(Debug, thiserror::Error)]
pub enum ErrorColumnError {
    /// Neither pipeline table has a column of that name.
    #[error(
        "--error-column \"{0}\": neither jobs nor jobs_variants has a column of that name \
         (names are case-sensitive as stored, usually lowercase)"
    )]
    Missing(String),
    /// A table has it, but not as text.
    #[error(
        "--error-column \"{column}\": {table}.{column} is {type_name}, not a text column \
         (text, varchar, char)"
    )]
    NotText {
        column: String,
        table: String,
        type_name: String,
    },
    /// The check itself failed.
    #[error("database error while checking --error-column")]
    Database(#[from] sqlx::Error),
}

impl CallerMistake for ErrorColumnError {
    fn is_caller_mistake(&self) -> bool {
        !matches!(self, ErrorColumnError::Database(_))
    }
}

/// Checks that `column` is a text column of `jobs`, of `jobs_variants` or of both, and returns
/// the tables that have it. A table without it gives its targets' retries no error text; a
/// table where it is not text, or neither table having it, is refused.
pub async fn check_error_column(
    pool: &PgPool,
    column: &str,
) -> Result<Vec<String>, ErrorColumnError> {
    // Text-ish: PostgreSQL's string category (text, varchar, char, name, citext and domains
    // over them).
    let found: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT c.relname::text, t.typcategory = 'S', format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid IN ('jobs'::regclass, 'jobs_variants'::regclass)
            AND a.attname = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY c.relname",
    )
    .bind(column)
    .fetch_all(pool)
    .await?;
    let shown = crate::text::escape(column, 63);
    if found.is_empty() {
        return Err(ErrorColumnError::Missing(shown));
    }
    if let Some((table, _, type_name)) = found.iter().find(|(_, text, _)| !text) {
        return Err(ErrorColumnError::NotText {
            column: shown,
            table: table.clone(),
            type_name: type_name.clone(),
        });
    }
    Ok(found.into_iter().map(|(table, _, _)| table).collect())
}

/// The target's error text now, cleaned for `detail.error`; `None` when the column is empty
/// or null, or its table has no such column. Read on the claim's connection, under its lock.
///
/// The column is found by name in the row's JSON (`to_jsonb(row) ->> $2`), so its name is a
/// bound value, never SQL, and a table without it reads as null instead of failing the retry.
pub(super) async fn capture(
    conn: &mut sqlx::PgConnection,
    target: Target,
    column: &str,
) -> Result<Option<String>, sqlx::Error> {
    let (rows, key) = match target {
        Target::Job { job_id } => ("jobs r WHERE r.job_id = $1", job_id),
        Target::Variant {
            job_variants_id, ..
        } => (
            "jobs_variants r WHERE r.job_variants_id = $1",
            job_variants_id,
        ),
    };
    // Only the first characters cross the wire; the length is said.
    let sql = format!(
        "SELECT left(e, {MAX_ERROR_CHARS}), length(e)
           FROM (SELECT to_jsonb(r) ->> $2 AS e FROM {rows}) s"
    );
    let read: Option<(Option<String>, Option<i32>)> = sqlx::query_as(&sql)
        .bind(key)
        .bind(column)
        .fetch_optional(conn)
        .await?;
    Ok(read.and_then(|(start, length)| clean(&start?, length.unwrap_or(0) as usize)))
}

/// `start`, the first [`MAX_ERROR_CHARS`] characters of a value `length` characters long, as
/// `detail.error` keeps it: trimmed, refused characters written `\u{XXXX}`, and the length
/// said when the value was longer. `None` for blank text.
fn clean(start: &str, length: usize) -> Option<String> {
    let kept = start.trim();
    if kept.is_empty() {
        return None;
    }
    let mut cleaned = crate::text::escape(kept, MAX_ERROR_CHARS);
    if length > MAX_ERROR_CHARS {
        cleaned.push_str(&format!("... ({length} characters)"));
    }
    Some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_characters_are_escaped_not_refused_and_a_long_value_says_its_length() {
        assert_eq!(
            clean("  CUDA out of memory\n", 21).as_deref(),
            Some("CUDA out of memory")
        );
        assert_eq!(
            clean("a\u{1b}[31m\u{202e}b\u{200b}\tc", 10).as_deref(),
            Some("a\\u{001b}[31m\\u{202e}b\\u{200b}\\u{0009}c")
        );
        let start = "x".repeat(MAX_ERROR_CHARS);
        assert_eq!(
            clean(&start, 100_000),
            Some(format!("{start}... (100000 characters)"))
        );
        assert_eq!(clean(" \n ", 3), None);
        let cleaned = clean(&"\u{202e}".repeat(MAX_ERROR_CHARS), 5000).unwrap();
        assert!(!cleaned.chars().any(crate::text::is_refused));
        // The worst case fits the detail's 16 KiB with room to spare.
        assert!(serde_json::to_string(&cleaned).unwrap().len() < 9_100);
    }
}
