//! How retrylog finds its database, before any retry can flow (retry → store (log + inline
//! projection) → projector → report/http all run on the pool opened here): an explicit
//! `DATABASE_URL`, else the libpq environment and defaults, else a private PostgreSQL cluster
//! that retrylog starts itself; then it makes sure the target database exists and opens the
//! pool.
//!
//! The rules, in order (see [`connect`]):
//!
//! 1. `database_url` set: use it exactly (database `retrylog` when it names none).
//!    Failing to reach it is an error: explicit configuration never silently falls back.
//! 2. The libpq conventions (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
//!    `PGSSLMODE`, ...; the local socket by default). When `PGHOST`/`PGHOSTADDR`/`PGPORT`
//!    is set, failing to reach that server is an error too.
//! 3. Nothing configured and nothing answering — or a server answering at the libpq default
//!    that refuses the login (the usual laptop: PostgreSQL installed, no role for the user):
//!    a private cluster under the data directory, listening on a unix socket only, created
//!    and started on first use and left running between commands (`retrylog local stop`
//!    stops it). [`Connected::private_cluster`] says why it was chosen.
//! 4. Whatever server answered: the database, then the pool. Only the commands that install
//!    the schema create a missing database, and a database the user named only `migrate`
//!    (see [`DatabaseUse`]); every other command stops on a missing one
//!    ([`ConnectError::MissingDatabase`], exit 69), so a mistyped name never becomes a new,
//!    empty database. `demo` and the benchmark open neither: only the server's maintenance
//!    database ([`DatabaseUse::ServerOnly`]).
//!
//! Beside that pool, two more may open from explicit URLs (see [`DatabaseRoutes`]): the read
//! pool on a hot standby (`--read-url`, `replica.rs`) and the direct pool for what needs a
//! session of its own when `DATABASE_URL` goes through a transaction pooler (`--direct-url`,
//! `pooler.rs` says what such a pooler changes).
//!
//! Rules 1 and 2 and the description of where the pool points live here; probing a server and
//! rule 4 in `probe.rs`; when rule 3 takes over in `fallback.rs`, and the private cluster in
//! `cluster.rs`, which runs PostgreSQL's programs through `runner.rs`.

mod cluster;
mod fallback;
mod pooler;
mod probe;
mod replica;
mod runner;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;

use crate::config::{DatabaseRoutes, Pooler};
use cluster::ensure_private_cluster;
pub use cluster::{
    default_data_dir, private_cluster_status, start_private_cluster, stop_private_cluster,
    ClusterStatus, PRIVATE_CLUSTER_USER,
};
use fallback::{login_refused, names_login, names_server, refused_login};
use probe::{ensure_database, failure, probe_within, Missing, Probe};
pub use replica::{
    caused_by_recovery_conflict, is_recovery_conflict, lag as replica_lag, read_retrying,
    ReplicaLag,
};

/// Database name used when the configuration names none.
pub const DEFAULT_DATABASE: &str = "retrylog";

/// Environment variable that overrides the private cluster's data directory.
pub const DATA_DIR_ENV: &str = "RETRYLOG_DATA_DIR";

/// Maintenance database used to issue `CREATE DATABASE`.
const MAINTENANCE_DATABASE: &str = "postgres";

/// The default of `--db-timeout`: how long a caller waits for a connection (a probe's, or the
/// pool's) before it calls the database unreachable.
pub const DEFAULT_DB_TIMEOUT: &str = "5s";

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const UNIX_SOCKET_PATH_MAX: usize = 107;

/// A ready connection pool, and where it came from.
pub struct Connected {
    /// The pool, sized by [`ConnectSettings::max_connections`].
    pub pool: sqlx::PgPool,
    /// Human description: database name, host/socket, and which rule chose it, for the
    /// one line on stderr ("retrylog: using database retrylog on /var/run/postgresql:5432
    /// as root (libpq defaults)"; with [`DatabaseUse::ServerOnly`], "the server at …" with no
    /// database). Never contains a password.
    pub description: String,
    /// The connect options the pool was opened with (so callers can derive options for other
    /// databases, e.g. the bench database, with `options.clone().database("...")`).
    pub options: PgConnectOptions,
    /// The database the configuration names (`retrylog` when it names none): the pool's own,
    /// except with [`DatabaseUse::ServerOnly`], which leaves it alone. A scratch database never
    /// takes this name.
    pub configured_database: String,
    /// Set when rule 3 chose the private cluster: the binary tells the user it keeps running
    /// and how to stop it, and why the server at the libpq default was not used.
    pub private_cluster: Option<PrivateClusterUse>,
    /// The pool on the hot standby `--read-url` names, when it does.
    pub read: Option<sqlx::PgPool>,
    /// The pool on the primary `--direct-url` names (a session each connection), when it does.
    pub direct: Option<sqlx::PgPool>,
}

