//! The private PostgreSQL cluster, connection rule 3 (see [`super`]): when nothing is
//! configured and nothing answers, retrylog initialises and starts a server of its own from
//! the machine's binaries, so that a retry has a log to flow into (retry → store → projector →
//! report/http) with zero configuration.
//!
//! The cluster lives under the data directory, listens on a unix socket there and nowhere
//! else, and stays running between commands; concurrent starters serialise on a lock file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::probe::{failure, probe, Probe};
use super::runner::{
    check_success, find_on_path, is_executable, last_line, last_words, run, run_blocking,
    running_as_root, shell_quote, Runner,
};
use super::{
    non_empty_var, ConnectError, DATA_DIR_ENV, MAINTENANCE_DATABASE, UNIX_SOCKET_PATH_MAX,
};

/// Role the private cluster is initialised with (`initdb --username`), and the OS
/// user it runs as when retrylog itself runs as root.
pub const PRIVATE_CLUSTER_USER: &str = "postgres";

/// The private cluster's port. It listens on no TCP address at all, so the number
/// only names the socket file (`.s.PGSQL.5432`) inside the data directory and can
/// never clash with another server.
const PRIVATE_PORT: u16 = 5432;

/// The private cluster's default data directory: `$RETRYLOG_DATA_DIR`, else
/// `/var/lib/retrylog` for root, else `$XDG_DATA_HOME/retrylog`, else
/// `$HOME/.local/share/retrylog`; `None` when none is set.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_var(DATA_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    // root's home is closed to the `postgres` user the server must run as; a system
    // location avoids opening it up.
    if running_as_root() {
        return Some(PathBuf::from("/var/lib/retrylog"));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = non_empty_var("XDG_DATA_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Some(xdg.join("retrylog"));
        }
    }
    non_empty_var("HOME").map(|home| PathBuf::from(home).join(".local/share/retrylog"))
}

/// Makes sure the private cluster under `data_dir` is running and returns options
/// that reach it (socket in `data_dir`, user `postgres`, database `postgres`).
///
/// Creates `data_dir/pgdata` with initdb when missing and starts the server with
/// pg_ctl when nothing answers; a server that already answers is reused (the cluster
/// stays running between commands). Concurrent callers, in this or other processes,
/// serialise on `data_dir/start.lock`, so only one of them runs initdb/pg_ctl.
/// Used by [`connect`](super::connect) for rule 3; public so tests can exercise it without
/// PG* variables.
pub async fn start_private_cluster(data_dir: &Path) -> Result<PgConnectOptions, ConnectError> {
    Ok(ensure_private_cluster(data_dir).await?.options)
}

/// Stops the private cluster under `data_dir` (`pg_ctl stop -m fast`), if it runs.
///
/// retrylog itself leaves the cluster running; this is for tests and for a user who
/// wants the server gone. Blocks until the server has stopped.
pub fn stop_private_cluster(data_dir: &Path) -> Result<(), ConnectError> {
    let data_dir = absolute(data_dir)?;
    let pgdata = data_dir.join("pgdata");
    if !pgdata.join("postmaster.pid").exists() {
        tracing::debug!(pgdata = %pgdata.display(), "private cluster is not running");
        return Ok(());
    }
    let bindir = find_server_bindir(&pgdata).ok_or(ConnectError::NoServerBinaries)?;
    let runner = Runner::detect();
    let mut cmd = runner.command(
        &bindir.join("pg_ctl"),
        &[
            "stop".into(),
            "-D".into(),
            pgdata.clone().into(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
        ],
    );
    tracing::info!(pgdata = %pgdata.display(), "stopping private PostgreSQL cluster");
    let output = run_blocking("pg_ctl stop", &mut cmd)?;
    check_success("pg_ctl stop", &output)
}

/// Where the private cluster under a data directory lives and whether it runs: what
/// `retrylog local status` shows.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// The data directory given (or the default one).
    pub data_dir: PathBuf,
    /// `data_dir/pgdata`, the cluster's own directory; `initialised` says whether it exists.
    pub pgdata: PathBuf,
    /// Whether initdb ran (`pgdata/PG_VERSION` exists).
    pub initialised: bool,
    /// Whether a server answers on the cluster's socket.
    pub running: bool,
    /// The postmaster's pid, from `pgdata/postmaster.pid`, when it runs.
    pub pid: Option<u32>,
    /// The directory of the unix socket (`.s.PGSQL.<port>` inside); no TCP listener.
    pub socket_dir: PathBuf,
    /// The port that names the socket file.
    pub port: u16,
    /// The server's log file.
    pub log: PathBuf,
    /// The role to connect as.
    pub user: &'static str,
}

