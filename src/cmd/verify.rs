//! `retrylog verify`: recompute the hash chains of what is new since the last clean verify,
//! the counts from the head rows of the streams walked and of the rotation's slice, and what is
//! new of the rest (`--full`: every event, every target, every whole-log check, the rollups and
//! the closed partitions' digests); exit 1 on any mismatch. With `--format json`, one object:
//! `clean`, what was read (`scope`, `events`, `streams`, the txid and seq range,
//! `verified_before`, the `rotation`'s slice), what was `recorded`, and the `mismatches` (the
//! rows the table shows). The run itself is `verify_state::run`.

use std::io::Write;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::{exit, stderr_is_terminal};
use crate::archive;
use crate::cli::VerifyArgs;
use crate::output::{Format, Rows};
use crate::replay::Mismatch;
use crate::verify_state::{self, Recorded, Run, Scope};

pub async fn run(pool: &PgPool, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.archive {
        return archive_check(pool, path, args.format.format).await;
    }
    let scope = if args.full { Scope::Full } else { Scope::New };
    // The bar's length costs a count of what the run reads: only worth it when someone watches.
    let progress = if stderr_is_terminal() {
        let total = verify_state::pending(&mut *pool.acquire().await?, scope).await?;
        ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template("verifying {bar:40} {pos}/{len} events [{elapsed}]")
                .expect("the template is valid"),
        )
    } else {
        ProgressBar::hidden()
    };
    let run = verify_state::run_sliced(pool, scope, args.slice, |done| progress.set_position(done))
        .await?;
    progress.finish_and_clear();
    let report = &run.report;

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
            Mismatch::PartitionDigest { .. } => "partition_digest",
        };
        rows.push(vec![
            target.map_or_else(
                || {
                    Value::from(match mismatch {
                        Mismatch::Outcome(_) => "retry_outcome",
                        Mismatch::PartitionDigest { partition, .. } => partition.as_str(),
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
                "clean": run.is_clean(),
                "scope": run.scope,
                "events": report.events,
                "streams": report.streams,
                "since_txid": run.since_txid,
                "up_to_txid": run.up_to_txid,
                "first_seq": run.first_seq,
                "last_seq": run.last_seq,
                "verified_before": run.verified_before,
                "standing_full_mismatches": run.standing_full_mismatches,
                "rotation": run.rotation.map(|slice| json!({
                    "after": slice.after.map(key),
                    "through": slice.through.map(key),
                    "streams": slice.streams,
                    "streams_estimate": slice.streams_estimate,
                    "size": slice.size,
                    "runs_per_round": slice.runs_per_round(),
                    "wraps": slice.through.is_none(),
                    "rounds_before": run.rotation_rounds,
                })),
                "recorded": run.recorded,
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
    eprintln!("retrylog: {}", summary(&run));
    eprintln!("retrylog: {}", recorded(&run));
    if run.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(exit::MISMATCH))
    }
}

/// A head-row key in JSON.
fn key((job_id, stream): verify_state::rotation::Key) -> Value {
    json!({ "job_id": job_id.to_string(), "stream": stream.to_string() })
}

/// How far the rotation is, in words: "counts and head rows of 20000 of ~266000 streams,
/// from …; the whole round every 14 runs".
fn rotation(run: &Run) -> String {
    let Some(slice) = run.rotation else {
        return String::new();
    };
    let from = match slice.after {
        Some((job_id, stream)) => format!("after job {job_id} stream {stream}"),
        None => "from the first".to_string(),
    };
    let to = if slice.through.is_none() {
        " to the last (the round ends: the next run starts from the first)"
    } else {
        ""
    };
    format!(
        "; counts and head rows of the streams walked and of {} of ~{} streams, {from}{to}; \
         the whole round every {} runs ({} rounds done)",
        slice.streams,
        slice.streams_estimate.max(slice.streams),
        slice.runs_per_round(),
        run.rotation_rounds
    )
}

/// What the run read and found, in a line.
fn summary(run: &Run) -> String {
    let report = &run.report;
    let read = match run.scope {
        Scope::Full => format!(
            "{} events in {} streams (the whole log)",
            report.events, report.streams
        ),
        Scope::New => {
            let seqs = match (run.first_seq, run.last_seq) {
                (Some(first), Some(last)) => format!(", seq {first}..{last}"),
                _ => String::new(),
            };
            let before = match run.verified_before {
                0 => String::new(),
                n => format!(
                    "; the {n} events verified before are not read again (verify --full reads \
                     them)"
                ),
            };
            format!(
                "{} new events in {} streams since txid {}{seqs}{before}{}",
                report.events,
                report.streams,
                run.since_txid,
                rotation(run)
            )
        }
    };
    if run.standing_full_mismatches > 0 {
        format!(
            "verify is not clean: {} mismatch(es) in {read}; and the last verify --full found \
             {} in events verified before, which stand until a verify --full is clean",
            report.mismatches.len(),
            run.standing_full_mismatches
        )
    } else if report.is_clean() {
        format!(
            "verify clean: checked {read}; {}",
            match run.scope {
                Scope::Full => {
                    "every hash link, count, head row, event id, outcome, rollup and closed \
                     partition's digest matches"
                }
                Scope::New => {
                    "every new hash link matches, every count checked its head row and every \
                     head row checked its verified chain, and the new events' ids, outcomes \
                     and open retries (verify --full also checks every target's, the whole \
                     log's, the rollups and the digests)"
                }
            }
        )
    } else {
        format!(
            "verify found {} mismatch(es) in {read}",
            report.mismatches.len()
        )
    }
}

/// What became of the run in `verify_state`, in a line.
fn recorded(run: &Run) -> String {
    match run.recorded {
        Recorded::Advanced => format!(
            "verified up to txid {}: the next verify starts there",
            run.up_to_txid
        ),
        Recorded::Failed => {
            "recorded the mismatches; the position stays where it was until a verify is clean"
                .to_string()
        }
        Recorded::Superseded => {
            "another verify recorded itself meanwhile: this one left the position as it was"
                .to_string()
        }
        Recorded::NotPermitted => "nothing recorded: recording where verify got to takes the \
             operator capability (retrylog grant operator ROLE)"
            .to_string(),
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
