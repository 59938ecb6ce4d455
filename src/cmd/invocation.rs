//! How to run this very binary, as a command the user can type: what the hints of `demo` and
//! of the private cluster print, so that they work as printed whether retrylog was installed
//! (`cargo install --path .`) or is still run from its checkout (`cargo run --release --`).

use std::path::{Path, PathBuf};

/// The words that run this binary from the current directory:
///
/// 1. `retrylog` when the `retrylog` on PATH is this binary (installed);
/// 2. `cargo run --release --` (or `cargo run --` for a debug build) when this binary was built
///    in the `target/` directory of a checkout the current directory lies in;
/// 3. else this binary's absolute path, quoted for the shell when it needs it.
pub fn program() -> String {
    let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
    else {
        return "retrylog".to_string();
    };
    if on_path("retrylog").is_some_and(|found| found == exe) {
        return "retrylog".to_string();
    }
    if let Some((checkout, profile)) = built_in_checkout(&exe) {
        let here = std::env::current_dir().and_then(|dir| dir.canonicalize());
        if here.is_ok_and(|here| here.starts_with(&checkout)) {
            return match profile.as_str() {
                "release" => "cargo run --release --".to_string(),
                "debug" => "cargo run --".to_string(),
                other => format!("cargo run --profile {other} --"),
            };
        }
    }
    shell_word(&exe.to_string_lossy())
}

/// `<checkout>/target/<profile>/retrylog` → (`<checkout>`, `<profile>`), when `<checkout>` has
/// a Cargo.toml (a checkout, not any directory called target).
fn built_in_checkout(exe: &Path) -> Option<(PathBuf, String)> {
    let profile_dir = exe.parent()?;
    let target = profile_dir.parent()?;
    if target.file_name()? != "target" {
        return None;
    }
    let checkout = target.parent()?;
    if !checkout.join("Cargo.toml").is_file() {
        return None;
    }
    let profile = profile_dir.file_name()?.to_string_lossy().into_owned();
    Some((checkout.to_path_buf(), profile))
}

/// The first `name` on PATH, resolved.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .and_then(|found| found.canonicalize().ok())
}

/// The word as the shell reads it back: bare when it is plain, else single-quoted.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_they_need_it() {
        assert_eq!(
            shell_word("/usr/local/bin/retrylog"),
            "/usr/local/bin/retrylog"
        );
        assert_eq!(shell_word("/home/a b/retrylog"), "'/home/a b/retrylog'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
