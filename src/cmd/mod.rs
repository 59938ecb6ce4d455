//! The commands of the `retrylog` binary, one file each. `run` connects, makes sure the
//! schema is current (see `Schema`) and dispatches; errors come back as `anyhow` and
//! [`exit::code`] turns them into exit codes.

mod archive;
pub mod demo;
pub mod exit;
mod grant;
pub mod history;
pub mod invocation;
mod local;
mod maintain;
mod manual;
pub mod permission;
mod project;
mod record;
mod recover;
mod replay;
pub mod report;
mod serve;
mod status;
pub mod targets;
mod token;
mod verify;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command, LogFormat};
use crate::connect::{self, ConnectSettings, Connected, DatabaseUse};
use crate::migrate;

/// What a command does about the schema before it runs; which also decides whether it may
/// create a missing database (see [`Schema::database_use`]).
enum Schema {
    /// `migrate`: always applies the migrations and reinstalls the functions.
    Migrate,
    /// The owner's commands (`serve`, `grant`): migrate only when behind.
    MigrateIfBehind,
    /// `demo`: it runs in a scratch database that it migrates itself, so the configured
    /// database is left exactly as it is: not even opened, nor created.
    Untouched,
    /// `status`: shows where the schema stands, current or not.
    Report,
    /// Everything else, run by any capability: refuse (exit 2, naming `retrylog migrate`)
    /// unless the schema is current. Reads nothing but the version; writes nothing. (On the
    /// private cluster retrylog started itself, these migrate when behind too.)
    RequireCurrent,
}

impl Schema {
    /// Only the commands that install the schema create a missing database, and a database the
    /// user named only `migrate`: everything else exits 69 on a missing database rather than
    /// turn a mistyped name into a new, empty one. `demo` opens only the server's maintenance
    /// database.
    fn database_use(&self) -> DatabaseUse {
        match self {
            Schema::Migrate => DatabaseUse::Create,
            Schema::MigrateIfBehind => DatabaseUse::CreateDefault,
            Schema::Untouched => DatabaseUse::ServerOnly,
            Schema::Report | Schema::RequireCurrent => DatabaseUse::Existing,
        }
    }
}

fn schema_rule(command: &Command) -> Schema {
    match command {
        Command::Migrate => Schema::Migrate,
        Command::Serve(_) | Command::Grant(_) => Schema::MigrateIfBehind,
        Command::Demo(_) => Schema::Untouched,
        Command::Status(_) => Schema::Report,
        _ => Schema::RequireCurrent,
    }
}

/// One line for the user on stderr, `retrylog: <text>`; under `--log-format json` an info
/// event of the log instead, so that every line on stderr is one JSON object of the same shape
/// (`2>&1 | jq` reads them all).
pub fn notice(format: LogFormat, text: &str) {
    match format {
        // Names and descriptions may hold what a terminal would act on: escaped (src/text.rs).
        LogFormat::Text => eprintln!("retrylog: {}", crate::text::for_terminal(text)),
        LogFormat::Json => tracing::info!("{text}"),
    }
}

/// Connects (saying on stderr which database), checks or migrates the schema, and runs the
/// command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::output::fit_tables(cli.wide);
    // The commands about retrylog itself and its private cluster need no database.
    let cli = match cli.command {
        Command::Local(args) => return local::run(cli.data_dir.as_deref(), args).await,
        Command::Completions(args) => return manual::completions(args),
        Command::Man(args) => return manual::man(args),
        _ => cli,
    };
    // Making a token needs no database.
    if let Command::Token(args) = &cli.command {
        return token::run(args);
    }
    let rule = schema_rule(&cli.command);
    let settings = ConnectSettings {
        database_url: cli.database_url.clone(),
        max_connections: 20,
        data_dir: cli.data_dir.clone(),
        database: rule.database_use(),
        db_timeout: cli.db_timeout,
        routes: cli.routes.clone(),
    };
    let connected = connect::connect(&settings).await?;
    let rule = match rule {
        Schema::RequireCurrent | Schema::Report if connected.private_cluster.is_some() => {
            Schema::MigrateIfBehind
        }
        rule => rule,
    };
    // A statement PostgreSQL refuses for want of a privilege, from the schema check on, is
    // told as the capability the command needs and the grant that gives it.
    let needs = permission::needed(&cli.command);
    let outcome = match run_connected(cli, &connected, rule).await {
        Err(error) => Err(permission::explain(&connected.pool, needs, error).await),
        done => done,
    };
    connected.settle().await;
    outcome
}

