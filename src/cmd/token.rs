//! `retrylog token new NAME read|admin`: a fresh token for the HTTP API, and the tokens-file line
//! that accepts it (its sha256: the file holds no secret). Only the line goes to stdout, so
//! `retrylog token new NAME ROLE >> tokens` leaves a valid tokens file; the token itself, shown
//! this once, goes to stderr: the terminal, not the file.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{TokenArgs, TokenCommand};
use crate::http;

pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        TokenCommand::New(new) => {
            let (token, line) = http::new_token(&new.name, new.role)?;
            eprintln!("retrylog: token: {token}");
            eprintln!(
                "retrylog: the token is shown only now; keep it somewhere safe. Its line for the \
                 tokens file (--tokens-file / RETRYLOG_TOKENS_FILE) is on stdout: `retrylog token \
                 new NAME ROLE >> FILE` appends it"
            );
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
