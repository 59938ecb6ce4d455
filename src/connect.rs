//! How retrylog finds its database: an explicit `DATABASE_URL`, else the libpq
//! environment and defaults, else a private PostgreSQL cluster that retrylog
//! starts itself; then it makes sure the target database exists and opens the pool.
//!
//! The rules, in order (see [`connect`]):
//!
//! 1. `database_url` set: use it exactly (database `retrylog` when it names none).
//!    Failing to reach it is an error: explicit configuration never silently falls back.
//! 2. The libpq conventions (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
//!    `PGSSLMODE`, ...; the local socket by default). When `PGHOST`/`PGHOSTADDR`/`PGPORT`
//!    is set, failing to reach that server is an error too.
//! 3. Nothing configured and nothing answering: a private cluster under the data
//!    directory, listening on a unix socket only, created and started on first use
//!    and left running between commands.
//! 4. Whatever server answered: create the database if it is missing, then build the pool.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

/// Database name used when the configuration names none.
pub const DEFAULT_DATABASE: &str = "retrylog";

/// Role the private cluster is initialised with (`initdb --username`), and the OS
/// user it runs as when retrylog itself runs as root.
pub const PRIVATE_CLUSTER_USER: &str = "postgres";

/// Environment variable that overrides the private cluster's data directory.
pub const DATA_DIR_ENV: &str = "RETRYLOG_DATA_DIR";

/// Maintenance database used to issue `CREATE DATABASE`.
const MAINTENANCE_DATABASE: &str = "postgres";
/// Fallback maintenance database when `postgres` was dropped (it always exists).
const TEMPLATE_DATABASE: &str = "template1";

/// The private cluster's port. It listens on no TCP address at all, so the number
/// only names the socket file (`.s.PGSQL.5432`) inside the data directory and can
/// never clash with another server.
const PRIVATE_PORT: u16 = 5432;

/// How long one probing connection may take before we call the server unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a caller waits for a pooled connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const UNIX_SOCKET_PATH_MAX: usize = 107;

// SQLSTATEs we act on.
const INVALID_CATALOG_NAME: &str = "3D000"; // database does not exist
const DUPLICATE_DATABASE: &str = "42P04";
const UNIQUE_VIOLATION: &str = "23505"; // concurrent CREATE DATABASE can surface as this

/// A ready connection pool, and where it came from.
pub struct Connected {
    /// The pool, sized by [`ConnectSettings::max_connections`].
    pub pool: sqlx::PgPool,
    /// Human description: database name, host/socket, and which rule chose it, for the
    /// one line on stderr ("retrylog: using database retrylog on /var/run/postgresql:5432
    /// as root (libpq defaults)"). Never contains a password.
    pub description: String,
    /// The connect options used (so callers can derive options for other databases,
    /// e.g. the bench database, with `options.clone().database("...")`).
    pub options: PgConnectOptions,
}

// Hand-written because `PgConnectOptions`'s derived Debug prints the password.
impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("pool", &self.pool)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// What the caller knows about where the database should be.
#[derive(Clone)]
pub struct ConnectSettings {
    /// --database-url / DATABASE_URL (explicit: no fallback when set). An empty or
    /// blank string counts as unset, as an empty `DATABASE_URL=` usually means "unset".
    pub database_url: Option<String>,
    /// Pool size (at least one connection is always allowed).
    pub max_connections: u32,
    /// Data directory of the private cluster; default: $RETRYLOG_DATA_DIR, else
    /// $XDG_DATA_HOME/retrylog, else $HOME/.local/share/retrylog (see [`default_data_dir`]).
    pub data_dir: Option<PathBuf>,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            database_url: None,
            max_connections: 5,
            data_dir: None,
        }
    }
}

