//! Integration tests for how retrylog finds its database. They need the PostgreSQL server
//! `DATABASE_URL` names (the README's test command sets it) and the machine's server
//! binaries for the private-cluster tests. They set no PG* variables in this process (the
//! environment is process-global and the tests run in parallel) and leave no database,
//! directory or server behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{ensure, Context};
use retrylog::connect::{
    connect, start_private_cluster, stop_private_cluster, ConnectError, ConnectSettings,
    DatabaseUse,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

#[path = "common/temp.rs"]
mod temp;
use temp::TempPath;

/// The test server, from `DATABASE_URL`: where the suite's other tests run too.
fn server() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    url.parse()
        .unwrap_or_else(|error| panic!("DATABASE_URL is not a PostgreSQL URL: {error}"))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Settings for `url` as `migrate` connects: creating the database it names when missing.
fn settings(url: &str) -> ConnectSettings {
    ConnectSettings {
        database_url: Some(url.to_owned()),
        max_connections: 2,
        data_dir: None,
        database: DatabaseUse::Create,
        ..ConnectSettings::default()
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&server().database("postgres")).await?;
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

#[tokio::test]
async fn explicit_url_creates_the_database_when_it_may_and_connects() -> anyhow::Result<()> {
    let name = unique("retrylog_conn");
    // Trust authentication ignores the password; it is only there to prove it is never shown.
    let server = server();
    let (user, host, port) = (server.get_username(), server.get_host(), server.get_port());
    let url = format!("postgres://{user}:not-shown@{host}:{port}/{name}");

    let outcome = async {
        // A command that does not install the schema is told the database is missing.
        let existing = ConnectSettings {
            database: DatabaseUse::Existing,
            ..settings(&url)
        };
        let error = connect(&existing)
            .await
            .err()
            .context("connected to a database that does not exist")?;
        let message = error.to_string();
        ensure!(
            matches!(error, ConnectError::MissingDatabase { .. })
                && message.starts_with(&format!(
                    "database \"{name}\" does not exist on {host}:{port}; "
                )),
            "message: {message}"
        );

        // Two at once: both race to CREATE DATABASE and both must succeed.
        let s = settings(&url);
        let (first, second) = tokio::join!(connect(&s), connect(&s));
        let (first, second) = (first?, second?);

        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&first.pool)
            .await?;
        ensure!(current == name, "connected to {current}, wanted {name}");
        ensure!(first.options.get_database() == Some(name.as_str()));
        ensure!(
            first.description
                == format!("database {name} on {host}:{port} as {user} (DATABASE_URL)"),
            "description: {}",
            first.description
        );
        ensure!(!first.description.contains("not-shown"));
        ensure!(!format!("{first:?}").contains("not-shown"));
        first.pool.close().await;
        second.pool.close().await;

        // The database exists now: a plain reconnect.
        let again = connect(&settings(&url)).await?;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&again.pool)
            .await?;
        ensure!(one == 1);
        again.pool.close().await;
        Ok(())
    }
    .await;

    drop_database(&name)
        .await
        .context("dropping the test database")?;
    outcome
}

