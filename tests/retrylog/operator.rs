//! The operator's first hour, through the binary: tables that fit a 100-column terminal (a
//! pseudo-terminal made by util-linux `script`), a trend that shows the rows with data, one
//! duration grammar for every flag, the demo that keeps a kept database and prints hints that
//! work as printed, the help without empty env values, the actor without `$USER`, `serve`
//! naming its database once and writing only JSON lines under `--log-format json`,
//! `--version` with the schema, completions and man pages, `report`'s summary naming every
//! report, and a closed pipe (`| head -1`) ending any command quietly.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use crate::fixtures::*;

/// Runs `retrylog <args>` with stdout on a pseudo-terminal `columns` wide (stderr to a file,
/// so only stdout is on the terminal) and returns what the terminal showed, without the
/// carriage returns the terminal adds.
async fn on_a_terminal(columns: u16, args: &[&str]) -> String {
    let dir = TempPath::dir("pty");
    let words: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_retrylog"))
        .chain(args.iter().copied())
        .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
        .collect();
    let line = format!(
        "stty cols {columns} rows 50; {} 2>'{}/stderr'",
        words.join(" "),
        dir.display()
    );
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("util-linux script runs");
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(
        output.status.success(),
        "retrylog {args:?} on a terminal: {}\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 on the terminal")
        .replace('\r', "")
}

/// The widest line, in characters (what a terminal counts for these tables).
fn widest(text: &str) -> usize {
    text.lines()
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0)
}

#[sqlx::test(migrations = false)]
async fn history_fits_a_100_column_terminal_while_wide_and_pipes_keep_every_value(pool: PgPool) {
    pipeline(&pool).await;
    let long = "CUDA out of memory while allocating the segmentation buffers ".repeat(4);
    append_ok(
        &pool,
        &retry(variant(JOB_A, VARIANT_A2)).with_detail(json!({"error": long.trim()})),
    )
    .await;
    let url = database_url(&pool).await;
    let variant = VARIANT_A2.to_string();
    let args = ["--database-url", &url, "history", "--variant-id", &variant];

    // 1. On a 100-column terminal: every line fits (twelve columns do not: one record per
    //    event), the long detail is cut with an ellipsis.
    let fitted = on_a_terminal(100, &args).await;
    assert!(widest(&fitted) <= 100, "wider than 100:\n{fitted}");
    assert!(fitted.starts_with("─[ 1 ]"), "{fitted}");
    assert!(
        fitted
            .lines()
            .any(|line| line.starts_with("target ")
                && line.ends_with(&format!("│ variant {variant}"))),
        "{fitted}"
    );
    assert!(fitted.contains('…'), "the long detail is elided:\n{fitted}");
    assert!(!fitted.contains(long.trim()), "{fitted}");

    // 2. --wide on the same terminal: the full row, detail whole.
    let mut wide_args = args.to_vec();
    wide_args.push("--wide");
    let wide = on_a_terminal(100, &wide_args).await;
    assert!(widest(&wide) > 300, "--wide is not wide:\n{wide}");
    assert!(wide.contains(long.trim()));

    // 3. A pipe gets every value whole, as before.
    let piped = retrylog(&pool, &args[2..]).await;
    assert_eq!(piped.code, Some(0), "{piped:#?}");
    assert!(piped.stdout.contains(long.trim()));
    assert!(widest(&piped.stdout) > 300);
}

