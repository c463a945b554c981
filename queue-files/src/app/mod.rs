//! One run of queue-files: options checked against the settings (the
//! `options` module), storage and broker reached (or a one-line error),
//! every path scanned and every file handled in turn (the `file` module:
//! one named step after another), the jobs followed with `--wait`, and the
//! summary.
//!
//! A run keeps what the command line and the settings decided apart from
//! what changes as it goes: `Options` is fixed for the run, `State` holds
//! the counters, the broker connection, the follower and the originals
//! waiting to be archived.

mod file;
mod options;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use transcode_worker::broker::Broker;
use transcode_worker::config::Settings;
use transcode_worker::follow::{Follower, Stop};
use transcode_worker::storage::Storage;

use self::file::Candidate;
use self::options::Options;
use crate::cli::Cli;
use crate::inspect::SkipReason;
use crate::publish::{self, one_line};
use crate::scan::{self, Found, Stability};
use crate::ui::{Summary, Ui};
use crate::wait::Followed;

pub use self::options::DEFAULT_INPUT_PREFIX;

/// Exit status for bad options or settings.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when interrupted by SIGINT or SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How long the start-up check of the storage may retry: not at all, so an
/// unreachable bucket is one error line at once, not minutes of retries.
const STORAGE_CHECK_RETRY: Duration = Duration::ZERO;

/// What became of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Queued,
    Skipped,
    Failed,
}

/// A fatal problem: its one-line message and exit status.
#[derive(Debug)]
pub struct Fatal {
    /// Exit status.
    pub code: u8,
    /// One line for people.
    pub message: String,
}