// Hand-written so that a URL with a password never reaches a log line.
impl fmt::Debug for ConnectSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectSettings")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Why retrylog could not get a database. Each message names the problem in one line
/// and already includes the underlying cause, so print it with `{}`; the causes are
/// deliberately not exposed as `source()` so that `{:#}` does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The explicit URL does not parse, or is not a `postgres://`/`postgresql://` URL.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it (never the URL itself: it may hold a password).
        reason: String,
    },

    /// Nothing answered at the configured address, or the connection broke down
    /// before PostgreSQL said anything (refused, missing socket, timeout, DNS, TLS).
    #[error("cannot reach PostgreSQL at {target}: {error}")]
    Unreachable {
        /// `host:port` or `socket-directory:port`.
        target: String,
        /// The underlying connection error.
        error: sqlx::Error,
    },

    /// A server answered but refused us (authentication, unknown role, ...).
    #[error("PostgreSQL at {target} refused the connection: {error}")]
    Refused {
        /// `host:port` or `socket-directory:port`.
        target: String,
        /// The server's error.
        error: sqlx::Error,
    },

    /// The target database is missing and could not be created.
    #[error("cannot create database {database} on {target}: {error}")]
    CreateDatabase {
        /// The database we tried to create.
        database: String,
        /// `host:port` or `socket-directory:port`.
        target: String,
        /// The server's error.
        error: sqlx::Error,
    },

    /// Fallback to a private cluster was needed but this machine has no PostgreSQL server.
    #[error(
        "no PostgreSQL server is reachable and no PostgreSQL binaries (initdb, pg_ctl) were found to start a private one"
    )]
    NoServerBinaries,

    /// No data directory was given and none of the variables that name one is set.
    #[error(
        "cannot choose a data directory for the private PostgreSQL cluster: none of {DATA_DIR_ENV}, XDG_DATA_HOME, HOME is set"
    )]
    NoDataDir,

    /// The private cluster's directory could not be created, locked or prepared.
    #[error("cannot prepare the private PostgreSQL cluster in {path}: {error}")]
    DataDir {
        /// The directory or file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        error: io::Error,
    },

    /// The private cluster's socket would live at a path longer than a unix socket allows.
    #[error(
        "the private PostgreSQL cluster's socket path {path} is longer than {UNIX_SOCKET_PATH_MAX} bytes; choose a shorter data directory ({DATA_DIR_ENV})"
    )]
    SocketPathTooLong {
        /// The socket file's path.
        path: PathBuf,
    },

    /// A helper program (initdb, pg_ctl, chown, runuser, ...) failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What we were running, e.g. "pg_ctl start".
        what: String,
        /// Its last words (last line of stderr, or of the server log).
        detail: String,
    },
}