/// Ids are never cut on a terminal: other columns give way (headers wrap, long cells are cut),
/// and a table that cannot fit its ids becomes one record per row with the ids whole; a narrow
/// table whose headers are long (`report stats`) stays a table on 80 columns.
#[sqlx::test(migrations = false)]
async fn ids_are_never_cut_on_a_terminal_and_a_narrow_table_stays_a_table(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, job(JOB_A), 2).await;
    append_n(&pool, variant(JOB_A, VARIANT_A2), 3).await;
    let url = database_url(&pool).await;
    let on = |columns: u16, report: &'static str| {
        let url = url.clone();
        async move { on_a_terminal(columns, &["--database-url", &url, "report", report]).await }
    };
    let (job_a, a2) = (JOB_A.to_string(), VARIANT_A2.to_string());

    // top-jobs on 100 columns: a table whose id is whole (it was cut to `0a000000-0000-40…`).
    let jobs = on(100, "top-jobs").await;
    assert!(jobs.starts_with('┌'), "{jobs}");
    assert!(widest(&jobs) <= 100, "wider than 100:\n{jobs}");
    assert!(
        jobs.lines()
            .any(|line| line.starts_with(&format!("│ {job_a} ┆"))),
        "{jobs}"
    );

    // top-variants cannot fit two ids and six columns in 100: records, both ids whole.
    let variants = on(100, "top-variants").await;
    assert!(variants.starts_with("─[ 1 ]"), "{variants}");
    for line in [
        format!("job_variants_id  │ {a2}"),
        format!("job_id           │ {job_a}"),
    ] {
        assert!(variants.lines().any(|shown| shown == line), "{variants}");
    }

    // stats on 80: still a table, its long headers wrapped at `_`, every count shown.
    let stats = on(80, "stats").await;
    assert!(stats.starts_with('┌'), "a table, not records:\n{stats}");
    assert!(widest(&stats) <= 80, "wider than 80:\n{stats}");
    assert!(!stats.contains('…'), "nothing cut:\n{stats}");
    assert!(
        stats.lines().any(|line| line.starts_with("│ variant ┆ 4 ")),
        "{stats}"
    );
    for piece in ["avg_", "retry_", "count"] {
        assert!(stats.contains(piece), "{stats}");
    }
    assert!(!stats.contains('\u{1b}'), "{stats}");
}

#[sqlx::test(migrations = false)]
async fn the_trend_table_shows_the_rows_with_data_and_counts_the_rest_json_keeps_the_grid(
    pool: PgPool,
) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;

    // The full grid: 31 days × job and variant; today's has the retries (and the fixture's
    // creations, today too), every other bucket is empty.
    let grid = retrylog(&pool, &["report", "trend", "--format", "json"]).await;
    assert_eq!(grid.code, Some(0), "{grid:#?}");
    let grid = grid.json();
    let grid = grid.as_array().unwrap();
    let with_data: Vec<&Value> = grid
        .iter()
        .filter(|row| row["retries"] != 0 || row["targets_created"] != 0)
        .collect();
    assert!(grid.len() >= 62, "{grid:?}");
    assert_eq!(with_data.len(), 2, "today's job and variant rows: {grid:?}");

    // The table: only those rows, and one line on stderr counting the others.
    let table = retrylog(&pool, &["report", "trend"]).await;
    assert_eq!(table.code, Some(0), "{table:#?}");
    let rows: Vec<&str> = table
        .stdout
        .lines()
        .filter(|line| line.starts_with("│ 20"))
        .collect();
    assert_eq!(rows.len(), 2, "{}", table.stdout);
    let left_out = grid.len() - 2;
    assert_eq!(
        table.problem_lines(),
        [format!(
            "retrylog: left out {left_out} of {} rows with no retries and nothing created \
             (--format json or csv lists the full grid)",
            grid.len()
        )]
    );

    // --non-empty gives scripts the same rows; CSV keeps the grid without it.
    let json = retrylog(
        &pool,
        &["report", "trend", "--format", "json", "--non-empty"],
    )
    .await;
    assert_eq!(json.json().as_array().unwrap().len(), 2, "{json:#?}");
    let csv = retrylog(&pool, &["report", "trend", "--format", "csv"]).await;
    assert_eq!(csv.stdout.lines().count(), grid.len() + 1);
    let csv = retrylog(
        &pool,
        &["report", "trend", "--format", "csv", "--non-empty"],
    )
    .await;
    assert_eq!(csv.stdout.lines().count(), 3, "{csv:#?}");
}

