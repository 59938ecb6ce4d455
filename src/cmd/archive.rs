//! `retrylog archive --before DATE --to DIR`: every whole partition of the log older than
//! DATE to a file and a manifest, then out of the database (`crate::archive`). Prints a row
//! per partition archived; none when there was nothing (left) to archive.

use std::process::ExitCode;

use serde_json::Value;
use sqlx::PgPool;

use crate::archive;
use crate::cli::ArchiveArgs;
use crate::output::Rows;
use crate::window::TimeSpec;

pub async fn run(pool: &PgPool, args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    let now = chrono::Utc::now();
    let before = match (&args.before, args.keep) {
        (Some(before), _) => TimeSpec::parse("--before", before)?.resolve(now),
        (None, Some(months)) => archive::keep_before(months, now),
        (None, None) => unreachable!("clap requires --before or --keep"),
    };
    let archived = archive::run(pool, before, &args.to).await?;
    let mut rows = Rows::new(&[
        "partition",
        "events",
        "streams",
        "interventions",
        "file",
        "manifest",
    ]);
    for partition in &archived {
        rows.push(vec![
            Value::from(partition.partition.clone()),
            Value::from(partition.events),
            Value::from(partition.streams),
            Value::from(partition.interventions),
            Value::from(partition.file.display().to_string()),
            Value::from(partition.manifest.display().to_string()),
        ]);
    }
    rows.print(args.format.format)?;
    if archived.is_empty() {
        eprintln!("retrylog: archive: no partition of retry_history ends before {before}");
    } else {
        eprintln!(
            "retrylog: archived {} partition(s), {} events, to {}",
            archived.len(),
            archived.iter().map(|a| a.events).sum::<i64>(),
            args.to.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
