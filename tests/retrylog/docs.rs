//! The README's and docs/'s examples, run or compiled by the suite so they cannot drift.
//!
//! **Which blocks run:** every fenced block of README.md and docs/*.md whose info string is
//! plain `sh` or `sql` runs, as printed, on the test's database; a block fenced
//! `sh illustration` or `sql illustration` is only shown (it starts a server, needs systemd or a
//! role of the reader's, or holds placeholders), and says so where it stands.
//!
//! - `sh` blocks run command by command (a line, with its `\` continuations and its here-document)
//!   through `sh -c`, in a home of the test's own with the built `retrylog` first on the PATH and
//!   `DATABASE_URL` naming the test's database. Each must exit 0, or what a comment at the end of
//!   its line says: `# exits 2`. Only the README's first two commands are never run (`NOT_RUN`).
//! - `sql` blocks run on the test's migrated database holding the pipeline fixture; an SQL error
//!   fails the test.
//! - The Rust example is `examples/record_retry.rs` (which `cargo test` builds).
//! - Every `$ retrylog …` of docs/queries.md runs on a database holding the ids it names, exiting
//!   as the page says (and printing the refusals it shows); its `stats` and `trend` examples run
//!   on the page's sample data and print exactly what the page shows.

use std::path::Path;
use std::process::Stdio;

use retrylog::event::{NewRetry, RetryReason};
use sqlx::PgPool;
use tokio::process::Command;
use uuid::{uuid, Uuid};

use crate::fixtures::*;

/// The checkout, where the docs are read from when the test runs: a page added or changed
/// since the test binary was built is read all the same.
const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// The documentation the walk covers: README.md, then every docs/*.md by name, listed when the
/// test runs so that a new page cannot be left out.
fn documentation() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(CHECKOUT).join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("a docs/ entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_string))
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    names.sort();
    names.insert(0, "README.md".to_string());
    names
        .into_iter()
        .map(|name| {
            let text = page(&name);
            (name, text)
        })
        .collect()
}

/// One page of the documentation, by its path in the checkout.
fn page(name: &str) -> String {
    std::fs::read_to_string(Path::new(CHECKOUT).join(name))
        .unwrap_or_else(|error| panic!("reading {name}: {error}"))
}

/// A fenced block: where it opens, its info string, its body, and the heading it is under.
struct Block {
    line: usize,
    info: String,
    body: String,
    section: String,
}

/// The fenced blocks of `markdown`, in order. A fence may be indented (inside a list item);
/// its body loses the same indentation.
fn fenced(markdown: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut section = String::new();
    let mut open: Option<(usize, usize, String, String)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((index + 1, indent, info.trim().to_string(), String::new()));
                } else if line.starts_with('#') {
                    section = line.trim_start_matches('#').trim().to_string();
                }
            }
            Some((start, indent, info, mut body)) => {
                if trimmed.trim_end() == "```" {
                    found.push(Block {
                        line: start,
                        info,
                        body,
                        section: section.clone(),
                    });
                } else {
                    let unindented = if line.len() >= indent && line[..indent].trim().is_empty() {
                        &line[indent..]
                    } else {
                        line.trim_start()
                    };
                    body.push_str(unindented);
                    body.push('\n');
                    open = Some((start, indent, info, body));
                }
            }
        }
    }
    assert!(open.is_none(), "a fenced block is never closed");
    found
}

/// The languages of blocks that are shown and never run. A fence of any other language fails
/// the walk until it is run (`sh`, `sql`) or added here: a `bash` or `console` block cannot
/// slip past it.
const SHOWN: [&str; 7] = ["", "text", "rust", "python", "json", "yaml", "nginx"];

/// What the walk does with a block of this info string.
#[derive(Debug, PartialEq)]
enum Kind {
    Sh,
    Sql,
    Shown,
}

fn kind(info: &str) -> Result<Kind, String> {
    match info {
        "sh" => Ok(Kind::Sh),
        "sql" => Ok(Kind::Sql),
        "sh illustration" | "sql illustration" => Ok(Kind::Shown),
        info if SHOWN.contains(&info) => Ok(Kind::Shown),
        info => Err(format!(
            "a block fenced `{info}`: fence it `sh` or `sql` to run it, `sh illustration` or \
             `sql illustration` to show it, or name its language in docs.rs's SHOWN"
        )),
    }
}

/// The README's commands the suite never runs, each with why. Every other command of an
/// unmarked `sh` block runs.
const NOT_RUN: [(&str, &str); 2] = [
    (
        "cargo run --release -- demo",
        "builds a release binary and runs the 20-second demo (commands.rs runs a short demo)",
    ),
    (
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test",
        "is this suite (the_readme_test_command_is_the_last_line_of_ci holds it to CI's)",
    ),
];

