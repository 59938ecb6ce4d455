//! `retrylog grant`: give a database role one capability, print the GRANT it ran.

use std::io::Write;
use std::process::ExitCode;

use sqlx::PgPool;

use crate::cli::GrantArgs;
use crate::grant;

pub async fn run(pool: &PgPool, args: GrantArgs) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await?;
    let mut out = std::io::stdout().lock();
    for statement in grant::grant(&mut conn, args.capability, &args.role).await? {
        // The role's name is quoted in it as given: escaped like every line for people.
        writeln!(out, "{};", crate::text::for_terminal(&statement))?;
    }
    eprintln!(
        "retrylog: {} has the {} capability in this cluster",
        crate::text::escape(&args.role, 64),
        args.capability
    );
    Ok(ExitCode::SUCCESS)
}
