//! The files and directories the test suites make outside their databases: each named
//! `retrylog-test-<what>-<random>` (so that one a killed run leaves behind says whose it is, and
//! two runs at once never share one), and removed when its guard drops — also when the test
//! fails. Both suites include this file (`tests/connect.rs`, `tests/retrylog/main.rs`).

// Each suite uses a part of it.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// What every path the suites make under a temporary directory starts with.
pub const PREFIX: &str = "retrylog-test-";

/// A path of the suite's own, removed (a file, or a directory with all it holds) on drop.
#[derive(Debug)]
pub struct TempPath {
    /// The path: `<parent>/retrylog-test-<what>-<random>`.
    path: PathBuf,
}

impl TempPath {
    /// A path under the system's temporary directory, not created yet: for a file, or for a
    /// directory that the code under test makes.
    pub fn new(what: &str) -> Self {
        Self::under(&std::env::temp_dir(), what)
    }

    /// A path under `parent`, not created yet. Twelve hex digits of randomness: short, as a
    /// private cluster's socket path inside it must fit in 107 bytes.
    pub fn under(parent: &Path, what: &str) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            path: parent.join(format!("{PREFIX}{what}-{}", &random[..12])),
        }
    }

    /// A directory under the system's temporary directory, created empty.
    pub fn dir(what: &str) -> Self {
        let dir = Self::new(what);
        std::fs::create_dir_all(&dir.path)
            .unwrap_or_else(|error| panic!("creating {}: {error}", dir.path.display()));
        dir
    }

    /// A directory under the system's temporary directory, created empty with mode 0700 (like
    /// a home directory: a private cluster inside must be let through it).
    pub fn private_dir(what: &str) -> Self {
        let dir = Self::dir(what);
        std::fs::set_permissions(
            &dir.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap_or_else(|error| panic!("chmod 0700 {}: {error}", dir.path.display()));
        dir
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for TempPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // symlink_metadata: a symlink is removed itself, never followed.
        let removed = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            // Never made (the test failed first, or the path was to stay absent).
            Err(_) => Ok(()),
        };
        if let Err(error) = removed {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
    }
}
