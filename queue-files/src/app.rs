//! One run of queue-files: options checked against the settings, storage
//! and broker reached (or a one-line error), every path scanned and every
//! file handled in turn, the jobs followed with `--wait`, and the summary.
//!
//! For each file: probe it (skip non-video and files already in the target
//! format), work out its keys, hash its content (the job id), ask the
//! storage whether it was queued or transcoded already (see
//! [`crate::record`]), upload it unless the same content is there already,
//! check it did not change meanwhile, publish the job (confirmed), record
//! the marker, and archive the original when asked.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use transcode_worker::broker::Broker;
use transcode_worker::config::{Backend, Settings};
use transcode_worker::fragment::Fragment;
use transcode_worker::job::{now_rfc3339, Job, SourceInfo};
use transcode_worker::pipeline;
use transcode_worker::storage::{Storage, StorageError};

use crate::cli::Cli;
use crate::inspect::{self, SkipReason, Target, Verdict};
use crate::keys;
use crate::publish::{self, one_line};
use crate::record::{self, Marker, Status};
use crate::scan::{self, Filter, Found, Stability};
use crate::ui::{Summary, Ui};
use crate::wait::Followed;
use transcode_worker::follow::{Follower, Stop};

/// Exit status for bad options or settings.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when interrupted by SIGINT or SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Default input prefix for uploads.
pub const DEFAULT_INPUT_PREFIX: &str = "input/";

/// How long the start-up check of the storage may retry: not at all, so an
/// unreachable bucket is one error line at once, not minutes of retries.
const STORAGE_CHECK_RETRY: Duration = Duration::ZERO;

/// Where inputs are.
#[derive(Debug, Clone)]
enum Mode {
    /// Uploaded under a prefix; keys follow the path relative to the scanned folder.
    Upload { input_prefix: String },
    /// In place in the storage directory; keys are relative to it.
    InPlace { root: PathBuf },
}

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

/// Everything a run needs, checked.
struct Run {
    cli: Cli,
    settings: Settings,
    ui: Ui,
    storage: Storage,
    mode: Mode,
    output_prefix: String,
    target: Target,
    filter: Filter,
    roots: Vec<PathBuf>,
    prune: Vec<PathBuf>,
    archive: Option<PathBuf>,
    broker: Option<Arc<Broker>>,
    follower: Option<Follower>,
    cancel: CancellationToken,
    summary: Summary,
    /// Output keys taken in this run, with the file that took each.
    outputs: HashMap<String, String>,
    /// Jobs to follow with `--wait`.
    followed: Vec<Followed>,
    /// Originals to archive once their job completed: job id -> (path, rel).
    pending_archive: HashMap<String, (PathBuf, PathBuf)>,
    /// Originals that could not be archived.
    archive_failures: usize,
    /// Set when the broker connection was lost mid-run.
    broker_lost: bool,
    /// With `--watch`: the last failure reported for each file.
    failures: HashMap<PathBuf, String>,
}

/// Runs queue-files with parsed options and loaded settings.
pub async fn run(cli: Cli, settings: Settings, ui: Ui, cancel: CancellationToken) -> ExitCode {
    match run_inner(cli, settings, ui.clone(), cancel).await {
        Ok(code) => ExitCode::from(code),
        Err(fatal) => {
            ui.line(&format!("queue-files: error: {}", one_line(&fatal.message)));
            ExitCode::from(fatal.code)
        }
    }
}

async fn run_inner(
    cli: Cli,
    settings: Settings,
    ui: Ui,
    cancel: CancellationToken,
) -> Result<u8, Fatal> {
    let mut run = Run::prepare(cli, settings, ui, cancel).await?;
    let result = run.execute().await;
    if let Some(broker) = &run.broker {
        broker.close().await;
    }
    result
}

