//! What people see: one line per file on standard error, progress bars
//! (indicatif) when standard error is a terminal and plain log lines
//! otherwise, the closing summary, and the log writer that keeps library
//! warnings from tearing the bars.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::inspect::SkipReason;

/// The terminal (or log) the run reports to.
#[derive(Debug, Clone)]
pub struct Ui {
    multi: Option<MultiProgress>,
    quiet: bool,
}

impl Ui {
    /// Bars when standard error is a terminal; `quiet` keeps only failures
    /// and the summary.
    pub fn new(quiet: bool) -> Ui {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Ui { multi, quiet }
    }

    /// Whether progress is drawn as bars.
    pub fn has_bars(&self) -> bool {
        self.multi.is_some()
    }

    /// A line on standard error, above any bars.
    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(multi) => multi.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// A line unless quiet.
    pub fn info(&self, text: &str) {
        if !self.quiet {
            self.line(text);
        }
    }

    /// A line on standard output (job JSON), above any bars.
    pub fn out(&self, text: &str) {
        transcode_worker::terminal::print_above(self.multi.as_ref(), text);
    }

    /// A byte bar for an upload of `total` bytes, or a plain-log reporter.
    pub fn transfer(&self, label: &str, total: u64) -> TransferView {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:30!} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() && !self.quiet {
            self.line(&format!(
                "uploading {label} ({})",
                indicatif::HumanBytes(total)
            ));
        }
        TransferView {
            bar,
            label: label.to_string(),
            total,
            started: Instant::now(),
            last_log: Instant::now(),
            quiet: self.quiet,
        }
    }

    /// A bar for a job being followed, 100 steps long (one a percent), in
    /// the look of every job bar ([`job_bar`](transcode_worker::terminal::job_bar));
    /// none for plain logs.
    pub fn job_bar(&self, label: &str) -> Option<ProgressBar> {
        self.multi.as_ref().map(|multi| {
            let bar = multi.add(transcode_worker::terminal::job_bar(label, 100));
            bar.set_message("  0% queued");
            bar
        })
    }

    /// The writer `tracing` logs through: lines go above the bars.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            multi: self.multi.clone(),
        }
    }
}

/// Progress of one upload: a bar, or a log line every ten seconds.
#[derive(Debug)]
pub struct TransferView {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    started: Instant,
    last_log: Instant,
    quiet: bool,
}

impl TransferView {
    /// Shows that `done` bytes have been moved.
    pub fn update(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                if !self.quiet && self.last_log.elapsed() >= Duration::from_secs(10) {
                    self.last_log = Instant::now();
                    let percent = if self.total > 0 {
                        done as f64 * 100.0 / self.total as f64
                    } else {
                        100.0
                    };
                    eprintln!(
                        "uploading {}: {percent:.0}% ({} of {})",
                        self.label,
                        indicatif::HumanBytes(done),
                        indicatif::HumanBytes(self.total)
                    );
                }
            }
        }
    }

    /// Removes the bar; in plain mode logs the time taken when `ok`.
    pub fn finish(self, ok: bool) {
        match self.bar {
            Some(bar) => bar.finish_and_clear(),
            None if ok && !self.quiet => eprintln!(
                "uploaded {} in {:.1} s",
                self.label,
                self.started.elapsed().as_secs_f64()
            ),
            None => {}
        }
    }
}

/// A `tracing` writer: buffers one event and prints it above the bars.
#[derive(Debug, Clone)]
pub struct LogWriter {
    multi: Option<MultiProgress>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            buf: Vec::new(),
            multi: self.multi.clone(),
        }
    }
}

/// One buffered log event; written out when dropped.
#[derive(Debug)]
pub struct LogLine {
    buf: Vec<u8>,
    multi: Option<MultiProgress>,
}

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let write = || {
            let _ = std::io::stderr().write_all(&self.buf);
        };
        match &self.multi {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

/// Counts of what happened to the files of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files queued (or, in a dry run, that would be).
    pub queued: usize,
    /// Files skipped, by reason.
    pub skipped: BTreeMap<SkipReason, usize>,
    /// Files that failed.
    pub failed: usize,
    /// Jobs that completed, when followed with `--wait`.
    pub completed: usize,
    /// Jobs that failed, when followed with `--wait`.
    pub jobs_failed: usize,
    /// Whether jobs were followed.
    pub waited: bool,
}

impl Summary {
    /// Counts a skipped file.
    pub fn skip(&mut self, reason: SkipReason) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// The closing line, e.g. `3 queued, 2 skipped (1 already in the
    /// target format, 1 not a video GStreamer can read), 0 failed`.
    pub fn render(&self, dry_run: bool) -> String {
        let skipped: usize = self.skipped.values().sum();
        let mut text = format!(
            "{} {}, {skipped} skipped",
            self.queued,
            if dry_run { "to queue" } else { "queued" }
        );
        if skipped > 0 {
            let reasons: Vec<String> = self
                .skipped
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            text.push_str(&format!(" ({})", reasons.join(", ")));
        }
        text.push_str(&format!(", {} failed", self.failed));
        if self.waited {
            text.push_str(&format!(
                "; jobs: {} completed, {} failed",
                self.completed, self.jobs_failed
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_skips_by_reason() {
        let mut s = Summary {
            queued: 3,
            ..Default::default()
        };
        s.skip(SkipReason::NotMedia);
        s.skip(SkipReason::AlreadyTarget);
        s.skip(SkipReason::NotMedia);
        s.failed = 1;
        assert_eq!(
            s.render(false),
            "3 queued, 3 skipped (1 already in the target format, 2 not a video GStreamer can read), 1 failed"
        );
        assert_eq!(
            Summary::default().render(true),
            "0 to queue, 0 skipped, 0 failed"
        );
    }
}
