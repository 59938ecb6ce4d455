//! The `retrylog` binary: parse the command line, start tracing, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use retrylog::cli::Cli;
use retrylog::cmd;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RETRYLOG_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            // One line naming the problem: `{:#}` joins the context chain with ": ".
            eprintln!("retrylog: {error:#}");
            ExitCode::from(cmd::exit_code(&error))
        }
    }
}