#[sqlx::test(migrations = false)]
async fn every_duration_flag_reads_the_same_grammar(pool: PgPool) {
    pipeline(&pool).await;
    append_ok(&pool, &retry(variant(JOB_A, VARIANT_A1))).await;
    let variant = VARIANT_A1.to_string();

    // The readers take 90s, 1h30m and 500ms like the watchdog does.
    for args in [
        &["report", "stats", "--since", "90s", "--format", "json"][..],
        &["report", "stats", "--since", "1h30m", "--format", "json"],
        &["report", "alerts", "--within", "1h30m", "--format", "json"],
        &["report", "top-jobs", "--as-of", "500ms", "--format", "json"],
        &["report", "trend", "--since", "1d12h", "--format", "json"],
    ] {
        let run = retrylog(&pool, args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
    }
    let history = ["history", "--variant-id", &variant, "--format", "json"];
    let recent = retrylog(&pool, &[&history[..], &["--since", "1h30m"]].concat()).await;
    assert_eq!(recent.json().as_array().unwrap().len(), 1, "{recent:#?}");
    let none_yet = retrylog(&pool, &[&history[..], &["--as-of", "1h30m"]].concat()).await;
    assert_eq!(none_yet.json(), json!([]), "{none_yet:#?}");

    // Years are refused the same way by a reader and by serve, with the same hint.
    let hint = "months and years vary in length; write days or weeks, e.g. 90d, 104w";
    let report = retrylog(&pool, &["report", "trend", "--since", "2y"]).await;
    assert_eq!(report.code, Some(2), "{report:#?}");
    assert_eq!(
        report.problem_lines(),
        [format!(
            "retrylog: invalid --since \"2y\": expected a duration like 7d, 12h, 30m or a \
             timestamp like 2026-11-01T00:00:00Z; {hint}"
        )]
    );
    let serve = retrylog(&pool, &["serve", "--stuck-after", "2y"]).await;
    assert_eq!(serve.code, Some(2), "{serve:#?}");
    assert!(serve.stderr.contains(hint), "{serve:#?}");

    // serve starts with 1h30m and 500ms (and stops on SIGTERM).
    let (serve, log) =
        serve_started(&pool, &["--stuck-after", "1h30m", "--sweep-every", "500ms"]).await;
    stop_serve(serve).await;
    assert!(log.contains("using database"), "{log}");
}

/// `retrylog serve <args>` on the test's database, once it says it runs the watchdog; with
/// what it logged until then.
async fn serve_started(pool: &PgPool, args: &[&str]) -> (tokio::process::Child, String) {
    let serve = serve_command(pool, args)
        .await
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    wait_for_log_line(serve, "running the recovery watchdog").await
}

/// Reads serve's stderr until a line containing `wanted` (20 s at most); returns the child
/// and everything read so far. The rest of stderr is drained in the background: serve must
/// be able to log its shutdown.
async fn wait_for_log_line(
    mut serve: tokio::process::Child,
    wanted: &str,
) -> (tokio::process::Child, String) {
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    let log = read_until(&mut lines, wanted).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (serve, log)
}

async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    wanted: &str,
) -> String {
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line with {wanted:?} within 20 s:\n{log}"))
            .unwrap()
            .unwrap_or_else(|| panic!("serve ended before saying {wanted:?}:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        if line.contains(wanted) {
            return log;
        }
    }
}

#[sqlx::test(migrations = false)]
async fn serve_names_its_database_once(pool: PgPool) {
    pipeline(&pool).await;
    let (serve, log) = serve_started(&pool, &[]).await;
    stop_serve(serve).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let naming = log
        .lines()
        .filter(|line| line.contains(&format!("database {database} on ")))
        .count();
    assert_eq!(naming, 1, "{log}");
}

/// Each line of `stderr` parsed as JSON; a line that is not fails the test.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}\n{stderr}"))
        })
        .collect()
}

