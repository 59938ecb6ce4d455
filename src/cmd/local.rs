//! `retrylog local status|start|stop`: the private PostgreSQL cluster of connection rule 3
//! (`connect/cluster.rs`), which otherwise runs on in the background after the first command
//! that needed it; and the lines every command prints when it uses that cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::invocation;
use crate::cli::{LocalAction, LocalArgs};
use crate::connect::{self, ConnectError, PrivateClusterUse};
use crate::output::Rows;

/// The stop command as the user can type it: the private cluster's data directory named
/// when it was given (flag or environment), so it works from any shell.
pub fn stop_command(data_dir: &Path, given: bool) -> String {
    let program = invocation::program();
    if given {
        let dir = invocation::shell_word(&data_dir.to_string_lossy());
        format!("{program} --data-dir {dir} local stop")
    } else {
        format!("{program} local stop")
    }
}

/// The first line a command prints when it uses the private cluster (where it is, that it
/// keeps running, how to stop it), then, when the machine's server refused the login, why
/// that server was not used and how to use it instead.
pub fn announce(description: &str, private: &PrivateClusterUse, data_dir_given: bool) {
    let line = format!(
        "using {description}; it keeps running in the background, stop it with: {}",
        stop_command(&private.data_dir, data_dir_given)
    );
    eprintln!("retrylog: {}", crate::text::for_terminal(&line));
    if let Some(refused) = &private.refused {
        eprintln!("retrylog: {}", crate::text::for_terminal(refused));
    }
}

pub async fn run(data_dir: Option<&Path>, args: LocalArgs) -> anyhow::Result<ExitCode> {
    let given = data_dir.is_some();
    let data_dir: PathBuf = match data_dir {
        Some(dir) => dir.to_path_buf(),
        None => connect::default_data_dir().ok_or(ConnectError::NoDataDir)?,
    };
    match args.action {
        LocalAction::Status(format) => {
            let status = connect::private_cluster_status(&data_dir).await?;
            let url = format!(
                "postgres://{}@localhost:{}/{}?host={}",
                status.user,
                status.port,
                connect::DEFAULT_DATABASE,
                status.socket_dir.display()
            );
            let state = match (status.running, status.initialised) {
                (true, _) => "running",
                (false, true) => "stopped",
                (false, false) => "not created",
            };
            let mut rows = Rows::new(&["state", "pid", "pgdata", "socket", "port", "log", "url"]);
            rows.push(vec![
                Value::from(state),
                status.pid.map_or(Value::Null, Value::from),
                Value::from(status.pgdata.display().to_string()),
                Value::from(status.socket_dir.display().to_string()),
                Value::from(status.port),
                Value::from(status.log.display().to_string()),
                Value::from(url),
            ]);
            rows.print(format.format)?;
            if status.running {
                eprintln!("retrylog: stop it with: {}", stop_command(&data_dir, given));
            }
        }
        LocalAction::Start => {
            connect::start_private_cluster(&data_dir)
                .await
                .context("starting the private cluster")?;
            eprintln!(
                "retrylog: the private cluster in {} runs; stop it with: {}",
                data_dir.display(),
                stop_command(&data_dir, given)
            );
        }
        LocalAction::Stop => {
            let status = connect::private_cluster_status(&data_dir).await?;
            if !status.running {
                eprintln!(
                    "retrylog: no private cluster runs in {}",
                    data_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let stop_dir = data_dir.clone();
            tokio::task::spawn_blocking(move || connect::stop_private_cluster(&stop_dir))
                .await
                .context("stopping the private cluster")??;
            eprintln!(
                "retrylog: stopped the private cluster in {}",
                data_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