/// Which rule chose the server; rendered at the end of [`Connected::description`].
enum Rule {
    DatabaseUrl,
    /// libpq defaults, or the list of libpq variables that were set.
    Libpq(Vec<&'static str>),
    PrivateCluster {
        pgdata: PathBuf,
        started_from: Option<PathBuf>,
    },
}

/// Connects following the resolution order in the module docs and returns the pool
/// with a one-line description of where it points.
pub async fn connect(settings: &ConnectSettings) -> Result<Connected, ConnectError> {
    let explicit_url = settings
        .database_url
        .as_deref()
        .map(str::trim)
        .filter(|url| !url.is_empty());

    let (options, rule) = match explicit_url {
        Some(url) => {
            let options = options_from_url(url)?;
            tracing::debug!(server = %location(&options), "using DATABASE_URL");
            ensure_database(&options, probe(&options).await).await?;
            (options, Rule::DatabaseUrl)
        }
        None => {
            let set = libpq_variables_set();
            let options = libpq_options();
            tracing::debug!(server = %location(&options), ?set, "trying the libpq conventions");
            match probe(&options).await {
                Probe::NothingListening(error) if !names_server(&set) => {
                    tracing::info!(
                        server = %location(&options),
                        %error,
                        "no PostgreSQL server answers at the libpq default; using a private cluster"
                    );
                    let data_dir = match &settings.data_dir {
                        Some(dir) => dir.clone(),
                        None => default_data_dir().ok_or(ConnectError::NoDataDir)?,
                    };
                    let cluster = ensure_private_cluster(&data_dir).await?;
                    // The database name still follows PGDATABASE, so a user who picked a
                    // database name keeps it when the private cluster takes over.
                    let options = cluster.options.database(&database_name(&options));
                    ensure_database(&options, probe(&options).await).await?;
                    let rule = Rule::PrivateCluster {
                        pgdata: cluster.pgdata,
                        started_from: cluster.started_from,
                    };
                    (options, rule)
                }
                first => {
                    ensure_database(&options, first).await?;
                    (options, Rule::Libpq(set))
                }
            }
        }
    };

    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await
        .map_err(|error| failure(&options, error))?;

    let description = describe(&options, &rule);
    tracing::info!(%description, "connected");
    Ok(Connected {
        pool,
        description,
        options,
    })
}

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
/// Used by [`connect`] for rule 3; public so tests can exercise it without PG* variables.
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

// ---------------------------------------------------------------------------
// Rules 1 and 2: options from a URL or the libpq environment.

/// Parses an explicit URL; defaults the database to `retrylog` when the URL names none.
fn options_from_url(url: &str) -> Result<PgConnectOptions, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { reason };
    let parsed = parse_url(url, PgConnectOptions::from_url).map_err(invalid)?;
    // sqlx parses any scheme; a mysql:// URL would otherwise be tried as PostgreSQL.
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(format!(
            "the scheme is {:?}, expected \"postgres\" or \"postgresql\"",
            parsed.scheme()
        )));
    }
    let options = PgConnectOptions::from_url(&parsed).map_err(|e| invalid(e.to_string()))?;
    // Decide from the URL itself: sqlx starts from the environment, so a URL without a
    // database would otherwise pick up PGDATABASE, or the server would default to the
    // user name.
    let names_database = !parsed.path().trim_start_matches('/').is_empty()
        || parsed
            .query_pairs()
            .any(|(key, value)| key == "dbname" && !value.is_empty());
    Ok(if names_database {
        options
    } else {
        options.database(DEFAULT_DATABASE)
    })
}

/// Parses `url` into the URL type sqlx's `from_url` takes. sqlx does not re-export the
/// `url` crate and we add no dependency for it: passing `from_url` pins down `U`, which
/// lets us read the URL's parts exactly as sqlx sees them.
fn parse_url<U>(
    url: &str,
    _from_url: fn(&U) -> Result<PgConnectOptions, sqlx::Error>,
) -> Result<U, String>
where
    U: std::str::FromStr,
    U::Err: fmt::Display,
{
    // The parse error never repeats the input, which may hold a password.
    url.parse::<U>().map_err(|error| error.to_string())
}

/// Options from the libpq environment (sqlx reads PGHOST, PGPORT, PGUSER, PGPASSWORD,
/// PGDATABASE, PGSSLMODE, ~/.pgpass, and defaults to the local socket), with the
/// database defaulting to `retrylog` instead of the user name.
fn libpq_options() -> PgConnectOptions {
    let options = PgConnectOptions::new();
    let database = database_name(&options);
    options.database(&database)
}

/// The libpq variables that shape where we connect, in a fixed order, for the description.
fn libpq_variables_set() -> Vec<&'static str> {
    ["PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE"]
        .into_iter()
        .filter(|name| non_empty_var(name).is_some())
        .collect()
}

/// Whether the user pointed libpq at a particular server: then an unreachable server
/// is their problem to hear about, not a reason to start our own.
fn names_server(set: &[&str]) -> bool {
    set.iter()
        .any(|name| matches!(*name, "PGHOST" | "PGHOSTADDR" | "PGPORT"))
}

/// The database the options name, or `retrylog` when they name none (or an empty one).
fn database_name(options: &PgConnectOptions) -> String {
    options
        .get_database()
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_DATABASE)
        .to_owned()
}

// ---------------------------------------------------------------------------
// Probing and rule 4: does a server answer, does the database exist.

/// What one connection attempt told us about the server.
enum Probe {
    /// Connected to the target database.
    Ready,
    /// A server answered and said the database does not exist.
    MissingDatabase,
    /// Nothing listens there (connection refused, socket file missing).
    NothingListening(sqlx::Error),
    /// Anything else: a server that refused us, a timeout, a TLS failure, ...
    Failed(sqlx::Error),
}