impl Run {
    /// Checks the options against the settings and reaches storage and broker.
    async fn prepare(
        cli: Cli,
        settings: Settings,
        ui: Ui,
        cancel: CancellationToken,
    ) -> Result<Run, Fatal> {
        let target = Target::new(&cli.target_codec, &cli.target_ext).map_err(Fatal::usage)?;
        let filter = Filter::new(&cli.include, &cli.exclude).map_err(Fatal::usage)?;
        if let Some(name) = &cli.preset {
            settings
                .preset(name)
                .map_err(|e| Fatal::usage(format!("--preset: {e}")))?;
        }
        if let Some(fragment) = &cli.transcode_options {
            if !settings.pipeline.allow_transcode_options {
                return Err(Fatal::usage(
                    "--transcode-options: the configuration accepts presets only (pipeline.allow_transcode_options = false)",
                ));
            }
            Fragment::parse(fragment, &settings.allowlist()).map_err(|e| {
                Fatal::usage(format!("--transcode-options is refused: {}", e.message))
            })?;
        }
        let mut roots = Vec::new();
        for path in &cli.paths {
            let root = path
                .canonicalize()
                .map_err(|e| Fatal::usage(format!("{}: {e}", path.display())))?;
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        let mode = match settings.storage.backend {
            Backend::S3 => Mode::Upload {
                input_prefix: keys::normalize_prefix(
                    cli.input_prefix.as_deref().unwrap_or(DEFAULT_INPUT_PREFIX),
                ),
            },
            Backend::Directory => {
                if cli.input_prefix.is_some() {
                    return Err(Fatal::usage(
                        "--input-prefix has no use with the directory backend: files are queued in place",
                    ));
                }
                if cli.bucket.is_some() {
                    return Err(Fatal::usage(
                        "--bucket has no use with the directory backend",
                    ));
                }
                let root = settings.storage.directory.canonicalize().map_err(|e| {
                    Fatal::usage(format!(
                        "the storage directory {}: {e}",
                        settings.storage.directory.display()
                    ))
                })?;
                for scanned in &roots {
                    if !scanned.starts_with(&root) {
                        return Err(Fatal::usage(format!(
                            "{} is not inside the storage directory {}: with the directory backend files are queued in place, so they must be where the workers read",
                            scanned.display(),
                            root.display()
                        )));
                    }
                }
                if cli.archive.is_some() && !cli.wait && !cli.dry_run {
                    return Err(Fatal::usage(
                        "--archive with the directory backend needs --wait: the workers read the originals in place",
                    ));
                }
                Mode::InPlace { root }
            }
        };
        let output_prefix = keys::normalize_prefix(&cli.output_prefix);
        let mut prune = Vec::new();
        let archive = match &cli.archive {
            Some(dir) if !cli.dry_run => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Fatal::usage(format!("--archive {}: {e}", dir.display())))?;
                let dir = dir
                    .canonicalize()
                    .map_err(|e| Fatal::usage(format!("--archive {}: {e}", dir.display())))?;
                prune.push(dir.clone());
                Some(dir)
            }
            Some(dir) => {
                if let Ok(dir) = dir.canonicalize() {
                    prune.push(dir);
                }
                None
            }
            None => None,
        };
        if let Mode::InPlace { root } = &mode {
            if !output_prefix.is_empty() {
                let outputs = root.join(output_prefix.trim_end_matches('/'));
                prune.push(outputs.canonicalize().unwrap_or(outputs));
            }
        }