/// Whether the private cluster under `data_dir` exists and runs, and where its parts are.
/// Starts nothing and creates nothing.
pub async fn private_cluster_status(data_dir: &Path) -> Result<ClusterStatus, ConnectError> {
    let data_dir = absolute(data_dir)?;
    let pgdata = data_dir.join("pgdata");
    let options = private_options(&data_dir)?;
    let running = matches!(probe(&options).await, Probe::Ready);
    let pid = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .filter(|_| running);
    Ok(ClusterStatus {
        initialised: pgdata.join("PG_VERSION").exists(),
        pgdata,
        running,
        pid,
        socket_dir: data_dir.clone(),
        port: PRIVATE_PORT,
        log: data_dir.join("postgres.log"),
        user: PRIVATE_CLUSTER_USER,
        data_dir,
    })
}

pub(super) struct PrivateCluster {
    pub(super) options: PgConnectOptions,
    pub(super) pgdata: PathBuf,
    /// The bin directory we started the server from; `None` when it was already running.
    pub(super) started_from: Option<PathBuf>,
}

pub(super) async fn ensure_private_cluster(
    data_dir: &Path,
) -> Result<PrivateCluster, ConnectError> {
    let data_dir = absolute(data_dir)?;
    let pgdata = data_dir.join("pgdata");
    let options = private_options(&data_dir)?;
    let running = |started_from| PrivateCluster {
        options: options.clone(),
        pgdata: pgdata.clone(),
        started_from,
    };

    // Fast path, the usual case: the cluster stays running between commands.
    if matches!(probe(&options).await, Probe::Ready) {
        tracing::debug!(pgdata = %pgdata.display(), "private cluster already running");
        return Ok(running(None));
    }

    // Look for binaries before creating anything, so a machine without PostgreSQL
    // gets the clear error and no stray directories.
    let bindir = find_server_bindir(&pgdata).ok_or(ConnectError::NoServerBinaries)?;

    std::fs::create_dir_all(&data_dir).map_err(|error| data_dir_error(&data_dir, error))?;
    // Trust authentication means whoever reaches the socket is superuser; the socket
    // lives in this directory, so only its owner (and root) may enter it.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|error| data_dir_error(&data_dir, error))?;

    let lock = lock_exclusive(data_dir.join("start.lock")).await?;

    // Whoever held the lock before us may have started it already.
    if matches!(probe(&options).await, Probe::Ready) {
        tracing::debug!(pgdata = %pgdata.display(), "private cluster was started concurrently");
        return Ok(running(None));
    }

    let runner = Runner::detect();
    if runner.is_switching_user() {
        // initdb and postgres refuse to run as root; they run as `postgres`, which
        // must own the directory and be able to walk to it.
        let mut chown = Command::new("chown");
        chown
            .arg("-R")
            .arg(format!("{PRIVATE_CLUSTER_USER}:{PRIVATE_CLUSTER_USER}"))
            .arg(&data_dir);
        let output = run("chown", chown).await?;
        check_success("chown", &output)?;
        grant_traversal(&runner, &data_dir).await?;
    }

    if !pgdata.join("PG_VERSION").exists() {
        tracing::info!(pgdata = %pgdata.display(), bindir = %bindir.display(), "initialising private PostgreSQL cluster");
        let cmd = runner.command(
            &bindir.join("initdb"),
            &[
                "-D".into(),
                pgdata.clone().into(),
                "--auth=trust".into(),
                format!("--username={PRIVATE_CLUSTER_USER}").into(),
                "-E".into(),
                "UTF8".into(),
                // The environment's locale may not exist (containers often name one that
                // was never generated); C is always there and sorts deterministically.
                "--no-locale".into(),
            ],
        );
        let output = run("initdb", cmd).await?;
        check_success("initdb", &output)?;
    }

    let log = data_dir.join("postgres.log");
    // pg_ctl hands -o to /bin/sh, hence the shell quoting. No TCP listener, the socket
    // in our own directory: this server never clashes with another one's port. The
    // explicit port keeps a PGPORT in the environment from renaming the socket.
    let server_options = format!(
        "-c listen_addresses='' -c unix_socket_permissions=0700 -k {} -p {PRIVATE_PORT}",
        shell_quote(&data_dir.to_string_lossy())
    );
    tracing::info!(pgdata = %pgdata.display(), bindir = %bindir.display(), "starting private PostgreSQL cluster");
    let cmd = runner.command(
        &bindir.join("pg_ctl"),
        &[
            "start".into(),
            "-D".into(),
            pgdata.clone().into(),
            "-l".into(),
            log.clone().into(),
            "-w".into(),
            "-o".into(),
            server_options.into(),
        ],
    );
    let output = run("pg_ctl start", cmd).await?;
    if !output.status.success() {
        let detail = match last_line(&std::fs::read(&log).unwrap_or_default()) {
            Some(line) => format!("{line} (log: {})", log.display()),
            None => last_words(&output),
        };
        return Err(ConnectError::Command {
            what: "pg_ctl start".into(),
            detail,
        });
    }

    let answer = probe(&options).await;
    drop(lock);
    match answer {
        Probe::Ready => Ok(running(Some(bindir))),
        Probe::MissingDatabase => Err(ConnectError::Command {
            what: "pg_ctl start".into(),
            detail: format!(
                "the cluster in {} has no {MAINTENANCE_DATABASE} database",
                pgdata.display()
            ),
        }),
        Probe::NothingListening(error) | Probe::Failed(error) => Err(failure(&options, error)),
    }
}