async fn probe(options: &PgConnectOptions) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            // A failed goodbye does not make the server less reachable.
            if let Err(error) = conn.close().await {
                tracing::debug!(%error, "closing the probe connection failed");
            }
            Probe::Ready
        }
        Ok(Err(error)) if sqlstate(&error).as_deref() == Some(INVALID_CATALOG_NAME) => {
            Probe::MissingDatabase
        }
        Ok(Err(error)) if nothing_listening(&error) => Probe::NothingListening(error),
        Ok(Err(error)) => Probe::Failed(error),
        Err(_) => Probe::Failed(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        ))),
    }
}

/// Refused or a missing socket file (or, for `localhost` on a machine without a
/// loopback network, no route) means no server is there at all; anything else
/// (authentication, unknown role, TLS, DNS, timeout, ...) means either a server is there
/// or the address is wrong, and neither is a reason to start a cluster of our own.
fn nothing_listening(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::NotFound
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::HostUnreachable
        ),
        _ => false,
    }
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// Turns a connection failure into the error naming where we tried.
fn failure(options: &PgConnectOptions, error: sqlx::Error) -> ConnectError {
    let target = location(options);
    match error {
        sqlx::Error::Database(_) => ConnectError::Refused { target, error },
        error => ConnectError::Unreachable { target, error },
    }
}

/// Rule 4: given the probe of the target database, make sure it exists.
async fn ensure_database(options: &PgConnectOptions, probe: Probe) -> Result<(), ConnectError> {
    match probe {
        Probe::Ready => Ok(()),
        Probe::MissingDatabase => create_database(options).await,
        Probe::NothingListening(error) | Probe::Failed(error) => Err(failure(options, error)),
    }
}

/// `CREATE DATABASE` through the maintenance database, with the same server and user.
async fn create_database(options: &PgConnectOptions) -> Result<(), ConnectError> {
    let database = database_name(options);
    let target = location(options);
    let create_error = |error| ConnectError::CreateDatabase {
        database: database.clone(),
        target: target.clone(),
        error,
    };

    let mut conn =
        match PgConnection::connect_with(&options.clone().database(MAINTENANCE_DATABASE)).await {
            Ok(conn) => conn,
            // Someone dropped `postgres`; template1 cannot be dropped.
            Err(error) if sqlstate(&error).as_deref() == Some(INVALID_CATALOG_NAME) => {
                PgConnection::connect_with(&options.clone().database(TEMPLATE_DATABASE))
                    .await
                    .map_err(create_error)?
            }
            Err(error) => return Err(create_error(error)),
        };

    tracing::info!(%database, server = %target, "creating database");
    let result = conn
        .execute(format!("CREATE DATABASE {}", quote_ident(&database)).as_str())
        .await;
    if let Err(error) = conn.close().await {
        tracing::debug!(%error, "closing the maintenance connection failed");
    }
    match result {
        Ok(_) => Ok(()),
        // Another retrylog process created it between our probe and now: that is the
        // outcome we wanted. Concurrent creation can also surface as a unique violation
        // on pg_database's name index.
        Err(error)
            if matches!(
                sqlstate(&error).as_deref(),
                Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)
            ) =>
        {
            tracing::debug!(%database, "database was created concurrently");
            Ok(())
        }
        Err(error) => Err(create_error(error)),
    }
}

