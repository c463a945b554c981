//! What the command-line tools draw on a terminal: lines printed above
//! the progress bars, and the one look of a job's bar.

use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Prints `text` as a line on standard output, above the bars of `multi`
/// when there are bars (they are redrawn below it).
pub fn print_above(multi: Option<&MultiProgress>, text: &str) {
    let print = || {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    };
    match multi {
        Some(multi) => multi.suspend(print),
        None => print(),
    }
}

/// A bar for one job labelled `label`, `length` steps long, its message
/// saying the phase, the percentage and the rest.
pub fn job_bar(label: &str, length: u64) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{prefix:36!} [{bar:30.green/blue}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}