impl Connected {
    /// Where the reads go: the read replica, else the primary.
    pub fn read_pool(&self) -> &sqlx::PgPool {
        self.read.as_ref().unwrap_or(&self.pool)
    }

    /// Waits (5 s at most) until every connection is back in its pool. Behind a transaction
    /// pooler a checkout commits as its connection comes back (`pooler.rs`), on a task of its
    /// own: a command that returned must not exit before that commit has run.
    pub async fn settle(&self) {
        let pools = [Some(&self.pool), self.read.as_ref(), self.direct.as_ref()];
        let busy = || {
            pools
                .iter()
                .flatten()
                .any(|pool| pool.num_idle() < pool.size() as usize)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Where the work that needs a session of its own goes (migrate, the projector, the
    /// watchdog): `--direct-url`, else the primary's pool.
    pub fn session_pool(&self) -> &sqlx::PgPool {
        self.direct.as_ref().unwrap_or(&self.pool)
    }
}

/// Why and where the private cluster is used (rule 3), for the lines on stderr.
#[derive(Debug, Clone)]
pub struct PrivateClusterUse {
    /// The data directory the cluster lives under (its `pgdata`, socket and log are inside).
    pub data_dir: PathBuf,
    /// Set when a server answered at the libpq default but refused the login: one sentence
    /// saying so and how to use that server instead.
    pub refused: Option<String>,
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
    /// Whether the configured database is opened, and created when missing.
    pub database: DatabaseUse,
    /// How long a probe or the pool waits for a connection (`--db-timeout`).
    pub db_timeout: Duration,
    /// `--read-url`, `--direct-url` and `--pooler`.
    pub routes: DatabaseRoutes,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            database_url: None,
            max_connections: 5,
            data_dir: None,
            database: DatabaseUse::default(),
            db_timeout: crate::config::parse_duration(DEFAULT_DB_TIMEOUT).expect("a valid default"),
            routes: DatabaseRoutes::default(),
        }
    }
}

/// What connecting does with the configured database: open it, create it first when it is
/// missing, or leave it alone. The binary picks one per command (`cmd::Schema`): only the
/// commands that install the schema create a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseUse {
    /// Open it; it must exist: a missing one is [`ConnectError::MissingDatabase`]. Every
    /// command that does not install the schema, for which a new database would only be an
    /// empty one under a mistyped name. On the private cluster retrylog started itself, where
    /// every command installs the schema, the unnamed default `retrylog` is still created.
    #[default]
    Existing,
    /// Open it, creating it first when it is missing and the user named none (the default
    /// `retrylog`): `serve` and `grant`, which install the schema when it is behind. A database
    /// the user named (in the URL or `PGDATABASE`) must exist: `migrate` creates it.
    CreateDefault,
    /// Open it, creating it first when it is missing, named or not: `migrate`, where installing
    /// the schema into that database is what the user asked for.
    Create,
    /// Never open it: the pool is on the server's maintenance database (`postgres`, else
    /// `template1`), to find the server and create scratch databases. `demo` and the benchmark.
    ServerOnly,
}

// Hand-written so that a URL with a password never reaches a log line.
impl fmt::Debug for ConnectSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectSettings")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database)
            .field("read_url", &self.routes.read_url.as_ref().map(|_| "<set>"))
            .field(
                "direct_url",
                &self.routes.direct_url.as_ref().map(|_| "<set>"),
            )
            .field("pooler", &self.routes.pooler)
            .finish()
    }
}

