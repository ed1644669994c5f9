//! Progress bars on stderr, hidden when stderr is not a terminal (pipes, CI logs, tests) or
//! with `--quiet`, so that stdout stays clean for the results.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `msg`.
pub fn bar(len: u64, msg: &'static str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(msg);
    bar
}