/// One command of an `sh` block: its text (continuations and here-document included), the
/// line it starts on in the page, and the exit status the page gives it.
#[derive(Debug, PartialEq)]
struct ShellCommand {
    text: String,
    line: usize,
    status: i32,
}

impl ShellCommand {
    /// The command as a message shows it: without the body of its here-document.
    fn shown(&self) -> String {
        let mut lines = Vec::new();
        for line in self.text.lines() {
            lines.push(line);
            if here_document(line).is_some() {
                break;
            }
        }
        lines.join("\n")
    }
}

/// The commands of an `sh` block whose body starts on line `first_line` of its page. Comment
/// lines and blank lines are not commands.
fn commands(body: &str, first_line: usize) -> Vec<ShellCommand> {
    let lines: Vec<&str> = body.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let trimmed = lines[index].trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            index += 1;
            continue;
        }
        let start = index;
        let mut text = lines[index].to_string();
        while text.ends_with('\\') && index + 1 < lines.len() {
            index += 1;
            text.push('\n');
            text.push_str(lines[index]);
        }
        let head = text.clone();
        if let Some(delimiter) = here_document(&head) {
            loop {
                index += 1;
                let line = lines
                    .get(index)
                    .unwrap_or_else(|| panic!("the here-document of `{head}` never ends"));
                text.push('\n');
                text.push_str(line);
                if line.trim() == delimiter {
                    break;
                }
            }
        }
        found.push(ShellCommand {
            status: expected_status(&head),
            text,
            line: first_line + start,
        });
        index += 1;
    }
    found
}

/// The delimiter of the here-document a command line opens (`<<'SQL'`, `<<EOF`, `<<-END`).
fn here_document(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("<<")?;
    let rest = rest.trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The status a command's own comment promises (`# exits 3`); 0 without one.
fn expected_status(line: &str) -> i32 {
    line.split_once("# exits ")
        .map(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("`# exits` without a status: {line}"))
        })
        .unwrap_or(0)
}

/// Whether a command would run cargo (build, install, test or bench): never inside the suite.
fn runs_cargo(command: &str) -> bool {
    command.split_whitespace().any(|word| word == "cargo")
}

/// A home of the test's own (removed when dropped) where the docs' commands run: what they
/// install or write stays in it.
struct Sandbox {
    /// Removed, with all it holds, when the sandbox goes.
    home: TempPath,
    path: String,
    url: String,
}

