//! The README's and docs/queries.md's examples, run or compiled by the suite so they cannot
//! drift: the Rust example is `examples/record_retry.rs` (which `cargo test` builds), every
//! `sh` line of the README that is not a cargo command runs as printed on the test's database,
//! and every `$ retrylog …` of docs/queries.md runs on a database holding the ids it names,
//! exiting as the page says (and printing the refusals it shows).

use std::path::Path;
use std::process::Stdio;

use retrylog::event::{NewRetry, RetryReason};
use sqlx::PgPool;
use tokio::process::Command;
use uuid::{uuid, Uuid};

use crate::fixtures::*;

const README: &str = include_str!("../../README.md");
const QUERIES: &str = include_str!("../../docs/queries.md");

/// The bodies of the fenced blocks of `markdown` whose info string is `lang`.
fn blocks<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    markdown
        .split(fence.as_str())
        .skip(1)
        .map(|rest| &rest[..rest.find("```").expect("a closed block")])
        .collect()
}

/// The README's cargo commands: not run here (they build, install, or run this suite).
const CARGO_LINES: [&str; 3] = [
    "cargo run --release -- demo",
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test",
    "cargo install --path .",
];

#[test]
fn the_readme_rust_example_is_the_example_target_word_for_word() {
    let example = include_str!("../../examples/record_retry.rs");
    let body = example
        .split_once("// README: begin\n")
        .and_then(|(_, rest)| rest.split_once("// README: end"))
        .map(|(body, _)| body)
        .expect("the example has its README markers");
    assert_eq!(blocks(README, "rust"), [body]);
}

#[test]
fn the_readme_test_command_is_the_last_line_of_ci() {
    let ci = include_str!("../../.ci/run");
    assert_eq!(ci.trim_end().lines().last(), Some(CARGO_LINES[1]));
    assert!(README.contains(&format!("\n{}\n", CARGO_LINES[1])));
}

#[sqlx::test(migrations = false)]
async fn every_shell_line_of_the_readme_runs_as_printed(pool: PgPool) {
    // The README's `record` names job A and its failed variant A2 of the pipeline fixture.
    pipeline(&pool).await;
    let home = TempPath::dir("readme");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_retrylog")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let url = database_url(&pool).await;

    let mut ran = Vec::new();
    for block in blocks(README, "sh") {
        for line in block.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if CARGO_LINES.contains(&line) {
                continue;
            }
            assert!(
                line.starts_with("retrylog ") || line.starts_with("mkdir -p ~/"),
                "a README line this test neither runs nor knows: {line}"
            );
            // A home and a private-cluster directory of the test's own: what the lines
            // install or look at stays in them.
            let output = Command::new("sh")
                .args(["-c", line])
                .current_dir(&home)
                .env("HOME", home.path())
                .env("PATH", &path)
                .env("DATABASE_URL", &url)
                .env("RETRYLOG_DATA_DIR", home.join("data"))
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{line}: {output:?}");
            ran.push(line);
        }
    }
    let installed = [
        ".local/share/bash-completion/completions/retrylog",
        ".config/fish/completions/retrylog.fish",
        ".local/share/man/man1/retrylog.1",
        ".local/share/man/man1/retrylog-report-trend.1",
    ]
    .map(|file| home.join(file).is_file());
    assert_eq!(installed, [true; 4]);
    assert!(ran.iter().any(|line| line.starts_with("retrylog record ")));
    assert!(ran.contains(&"retrylog local status"));
    assert_eq!(
        event_count(&pool).await,
        1,
        "the README's record recorded one retry"
    );
}

/// The job and variant of docs/queries.md's `history` example (the demo's variant that hit
/// the limit).
const DOCS_JOB: Uuid = uuid!("2c820d87-8f4a-4650-9361-8c079034654f");
const DOCS_VARIANT: Uuid = uuid!("c88b3c5f-e7eb-485d-b499-9a79c6156c64");

/// A `$ retrylog …` line of the docs, what the page shows it print, and the exit status it
/// shows (`$ echo $?`), if any.
struct Example<'a> {
    command: &'a str,
    output: Vec<&'a str>,
    status: Option<i32>,
}

fn examples(markdown: &str) -> Vec<Example<'_>> {
    let mut found: Vec<Example> = Vec::new();
    for block in blocks(markdown, "text") {
        for line in block.lines() {
            if let Some(command) = line.strip_prefix("$ ") {
                if command == "echo $?" {
                    continue;
                }
                found.push(Example {
                    command,
                    output: Vec::new(),
                    status: None,
                });
            } else if let Some(example) = found.last_mut() {
                match line.trim().parse() {
                    Ok(status) if example.status.is_none() && line.len() <= 3 => {
                        example.status = Some(status)
                    }
                    _ => example.output.push(line),
                }
            }
        }
    }
    found
}

/// The text with every run of digits as `N`: dates and counts that depend on today.
fn digits_as_n(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('N') {
                out.push('N');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[sqlx::test(migrations = false)]
async fn every_retrylog_example_of_docs_queries_runs_as_the_page_says(pool: PgPool) {
    migrated(&pool).await;
    // The variant of the `history` example, failed after three retries: alerts lists it.
    sqlx::query(
        "INSERT INTO jobs (job_id, status, current_step) VALUES ($1, 'running', 'iou_eval');
         ",
    )
    .bind(DOCS_JOB)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs_variants (job_variants_id, job_id, creation_order, status, current_step)
         VALUES ($1, $2, 3, 'failed', 'generate')",
    )
    .bind(DOCS_VARIANT)
    .bind(DOCS_JOB)
    .execute(&pool)
    .await
    .unwrap();
    for _ in 0..3 {
        let failed = NewRetry::new(variant(DOCS_JOB, DOCS_VARIANT), RetryReason::Failed, "test");
        append_ok(&pool, &failed).await;
    }
    let home = TempPath::dir("docs");
    std::fs::create_dir_all(home.join("docs")).unwrap();
    let url = database_url(&pool).await;

    let examples = examples(QUERIES);
    assert!(examples.len() >= 10, "{} examples", examples.len());
    for example in &examples {
        let command = example
            .command
            .strip_prefix("retrylog ")
            .unwrap_or_else(|| panic!("not a retrylog example: {}", example.command));
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec \"$RETRYLOG\" --database-url \"$URL\" {command}"
            ))
            .env("RETRYLOG", env!("CARGO_BIN_EXE_retrylog"))
            .env("URL", &url)
            .current_dir(&home)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let refusal = example
            .output
            .first()
            .filter(|line| line.starts_with("retrylog: "));
        let expected = example
            .status
            .unwrap_or(if refusal.is_some() { 2 } else { 0 });
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{}: {stderr}",
            example.command
        );
        if let Some(refusal) = refusal {
            let said = stderr.lines().last().unwrap_or_default();
            assert_eq!(
                digits_as_n(said),
                digits_as_n(refusal),
                "{}",
                example.command
            );
        }
        // A CSV example's header is the one the command prints.
        if command.contains("--format csv") {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(stdout.lines().next(), example.output.first().copied());
        }
    }
}
