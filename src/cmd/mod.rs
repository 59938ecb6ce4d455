//! The commands of the `retrylog` binary, one file each. `run` connects, migrates and
//! dispatches; errors come back as `anyhow` and [`exit::code`] turns them into exit codes.

pub mod demo;
pub mod exit;
pub mod history;
mod project;
mod record;
mod recover;
mod replay;
pub mod report;
mod serve;
mod status;
mod token;
mod verify;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};
use crate::connect::{self, ConnectSettings, Connected};
use crate::migrate;

/// Connects (saying on stderr which database), migrates, and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Making a token needs no database.
    if let Command::Token(args) = &cli.command {
        return token::run(args);
    }
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
        Command::Recover(args) => recover::run(pool, args).await,
        Command::Token(_) => unreachable!("answered before connecting"),
    }
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