/// Why retrylog could not get a database. Each message names the problem in one line
/// and already includes the underlying cause, so print it with `{}`; the causes are
/// deliberately not exposed as `source()` so that `{:#}` does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An explicit URL does not parse, or is not a `postgres://`/`postgresql://` URL.
    #[error("{which} is not a valid PostgreSQL URL: {reason}")]
    InvalidUrl {
        /// Which setting holds it: `DATABASE_URL`, `--read-url`, `--direct-url`.
        which: &'static str,
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

    /// The configured database does not exist, and this command does not create it (see
    /// [`DatabaseUse`]).
    #[error(
        "database {database:?} does not exist on {target}; if the name is right, `retrylog \
         migrate` creates it and installs the schema"
    )]
    MissingDatabase {
        /// The database the configuration names.
        database: String,
        /// `host:port` or `socket-directory:port`.
        target: String,
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
    let usage = settings.database;

    let (configured, opened, rule, private_cluster) = match explicit_url {
        Some(url) => {
            let (configured, named) = options_from_url(url, "DATABASE_URL")?;
            let configured = for_pooler(configured, settings.routes.pooler);
            tracing::debug!(server = %location(&configured), "using DATABASE_URL");
            let missing = Missing::of(usage, named, false);
            let to_open = opened_options(&configured, usage);
            let opened = ensure_database(
                &to_open,
                probe_within(&to_open, settings.db_timeout).await,
                missing,
            )
            .await?;
            (configured, opened, Rule::DatabaseUrl, None)
        }
        None => {
            let set = libpq_variables_set();
            let configured = for_pooler(libpq_options(), settings.routes.pooler);
            let named = non_empty_var("PGDATABASE").is_some();
            let to_open = opened_options(&configured, usage);
            tracing::debug!(server = %location(&configured), ?set, "trying the libpq conventions");
            let refused = match probe_within(&to_open, settings.db_timeout).await {
                Probe::NothingListening(error) if !names_server(&set) => {
                    tracing::info!(
                        server = %location(&configured),
                        %error,
                        "no PostgreSQL server answers at the libpq default; using a private cluster"
                    );
                    None
                }
                // Nothing configured and the server turned the login down: as good as no
                // server for a user who configured nothing; say why and how to use it.
                Probe::Failed(error) if login_refused(&error) && !names_login(&set) => {
                    Some(refused_login(&configured, &error))
                }
                first => {
                    let missing = Missing::of(usage, named, false);
                    let opened = ensure_database(&to_open, first, missing).await?;
                    let connected = Opened {
                        configured,
                        options: opened,
                        rule: Rule::Libpq(set),
                        private_cluster: None,
                        pooled: settings.routes.pooler == Pooler::Transaction,
                    };
                    return open_pool(settings, connected).await;
                }
            };
            let data_dir = match &settings.data_dir {
                Some(dir) => dir.clone(),
                None => default_data_dir().ok_or(ConnectError::NoDataDir)?,
            };
            let cluster = ensure_private_cluster(&data_dir).await?;
            // The database name still follows PGDATABASE, so a user who picked a database
            // name keeps it when the private cluster takes over.
            let configured = cluster.options.database(&database_name(&configured));
            let missing = Missing::of(usage, named, true);
            let to_open = opened_options(&configured, usage);
            let opened = ensure_database(
                &to_open,
                probe_within(&to_open, settings.db_timeout).await,
                missing,
            )
            .await?;
            let rule = Rule::PrivateCluster {
                pgdata: cluster.pgdata,
                started_from: cluster.started_from,
            };
            (
                configured,
                opened,
                rule,
                Some(PrivateClusterUse { data_dir, refused }),
            )
        }
    };
    let pooled = private_cluster.is_none() && settings.routes.pooler == Pooler::Transaction;
    let connected = Opened {
        configured,
        options: opened,
        rule,
        private_cluster,
        pooled,
    };
    open_pool(settings, connected).await
}

/// What the rules chose, before the pool opens.
struct Opened {
    /// The configuration's options, with the database it names (or `retrylog`).
    configured: PgConnectOptions,
    /// The options the pool opens with: `configured`, or its maintenance database.
    options: PgConnectOptions,
    rule: Rule,
    private_cluster: Option<PrivateClusterUse>,
    /// Whether the connections go through a transaction pooler (`--pooler transaction`).
    pooled: bool,
}

/// The options for a server behind `pooler`.
fn for_pooler(options: PgConnectOptions, pooler: Pooler) -> PgConnectOptions {
    match pooler {
        Pooler::None => options,
        Pooler::Transaction => pooler::options(options),
    }
}

