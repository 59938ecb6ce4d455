//! The commands the README documents that the other modules do not drive: the exit code for
//! an unreachable database and for a named one that does not exist (which only `migrate`
//! creates), the line naming the database, `status`, `project`, `replay --projection`,
//! `serve`'s refusals and its SIGINT, and a short `demo` that leaves no database behind.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::fixtures::*;

#[tokio::test]
async fn a_command_with_no_database_reachable_exits_69_naming_where_it_looked() {
    // Nothing listens on port 1; an explicit URL never falls back to a private cluster.
    let run = retrylog_at("postgres://postgres@127.0.0.1:1/retrylog", &["status"]).await;

    assert_eq!(run.code, Some(69), "{run:#?}");
    assert!(
        run.only_problem_line()
            .starts_with("retrylog: cannot reach PostgreSQL at 127.0.0.1:1: "),
        "{run:#?}"
    );
}

/// Where the binary says a database is missing: the server of `pool`, as `host:port` or
/// `socket-directory:port`.
fn server_of(pool: &PgPool) -> String {
    let options = pool.connect_options();
    match options.get_socket() {
        Some(dir) => format!("{}:{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// The one line a command prints when the database it was given does not exist.
fn missing_database_line(pool: &PgPool, database: &str) -> String {
    format!(
        "retrylog: database \"{database}\" does not exist on {}; if the name is right, \
         `retrylog migrate` creates it and installs the schema",
        server_of(pool)
    )
}

/// A database the user named is never created by a command that does not install the schema
/// — a mistyped name would become a new, empty database, and the next hint would send the
/// user to migrate into it: exit 69 (no database), one line naming it, its server and
/// `retrylog migrate`; and afterwards it still does not exist. Named in the URL or in
/// PGDATABASE alike.
#[sqlx::test(migrations = false)]
async fn a_command_that_only_reads_a_named_database_that_does_not_exist_exits_69_and_creates_none(
    pool: PgPool,
) {
    let typo = TestDatabase::new(&pool, "typo");
    let url = typo.url(&pool);
    let job = JOB_A.to_string();
    for args in [
        &["report", "alerts"][..],
        &["history", "--job-id", &job],
        &["verify"],
        &["status"],
        &["project"],
        &["replay", "--dry-run"],
    ] {
        let run = retrylog_at(&url, args).await;
        assert_eq!(run.code, Some(69), "{args:?}: {run:#?}");
        assert_eq!(
            run.only_problem_line(),
            missing_database_line(&pool, &typo.name),
            "{args:?}"
        );
        assert!(!typo.exists(&pool).await, "{args:?} created {}", typo.name);
    }

    // The same database named in PGDATABASE, the server in the other libpq variables.
    let options = pool.connect_options();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrylog"))
        .args(["report", "alerts"])
        .env_remove("DATABASE_URL")
        .env_remove("RETRYLOG_LOG")
        .env("PGHOST", options.get_host())
        .env("PGPORT", options.get_port().to_string())
        .env("PGUSER", options.get_username())
        .env("PGDATABASE", &typo.name)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert_eq!(stderr.trim_end(), missing_database_line(&pool, &typo.name));
    assert!(
        !typo.exists(&pool).await,
        "PGDATABASE: created {}",
        typo.name
    );
}

/// Installing the schema is what `migrate` is asked for: it creates the database it was
/// named, then installs the schema there. `grant` and `serve` install the schema too but create
/// only the unnamed default `retrylog`: a named one must exist, so a service whose settings
/// name a mistyped database stops (exit 69) rather than start on a new, empty one.
#[sqlx::test(migrations = false)]
async fn migrate_creates_the_named_database_it_installs_into_and_grant_does_not(pool: PgPool) {
    let named = TestDatabase::new(&pool, "named");
    let url = named.url(&pool);

    let grant = retrylog_at(&url, &["grant", "reader", "no_such_role_here"]).await;
    assert_eq!(grant.code, Some(69), "{grant:#?}");
    assert_eq!(
        grant.only_problem_line(),
        missing_database_line(&pool, &named.name)
    );
    assert!(!named.exists(&pool).await, "grant created {}", named.name);

    let migrate = retrylog_at(&url, &["migrate"]).await;
    assert_eq!(migrate.code, Some(0), "{migrate:#?}");
    assert!(
        named.exists(&pool).await,
        "migrate did not create {}",
        named.name
    );
    let status = retrylog_at(&url, &["status"]).await;
    assert_eq!(status.code, Some(0), "the schema is installed: {status:#?}");
}

#[sqlx::test(migrations = false)]
async fn every_command_says_on_stderr_which_database_it_uses(pool: PgPool) {
    pipeline(&pool).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();

    for args in [&["status"][..], &["verify"], &["migrate"]] {
        let run = retrylog(&pool, args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("retrylog: using database {database} on ")),
            "{args:?}: {run:#?}"
        );
        assert!(first.ends_with("(DATABASE_URL)"), "{args:?}: {first}");
    }
}

/// `status --format json` as (projection, mode, events_applied, events_behind, runner).
async fn status(pool: &PgPool) -> Vec<(String, String, i64, i64, String)> {
    let run = retrylog(pool, &["status", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    run.json()
        .as_array()
        .expect("status prints an array")
        .iter()
        .map(|row| {
            (
                row["projection"].as_str().unwrap().to_owned(),
                row["mode"].as_str().unwrap().to_owned(),
                row["events_applied"].as_i64().unwrap(),
                row["events_behind"].as_i64().unwrap(),
                row["runner"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[sqlx::test(migrations = false)]
async fn status_shows_the_rollup_behind_until_project_catches_it_up(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    append_n(&pool, job(JOB_B), 1).await;

    assert_eq!(
        status(&pool).await,
        vec![
            (
                "retry_counts".into(),
                "inline".into(),
                3,
                0,
                "every append".into()
            ),
            (
                "retry_rollup".into(),
                "async".into(),
                0,
                3,
                "none running".into()
            ),
        ]
    );

    let run = retrylog(&pool, &["project", "--format", "json"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let applied = run.json();
    assert_eq!(applied[0]["projection"], "retry_rollup", "{applied:#?}");
    assert_eq!(applied[0]["applied"], 3, "{applied:#?}");
    assert_eq!(applied[0]["events_behind"], 0, "{applied:#?}");

    let rows = status(&pool).await;
    assert_eq!(
        rows[1],
        (
            "retry_rollup".into(),
            "async".into(),
            3,
            0,
            "none running".into()
        )
    );
    // Nothing new: project applies nothing and still succeeds.
    let again = retrylog(&pool, &["project", "--format", "json"]).await;
    assert_eq!(again.json()[0]["applied"], 0, "{again:#?}");
}

#[sqlx::test(migrations = false)]
async fn replay_of_one_projection_rebuilds_that_one_and_leaves_the_other(pool: PgPool) {
    pipeline(&pool).await;
    append_n(&pool, variant(JOB_A, VARIANT_A1), 2).await;
    let caught_up = retrylog(&pool, &["project"]).await;
    assert_eq!(caught_up.code, Some(0), "{caught_up:#?}");
    // Both projections damaged by hand.
    sqlx::raw_sql(
        "UPDATE jobs_variants SET retry_count = 9 WHERE job_variants_id = '0a000000-0000-4000-8000-000000000001';
         DELETE FROM retry_rollup;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let problems = |run: &Run| -> Vec<String> {
        run.json()["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["problem"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(before.code, Some(1), "{before:#?}");
    let mut found = problems(&before);
    found.dedup();
    assert_eq!(found, ["count", "rollup"], "{before:#?}");

    let rollup_only = retrylog(&pool, &["replay", "--projection", "retry_rollup"]).await;
    assert_eq!(rollup_only.code, Some(0), "{rollup_only:#?}");
    assert!(
        rollup_only.stderr.contains("into retry_rollup; changed "),
        "{rollup_only:#?}"
    );
    let after = retrylog(&pool, &["verify", "--full", "--format", "json"]).await;
    assert_eq!(after.code, Some(1), "{after:#?}");
    assert_eq!(
        problems(&after),
        ["count"],
        "only the count is left: {after:#?}"
    );

    let counts_only = retrylog(&pool, &["replay", "--projection", "retry_counts"]).await;
    assert_eq!(counts_only.code, Some(0), "{counts_only:#?}");
    assert_verify_clean(&pool).await;

    let unknown = retrylog(&pool, &["replay", "--projection", "retry_totals"]).await;
    assert_eq!(unknown.code, Some(2), "{unknown:#?}");
    assert!(
        unknown.stderr.contains(
            "unknown projection \"retry_totals\" (expected retry_counts, retry_rollup or retry_outcomes)"
        ),
        "{unknown:#?}"
    );
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_a_bad_setting_with_one_line_naming_it(pool: PgPool) {
    pipeline(&pool).await;
    let before = snapshot(&pool).await;

    for (args, names) in [
        (&["serve", "--stuck-after", "5x"][..], "--stuck-after"),
        (&["serve", "--sweep-every", "0s"], "--sweep-every"),
        (&["serve", "--max-retries=-1"], "--max-retries"),
        (&["serve", "--steps", "prepare,,iou_eval"], "--steps"),
    ] {
        let run = retrylog(&pool, args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        let lines = run.problem_lines();
        assert!(
            lines.iter().any(|line| line.contains(names)),
            "{args:?} names {names}: {run:#?}"
        );
        assert!(
            !lines.iter().any(|line| line.contains("Usage:")),
            "{args:?}: one line, not the usage: {run:#?}"
        );
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a refused serve wrote nothing"
    );
}

#[sqlx::test(migrations = false)]
async fn serve_on_sigint_lets_the_retry_in_flight_commit_and_exits_zero(pool: PgPool) {
    stop_lets_the_retry_in_flight_commit(&pool, "INT").await;
}

#[sqlx::test(migrations = false)]
async fn serve_on_sigterm_lets_the_retry_in_flight_commit_and_exits_zero(pool: PgPool) {
    stop_lets_the_retry_in_flight_commit(&pool, "TERM").await;
}

/// Sends SIG`signal` to serve while its retry of A2 is in flight: the retry commits whole,
/// then serve exits 0.
async fn stop_lets_the_retry_in_flight_commit(pool: &PgPool, signal: &str) {
    let pool = pool.clone();
    pipeline(&pool).await;
    // Every append waits for an advisory lock this test holds: the watchdog's retry of the
    // failed variant A2 is then in flight, its state change made, until the test lets go.
    sqlx::raw_sql(
        "CREATE FUNCTION hold_append() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$;
         CREATE TRIGGER hold_append BEFORE INSERT ON retry_history
             FOR EACH ROW EXECUTE FUNCTION hold_append();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(4242)")
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut serve = serve_command(&pool, &[])
        .await
        .env("RETRYLOG_INSTANCE", "serve-stopped")
        .stderr(Stdio::piped())
        .spawn()
        .expect("retrylog serve starts");
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();

    // 1. The retry is in flight: a backend of this database waits for the advisory lock.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                             WHERE locktype = 'advisory' AND NOT granted AND objid = 4242
                               AND database = (SELECT oid FROM pg_database
                                                WHERE datname = current_database()))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting {
            break;
        }
        assert!(
            Instant::now() < until,
            "serve's retry never reached the append"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. The signal, and wait until serve says it is shutting down.
    let pid = serve.id().expect("serve is running").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            let shutting_down = line.contains(&format!("SIG{signal}: shutting down"));
            seen.push(line);
            if shutting_down {
                return;
            }
        }
        panic!("serve's log ended without the SIG{signal} line: {seen:#?}");
    })
    .await
    .expect("serve logs the signal within 10 s");

    // 3. Let the retry go: it commits, then serve exits 0.
    holder.rollback().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), serve.wait())
        .await
        .expect("serve exits within 10 s of the retry committing")
        .unwrap();
    assert!(status.success(), "serve exited with {status}");

    assert_eq!(
        attempts(&pool, variant(JOB_A, VARIANT_A2)).await,
        [1],
        "the retry in flight committed"
    );
    let (actor, status): (String, String) = sqlx::query_as(
        "SELECT h.actor, v.status FROM retry_history h
           JOIN jobs_variants v USING (job_variants_id) WHERE h.job_variants_id = $1",
    )
    .bind(VARIANT_A2)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), status.as_str()),
        ("serve-stopped", "done"),
        "the event and its state change committed together"
    );
    assert_verify_clean(&pool).await;
}

/// The demo runs in a scratch database of the name `--database` gives (a name of this test's
/// own, so that it drops no database a user kept, and two runs at once never meet), and leaves
/// nothing behind: neither its own database nor the configured one, which it never opens, so
/// a configured database that does not exist is not created either.
#[sqlx::test(migrations = false)]
async fn a_short_demo_runs_the_watchdog_and_ends_with_a_clean_verify_leaving_no_database(
    pool: PgPool,
) {
    let configured = TestDatabase::new(&pool, "configured");
    let scratch = TestDatabase::new(&pool, "demo");
    let run = retrylog_at(
        &configured.url(&pool),
        &[
            "demo",
            "--database",
            &scratch.name,
            "--duration",
            "3s",
            "--jobs",
            "6",
            "--seed",
            "4242",
            "--format",
            "json",
        ],
    )
    .await;

    assert!(
        run.stderr
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("retrylog: using the server at "),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains(&format!("in database {}, for 3s", scratch.name)),
        "{run:#?}"
    );
    assert!(
        !configured.exists(&pool).await,
        "the demo created the configured database {}",
        configured.name
    );
    assert!(
        !scratch.exists(&pool).await,
        "the demo left its database {} behind",
        scratch.name
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    let summary: Value = run.json();
    assert_eq!(summary["seed"], 4242);
    assert_eq!(summary["jobs"]["started"], 6, "{summary:#?}");
    assert_eq!(summary["verify"]["clean"], true, "{summary:#?}");
    let retries: i64 = summary["retries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["retries"].as_i64().unwrap())
        .sum();
    assert!(retries > 0, "the watchdog retried something: {summary:#?}");
    assert_eq!(summary["verify"]["events"], retries, "{summary:#?}");
    assert!(summary["kept_database_url"].is_null());
}
