//! `retrylog verify`: recompute hash chains and projections; exit 1 on any mismatch. With
//! `--format json`, one object: `clean`, the `events` and `streams` checked, and the
//! `mismatches` (the rows the table shows).

use std::io::Write;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::{exit, stderr_is_terminal};
use crate::archive;
use crate::cli::VerifyArgs;
use crate::output::{Format, Rows};
use crate::replay::{self, Mismatch};

pub async fn run(pool: &PgPool, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.archive {
        return archive_check(pool, path, args.format.format).await;
    }
    // The bar's length costs a count of the whole log: only worth it when someone watches.
    let progress = if stderr_is_terminal() {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM retry_history")
            .fetch_one(pool)
            .await?;
        ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template("verifying {bar:40} {pos}/{len} events [{elapsed}]")
                .expect("the template is valid"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut report = replay::verify(pool, |done| progress.set_position(done)).await?;
    // Streams whose prefix was archived walk from their base (src/archive/verify.rs).
    archive::verify::rebase(pool, &mut report).await?;
    progress.finish_and_clear();

    let mut rows = Rows::new(&["target", "job_id", "job_variants_id", "problem", "message"]);
    for mismatch in &report.mismatches {
        let target = mismatch.target();
        let problem = match mismatch {
            Mismatch::Count(_) => "count",
            Mismatch::BrokenLink { .. } => "broken_link",
            Mismatch::AttemptGap { .. } => "attempt_gap",
            Mismatch::Rollup(_) => "rollup",
            Mismatch::Outcome(_) => "outcome",
            Mismatch::StreamHead(_) => "stream_head",
            Mismatch::ProjectionStuck { .. } => "projection_stuck",
        };
        rows.push(vec![
            target.map_or_else(
                || {
                    Value::from(match mismatch {
                        Mismatch::Outcome(_) => "retry_outcome",
                        _ => "retry_rollup",
                    })
                },
                |t| Value::from(t.to_string()),
            ),
            target.map_or(Value::Null, |t| Value::from(t.job_id().to_string())),
            target
                .and_then(|t| t.job_variants_id())
                .map_or(Value::Null, |id| Value::from(id.to_string())),
            Value::from(problem),
            Value::from(mismatch.to_string()),
        ]);
    }
    match args.format.format {
        // One object, clean or not: what was checked, and what does not match. (A bare array
        // printed `[]` when clean, which says nothing about how much was checked.)
        Format::Json => {
            let out = json!({
                "clean": report.is_clean(),
                "events": report.events,
                "streams": report.streams,
                "mismatches": rows.to_json(),
            });
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&out)?
            )?;
        }
        // CSV is rows: the mismatches (the header alone when clean).
        Format::Csv => rows.print(Format::Csv)?,
        Format::Table if !report.is_clean() => rows.print(Format::Table)?,
        Format::Table => {}
    }
    if report.is_clean() {
        eprintln!(
            "retrylog: verify clean: {} events in {} streams, every hash link, count and outcome matches",
            report.events, report.streams
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "retrylog: verify found {} mismatch(es) in {} events",
            report.mismatches.len(),
            report.events
        );
        Ok(ExitCode::from(exit::MISMATCH))
    }
}

/// `verify --archive`: each archive's problems, one row per problem; exit 1 if any.
async fn archive_check(
    pool: &PgPool,
    path: &std::path::Path,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let checks = archive::verify::check(pool, path).await?;
    let mut rows = Rows::new(&["partition", "file", "problem"]);
    for check in &checks {
        for problem in &check.problems {
            rows.push(vec![
                Value::from(check.partition.clone()),
                Value::from(check.file.display().to_string()),
                Value::from(problem.clone()),
            ]);
        }
    }
    let clean = rows.rows.is_empty();
    match format {
        Format::Json => writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&json!({
                "clean": clean,
                "archives": checks.len(),
                "events": checks.iter().map(|c| c.events).sum::<i64>(),
                "problems": rows.to_json(),
            }))?
        )?,
        Format::Table if clean => {}
        format => rows.print(format)?,
    }
    let events: i64 = checks.iter().map(|c| c.events).sum();
    if clean {
        eprintln!(
            "retrylog: archive clean: {} archive(s), {events} events, every digest, count, \
             chain and base matches",
            checks.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "retrylog: archive check found {} problem(s)",
            rows.rows.len()
        );
        Ok(ExitCode::from(exit::MISMATCH))
    }
}