/// Under `--log-format json` every line on stderr is one JSON object — the line naming the
/// database, the log, the shutdown, and the refusals too — so `2>&1 | jq` reads them all.
#[sqlx::test(migrations = false)]
async fn under_log_format_json_every_line_on_stderr_is_a_json_object(pool: PgPool) {
    pipeline(&pool).await;
    let mut serve = serve_command(&pool, &["--log-format", "json"])
        .await
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    let mut log = read_until(&mut lines, "running the recovery watchdog").await;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("serve ends within 10 s of SIGTERM")
        .unwrap()
    {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(serve.wait().await.unwrap().success(), "{log}");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let messages: Vec<String> = json_lines(&log)
        .iter()
        .map(|line| {
            line["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        messages[0].starts_with(&format!("using database {database} on ")),
        "{log}"
    );
    assert!(
        messages.iter().any(|m| m == "SIGTERM: shutting down"),
        "{log}"
    );

    // The refusals: a value clap refuses, a database that does not exist, no server at all.
    let missing = TestDatabase::new(&pool, "missing");
    let url = database_url(&pool).await;
    for (url, args, said) in [
        (
            url.as_str(),
            &["serve", "--log-format", "json", "--stuck-after", "2y"][..],
            "invalid value '2y' for '--stuck-after <DURATION>'",
        ),
        (
            &missing.url(&pool),
            &["serve", "--log-format", "json"],
            "does not exist on",
        ),
        (
            "postgres://postgres@127.0.0.1:1/retrylog",
            &["serve", "--log-format=json"],
            "cannot reach PostgreSQL at 127.0.0.1:1",
        ),
    ] {
        let run = tokio::time::timeout(Duration::from_secs(30), retrylog_at(url, args))
            .await
            .unwrap_or_else(|_| panic!("{args:?} on {url} still runs after 30 s"));
        assert!(matches!(run.code, Some(2 | 69)), "{args:?}: {run:#?}");
        let errors: Vec<Value> = json_lines(&run.stderr)
            .into_iter()
            .filter(|line| line["level"] == "ERROR")
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {run:#?}");
        assert!(
            errors[0]["fields"]["message"]
                .as_str()
                .unwrap()
                .contains(said),
            "{args:?}: {run:#?}"
        );
    }
    assert!(
        !missing.exists(&pool).await,
        "serve created {}",
        missing.name
    );
}

#[sqlx::test(migrations = false)]
async fn without_user_set_a_recorded_retry_names_the_os_user(pool: PgPool) {
    pipeline(&pool).await;
    let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args(["--database-url", &database_url(&pool).await, "record"])
        .args(["--job-id", &JOB_A.to_string(), "--reason", "stuck"])
        .args(["--format", "json"])
        .env_remove("USER")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let events: Value = serde_json::from_slice(&output.stdout).unwrap();
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(events[0]["actor"], format!("cli:{}", me.trim()));
}

#[tokio::test]
async fn help_never_shows_an_environment_variable_as_set_to_empty() {
    for args in [&["--help"][..], &["serve", "--help"], &["demo", "--help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
            .args(args)
            .env_remove("RETRYLOG_DATA_DIR")
            .env_remove("RETRYLOG_STEPS")
            .output()
            .await
            .unwrap();
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("[env: "), "{args:?}: {help}");
        assert!(!help.contains("=]"), "{args:?}: {help}");
    }
}

/// Runs `retrylog <args>` (the test's database named by `url`, when given) with stdout on a
/// pipe that is closed after one line has been read, as `| head -1` does; returns the exit
/// status and what it said on stderr. Also checks that the whole output is more than a pipe
/// holds (64 KiB on Linux), so the command was surely still writing when the pipe closed.
async fn closed_after_one_line(url: Option<&str>, args: &[&str]) -> (Option<i32>, String) {
    let command = |stdout: Stdio| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_retrylog"));
        if let Some(url) = url {
            command.args(["--database-url", url]);
        }
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        command
    };
    let whole = command(Stdio::piped()).output().await.unwrap();
    assert!(whole.status.success(), "{args:?}: {whole:?}");
    assert!(
        whole.stdout.len() > 64 * 1024,
        "{args:?} prints only {} bytes: a pipe holds all of it",
        whole.stdout.len()
    );

    let mut child = command(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(stdout);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command ends once its reader is gone")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `| head -1` is not an error: a command whose reader closed the pipe stops and exits 0
/// without a word (no panic, no `Broken pipe`), whatever it printed: a completion script, a
/// history as a table, CSV or JSON, a report.
#[sqlx::test(migrations = false)]
async fn a_closed_pipe_ends_a_command_quietly_with_0(pool: PgPool) {
    pipeline(&pool).await;
    lift_retry_limit(&pool).await;
    // Five events with a 15 KB detail: every format of the history is over 64 KiB.
    let detail = json!({"error": "x".repeat(15_000)});
    for _ in 0..5 {
        append_ok(&pool, &retry(job(JOB_B)).with_detail(detail.clone())).await;
    }
    let url = database_url(&pool).await;
    let job_b = JOB_B.to_string();
    let quiet = |stderr: &str| {
        stderr
            .lines()
            .all(|line| line.starts_with("retrylog: using database "))
    };

    let (code, stderr) = closed_after_one_line(None, &["completions", "zsh"]).await;
    assert_eq!(code, Some(0), "completions zsh: {stderr}");
    assert!(quiet(&stderr), "completions zsh: {stderr}");
    for format in ["table", "csv", "json"] {
        let args = ["history", "--job-id", &job_b, "--format", format];
        let (code, stderr) = closed_after_one_line(Some(&url), &args).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(quiet(&stderr), "{args:?}: {stderr}");
    }
    // Eight weeks of hours, two kinds each: the full grid.
    for format in ["csv", "json"] {
        let args = [
            "report", "trend", "--since", "8w", "--bucket", "hour", "--format", format,
        ];
        let (code, stderr) = closed_after_one_line(Some(&url), &args).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(quiet(&stderr), "{args:?}: {stderr}");
    }
}

/// The summary of `report` (in `retrylog --help` and atop `report --help`) names every report
/// clap knows, so a new report cannot be left out of it again (outcomes was).
#[tokio::test]
async fn the_summary_of_report_names_every_report() {
    let report = retrylog::cli::command()
        .find_subcommand("report")
        .expect("report is a command")
        .clone();
    let reports: Vec<String> = report
        .get_subcommands()
        .map(|command| command.get_name().to_string())
        .filter(|name| name != "help")
        .collect();
    assert!(reports.contains(&"outcomes".to_string()), "{reports:?}");
    for args in [&["--help"][..], &["report", "--help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
            .args(args)
            .output()
            .await
            .unwrap();
        let help = String::from_utf8(output.stdout).unwrap();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        // The list after "reports: ": words ending in a comma, then the last one.
        let (_, list) = help
            .split_once("reports: ")
            .unwrap_or_else(|| panic!("{args:?}: no summary of report: {help}"));
        let mut listed = Vec::new();
        for word in list.split(' ') {
            listed.push(word.trim_end_matches([',', '.']));
            if !word.ends_with(',') {
                break;
            }
        }
        for name in &reports {
            assert!(
                listed.contains(&name.as_str()),
                "{args:?}: the summary of report lists {listed:?}, not {name}"
            );
        }
    }
}

#[tokio::test]
async fn version_names_the_schema_version_the_binary_expects() {
    let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .arg("--version")
        .output()
        .await
        .unwrap();
    let last = retrylog::migrate::MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!(
            "retrylog {} (schema version {last})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_command_line_definitions() {
    let run = |args: &'static [&'static str]| async move {
        let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]).await;
    assert!(bash.contains("_retrylog()") && bash.contains("--stuck-after"));
    assert!(run(&["completions", "zsh"])
        .await
        .starts_with("#compdef retrylog"));
    assert!(run(&["completions", "fish"])
        .await
        .contains("complete -c retrylog -n \"__fish_retrylog_needs_command\" -f -a \"local\""));

    let page = run(&["man"]).await;
    assert!(page.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{page}");
    assert!(page.contains(".TH retrylog 1") && page.contains("retrylog\\-local(1)"));

    // The command makes the directory.
    let dir = TempPath::new("man");
    let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let written = ["retrylog.1", "retrylog-local.1", "retrylog-report-trend.1"]
        .map(|page| dir.join(page).is_file());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(written, [true; 3]);
}

/// The demo runs in a database name of the test's own (`--database`), on the test server:
/// no user's kept demo is at stake, and two runs at once never meet.
#[sqlx::test(migrations = false)]
async fn demo_keeps_a_kept_database_unless_replace_and_its_hints_work_as_printed(pool: PgPool) {
    // Outside the checkout, so the hints name the binary's path.
    let cwd = TempPath::dir("cwd");
    let url = database_url(&pool).await;
    let database = TestDatabase::new(&pool, "kept");
    let demo_url = database.url(&pool);
    // A database an earlier `demo --keep` left, with something someone was looking at.
    sqlx::query(&format!("CREATE DATABASE {}", database.name))
        .execute(&pool)
        .await
        .unwrap();
    let kept = sqlx::PgPool::connect(&demo_url).await.unwrap();
    sqlx::query("CREATE TABLE my_notes (note text)")
        .execute(&kept)
        .await
        .unwrap();

    // 1. Without --replace: refused, exit 2, the database and its session untouched.
    let short = [
        "demo",
        "--database",
        &database.name,
        "--duration",
        "2s",
        "--jobs",
        "2",
        "--variants",
        "1",
    ];
    let refused = retrylog_in(&cwd, &url, &short).await;
    assert_eq!(refused.code, Some(2), "{refused:#?}");
    assert!(
        refused.problem_lines()[0].starts_with(&format!(
            "retrylog: database {} exists (an earlier `demo --keep` left it",
            database.name
        )) && refused.stderr.contains("--replace"),
        "{refused:#?}"
    );
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM my_notes")
        .fetch_one(&kept)
        .await
        .expect("the kept database and its session are still there");
    assert_eq!(notes, 0);
    kept.close().await;

    // 2. With --replace (and --keep): it says so, runs, and its hints run as printed.
    let mut replace = short.to_vec();
    replace.extend(["--replace", "--keep", "--seed", "7"]);
    let demo = retrylog_in(&cwd, &url, &replace).await;
    assert_eq!(demo.code, Some(0), "{demo:#?}");
    assert!(demo.stderr.contains(&format!(
        "dropping the {} database an earlier --keep left (--replace)",
        database.name
    )));
    let hints: Vec<&str> = demo
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("The database is kept; explore it with:"))
        .skip(1)
        .map(str::trim)
        .filter(|line| line.contains(" --database-url "))
        .collect();
    assert!(hints.len() >= 2, "{}", demo.stdout);
    for hint in hints {
        assert!(
            hint.starts_with(&format!(
                "{} --database-url ",
                env!("CARGO_BIN_EXE_retrylog")
            )),
            "{hint}"
        );
        let ran = Command::new("sh")
            .args(["-c", hint])
            .current_dir(cwd.path())
            .env_remove("DATABASE_URL")
            .output()
            .await
            .unwrap();
        assert!(ran.status.success(), "{hint}: {ran:?}");
    }
    assert!(database.exists(&pool).await, "kept with --keep");
}

#[tokio::test]
async fn every_command_the_readme_says_prints_data_takes_the_formats_it_says() {
    let readme = include_str!("../../README.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        readme.contains(
            "Every command that prints data takes `--format table|json|csv` (`demo`: \
             `table|json`; `report trend` adds `svg`)"
        ),
        "the README's claim changed: update this test"
    );
    for (args, formats) in [
        (&["record"][..], "table, json, csv"),
        (&["history"], "table, json, csv"),
        (&["report", "top-jobs"], "table, json, csv"),
        (&["report", "stats"], "table, json, csv"),
        (&["report", "alerts"], "table, json, csv"),
        (&["report", "trend"], "table, json, csv, svg"),
        (&["replay"], "table, json, csv"),
        (&["verify"], "table, json, csv"),
        (&["project"], "table, json, csv"),
        (&["status"], "table, json, csv"),
        (&["local", "status"], "table, json, csv"),
        (&["demo"], "table, json"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_retrylog"))
            .args(args)
            .arg("-h")
            .output()
            .await
            .unwrap();
        let help = String::from_utf8(output.stdout).unwrap();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains("--format <FORMAT> Output format"),
            "{args:?}: {help}"
        );
        assert!(
            help.contains(&format!("[possible values: {formats}]")),
            "{args:?}: {help}"
        );
    }
}

#[tokio::test]
async fn the_systemd_unit_runs_serve_hardened_with_settings_the_binary_knows() {
    let unit = include_str!("../../deploy/retrylog.service");
    let settings: Vec<&str> = unit
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('='))
        .collect();
    for wanted in [
        "ExecStartPre=/usr/local/bin/retrylog migrate",
        "ExecStart=/usr/local/bin/retrylog serve --log-format json",
        "EnvironmentFile=/etc/retrylog/retrylog.env",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(settings.contains(&wanted), "the unit lacks {wanted}");
    }

    // Every variable of the environment file is one `serve` reads (its --help names each).
    let help = Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let env_file = include_str!("../../deploy/retrylog.env");
    let names: Vec<&str> = env_file
        .lines()
        .filter_map(|line| line.trim_start_matches('#').split_once('='))
        .map(|(name, _)| name)
        .filter(|name| !name.contains(' '))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            name == "RETRYLOG_LOG" || help.contains(&format!("[env: {name}]")),
            "serve does not read {name}"
        );
    }

    // Where systemd-analyze exists (CI installs it), the unit verifies without a word, with
    // ExecStart naming this binary (verify wants the program to exist).
    let Ok(probe) = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .await
    else {
        return;
    };
    assert!(probe.status.success());
    let dir = TempPath::dir("unit");
    let copy = dir.join("retrylog.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/retrylog", env!("CARGO_BIN_EXE_retrylog")),
    )
    .unwrap();
    // --man=no: Documentation= names the man page `retrylog man` installs, not this host's.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .await
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(String::from_utf8_lossy(&verify.stderr), "", "{verify:?}");

    // The exposure docs/operations.md states is the one systemd-analyze computes: checked on
    // the systemd version the page names (other versions weigh the settings differently), at
    // most the 1.5 .ci/run holds it to on any.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&copy)
        .output()
        .await
        .unwrap();
    assert!(security.status.success(), "{security:?}");
    let said = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = said
        .split_once("Overall exposure level for retrylog.service: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(exposure <= 1.5, "exposure {exposure}");
    let operations = include_str!("../../docs/operations.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let (documented, documented_on) = operations
        .split_once("most 1.5 of 10; it is ")
        .and_then(|(_, rest)| rest.split_once(" with systemd "))
        .and_then(|(figure, rest)| Some((figure.parse::<f64>().ok()?, rest.split(',').next()?)))
        .expect("docs/operations.md states the unit's exposure and the systemd version");
    let version = String::from_utf8_lossy(&probe.stdout);
    if version.split_whitespace().nth(1) == Some(documented_on) {
        assert_eq!(
            exposure, documented,
            "docs/operations.md says the unit's exposure is {documented}; systemd-analyze \
             {documented_on} says {exposure}"
        );
    }
}