/// Says which database, checks or migrates the schema as `rule` says, and runs the command.
async fn run_connected(cli: Cli, connected: &Connected, rule: Schema) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format();
    match &connected.private_cluster {
        Some(private) => local::announce(
            log_format,
            &connected.description,
            private,
            cli.data_dir.is_some(),
        ),
        None => notice(log_format, &format!("using {}", connected.description)),
    }
    // The migrations hold a session lock: through a transaction pooler, on --direct-url.
    let pooler = cli.routes.pooler;
    let migrations = || async {
        let pool = sessions(pooler, connected, "applies the migrations")?;
        migrate::run(pool).await.context("applying the migrations")
    };
    match rule {
        Schema::Migrate => migrations().await?,
        Schema::MigrateIfBehind => {
            if migrate::ensure_current(&connected.pool).await.is_err() {
                migrations().await?;
            }
        }
        Schema::Report | Schema::Untouched => {}
        Schema::RequireCurrent => {
            migrate::ensure_current(&connected.pool).await?;
        }
    }
    // A read replica answers only for the schema it has replayed.
    if let (Some(read), Schema::RequireCurrent | Schema::MigrateIfBehind) = (&connected.read, &rule)
    {
        migrate::ensure_current(read)
            .await
            .context("checking the schema of the read replica (--read-url)")?;
    }
    let pool = &connected.pool;
    let read = connected.read_pool();
    match cli.command {
        Command::Migrate => {
            eprintln!("retrylog: schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(args) => record::run(pool, args).await,
        Command::History(args) => history::run(read, args).await,
        Command::Report(args) => report::run(read, args).await,
        Command::Targets(args) => targets::run(read, args).await,
        Command::Replay(args) => replay::run(pool, args).await,
        Command::Verify(args) => verify::run(pool, args).await,
        Command::Project(args) => {
            project::run(sessions(pooler, connected, "runs the projector")?, args).await
        }
        Command::Archive(args) => archive::run(pool, args).await,
        Command::Status(args) => status::run(read, args).await,
        Command::Maintain(args) => maintain::run(pool, args).await,
        Command::Serve(args) => {
            let sessions = sessions(pooler, connected, "runs the projector and the watchdog")?;
            serve::run(pool, connected.read.as_ref(), sessions, args).await
        }
        Command::Demo(args) => demo::run(connected, args).await,
        Command::Grant(args) => grant::run(pool, args).await,
        Command::Local(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("answered before connecting")
        }
        Command::Recover(args) => recover::run(pool, args).await,
        Command::Token(_) => unreachable!("answered before connecting"),
    }
}

/// The pool for work that needs a session of its own (`what` it does): `--direct-url`, else the
/// primary's — unless that goes through a transaction pooler, which keeps no session.
fn sessions<'c>(
    pooler: crate::config::Pooler,
    connected: &'c Connected,
    what: &'static str,
) -> Result<&'c sqlx::PgPool, crate::config::NeedsDirectUrl> {
    if connected.direct.is_none() && pooler == crate::config::Pooler::Transaction {
        return Err(crate::config::NeedsDirectUrl(what));
    }
    Ok(connected.session_pool())
}

/// The error as one line: each cause in the chain once. sqlx's errors repeat their source's
/// text in their own, so a cause already said is left out.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Whether stderr is a terminal: progress bars are drawn only there.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
