//! `retrylog token new NAME read|admin`: a fresh token for the HTTP API, printed once, and the
//! tokens-file line that accepts it (its sha256: the file holds no secret).

use std::process::ExitCode;

use crate::cli::{TokenArgs, TokenCommand};
use crate::http;

pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        TokenCommand::New(new) => {
            let (token, line) = http::new_token(&new.name, new.role)?;
            println!("token: {token}");
            println!("add this line to the tokens file (--tokens-file / RETRYLOG_TOKENS_FILE):");
            println!("{line}");
            eprintln!("retrylog: the token is shown only now; keep it somewhere safe");
        }
    }
    Ok(ExitCode::SUCCESS)
}