impl Fatal {
    fn usage(message: impl Into<String>) -> Fatal {
        Fatal {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    fn runtime(message: impl Into<String>) -> Fatal {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }
}

/// A run: its checked options, the outside systems it reached, and its state.
struct Run {
    /// What the command line and the settings decided; fixed for the run.
    options: Options,
    /// Where people read what happens.
    ui: Ui,
    /// Where inputs go and markers are recorded.
    storage: Storage,
    /// Fired by SIGINT or SIGTERM.
    cancel: CancellationToken,
    /// What changes as the run goes.
    state: State,
}

/// What changes as a run goes.
#[derive(Default)]
struct State {
    /// The broker connection (none in a dry run).
    broker: Option<Arc<Broker>>,
    /// Set when the broker connection was lost mid-run.
    broker_lost: bool,
    /// With `--wait`: the follower of the progress events, started before
    /// the first job is published.
    follower: Option<Follower>,
    /// What became of the files.
    summary: Summary,
    /// Output keys taken in this run, with the file that took each.
    outputs: HashMap<String, String>,
    /// Jobs to follow with `--wait`.
    followed: Vec<Followed>,
    /// Originals to archive once their job completed: job id -> (path, rel).
    pending_archive: HashMap<String, (PathBuf, PathBuf)>,
    /// Originals that could not be archived.
    archive_failures: usize,
    /// With `--watch`: the last failure reported for each file.
    failures: HashMap<PathBuf, String>,
}

/// What `--watch` remembers from one scan to the next.
#[derive(Default)]
struct Scans {
    /// Sizes and modification times seen, to tell when a file stopped changing.
    stability: Stability,
    /// Files handled (and not failed), with the size and modification time
    /// they had then; handled again only once these change.
    handled: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// Entries the scan itself reported as skipped or failed; reported
    /// again only once they have gone away and come back.
    reported: HashSet<PathBuf>,
}

/// Runs queue-files with parsed options and loaded settings.
pub async fn run(cli: Cli, settings: Settings, ui: Ui, cancel: CancellationToken) -> ExitCode {
    let prepared = match Options::check(cli, settings) {
        Ok(options) => Run::prepare(options, ui.clone(), cancel).await,
        Err(fatal) => Err(fatal),
    };
    match prepared {
        Ok(mut run) => {
            let code = run.execute().await;
            if let Some(broker) = &run.state.broker {
                broker.close().await;
            }
            ExitCode::from(code)
        }
        Err(fatal) => {
            ui.line(&format!("queue-files: error: {}", one_line(&fatal.message)));
            ExitCode::from(fatal.code)
        }
    }
}

impl Run {
    /// Reaches the storage and (unless a dry run) the broker, and starts
    /// the follower with `--wait`.
    async fn prepare(options: Options, ui: Ui, cancel: CancellationToken) -> Result<Run, Fatal> {
        let storage = reach_storage(&options.settings).await?;
        let mut state = State {
            summary: Summary {
                waited: options.waits(),
                ..Default::default()
            },
            ..Default::default()
        };
        if !options.cli.dry_run {
            let broker = Arc::new(
                publish::connect(&options.settings)
                    .await
                    .map_err(Fatal::runtime)?,
            );
            if options.cli.wait {
                let tag = format!("queue-files-wait-{}", std::process::id());
                state.follower = Some(Follower::start(&broker, &tag).await.map_err(|e| {
                    Fatal::runtime(format!("cannot follow the progress events: {e}"))
                })?);
            }
            state.broker = Some(broker);
        } else if options.cli.wait {
            ui.info("--dry-run: nothing is queued, so --wait has nothing to follow");
        }
        Ok(Run {
            options,
            ui,
            storage,
            cancel,
            state,
        })
    }

    /// Scans (once, or until interrupted with `--watch`), follows the jobs
    /// with `--wait`, prints the summary and returns the exit status.
    async fn execute(&mut self) -> u8 {
        self.scan().await;
        let interrupted_scan = self.cancel.is_cancelled() && !self.options.cli.watch;
        let (wait_failed, wait_interrupted) = match self.state.follower.take() {
            Some(follower) if !interrupted_scan && !self.state.broker_lost => {
                self.wait(follower).await
            }
            _ => (false, false),
        };
        self.finish(interrupted_scan || wait_interrupted, wait_failed)
    }

    /// Scans every path once, or with `--watch` every `--interval` until
    /// interrupted.
    async fn scan(&mut self) {
        let mut scans = Scans::default();
        let mut last_pending = 0usize;
        loop {
            if self.options.cli.watch && !self.options.cli.dry_run && self.state.broker_lost {
                self.reconnect().await;
            }
            let (seen, pending) = self.scan_once(&mut scans).await;
            if !self.options.cli.watch || self.cancel.is_cancelled() {
                break;
            }
            if self.state.broker_lost {
                self.ui.line(
                    "queue-files: lost the connection to RabbitMQ; reconnecting at the next scan",
                );
            }
            if pending != last_pending && pending > 0 {
                self.ui.info(&format!(
                    "{pending} file(s) new or still changing; looking again in {}",
                    humantime::format_duration(self.options.cli.interval)
                ));
            }
            last_pending = pending;
            scans.reported.retain(|p| seen.contains(p));
            scans.stability.next_scan();
            tokio::select! {
                _ = tokio::time::sleep(self.options.cli.interval) => {}
                _ = self.cancel.cancelled() => break,
            }
        }
    }

    /// One pass over every path: handles each file found (with `--watch`,
    /// each new or changed file once it stopped changing). Stops early when
    /// interrupted or the broker was lost. Returns the paths seen and how
    /// many files are still changing.
    async fn scan_once(&mut self, scans: &mut Scans) -> (HashSet<PathBuf>, usize) {
        let watch = self.options.cli.watch;
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut pending = 0usize;
        for root in self.options.roots.clone() {
            let filter = self.options.filter.clone();
            let prune = self.options.prune.clone();
            let found = tokio::task::spawn_blocking(move || scan::scan(&root, &filter, &prune))
                .await
                .unwrap_or_default();
            for entry in found {
                if self.cancel.is_cancelled()
                    || (self.state.broker_lost && !self.options.cli.dry_run)
                {
                    return (seen, pending);
                }
                match entry {
                    Found::File {
                        path,
                        rel,
                        size,
                        modified,
                    } => {
                        if !seen.insert(path.clone()) {
                            continue;
                        }
                        if watch {
                            let stable = scans.stability.observe(&path, size, modified);
                            if scans.handled.get(&path) == Some(&(size, modified)) {
                                continue;
                            }
                            if !stable {
                                pending += 1;
                                continue;
                            }
                        }
                        let file = Candidate {
                            path,
                            rel,
                            size,
                            modified,
                        };
                        let outcome = self.handle_file(&file).await;
                        if watch && outcome != Outcome::Failed {
                            scans.handled.insert(file.path, (size, modified));
                        }
                    }
                    Found::Skipped { path, rel, reason } => {
                        if seen.insert(path.clone()) && scans.reported.insert(path) {
                            self.skip(&rel, reason, "");
                        }
                    }
                    Found::Error { path, message } => {
                        if seen.insert(path.clone()) && scans.reported.insert(path.clone()) {
                            self.fail(&path.display().to_string(), &message);
                        }
                    }
                }
            }
        }
        (seen, pending)
    }

    /// `--wait`: follows the queued jobs to their end with `follower`,
    /// archiving each original as its job completes. Returns whether the
    /// wait stopped early, and whether an interrupt stopped it.
    async fn wait(&mut self, mut follower: Follower) -> (bool, bool) {
        let pending_archive = std::mem::take(&mut self.state.pending_archive);
        let archive = self.options.archive.clone();
        let ui = self.ui.clone();
        let mut archive_failures = 0;
        let result = crate::wait::follow(
            &mut follower,
            &self.state.followed,
            &self.ui,
            self.options.cli.wait_timeout,
            &self.cancel,
            |job_id, completed| {
                if !completed {
                    return;
                }
                if let (Some(dir), Some((path, rel))) = (&archive, pending_archive.get(job_id)) {
                    if !archive_one(&ui, path, dir, rel) {
                        archive_failures += 1;
                    }
                }
            },
        )
        .await;
        follower.close().await;
        self.state.archive_failures += archive_failures;
        self.state.summary.completed = result.completed;
        self.state.summary.jobs_failed = result.failed;
        let Some(why) = &result.stopped else {
            return (false, false);
        };
        self.ui.line(&format!(
            "queue-files: {} while waiting; {} job(s) unfinished: {}",
            why,
            result.unfinished.len(),
            result.unfinished.join(", ")
        ));
        (true, *why == Stop::Interrupted)
    }

    /// Prints the summary and returns the exit status.
    fn finish(&self, interrupted: bool, wait_failed: bool) -> u8 {
        let state = &self.state;
        let mut line = state.summary.render(self.options.cli.dry_run);
        if state.archive_failures > 0 {
            line.push_str(&format!("; {} not archived", state.archive_failures));
        }
        self.ui.line(&line);
        let broker_lost = state.broker_lost && !self.options.cli.watch;
        if broker_lost {
            self.ui
                .line("queue-files: error: lost the connection to RabbitMQ; the files after the last one reported were not queued");
        }
        if interrupted {
            return EXIT_INTERRUPTED;
        }
        let failed = state.summary.failed > 0
            || state.summary.jobs_failed > 0
            || state.archive_failures > 0
            || wait_failed
            || broker_lost;
        u8::from(failed)
    }

    /// `--watch`: connects again after the broker was lost.
    async fn reconnect(&mut self) {
        match publish::connect(&self.options.settings).await {
            Ok(broker) => {
                self.ui.info("reconnected to RabbitMQ");
                if let Some(old) = self.state.broker.replace(Arc::new(broker)) {
                    old.close().await;
                }
                self.state.broker_lost = false;
            }
            Err(e) => self.ui.line(&format!("queue-files: {e}")),
        }
    }

    /// Reports and counts a skipped file.
    fn skip(&mut self, rel: &Path, reason: SkipReason, detail: &str) {
        self.state.summary.skip(reason);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", one_line(detail))
        };
        self.ui
            .info(&format!("skipped {}: {reason}{detail}", rel.display()));
    }

    /// Reports and counts a failure.
    fn fail(&mut self, label: &str, message: &str) {
        self.state.summary.failed += 1;
        self.ui
            .line(&format!("failed  {label}: {}", one_line(message)));
    }

    /// Reports a failed file; with `--watch` the same failure of the same
    /// file (retried at each scan) is reported and counted once.
    fn fail_file(&mut self, path: &Path, label: &str, message: &str) {
        if self.options.cli.watch {
            if self.state.failures.get(path).map(String::as_str) == Some(message) {
                return;
            }
            self.state
                .failures
                .insert(path.to_path_buf(), message.to_string());
        }
        self.fail(label, message);
    }
}

/// The storage of `settings`, after checking (without retrying) that it
/// exists and answers.
async fn reach_storage(settings: &Settings) -> Result<Storage, Fatal> {
    let storage = Storage::from_settings(&settings.storage)
        .map_err(|e| Fatal::runtime(format!("cannot use the storage: {e}")))?;
    let mut quick = settings.storage.clone();
    quick.retry_for = quick.retry_for.min(STORAGE_CHECK_RETRY);
    let checker = Storage::from_settings(&quick)
        .map_err(|e| Fatal::runtime(format!("cannot use the storage: {e}")))?;
    match checker.exists().await {
        Ok(true) => Ok(storage),
        Ok(false) => Err(Fatal::runtime(format!(
            "cannot use the storage: {} does not exist",
            storage.describe()
        ))),
        Err(e) => Err(Fatal::runtime(format!("cannot reach the storage: {e}"))),
    }
}

/// Moves one original into the archive; reports and returns false on failure.
fn archive_one(ui: &Ui, path: &Path, dir: &Path, rel: &Path) -> bool {
    match crate::archive::archive(path, dir, rel) {
        Ok(dest) => {
            ui.info(&format!("archived {} -> {}", rel.display(), dest.display()));
            true
        }
        Err(e) => {
            ui.line(&format!(
                "warning: {} could not be moved to the archive: {e}",
                rel.display()
            ));
            false
        }
    }
}