/// The options the pool opens with: the configured database, or with
/// [`DatabaseUse::ServerOnly`] the maintenance database.
fn opened_options(configured: &PgConnectOptions, usage: DatabaseUse) -> PgConnectOptions {
    match usage {
        DatabaseUse::ServerOnly => configured.clone().database(MAINTENANCE_DATABASE),
        _ => configured.clone(),
    }
}

/// Opens the pool on the server the rules chose.
async fn open_pool(settings: &ConnectSettings, opened: Opened) -> Result<Connected, ConnectError> {
    let Opened {
        configured,
        options,
        rule,
        private_cluster,
        pooled,
    } = opened;
    let pool = pool_options(settings, pooled)
        .connect_with(options.clone())
        .await
        .map_err(|error| failure(&options, error))?;

    let configured_database = database_name(&configured);
    let database = (settings.database != DatabaseUse::ServerOnly).then_some(&*configured_database);
    let mut description = describe(&options, database, &rule);
    if pooled {
        description.push_str(" through a transaction pooler");
    }
    let routes = &settings.routes;
    let read = match explicit(&routes.read_url) {
        Some(url) => {
            let (pool, at) = open_route(settings, url, "--read-url", pooled).await?;
            description.push_str(&format!("; reads from {at} (--read-url)"));
            Some(pool)
        }
        None => None,
    };
    let direct = match explicit(&routes.direct_url) {
        Some(url) => {
            let (pool, at) = open_route(settings, url, "--direct-url", false).await?;
            description.push_str(&format!("; sessions on {at} (--direct-url)"));
            Some(pool)
        }
        None => None,
    };
    // The binary prints the description on stderr itself: debug, so `serve` (which logs at
    // info) does not say it twice.
    tracing::debug!(%description, "connected");
    Ok(Connected {
        pool,
        description,
        options,
        configured_database,
        private_cluster,
        read,
        direct,
    })
}

/// The pool's options: its size and wait, and a transaction pooler's hooks when `pooled`.
fn pool_options(settings: &ConnectSettings, pooled: bool) -> PgPoolOptions {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.db_timeout);
    if pooled {
        pooler::pool_options(pool)
    } else {
        pool
    }
}

/// A URL that is set and not blank.
fn explicit(url: &Option<String>) -> Option<&str> {
    url.as_deref().map(str::trim).filter(|url| !url.is_empty())
}

/// Opens the pool of `--read-url` or `--direct-url` (`which`): explicit, so never a fallback;
/// its database must exist (no command creates one there). Returns the pool and where it is.
async fn open_route(
    settings: &ConnectSettings,
    url: &str,
    which: &'static str,
    pooled: bool,
) -> Result<(sqlx::PgPool, String), ConnectError> {
    let (options, _) = options_from_url(url, which)?;
    let options = for_pooler(
        options,
        if pooled {
            Pooler::Transaction
        } else {
            Pooler::None
        },
    );
    let probe = probe_within(&options, settings.db_timeout).await;
    let options = ensure_database(&options, probe, Missing::Refuse).await?;
    let pool = pool_options(settings, pooled)
        .connect_with(options.clone())
        .await
        .map_err(|error| failure(&options, error))?;
    let at = format!(
        "database {} on {} as {}",
        database_name(&options),
        location(&options),
        options.get_username()
    );
    Ok((pool, at))
}

// ---------------------------------------------------------------------------
// Rules 1 and 2: options from a URL or the libpq environment.

/// Parses an explicit URL; defaults the database to `retrylog` when the URL names none. Also
/// says whether the URL named one (a named database is created only by `migrate`).
fn options_from_url(
    url: &str,
    which: &'static str,
) -> Result<(PgConnectOptions, bool), ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { which, reason };
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
        (options, true)
    } else {
        (options.database(DEFAULT_DATABASE), false)
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

/// The database the options name, or `retrylog` when they name none (or an empty one).
fn database_name(options: &PgConnectOptions) -> String {
    options
        .get_database()
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_DATABASE)
        .to_owned()
}

// ---------------------------------------------------------------------------
// Where the options point: for the errors and the one line on stderr.

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

