//! Running PostgreSQL's programs for the private cluster (`cluster.rs`, connection rule 3,
//! before any retry can flow: retry → store → projector → report/http): as ourselves, or as
//! the `postgres` user when retrylog runs as root, on a blocking thread, keeping a failed
//! program's last words for the error.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{ConnectError, PRIVATE_CLUSTER_USER};

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(super) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How to run the PostgreSQL binaries: as ourselves, or (when we are root, which
/// initdb and postgres refuse) as `postgres` through runuser or su.
pub(super) enum Runner {
    Direct,
    Runuser(PathBuf),
    Su(PathBuf),
}

impl Runner {
    pub(super) fn detect() -> Self {
        if !running_as_root() {
            return Runner::Direct;
        }
        if let Some(runuser) = find_on_path("runuser") {
            return Runner::Runuser(runuser);
        }
        match find_on_path("su") {
            Some(su) => Runner::Su(su),
            // Let the binary itself explain that it cannot run as root.
            None => Runner::Direct,
        }
    }

    pub(super) fn is_switching_user(&self) -> bool {
        !matches!(self, Runner::Direct)
    }

    pub(super) fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = match self {
            Runner::Direct => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Runner::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", PRIVATE_CLUSTER_USER, "--"])
                    .arg(program)
                    .args(args);
                cmd
            }
            Runner::Su(su) => {
                let line = std::iter::once(program.as_os_str())
                    .chain(args.iter().map(OsString::as_os_str))
                    .map(|word| shell_quote(&word.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut cmd = Command::new(su);
                cmd.args([PRIVATE_CLUSTER_USER, "-s", "/bin/sh", "-c"])
                    .arg(line);
                cmd
            }
        };
        // Our working directory may be one `postgres` cannot enter (e.g. under /root),
        // which initdb and pg_ctl complain about.
        cmd.current_dir("/");
        cmd
    }
}

/// Whether we run as root (effective uid 0), read from /proc without libc, with
/// `id -u` as the fallback where /proc is missing.
pub(super) fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(uids) = status.lines().find_map(|line| line.strip_prefix("Uid:")) {
            // Real, effective, saved, filesystem.
            return uids.split_whitespace().nth(1) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map(|output| {
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "0"
        })
        .unwrap_or(false)
}

/// Runs a command to completion on a blocking thread, capturing its output.
pub(super) async fn run(what: &str, mut cmd: Command) -> Result<Output, ConnectError> {
    let what_owned = what.to_owned();
    tokio::task::spawn_blocking(move || run_blocking(&what_owned, &mut cmd))
        .await
        .map_err(|join| ConnectError::Command {
            what: what.to_owned(),
            detail: join.to_string(),
        })?
}

pub(super) fn run_blocking(what: &str, cmd: &mut Command) -> Result<Output, ConnectError> {
    tracing::debug!(command = ?cmd, "running");
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|error| ConnectError::Command {
            what: what.to_owned(),
            detail: format!(
                "cannot run {}: {error}",
                cmd.get_program().to_string_lossy()
            ),
        })
}

pub(super) fn check_success(what: &str, output: &Output) -> Result<(), ConnectError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(ConnectError::Command {
            what: what.to_owned(),
            detail: last_words(output),
        })
    }
}

/// The last non-empty line of stderr (else stdout, else the exit status).
pub(super) fn last_words(output: &Output) -> String {
    last_line(&output.stderr)
        .or_else(|| last_line(&output.stdout))
        .unwrap_or_else(|| output.status.to_string())
}

pub(super) fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_owned)
}

/// Single-quotes a word for /bin/sh.
pub(super) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
