//! The commands of the `retrylog` binary, one file each. `run` connects, migrates and
//! dispatches; errors come back as `anyhow` and [`exit_code`] turns them into exit codes.

pub mod demo;
mod history;
mod project;
mod record;
mod replay;
pub mod report;
mod serve;
mod status;
mod verify;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};
use crate::connect::{self, ConnectError, ConnectSettings, Connected};
use crate::migrate;
use crate::store::{AppendError, ReadError};

/// Verify found a mismatch.
pub const EXIT_MISMATCH: u8 = 1;
/// A mistake in the input, or a retry the rules refuse.
pub const EXIT_USAGE: u8 = 2;
/// No database could be reached or started (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Anything else (sysexits EX_SOFTWARE).
pub const EXIT_FAILURE: u8 = 70;

/// Connects (saying on stderr which database), migrates, and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = ConnectSettings {
        database_url: cli.database_url.clone(),
        max_connections: 20,
        data_dir: cli.data_dir.clone(),
    };
    let connected = connect::connect(&settings).await?;
    eprintln!("retrylog: using {}", connected.description);
    migrate::run(&connected.pool)
        .await
        .context("applying the migrations")?;
    let Connected { pool, .. } = &connected;
    match cli.command {
        Command::Migrate => {
            eprintln!("retrylog: schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(args) => record::run(pool, args).await,
        Command::History(args) => history::run(pool, args).await,
        Command::Report(args) => report::run(pool, args).await,
        Command::Replay(args) => replay::run(pool, args).await,
        Command::Verify(args) => verify::run(pool, args).await,
        Command::Project(args) => project::run(pool, args).await,
        Command::Status(args) => status::run(pool, args).await,
        Command::Serve(args) => serve::run(pool, args).await,
        Command::Demo(args) => demo::run(&connected, args).await,
    }
}

/// The exit code for an error: the caller's mistakes, an unreachable database and
/// everything else are told apart so scripts can react.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(append) = cause.downcast_ref::<AppendError>() {
            return if append.is_caller_error() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
        }
        if let Some(ReadError::UnknownTarget { .. }) = cause.downcast_ref::<ReadError>() {
            return EXIT_USAGE;
        }
        if let Some(report) = cause.downcast_ref::<crate::report::ReportError>() {
            return if report.is_user_mistake() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
        }
        // A time flag `report` or `history` could not use; report wraps it, history does not.
        if cause.downcast_ref::<crate::window::WindowError>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<ConnectError>().is_some() {
            return EXIT_UNAVAILABLE;
        }
    }
    EXIT_FAILURE
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