impl Sandbox {
    async fn new(pool: &PgPool) -> Sandbox {
        let home = TempPath::dir("docs");
        // `--output docs/…` examples write under it.
        std::fs::create_dir_all(home.join("docs")).unwrap();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_retrylog")).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Sandbox {
            home,
            path,
            url: database_url(pool).await,
        }
    }

    /// Runs `command` with `sh -c`, as a reader would paste it.
    async fn sh(&self, command: &str) -> std::process::Output {
        Command::new("sh")
            .args(["-c", command])
            .current_dir(&self.home)
            .env("HOME", self.home.path())
            .env("PATH", &self.path)
            .env("DATABASE_URL", &self.url)
            .env("RETRYLOG_DATA_DIR", self.home.join("data"))
            .env_remove("RETRYLOG_LOG")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap()
    }

    /// Runs a command of a block; returns what went wrong, if anything.
    async fn run(&self, page: &str, command: &ShellCommand) -> Option<String> {
        let output = self.sh(&command.text).await;
        (output.status.code() != Some(command.status)).then(|| {
            format!(
                "{page}:{}: `{}` exited {:?}, the page expects {}\n{}{}",
                command.line,
                command.shown(),
                output.status.code(),
                command.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

#[test]
fn a_shell_block_splits_into_commands_with_continuations_here_documents_and_promised_exits() {
    let body = "# a comment\nretrylog a \\\n  --flag\n\npsql <<'SQL'\nSELECT 1;\nSQL\n\
                retrylog report alerts   # exits 3 when anything is listed\n";
    assert_eq!(
        commands(body, 10),
        [
            ShellCommand {
                text: "retrylog a \\\n  --flag".into(),
                line: 11,
                status: 0
            },
            ShellCommand {
                text: "psql <<'SQL'\nSELECT 1;\nSQL".into(),
                line: 14,
                status: 0
            },
            ShellCommand {
                text: "retrylog report alerts   # exits 3 when anything is listed".into(),
                line: 17,
                status: 3
            },
        ]
    );
    assert_eq!(kind("sh illustration"), Ok(Kind::Shown));
    assert!(kind("sh illustrations").is_err());
    assert!(kind("bash").is_err());
}

#[test]
fn dates_and_times_become_one_mark_and_the_counts_beside_them_stay() {
    assert_eq!(
        times_as_t("2026-12-06T08:00:00Z,(no retries),0,0,0,0,"),
        "<time>,(no retries),0,0,0,0,"
    );
    assert_eq!(
        times_as_t("from 2025-10-06 16:00:00 UTC holds 10081"),
        "from <time> UTC holds 10081"
    );
    assert_eq!(times_as_t("│ 2026-11-23 ┆ job ┆ 2"), "│ <time> ┆ job ┆ 2");
}

#[test]
fn the_readme_rust_example_is_the_example_target_word_for_word() {
    let example = include_str!("../../examples/record_retry.rs");
    let body = example
        .split_once("// README: begin\n")
        .and_then(|(_, rest)| rest.split_once("// README: end"))
        .map(|(body, _)| body)
        .expect("the example has its README markers");
    let rust: Vec<String> = fenced(&page("README.md"))
        .into_iter()
        .filter(|block| block.info == "rust")
        .map(|block| block.body)
        .collect();
    assert_eq!(rust, [body]);
}

#[test]
fn the_readme_test_command_is_the_last_line_of_ci() {
    let ci = include_str!("../../.ci/run");
    let test_command = NOT_RUN[1].0;
    assert_eq!(ci.trim_end().lines().last(), Some(test_command));
    assert!(page("README.md").contains(&format!("\n{test_command}\n")));
}

#[sqlx::test(migrations = false)]
async fn every_sh_and_sql_block_of_the_readme_and_docs_runs_as_printed(pool: PgPool) {
    // The README's `record` names job A and its failed variant A2 of the pipeline fixture, and
    // so do the other pages' concrete examples.
    pipeline(&pool).await;
    let sandbox = Sandbox::new(&pool).await;
    let mut failures = Vec::new();
    let mut not_run = Vec::new();
    let mut ran = 0;
    for (name, text) in documentation() {
        for block in fenced(&text) {
            let what = match kind(&block.info) {
                Ok(what) => what,
                Err(problem) => {
                    failures.push(format!("{name}:{}: {problem}", block.line));
                    continue;
                }
            };
            match what {
                Kind::Shown => {}
                Kind::Sql => {
                    if let Err(error) = sqlx::raw_sql(&block.body).execute(&pool).await {
                        failures.push(format!("{name}:{}: {error}", block.line));
                    }
                    ran += 1;
                }
                Kind::Sh => {
                    for command in commands(&block.body, block.line + 1) {
                        if let Some((skipped, _why)) =
                            NOT_RUN.iter().find(|(line, _)| *line == command.text)
                        {
                            assert_eq!(name, "README.md", "only the README's are not run");
                            not_run.push(*skipped);
                        } else if runs_cargo(&command.text) {
                            failures.push(format!(
                                "{name}:{}: `{}` runs cargo, which the suite never does: fence \
                                 its block `sh illustration`",
                                command.line,
                                command.shown()
                            ));
                        } else {
                            failures.extend(sandbox.run(&name, &command).await);
                            ran += 1;
                        }
                    }
                }
            }
        }
        if name == "README.md" {
            // What the README's lines say they do: install completions and man pages, and
            // record one retry.
            for file in [
                ".local/share/bash-completion/completions/retrylog",
                ".config/fish/completions/retrylog.fish",
                ".local/share/man/man1/retrylog.1",
                ".local/share/man/man1/retrylog-report-trend.1",
            ] {
                if !sandbox.home.join(file).is_file() {
                    failures.push(format!("README.md: the lines did not install ~/{file}"));
                }
            }
            let events = event_count(&pool).await;
            if events != 1 {
                failures.push(format!("README.md: its record made {events} events, not 1"));
            }
        }
    }
    assert_eq!(
        not_run,
        NOT_RUN.map(|(line, _)| line),
        "the exceptions stand"
    );
    assert!(ran >= 10, "only {ran} blocks and commands ran");
    assert!(
        failures.is_empty(),
        "{} block(s) or command(s) of the docs do not run as printed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
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

impl Example<'_> {
    /// The refusal the page shows the command printing, if it shows one.
    fn refusal(&self) -> Option<&str> {
        self.output
            .first()
            .copied()
            .filter(|line| line.starts_with("retrylog: "))
    }

    /// The status the page gives the command: the one it shows, else 2 for a refusal, else 0.
    fn expected_status(&self) -> i32 {
        self.status
            .unwrap_or(if self.refusal().is_some() { 2 } else { 0 })
    }

    /// What the page shows the command print, without the blank lines before the next one.
    fn printed(&self) -> Vec<&str> {
        let mut lines = self.output.clone();
        while lines.last().is_some_and(|line| line.trim().is_empty()) {
            lines.pop();
        }
        lines
    }
}

fn examples(blocks: &[Block]) -> Vec<Example<'_>> {
    let mut found: Vec<Example> = Vec::new();
    for block in blocks.iter().filter(|block| block.info == "text") {
        for line in block.body.lines() {
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

/// The text with every date (`2026-12-06`) and the time after it (`T08:00:00Z`, ` 08:00`) as
/// `<time>`, and every other character as it is: the counts beside them still compare.
fn times_as_t(text: &str) -> String {
    fn shape(bytes: &[u8], pattern: &str) -> bool {
        bytes.len() >= pattern.len()
            && pattern.bytes().zip(bytes).all(|(want, got)| match want {
                b'd' => got.is_ascii_digit(),
                want => want == *got,
            })
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut at = 0;
    while at < bytes.len() {
        if shape(&bytes[at..], "dddd-dd-dd") {
            at += 10;
            for time in ["Tdd:dd:ddZ", "Tdd:dd:dd", " dd:dd:dd", " dd:dd"] {
                if shape(&bytes[at..], time) {
                    at += time.len();
                    break;
                }
            }
            out.push_str("<time>");
        } else {
            let c = text[at..].chars().next().unwrap();
            out.push(c);
            at += c.len_utf8();
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
    let sandbox = Sandbox::new(&pool).await;

    let blocks = fenced(&page("docs/queries.md"));
    let examples = examples(&blocks);
    assert!(examples.len() >= 10, "{} examples", examples.len());
    for example in &examples {
        let output = run_example(&sandbox, example).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(example.expected_status()),
            "{}: {stderr}",
            example.command
        );
        if let Some(refusal) = example.refusal() {
            let said = stderr.lines().last().unwrap_or_default();
            assert_eq!(
                digits_as_n(said),
                digits_as_n(refusal),
                "{}",
                example.command
            );
        }
        // A CSV example's header is the one the command prints.
        if example.command.contains("--format csv") {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(stdout.lines().next(), example.printed().first().copied());
        }
    }
}

/// Runs a `$ retrylog …` example on the sandbox's database.
async fn run_example(sandbox: &Sandbox, example: &Example<'_>) -> std::process::Output {
    let command = example
        .command
        .strip_prefix("retrylog ")
        .unwrap_or_else(|| panic!("not a retrylog example: {}", example.command));
    sandbox.sh(&format!("exec retrylog {command}")).await
}

/// The examples of docs/queries.md that ran on its sample data (the page says so), and the
/// heading of the section holding its script.
const SAMPLE_EXAMPLES: [&str; 2] = ["retrylog report stats", "retrylog report trend"];
const SAMPLE_SECTION: &str = "Sample data spanning three weeks";

#[sqlx::test(migrations = false)]
async fn the_sample_data_script_prints_the_stats_and_trend_examples_as_shown(pool: PgPool) {
    // A fresh database, as the page asks: the script migrates it itself.
    let sandbox = Sandbox::new(&pool).await;
    let blocks = fenced(&page("docs/queries.md"));
    let script = blocks
        .iter()
        .find(|block| block.section == SAMPLE_SECTION && block.info == "sh")
        .expect("docs/queries.md has its sample script");
    for command in commands(&script.body, script.line + 1) {
        if let Some(problem) = sandbox.run("docs/queries.md", &command).await {
            panic!("{problem}");
        }
    }
    // Right after the script, the log, the counts and the rollups agree.
    let verified = sandbox.sh("retrylog verify").await;
    assert!(verified.status.success(), "{verified:?}");

    let examples = examples(&blocks);
    let mut compared = 0;
    for example in examples.iter().filter(|example| {
        SAMPLE_EXAMPLES
            .iter()
            .any(|c| example.command.starts_with(c))
    }) {
        let output = run_example(&sandbox, example).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(example.expected_status()),
            "{}: {stderr}",
            example.command
        );
        if let Some(refusal) = example.refusal() {
            let said = stderr.lines().last().unwrap_or_default();
            assert_eq!(digits_as_n(said), digits_as_n(refusal));
        } else if example.command.contains("--output ") {
            // The chart: drawn to the file the example names (its window ends today).
            assert!(stdout.is_empty(), "{}: {stdout}", example.command);
        } else {
            // A window counted back from now (the command names no date) shows today's
            // buckets: their times are not the page's, their counts are.
            let dated = times_as_t(example.command) != example.command;
            let same = |line: &str| {
                if dated {
                    line.to_string()
                } else {
                    times_as_t(line)
                }
            };
            let printed: Vec<String> = stdout.lines().map(same).collect();
            let shown: Vec<String> = example.printed().into_iter().map(same).collect();
            assert_eq!(
                printed,
                shown,
                "`{}` printed:\n{stdout}\nthe page shows:\n{}",
                example.command,
                example.printed().join("\n")
            );
            compared += 1;
        }
    }
    assert!(compared >= 5, "only {compared} examples compared");
}