/// Quotes an SQL identifier (`"` doubled), so any database name is safe in DDL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where the options point: `socket-directory:port` or `host:port`.
fn location(options: &PgConnectOptions) -> String {
    let port = options.get_port();
    match options.get_socket() {
        Some(dir) => format!("{}:{port}", dir.display()),
        None => {
            let host = options.get_host();
            if host.contains(':') && !host.starts_with('/') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    }
}

fn describe(options: &PgConnectOptions, rule: &Rule) -> String {
    let database = database_name(options);
    match rule {
        Rule::DatabaseUrl => format!(
            "database {database} on {} as {} (DATABASE_URL)",
            location(options),
            options.get_username()
        ),
        Rule::Libpq(set) => {
            let source = if set.is_empty() {
                "libpq defaults".to_owned()
            } else {
                format!("libpq environment: {}", set.join(", "))
            };
            format!(
                "database {database} on {} as {} ({source})",
                location(options),
                options.get_username()
            )
        }
        Rule::PrivateCluster {
            pgdata,
            started_from,
        } => {
            let how = match started_from {
                Some(bindir) => format!("started from {}", bindir.display()),
                None => "already running".to_owned(),
            };
            format!(
                "database {database} on private cluster {} ({how})",
                pgdata.display()
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Rule 3: the private cluster.

struct PrivateCluster {
    options: PgConnectOptions,
    pgdata: PathBuf,
    /// The bin directory we started the server from; `None` when it was already running.
    started_from: Option<PathBuf>,
}

async fn ensure_private_cluster(data_dir: &Path) -> Result<PrivateCluster, ConnectError> {
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

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How to run the PostgreSQL binaries: as ourselves, or (when we are root, which
/// initdb and postgres refuse) as `postgres` through runuser or su.
enum Runner {
    Direct,
    Runuser(PathBuf),
    Su(PathBuf),
}

impl Runner {
    fn detect() -> Self {
        if !running_as_root() {
            return Runner::Direct;
        }
        if let Some(runuser) = find_on_path("runuser") {
            return Runner::Runuser(runuser);
        }
        match find_on_path("su") {
            Some(su) => Runner::Su(su),
            // Let the binary itself explain that it cannot run as root.
            None => Runner::Direct,
        }
    }

    fn is_switching_user(&self) -> bool {
        !matches!(self, Runner::Direct)
    }

    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = match self {
            Runner::Direct => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Runner::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", PRIVATE_CLUSTER_USER, "--"])
                    .arg(program)
                    .args(args);
                cmd
            }
            Runner::Su(su) => {
                let line = std::iter::once(program.as_os_str())
                    .chain(args.iter().map(OsString::as_os_str))
                    .map(|word| shell_quote(&word.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut cmd = Command::new(su);
                cmd.args([PRIVATE_CLUSTER_USER, "-s", "/bin/sh", "-c"])
                    .arg(line);
                cmd
            }
        };
        // Our working directory may be one `postgres` cannot enter (e.g. under /root),
        // which initdb and pg_ctl complain about.
        cmd.current_dir("/");
        cmd
    }
}

/// Whether we run as root (effective uid 0), read from /proc without libc, with
/// `id -u` as the fallback where /proc is missing.
fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(uids) = status.lines().find_map(|line| line.strip_prefix("Uid:")) {
            // Real, effective, saved, filesystem.
            return uids.split_whitespace().nth(1) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map(|output| {
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "0"
        })
        .unwrap_or(false)
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

/// Runs a command to completion on a blocking thread, capturing its output.
async fn run(what: &str, mut cmd: Command) -> Result<Output, ConnectError> {
    let what_owned = what.to_owned();
    tokio::task::spawn_blocking(move || run_blocking(&what_owned, &mut cmd))
        .await
        .map_err(|join| ConnectError::Command {
            what: what.to_owned(),
            detail: join.to_string(),
        })?
}

fn run_blocking(what: &str, cmd: &mut Command) -> Result<Output, ConnectError> {
    tracing::debug!(command = ?cmd, "running");
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|error| ConnectError::Command {
            what: what.to_owned(),
            detail: format!(
                "cannot run {}: {error}",
                cmd.get_program().to_string_lossy()
            ),
        })
}

fn check_success(what: &str, output: &Output) -> Result<(), ConnectError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(ConnectError::Command {
            what: what.to_owned(),
            detail: last_words(output),
        })
    }
}

/// The last non-empty line of stderr (else stdout, else the exit status).
fn last_words(output: &Output) -> String {
    last_line(&output.stderr)
        .or_else(|| last_line(&output.stdout))
        .unwrap_or_else(|| output.status.to_string())
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_owned)
}

/// Single-quotes a word for /bin/sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
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

fn non_empty_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_without_database_uses_retrylog() {
        let options = options_from_url("postgres://someone@db.example:6543").unwrap();
        assert_eq!(options.get_database(), Some(DEFAULT_DATABASE));
        assert_eq!(options.get_host(), "db.example");
        assert_eq!(options.get_port(), 6543);
        assert_eq!(options.get_username(), "someone");

        let options = options_from_url("postgresql://someone@db.example/").unwrap();
        assert_eq!(options.get_database(), Some(DEFAULT_DATABASE));
    }

    #[test]
    fn url_database_is_used_exactly() {
        let options = options_from_url("postgres://u@h/foo").unwrap();
        assert_eq!(options.get_database(), Some("foo"));
        let options = options_from_url("postgres://u@h?dbname=bar").unwrap();
        assert_eq!(options.get_database(), Some("bar"));
        let options = options_from_url("postgres:///baz?host=/run/pg").unwrap();
        assert_eq!(options.get_database(), Some("baz"));
        assert_eq!(options.get_socket(), Some(&PathBuf::from("/run/pg")));
    }

    #[test]
    fn invalid_urls_are_named_without_echoing_them() {
        for url in [
            "mysql://u:hunter2@h/db",
            "not a url hunter2",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let error = options_from_url(url).unwrap_err();
            assert!(matches!(error, ConnectError::InvalidUrl { .. }), "{url}");
            let message = error.to_string();
            assert!(
                message.starts_with("DATABASE_URL is not a valid PostgreSQL URL: "),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("retrylog"), r#""retrylog""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn locations_name_socket_or_host_and_port() {
        let socket = PgConnectOptions::new_without_pgpass()
            .socket("/var/run/postgresql")
            .port(5432);
        assert_eq!(location(&socket), "/var/run/postgresql:5432");
        let tcp = PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(1);
        assert_eq!(location(&tcp), "127.0.0.1:1");
        let v6 = PgConnectOptions::new_without_pgpass()
            .host("::1")
            .port(5432);
        assert_eq!(location(&v6), "[::1]:5432");
    }

    #[test]
    fn descriptions_follow_the_rule_and_hide_passwords() {
        let options = options_from_url("postgres://postgres:hunter2@127.0.0.1:5432/foo").unwrap();
        assert_eq!(
            describe(&options, &Rule::DatabaseUrl),
            "database foo on 127.0.0.1:5432 as postgres (DATABASE_URL)"
        );

        let options = PgConnectOptions::new_without_pgpass()
            .host("/var/run/postgresql")
            .port(5432)
            .username("root")
            .password("hunter2")
            .database("retrylog");
        assert_eq!(
            describe(&options, &Rule::Libpq(vec![])),
            "database retrylog on /var/run/postgresql:5432 as root (libpq defaults)"
        );
        assert_eq!(
            describe(&options, &Rule::Libpq(vec!["PGHOST", "PGDATABASE"])),
            "database retrylog on /var/run/postgresql:5432 as root (libpq environment: PGHOST, PGDATABASE)"
        );

        let rule = Rule::PrivateCluster {
            pgdata: PathBuf::from("/root/.local/share/retrylog/pgdata"),
            started_from: Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
        };
        assert_eq!(
            describe(&options, &rule),
            "database retrylog on private cluster /root/.local/share/retrylog/pgdata (started from /usr/lib/postgresql/15/bin)"
        );
    }

    #[test]
    fn only_host_or_port_name_a_server() {
        assert!(!names_server(&[]));
        assert!(!names_server(&["PGUSER", "PGDATABASE"]));
        assert!(names_server(&["PGPORT"]));
        assert!(names_server(&["PGHOST", "PGUSER"]));
        assert!(names_server(&["PGHOSTADDR"]));
    }

    #[test]
    fn refused_and_missing_socket_mean_nothing_listens() {
        let io = |kind| sqlx::Error::Io(io::Error::from(kind));
        assert!(nothing_listening(&io(io::ErrorKind::ConnectionRefused)));
        assert!(nothing_listening(&io(io::ErrorKind::NotFound)));
        assert!(!nothing_listening(&io(io::ErrorKind::PermissionDenied)));
        assert!(!nothing_listening(&io(io::ErrorKind::TimedOut)));
        assert!(!nothing_listening(&sqlx::Error::PoolTimedOut));
    }

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