/// Options for the private cluster: its socket directory, user `postgres`, database `postgres`.
fn private_options(data_dir: &Path) -> Result<PgConnectOptions, ConnectError> {
    let socket = data_dir.join(format!(".s.PGSQL.{PRIVATE_PORT}"));
    if socket.as_os_str().len() > UNIX_SOCKET_PATH_MAX {
        return Err(ConnectError::SocketPathTooLong { path: socket });
    }
    // Starting from the environment keeps things like PGAPPNAME; everything that
    // decides where and how we connect is set here.
    Ok(PgConnectOptions::new_without_pgpass()
        .socket(data_dir)
        .port(PRIVATE_PORT)
        .username(PRIVATE_CLUSTER_USER)
        .ssl_mode(PgSslMode::Disable)
        .database(MAINTENANCE_DATABASE))
}

/// Takes an exclusive lock on `path`, waiting for it on a blocking thread. The lock is
/// released when the returned file is dropped. (Rust opens files close-on-exec, so the
/// server we start does not inherit and keep the lock.)
async fn lock_exclusive(path: PathBuf) -> Result<File, ConnectError> {
    let for_error = path.clone();
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        tracing::debug!(lock = %path.display(), "waiting for the private cluster lock");
        // std's File::lock (Rust 1.89, hence the crate's rust-version) is the one lock we
        // need, without a new crate.
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|join| data_dir_error(&for_error, io::Error::other(join.to_string())))?
    .map_err(|error| data_dir_error(&for_error, error))
}

