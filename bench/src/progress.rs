//! Progress on stderr while a benchmark runs: drawn only when stderr is a terminal, so a
//! redirected run's output holds the figures and the context lines, nothing else.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use retrylog::cmd::stderr_is_terminal;

/// A spinner on stderr when it is a terminal, nothing otherwise.
pub fn spinner() -> ProgressBar {
    if stderr_is_terminal() {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("the template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    }
}

/// A bar of `total` steps drawn with indicatif's `template` when stderr is a terminal,
/// nothing otherwise.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    if stderr_is_terminal() {
        ProgressBar::new(total)
            .with_style(ProgressStyle::with_template(template).expect("the template is valid"))
    } else {
        ProgressBar::hidden()
    }
}