#[tokio::test]
async fn explicit_url_to_nothing_is_an_error_and_starts_no_cluster() -> anyhow::Result<()> {
    // A path that must stay absent; its guard removes it if a private cluster was made there.
    let data_dir = TempPath::new("nofallback");
    let s = ConnectSettings {
        data_dir: Some(data_dir.to_path_buf()),
        ..settings("postgres://127.0.0.1:1/retrylog")
    };

    let error = connect(&s)
        .await
        .err()
        .context("connecting to port 1 succeeded")?;
    let message = error.to_string();
    ensure!(
        matches!(error, ConnectError::Unreachable { .. }),
        "unexpected error: {message}"
    );
    ensure!(
        message.starts_with("cannot reach PostgreSQL at 127.0.0.1:1: "),
        "message: {message}"
    );
    ensure!(
        !data_dir.exists(),
        "a private cluster directory was created"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_url_is_named() -> anyhow::Result<()> {
    let error = connect(&settings("mysql://root@127.0.0.1/retrylog"))
        .await
        .err()
        .context("a mysql:// URL was accepted")?;
    ensure!(
        error
            .to_string()
            .starts_with("DATABASE_URL is not a valid PostgreSQL URL: "),
        "message: {error}"
    );
    Ok(())
}

/// initdb, start, reuse, connect through the socket, stop. Not ignored: it takes a few
/// seconds and CI has the PostgreSQL server binaries.
#[tokio::test]
async fn private_cluster_starts_once_and_is_reused() -> anyhow::Result<()> {
    // A 0700 parent: when the test runs as root, the cluster runs as `postgres`, which
    // must be granted passage, as under /root in real use.
    let base = TempPath::private_dir("pc");
    let data_dir = base.join("d");

    let outcome = exercise_private_cluster(&data_dir).await;

    let stopped = stop_private_cluster(&data_dir);
    outcome?;
    stopped?;
    Ok(())
}

async fn exercise_private_cluster(data_dir: &Path) -> anyhow::Result<()> {
    // Two callers at once: the start lock lets only one run initdb and pg_ctl.
    let (first, second) = tokio::join!(
        start_private_cluster(data_dir),
        start_private_cluster(data_dir)
    );
    let (options, _) = (first?, second?);
    ensure!(options.get_socket() == Some(&data_dir.to_path_buf()));
    ensure!(options.get_username() == "postgres");

    let mut conn = PgConnection::connect_with(&options).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    ensure!(one == 1);
    conn.close().await?;

    let pid = postmaster_pid(data_dir)?;
    start_private_cluster(data_dir).await?;
    ensure!(postmaster_pid(data_dir)? == pid, "the server was restarted");

    // The same cluster through an explicit socket URL: connect creates the database.
    let url = format!(
        "postgres:///retrylog_private?host={}&user=postgres",
        data_dir.display()
    );
    let connected = connect(&settings(&url)).await?;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&connected.pool)
        .await?;
    ensure!(current == "retrylog_private");
    ensure!(
        connected.description
            == format!(
                "database retrylog_private on {}:5432 as postgres (DATABASE_URL)",
                data_dir.display()
            ),
        "description: {}",
        connected.description
    );
    connected.pool.close().await;

    // No TCP listener: the private cluster never competes for a port.
    let config = std::fs::read_to_string(data_dir.join("pgdata").join("postmaster.pid"))?;
    ensure!(
        config.lines().nth(5).map(str::trim) == Some(""),
        "listen address in postmaster.pid: {config}"
    );

    stop_private_cluster(data_dir)?;
    ensure!(!data_dir.join("pgdata").join("postmaster.pid").exists());
    // Stopping a stopped cluster is fine.
    stop_private_cluster(data_dir)?;
    Ok(())
}

fn postmaster_pid(data_dir: &Path) -> anyhow::Result<String> {
    let file: PathBuf = data_dir.join("pgdata").join("postmaster.pid");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .next()
        .map(str::to_owned)
        .context("empty postmaster.pid")
}

/// Whether this process runs as root (then the private cluster runs as `postgres`).
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// With nothing configured (no URL, no PG* variable) and no server at the libpq default,
/// a command starts the private cluster and uses it. The binary runs in mount and network
/// namespaces of its own, where the machine's server cannot be seen: an empty
/// /var/run/postgresql (where libpq looks for its socket), and a loopback with nothing
/// listening on 5432.
#[tokio::test]
async fn with_nothing_configured_and_no_server_answering_a_command_uses_the_private_cluster(
) -> anyhow::Result<()> {
    // Short, for the socket path; 0700 like a home directory the cluster must be let through.
    let base = TempPath::under(Path::new(env!("CARGO_TARGET_TMPDIR")), "fb");
    std::fs::create_dir_all(&base)?;
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let data_dir = base.join("d");

    let outcome = fall_back(&data_dir).await;

    let stopped = stop_private_cluster(&data_dir);
    outcome?;
    stopped?;
    Ok(())
}

async fn fall_back(data_dir: &Path) -> anyhow::Result<()> {
    // Root may make namespaces as it is (and must stay root: it runs the cluster as
    // postgres); anyone else gets them inside a user namespace that maps only themselves.
    let isolate: &[&str] = if running_as_root() {
        &["--mount", "--net"]
    } else {
        &["--user", "--map-current-user", "--mount", "--net"]
    };
    // libpq's other default socket directory, /tmp, cannot be hidden the same way: the build
    // (and so this binary) may live under it. Debian's server puts no socket there.
    ensure!(
        !Path::new("/tmp/.s.PGSQL.5432").exists(),
        "a server's socket in /tmp: this test can only hide /var/run/postgresql"
    );
    let hide_the_server = "if [ -d /var/run/postgresql ]; then \
                               mount -t tmpfs tmpfs /var/run/postgresql || exit 1; fi; \
                           ip link set lo up && exec \"$0\" \"$@\"";
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(isolate)
        .args(["--", "sh", "-c", hide_the_server])
        .arg(env!("CARGO_BIN_EXE_retrylog"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["status", "--format", "json"])
        .stdin(Stdio::null());
    for name in [
        "DATABASE_URL",
        "RETRYLOG_DATA_DIR",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGSERVICE",
    ] {
        command.env_remove(name);
    }
    let output = command.output().await.context("running unshare")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "retrylog status exited with {}: {stderr}",
        output.status
    );
    let pgdata = data_dir.join("pgdata");
    ensure!(
        stderr.lines().any(|line| line.starts_with(&format!(
            "retrylog: using database retrylog on private cluster {} (started from ",
            pgdata.display()
        ))),
        "stderr: {stderr}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    ensure!(rows[0]["projection"] == "retry_counts", "status: {rows}");
    ensure!(
        pgdata.join("postmaster.pid").exists(),
        "the cluster keeps running for the next command"
    );
    Ok(())
}

/// The variables that would configure the connection: none of them may reach the binary in
/// the "nothing configured" tests.
const CONFIGURING: [&str; 9] = [
    "DATABASE_URL",
    "RETRYLOG_DATA_DIR",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGSERVICE",
];

/// Runs the binary as the OS user `nobody` — a user the test server has no role for, the
/// usual laptop — inside a user namespace that maps this process's user to uid 65534 (so it
/// works for root and anyone else alike), from `cwd`, with nothing configured.
async fn as_nobody(cwd: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--user", "--map-user=65534", "--map-group=65534", "--"])
        .arg(env!("CARGO_BIN_EXE_retrylog"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null());
    for name in CONFIGURING {
        command.env_remove(name);
    }
    command.output().await.context("running unshare")
}

/// With nothing configured, a server that answers but refuses the login (no role for the
/// user) is treated like no server: the command uses the private cluster. Its first line
/// says so and names the stop command, the next one why and how to use the server instead;
/// `local status` shows the cluster, and the printed stop command, run as printed, stops it.
#[tokio::test]
async fn with_nothing_configured_a_server_refusing_the_login_gives_way_to_the_private_cluster(
) -> anyhow::Result<()> {
    let base = TempPath::dir("refused");
    let data_dir = base.join("d");

    let outcome = refused_then_private(&base, &data_dir).await;

    // Whatever happened: stop the cluster the same way it was started (its guard then
    // removes it).
    let dir = data_dir.to_string_lossy().into_owned();
    let stopped = as_nobody(&base, &["--data-dir", &dir, "local", "stop"]).await;
    outcome?;
    ensure!(stopped?.status.success(), "local stop failed");
    Ok(())
}

async fn refused_then_private(base: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.to_string_lossy().into_owned();
    let output = as_nobody(base, &["--data-dir", &dir, "status", "--format", "json"]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "status exited {}: {stderr}",
        output.status
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    ensure!(rows[0]["projection"] == "retry_counts", "status: {rows}");

    let lines: Vec<&str> = stderr.lines().collect();
    let pgdata = data_dir.join("pgdata");
    let first = lines.first().copied().unwrap_or_default();
    ensure!(
        first.starts_with(&format!(
            "retrylog: using database retrylog on private cluster {} (started from ",
            pgdata.display()
        )),
        "first line: {first}"
    );
    // The stop command as printed: this binary's path (the test runs outside the checkout),
    // the data directory it was given, `local stop`.
    let stop = first
        .split_once("it keeps running in the background, stop it with: ")
        .map(|(_, command)| command)
        .context("the first line names no stop command")?;
    ensure!(
        stop == format!(
            "{} --data-dir {dir} local stop",
            env!("CARGO_BIN_EXE_retrylog")
        ),
        "stop command: {stop}"
    );
    let why = lines.get(1).copied().unwrap_or_default();
    ensure!(
        why.starts_with("retrylog: the PostgreSQL server at ")
            && why.contains("refused the login as nobody (role \"nobody\" does not exist)")
            && why.contains("set PGUSER to a role it accepts"),
        "second line: {why}"
    );

    let status = as_nobody(
        base,
        &["--data-dir", &dir, "local", "status", "--format", "json"],
    )
    .await?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let cluster = &status[0];
    ensure!(cluster["state"] == "running", "local status: {status}");
    ensure!(cluster["pid"].as_u64() == Some(postmaster_pid(data_dir)?.parse()?));
    ensure!(cluster["pgdata"] == pgdata.to_string_lossy().as_ref());
    ensure!(cluster["socket"] == dir.as_str() && cluster["port"] == 5432);
    ensure!(cluster["log"] == data_dir.join("postgres.log").to_string_lossy().as_ref());

    // The stop command works as printed (in the same user namespace as the cluster's owner).
    let mut words = stop.split(' ');
    let program = words.next().context("empty stop command")?;
    ensure!(program == env!("CARGO_BIN_EXE_retrylog"));
    let args: Vec<&str> = words.collect();
    let stopped = as_nobody(base, &args).await?;
    ensure!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    ensure!(!pgdata.join("postmaster.pid").exists(), "still running");
    let status = as_nobody(
        base,
        &["--data-dir", &dir, "local", "status", "--format", "json"],
    )
    .await?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    ensure!(status[0]["state"] == "stopped", "local status: {status}");
    ensure!(status[0]["pid"].is_null(), "local status: {status}");

    // `local start` brings it back, with its data.
    let started = as_nobody(base, &["--data-dir", &dir, "local", "start"]).await?;
    ensure!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    ensure!(pgdata.join("postmaster.pid").exists(), "not running");
    let again = as_nobody(base, &["--data-dir", &dir, "status", "--format", "json"]).await?;
    let again = String::from_utf8_lossy(&again.stderr);
    ensure!(
        again.starts_with(&format!(
            "retrylog: using database retrylog on private cluster {} (already running)",
            pgdata.display()
        )),
        "stderr: {again}"
    );
    Ok(())
}

/// A refused login is the user's to hear about as soon as they configured who logs in: with
/// PGUSER set, no private cluster, exit 69 and the server's reason.
#[tokio::test]
async fn with_pguser_set_a_refused_login_is_an_error_and_starts_no_cluster() -> anyhow::Result<()> {
    // A path that must stay absent; its guard removes it if a private cluster was made there.
    let data_dir = TempPath::new("nofb");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_retrylog"));
    for name in CONFIGURING {
        command.env_remove(name);
    }
    let output = command
        .env("PGUSER", "no_such_role_here")
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(69),
        "exit {}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("refused the connection")
            && stderr.contains("role \"no_such_role_here\" does not exist"),
        "stderr: {stderr}"
    );
    ensure!(
        !data_dir.exists(),
        "a private cluster directory was created"
    );
    Ok(())
}
