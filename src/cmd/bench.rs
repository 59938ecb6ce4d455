//! `retrylog bench`: appends and replay against hand-written baselines, measured in one run
//! in a scratch database.

use std::process::ExitCode;

use clap::Args;

use crate::connect::Connected;

/// `retrylog bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_connected: &Connected, _args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench is not written yet")
}
