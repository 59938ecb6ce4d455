//! `retrylog completions SHELL` and `retrylog man`: the shell completions and the man pages,
//! generated from the same clap definitions as `--help` (`cli/`), so they cannot drift.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{self, CompletionsArgs, ManArgs};

/// Prints the completion script for the shell on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = cli::command();
    // clap_complete panics when its writer fails (a closed pipe: `| head`): it writes into
    // memory, and the one write to stdout returns its error like every other command's.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "retrylog", &mut script);
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints retrylog.1, or writes it and one page per command into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let command = cli::command();
    match args.dir {
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("writing the man page")?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
