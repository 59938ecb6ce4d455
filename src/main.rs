//! The `retrylog` binary: parse the command line, start tracing, run, map errors to exit codes.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use retrylog::cli::{Command, LogFormat};
use retrylog::cmd;

#[tokio::main]
async fn main() -> ExitCode {
    // clap's own errors quote the bad value: escaped like every other error (a value may
    // hold a terminal escape), with clap's exit code (2 for a usage error).
    let cli = match retrylog::cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        // `--log-format json` promises JSON lines on stderr: the refusal is one too.
        Err(error) if retrylog::cli::asks_for_json_log(std::env::args_os()) => {
            let text = error.render().to_string();
            let logger = tracing_subscriber::fmt()
                .json()
                .with_writer(std::io::stderr)
                .finish();
            tracing::subscriber::with_default(logger, || tracing::error!("{}", text.trim_end()));
            return ExitCode::from(error.exit_code() as u8);
        }
        Err(error) => {
            let text = error.render().to_string();
            for line in text.lines() {
                eprintln!("{}", retrylog::text::for_terminal(line));
            }
            return ExitCode::from(error.exit_code() as u8);
        }
    };
    // The service logs what it does; one-shot commands only warn. RETRYLOG_LOG overrides.
    let default_level = match &cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let log_format = cli.log_format();
    let filter = EnvFilter::try_from_env("RETRYLOG_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("retrylog={default_level},warn")));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(cmd::stderr_is_terminal())
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => logger.init(),
        LogFormat::Json => logger.json().init(),
    }
    match cmd::run(cli).await {
        Ok(code) => code,
        // `| head`: the reader closed the pipe; nothing went wrong that anyone needs told.
        Err(error) if cmd::exit::closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let line = cmd::one_line(&error);
            match log_format {
                LogFormat::Text => {
                    eprintln!("retrylog: {}", retrylog::text::for_terminal(&line))
                }
                // JSON escapes whatever the line holds.
                LogFormat::Json => tracing::error!("{line}"),
            }
            ExitCode::from(cmd::exit::code(&error))
        }
    }
}