/// Finds the PostgreSQL server binaries: the version the cluster was created with if
/// installed, else `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`,
/// else the directory `initdb` on PATH really lives in.
fn find_server_bindir(pgdata: &Path) -> Option<PathBuf> {
    let has_server =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));

    // A cluster only starts with its own major version's binaries.
    if let Ok(version) = std::fs::read_to_string(pgdata.join("PG_VERSION")) {
        let dir = Path::new("/usr/lib/postgresql")
            .join(version.trim())
            .join("bin");
        if has_server(&dir) {
            return Some(dir);
        }
    }

    // pg_config comes with the client libraries too, so its bindir may lack a server.
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server(&dir) {
                return Some(dir);
            }
        }
    }

    if let Some(dir) = highest_debian_bindir(Path::new("/usr/lib/postgresql"), has_server) {
        return Some(dir);
    }

    let initdb = find_on_path("initdb")?;
    // /usr/local/bin/initdb is often a symlink; name the real directory.
    let dir = initdb
        .canonicalize()
        .unwrap_or(initdb)
        .parent()?
        .to_path_buf();
    has_server(&dir).then_some(dir)
}

/// `<root>/<version>/bin` for the highest numeric version that has a server.
fn highest_debian_bindir(root: &Path, has_server: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Lets `postgres` walk down to `data_dir` (the default one lives under /root, which is
/// usually 0700): grants search permission, and nothing more, on each ancestor it cannot
/// pass — an ACL for the `postgres` user when setfacl exists, else the world `x` bit.
async fn grant_traversal(runner: &Runner, data_dir: &Path) -> Result<(), ConnectError> {
    let can_enter = |dir: &Path| {
        let cmd = runner.command(Path::new("test"), &["-x".into(), dir.into()]);
        async move {
            run("test", cmd)
                .await
                .map(|output| output.status.success())
                .unwrap_or(false)
        }
    };
    if can_enter(data_dir).await {
        return Ok(());
    }
    let mut ancestors: Vec<&Path> = data_dir.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        if can_enter(dir).await {
            continue;
        }
        tracing::warn!(
            dir = %dir.display(),
            "granting the {PRIVATE_CLUSTER_USER} user search permission so the private cluster below is reachable"
        );
        let granted_by_acl = match find_on_path("setfacl") {
            Some(setfacl) => {
                let mut cmd = Command::new(setfacl);
                cmd.arg("-m")
                    .arg(format!("u:{PRIVATE_CLUSTER_USER}:x"))
                    .arg(dir);
                run("setfacl", cmd).await?.status.success()
            }
            None => false,
        };
        if !granted_by_acl {
            let mut permissions = std::fs::metadata(dir)
                .map_err(|error| data_dir_error(dir, error))?
                .permissions();
            permissions.set_mode(permissions.mode() | 0o001);
            std::fs::set_permissions(dir, permissions)
                .map_err(|error| data_dir_error(dir, error))?;
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, ConnectError> {
    std::path::absolute(path).map_err(|error| data_dir_error(path, error))
}

fn data_dir_error(path: &Path, error: io::Error) -> ConnectError {
    ConnectError::DataDir {
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::super::location;
    use super::*;

    #[test]
    fn highest_version_with_a_server_wins() {
        let root =
            std::env::temp_dir().join(format!("retrylog_bindir_{}", uuid::Uuid::new_v4().simple()));
        for version in ["9.6", "15", "16", "latest"] {
            std::fs::create_dir_all(root.join(version).join("bin")).unwrap();
        }
        // 16 is only a client install here.
        let has_server = |dir: &Path| !dir.starts_with(root.join("16"));
        let found = highest_debian_bindir(&root, has_server);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, Some(root.join("15").join("bin")));
    }

    #[test]
    fn long_socket_paths_are_refused() {
        let long = PathBuf::from("/tmp").join("x".repeat(120));
        assert!(matches!(
            private_options(&long),
            Err(ConnectError::SocketPathTooLong { .. })
        ));
        let options = private_options(Path::new("/tmp/short")).unwrap();
        assert_eq!(location(&options), "/tmp/short:5432");
        assert_eq!(options.get_username(), PRIVATE_CLUSTER_USER);
    }
}