        let storage = Storage::from_settings(&settings.storage)
            .map_err(|e| Fatal::runtime(format!("cannot use the storage: {e}")))?;
        let mut quick = settings.storage.clone();
        quick.retry_for = quick.retry_for.min(STORAGE_CHECK_RETRY);
        let checker = Storage::from_settings(&quick)
            .map_err(|e| Fatal::runtime(format!("cannot use the storage: {e}")))?;
        match checker.exists().await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Fatal::runtime(format!(
                    "cannot use the storage: {} does not exist",
                    storage.describe()
                )))
            }
            Err(e) => return Err(Fatal::runtime(format!("cannot reach the storage: {e}"))),
        }

        let mut broker = None;
        let mut follower = None;
        if !cli.dry_run {
            let connected = Arc::new(publish::connect(&settings).await.map_err(Fatal::runtime)?);
            if cli.wait {
                let tag = format!("queue-files-wait-{}", std::process::id());
                follower = Some(Follower::start(&connected, &tag).await.map_err(|e| {
                    Fatal::runtime(format!("cannot follow the progress events: {e}"))
                })?);
            }
            broker = Some(connected);
        } else if cli.wait {
            ui.info("--dry-run: nothing is queued, so --wait has nothing to follow");
        }

        Ok(Run {
            summary: Summary {
                waited: cli.wait && !cli.dry_run,
                ..Default::default()
            },
            cli,
            settings,
            ui,
            storage,
            mode,
            output_prefix,
            target,
            filter,
            roots,
            prune,
            archive,
            broker,
            follower,
            cancel,
            outputs: HashMap::new(),
            followed: Vec::new(),
            pending_archive: HashMap::new(),
            archive_failures: 0,
            broker_lost: false,
            failures: HashMap::new(),
        })
    }

    /// Scans (once, or until interrupted with `--watch`), follows the jobs
    /// with `--wait`, prints the summary and returns the exit status.
    async fn execute(&mut self) -> Result<u8, Fatal> {
        let mut stability = Stability::default();
        let mut handled: HashMap<PathBuf, (u64, Option<SystemTime>)> = HashMap::new();
        let mut reported: HashSet<PathBuf> = HashSet::new();
        let mut last_pending = 0usize;
        loop {
            if self.cli.watch && !self.cli.dry_run && self.broker_lost {
                self.reconnect().await;
            }
            let mut seen: HashSet<PathBuf> = HashSet::new();
            let mut pending = 0usize;
            'roots: for root in self.roots.clone() {
                let filter = self.filter.clone();
                let prune = self.prune.clone();
                let scan_root = root.clone();
                let found =
                    tokio::task::spawn_blocking(move || scan::scan(&scan_root, &filter, &prune))
                        .await
                        .unwrap_or_default();
                for entry in found {
                    if self.cancel.is_cancelled() || (self.broker_lost && !self.cli.dry_run) {
                        break 'roots;
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
                            if self.cli.watch {
                                let stable = stability.observe(&path, size, modified);
                                if handled.get(&path) == Some(&(size, modified)) {
                                    continue;
                                }
                                if !stable {
                                    pending += 1;
                                    continue;
                                }
                            }
                            let outcome = self.handle_file(&path, &rel, size, modified).await;
                            if self.cli.watch && outcome != Outcome::Failed {
                                handled.insert(path, (size, modified));
                            }
                        }
                        Found::Skipped { path, rel, reason } => {
                            if !seen.insert(path.clone()) || !reported.insert(path.clone()) {
                                continue;
                            }
                            self.skip(&rel, reason, "");
                        }
                        Found::Error { path, message } => {
                            if !seen.insert(path.clone()) || !reported.insert(path.clone()) {
                                continue;
                            }
                            self.fail(&path.display().to_string(), &message);
                        }
                    }
                }
            }
            if !self.cli.watch || self.cancel.is_cancelled() {
                break;
            }
            if self.broker_lost {
                self.ui.line(
                    "queue-files: lost the connection to RabbitMQ; reconnecting at the next scan",
                );
            }
            if pending != last_pending && pending > 0 {
                self.ui.info(&format!(
                    "{pending} file(s) new or still changing; looking again in {}",
                    humantime::format_duration(self.cli.interval)
                ));
            }
            last_pending = pending;
            // Entries reported as skipped or failed are reported again only
            // once they have gone away and come back.
            reported.retain(|p| seen.contains(p));
            stability.next_scan();
            tokio::select! {
                _ = tokio::time::sleep(self.cli.interval) => {}
                _ = self.cancel.cancelled() => break,
            }
        }

        let interrupted_scan = self.cancel.is_cancelled() && !self.cli.watch;
        let mut wait_failed = false;
        let mut interrupted = interrupted_scan;
        if let Some(mut follower) = self.follower.take() {
            if !interrupted_scan && !self.broker_lost {
                let pending_archive = std::mem::take(&mut self.pending_archive);
                let archive = self.archive.clone();
                let ui = self.ui.clone();
                let mut archive_failures = 0;
                let result = crate::wait::follow(
                    &mut follower,
                    &self.followed,
                    &self.ui,
                    self.cli.wait_timeout,
                    &self.cancel,
                    |job_id, completed| {
                        if !completed {
                            return;
                        }
                        if let (Some(dir), Some((path, rel))) =
                            (&archive, pending_archive.get(job_id))
                        {
                            if !archive_one(&ui, path, dir, rel) {
                                archive_failures += 1;
                            }
                        }
                    },
                )
                .await;
                follower.close().await;
                self.archive_failures += archive_failures;
                self.summary.completed = result.completed;
                self.summary.jobs_failed = result.failed;
                if let Some(why) = &result.stopped {
                    wait_failed = true;
                    interrupted |= *why == Stop::Interrupted;
                    self.ui.line(&format!(
                        "queue-files: {} while waiting; {} job(s) unfinished: {}",
                        why,
                        result.unfinished.len(),
                        result.unfinished.join(", ")
                    ));
                }
            }
        }

        let mut line = self.summary.render(self.cli.dry_run);
        if self.archive_failures > 0 {
            line.push_str(&format!("; {} not archived", self.archive_failures));
        }
        self.ui.line(&line);
        if self.broker_lost && !self.cli.watch {
            self.ui
                .line("queue-files: error: lost the connection to RabbitMQ; the files after the last one reported were not queued");
        }
        if interrupted {
            return Ok(EXIT_INTERRUPTED);
        }
        let failed = self.summary.failed > 0
            || self.summary.jobs_failed > 0
            || self.archive_failures > 0
            || wait_failed
            || (self.broker_lost && !self.cli.watch);
        Ok(u8::from(failed))
    }

    /// `--watch`: connects again after the broker was lost.
    async fn reconnect(&mut self) {
        match publish::connect(&self.settings).await {
            Ok(broker) => {
                self.ui.info("reconnected to RabbitMQ");
                if let Some(old) = self.broker.replace(Arc::new(broker)) {
                    old.close().await;
                }
                self.broker_lost = false;
            }
            Err(e) => self.ui.line(&format!("queue-files: {e}")),
        }
    }

    fn skip(&mut self, rel: &Path, reason: SkipReason, detail: &str) {
        self.summary.skip(reason);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", one_line(detail))
        };
        self.ui
            .info(&format!("skipped {}: {reason}{detail}", rel.display()));
    }

    fn fail(&mut self, label: &str, message: &str) {
        self.summary.failed += 1;
        self.ui
            .line(&format!("failed  {label}: {}", one_line(message)));
    }

    /// Reports a failed file; with `--watch` the same failure of the same
    /// file (retried at each scan) is reported and counted once.
    fn fail_file(&mut self, path: &Path, label: &str, message: &str) {
        if self.cli.watch {
            if self.failures.get(path).map(String::as_str) == Some(message) {
                return;
            }
            self.failures
                .insert(path.to_path_buf(), message.to_string());
        }
        self.fail(label, message);
    }

    /// Handles one regular file of `size` bytes modified at `modified`.
    async fn handle_file(
        &mut self,
        path: &Path,
        rel: &Path,
        size: u64,
        modified: Option<SystemTime>,
    ) -> Outcome {
        let label = rel.display().to_string();
        if let Err(e) = std::fs::File::open(path) {
            if e.kind() == std::io::ErrorKind::NotFound {
                self.skip(rel, SkipReason::Vanished, "");
                return Outcome::Skipped;
            }
            self.fail_file(path, &label, &format!("cannot read it: {e}"));
            return Outcome::Failed;
        }

        let probe_path = path.to_path_buf();
        let timeout = self.cli.probe_timeout;
        let probed =
            tokio::task::spawn_blocking(move || pipeline::probe(&probe_path, timeout)).await;
        let info = match probed {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                if !path.exists() {
                    self.skip(rel, SkipReason::Vanished, "");
                } else {
                    self.skip(rel, SkipReason::NotMedia, &e.message);
                }
                return Outcome::Skipped;
            }
            Err(e) => {
                self.fail_file(path, &label, &format!("probing it crashed: {e}"));
                return Outcome::Failed;
            }
        };
        let source = match inspect::judge(path, size, &info, &self.target) {
            Verdict::Transcode(source) => source,
            Verdict::Skip(reason, detail) => {
                self.skip(rel, reason, &detail);
                return Outcome::Skipped;
            }
        };

        let (input_key, output_key) = match self.keys_for(path, rel) {
            Ok(keys) => keys,
            Err(e) => {
                self.fail_file(path, &label, &e);
                return Outcome::Failed;
            }
        };
        if let Some(other) = self.outputs.get(&output_key) {
            let message =
                format!("its output key {output_key:?} is already taken by {other} in this run");
            self.fail_file(path, &label, &message);
            return Outcome::Failed;
        }

        let hash_path = path.to_path_buf();
        let sha =
            match tokio::task::spawn_blocking(move || inspect::content_sha256(&hash_path)).await {
                Ok(Ok(sha)) => sha,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.skip(rel, SkipReason::Vanished, "");
                    return Outcome::Skipped;
                }
                Ok(Err(e)) => {
                    self.fail_file(path, &label, &format!("cannot read it: {e}"));
                    return Outcome::Failed;
                }
                Err(e) => {
                    self.fail_file(path, &label, &format!("hashing it crashed: {e}"));
                    return Outcome::Failed;
                }
            };
        let job = match self.job(&sha, &input_key, &output_key, *source) {
            Ok(job) => job,
            Err(e) => {
                self.fail_file(path, &label, &e);
                return Outcome::Failed;
            }
        };

        if !self.cli.force {
            match record::status(&self.storage, &job.job_id, &input_key, &output_key).await {
                Ok(Status::New) => {}
                Ok(Status::Changed { previous_job_id }) => self.ui.info(&format!(
                    "changed {label}: its content differs from when it was queued as {previous_job_id}"
                )),
                Ok(Status::Queued) => {
                    self.skip(rel, SkipReason::AlreadyQueued, &job.job_id);
                    return Outcome::Skipped;
                }
                Ok(Status::Transcoded) => {
                    self.skip(rel, SkipReason::AlreadyTranscoded, &output_key);
                    return Outcome::Skipped;
                }
                Ok(Status::OutputExists) => {
                    self.skip(
                        rel,
                        SkipReason::OutputExists,
                        &format!("{output_key}; --force replaces it"),
                    );
                    return Outcome::Skipped;
                }
                Ok(Status::TakenBy { input_key: other }) => {
                    self.fail_file(
                        path,
                        &label,
                        &format!(
                            "its output key {output_key:?} was queued for another input, {other:?}; rename one of them or use --force"
                        ),
                    );
                    return Outcome::Failed;
                }
                Err(e) => {
                    self.fail_file(path, &label, &format!("cannot check the storage: {e}"));
                    return Outcome::Failed;
                }
            }
        }
        let body = serde_json::to_string(&job).expect("a job serializes");
        self.outputs.insert(output_key.clone(), label.clone());
        if self.cli.dry_run {
            self.ui.out(&body);
            self.ui
                .info(&format!("would queue {label} -> {output_key}"));
            self.summary.queued += 1;
            return Outcome::Queued;
        }

        if let Mode::Upload { .. } = self.mode {
            let uploaded = record::input_is_uploaded(&self.storage, &input_key, &sha, size).await;
            let upload = match uploaded {
                Ok(true) => Ok(()),
                Ok(false) | Err(_) => {
                    let metadata = [
                        (record::META_JOB_ID.to_string(), job.job_id.clone()),
                        (record::META_SHA256.to_string(), sha.clone()),
                    ];
                    let storage = self.storage.clone();
                    let ui = self.ui.clone();
                    tokio::select! {
                        result = publish::upload(&storage, &ui, path, &input_key, &metadata, size, &label) => result,
                        _ = self.cancel.cancelled() => Err(StorageError::Local("interrupted".into())),
                    }
                }
            };
            if let Err(e) = upload {
                self.outputs.remove(&output_key);
                self.fail_file(
                    path,
                    &label,
                    &format!("upload to {input_key:?} failed: {e}"),
                );
                return Outcome::Failed;
            }
        }

        let now = std::fs::metadata(path).ok();
        let unchanged = now
            .as_ref()
            .is_some_and(|m| m.len() == size && m.modified().ok() == modified);
        if !unchanged {
            self.outputs.remove(&output_key);
            self.fail_file(
                path,
                &label,
                "it changed (or vanished) while it was being queued; it is queued on a later run once it stays the same",
            );
            return Outcome::Failed;
        }

        let Some(broker) = self.broker.clone() else {
            self.fail_file(path, &label, "not connected to RabbitMQ");
            return Outcome::Failed;
        };
        if let Some(follower) = &self.follower {
            follower.expect(&job.job_id);
        }
        if let Err(e) = publish::publish(&broker, &self.settings, &job).await {
            if let Some(follower) = &self.follower {
                follower.forget(&job.job_id);
            }
            self.outputs.remove(&output_key);
            if !broker.is_connected() {
                self.broker_lost = true;
            }
            self.fail_file(path, &label, &format!("publishing its job failed: {e}"));
            return Outcome::Failed;
        }
        let marker = Marker {
            job_id: job.job_id.clone(),
            input_key: input_key.clone(),
            output_key: output_key.clone(),
            content_sha256: sha,
            size,
            queued_at: now_rfc3339(),
            queued_from: record::origin(path),
        };
        if let Err(e) = record::write_marker(&self.storage, &marker).await {
            self.ui.line(&format!(
                "warning: {label} is queued, but recording it failed ({e}); a later run may queue it again"
            ));
        }
        self.summary.queued += 1;
        self.ui.info(&format!(
            "queued  {label} -> {output_key} (job {})",
            job.job_id
        ));
        self.followed.push(Followed {
            job_id: job.job_id.clone(),
            label: label.clone(),
        });
        if let Some(dir) = &self.archive {
            if self.cli.wait {
                self.pending_archive
                    .insert(job.job_id.clone(), (path.to_path_buf(), rel.to_path_buf()));
            } else if !archive_one(&self.ui, path, dir, rel) {
                self.archive_failures += 1;
            }
        }
        Outcome::Queued
    }

    /// The input and output keys of the file at `path` (`rel` to its scanned folder).
    fn keys_for(&self, path: &Path, rel: &Path) -> Result<(String, String), String> {
        let (input_key, base) = match &self.mode {
            Mode::Upload { input_prefix } => {
                let key = keys::rel_key(rel)?;
                (keys::prefixed(input_prefix, &key), key)
            }
            Mode::InPlace { root } => {
                let inside = path.strip_prefix(root).map_err(|_| {
                    format!("it is not inside the storage directory {}", root.display())
                })?;
                let key = keys::rel_key(inside)?;
                (key.clone(), key)
            }
        };
        let output_key = keys::with_extension(
            &keys::prefixed(&self.output_prefix, &base),
            &self.target.ext,
        );
        if output_key == input_key {
            return Err(format!(
                "its output key would be its own input key {input_key:?}; choose another --output-prefix"
            ));
        }
        Ok((input_key, output_key))
    }

    /// The job of a file, checked the way the worker will check it.
    fn job(
        &self,
        sha: &str,
        input_key: &str,
        output_key: &str,
        source: SourceInfo,
    ) -> Result<Job, String> {
        let job = Job {
            job_id: inspect::job_id(sha, input_key, output_key),
            input_key: input_key.to_string(),
            output_key: output_key.to_string(),
            transcode_options: self.cli.transcode_options.clone(),
            preset: self.cli.preset.clone(),
            source: Some(source),
        };
        let body = serde_json::to_vec(&job).expect("a job serializes");
        Job::parse(&body).map_err(|e| format!("the worker would refuse its job: {}", e.message))
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