/// The description of where the pool points; `database` is the configured database the pool
/// is on, `None` when it is only on the server's maintenance database.
fn describe(options: &PgConnectOptions, database: Option<&str>, rule: &Rule) -> String {
    let on_server = || match database {
        Some(database) => format!("database {database} on {}", location(options)),
        None => format!("the server at {}", location(options)),
    };
    match rule {
        Rule::DatabaseUrl => format!(
            "{} as {} (DATABASE_URL)",
            on_server(),
            options.get_username()
        ),
        Rule::Libpq(set) => {
            let source = if set.is_empty() {
                "libpq defaults".to_owned()
            } else {
                format!("libpq environment: {}", set.join(", "))
            };
            format!("{} as {} ({source})", on_server(), options.get_username())
        }
        Rule::PrivateCluster {
            pgdata,
            started_from,
        } => {
            let how = match started_from {
                Some(bindir) => format!("started from {}", bindir.display()),
                None => "already running".to_owned(),
            };
            let cluster = format!("private cluster {} ({how})", pgdata.display());
            match database {
                Some(database) => format!("database {database} on {cluster}"),
                None => format!("the {cluster}"),
            }
        }
    }
}

fn non_empty_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_from_url_(url: &str) -> Result<(PgConnectOptions, bool), ConnectError> {
        options_from_url(url, "DATABASE_URL")
    }

    #[test]
    fn url_without_database_uses_retrylog_unnamed() {
        let (options, named) = options_from_url_("postgres://someone@db.example:6543").unwrap();
        assert_eq!(options.get_database(), Some(DEFAULT_DATABASE));
        assert!(!named);
        assert_eq!(options.get_host(), "db.example");
        assert_eq!(options.get_port(), 6543);
        assert_eq!(options.get_username(), "someone");

        let (options, named) = options_from_url_("postgresql://someone@db.example/").unwrap();
        assert_eq!(options.get_database(), Some(DEFAULT_DATABASE));
        assert!(!named);
    }

    #[test]
    fn url_database_is_used_exactly_and_named() {
        let (options, named) = options_from_url_("postgres://u@h/foo").unwrap();
        assert_eq!(options.get_database(), Some("foo"));
        assert!(named);
        let (options, named) = options_from_url_("postgres://u@h?dbname=bar").unwrap();
        assert_eq!(options.get_database(), Some("bar"));
        assert!(named);
        // Named even when it is the default's name: the user chose it.
        let (_, named) = options_from_url_("postgres://u@h/retrylog").unwrap();
        assert!(named);
        let (options, _) = options_from_url_("postgres:///baz?host=/run/pg").unwrap();
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
            let error = options_from_url(url, "DATABASE_URL").unwrap_err();
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
        let (options, _) =
            options_from_url_("postgres://postgres:hunter2@127.0.0.1:5432/foo").unwrap();
        assert_eq!(
            describe(&options, Some("foo"), &Rule::DatabaseUrl),
            "database foo on 127.0.0.1:5432 as postgres (DATABASE_URL)"
        );
        assert_eq!(
            describe(&options, None, &Rule::DatabaseUrl),
            "the server at 127.0.0.1:5432 as postgres (DATABASE_URL)"
        );

        let options = PgConnectOptions::new_without_pgpass()
            .host("/var/run/postgresql")
            .port(5432)
            .username("root")
            .password("hunter2")
            .database("retrylog");
        assert_eq!(
            describe(&options, Some("retrylog"), &Rule::Libpq(vec![])),
            "database retrylog on /var/run/postgresql:5432 as root (libpq defaults)"
        );
        assert_eq!(
            describe(
                &options,
                Some("retrylog"),
                &Rule::Libpq(vec!["PGHOST", "PGDATABASE"])
            ),
            "database retrylog on /var/run/postgresql:5432 as root (libpq environment: PGHOST, PGDATABASE)"
        );

        let rule = Rule::PrivateCluster {
            pgdata: PathBuf::from("/root/.local/share/retrylog/pgdata"),
            started_from: Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
        };
        assert_eq!(
            describe(&options, Some("retrylog"), &rule),
            "database retrylog on private cluster /root/.local/share/retrylog/pgdata (started from /usr/lib/postgresql/15/bin)"
        );
        assert_eq!(
            describe(&options, None, &rule),
            "the private cluster /root/.local/share/retrylog/pgdata (started from /usr/lib/postgresql/15/bin)"
        );
    }
}
