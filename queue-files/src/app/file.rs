//! The handling of one file, as a chain of steps, each a method below:
//!
//! 1. [`probe`](Run::probe): read its streams with GStreamer's Discoverer;
//! 2. [`judge`](Run::judge): does it need transcoding, or is it skipped
//!    (no video, already in the target format)?
//! 3. [`keys`](Run::keys): its input and output keys;
//! 4. [`hash`]: its content hash, which the job id is derived from;
//! 5. [`job`](Run::job): its job, checked the way the worker will check it;
//! 6. [`look_up`](Run::look_up): was it queued or transcoded already (see
//!    [`crate::record`])?
//! 7. [`claim`](Run::claim): take its output key for this run (and with
//!    `--dry-run`, [`print_job`](Run::print_job) and stop here);
//! 8. [`upload`](Run::upload): upload it, unless the same content is there;
//! 9. [`unchanged`]: it did not change while it was being queued;
//! 10. [`publish`](Run::publish): publish the job, confirmed;
//! 11. [`record`](Run::record): write the marker beside the output;
//! 12. [`queued`](Run::queued): report it, follow it with `--wait`,
//!     archive it with `--archive`.
//!
//! A step hands the next what it needs, or ends the handling with
//! [`NotQueued`]: skipped for a reason, or failed with a message.

use std::path::PathBuf;
use std::time::SystemTime;

use transcode_worker::job::{now_rfc3339, Job, SourceInfo};
use transcode_worker::pipeline::{self, MediaInfo};
use transcode_worker::storage::StorageError;

use super::options::{Keys, Mode};
use super::{archive_one, Outcome, Run};
use crate::inspect::{self, SkipReason, Verdict};
use crate::publish;
use crate::record::{self, Marker, Status};
use crate::wait::Followed;

/// One regular file found by the scan, as it was when found.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// Where it is.
    pub path: PathBuf,
    /// Its path relative to the scanned folder.
    pub rel: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub modified: Option<SystemTime>,
}

impl Candidate {
    /// How people know it: its relative path.
    fn label(&self) -> String {
        self.rel.display().to_string()
    }
}

/// Why a file was not queued.
#[derive(Debug)]
enum NotQueued {
    /// Left alone, for this reason, with details for people.
    Skipped(SkipReason, String),
    /// Could not be queued, for this reason.
    Failed(String),
}

impl NotQueued {
    /// The file went away meanwhile.
    fn vanished() -> NotQueued {
        NotQueued::Skipped(SkipReason::Vanished, String::new())
    }
}

impl Run {
    /// Handles one file: queues it (or, in a dry run, prints its job), or
    /// reports why not.
    pub(super) async fn handle_file(&mut self, file: &Candidate) -> Outcome {
        match self.queue_file(file).await {
            Ok(()) => {
                self.state.summary.queued += 1;
                Outcome::Queued
            }
            Err(NotQueued::Skipped(reason, detail)) => {
                self.skip(&file.rel, reason, &detail);
                Outcome::Skipped
            }
            Err(NotQueued::Failed(message)) => {
                self.fail_file(&file.path, &file.label(), &message);
                Outcome::Failed
            }
        }
    }

    /// The steps for one file, in the order the module doc lists them.
    async fn queue_file(&mut self, file: &Candidate) -> Result<(), NotQueued> {
        let info = self.probe(file).await?;
        let source = self.judge(file, &info)?;
        let keys = self.keys(file)?;
        let sha256 = hash(file).await?;
        let job = self.job(&keys, &sha256, source)?;
        self.look_up(file, &job).await?;
        self.claim(file, &job);
        if self.options.cli.dry_run {
            self.print_job(file, &job);
            return Ok(());
        }
        if let Err(why) = self.send(file, &job, &sha256).await {
            self.state.outputs.remove(&job.output_key);
            return Err(why);
        }
        self.record(file, &job, sha256).await;
        self.queued(file, &job);
        Ok(())
    }

    /// Takes the job's output key for this file for the rest of the run
    /// (given back if sending the job fails), so no other file of the run
    /// is queued to the same output.
    fn claim(&mut self, file: &Candidate, job: &Job) {
        self.state
            .outputs
            .insert(job.output_key.clone(), file.label());
    }

    /// `--dry-run`: prints the job (a JSON line on standard output) instead
    /// of sending it.
    fn print_job(&self, file: &Candidate, job: &Job) {
        self.ui
            .out(&serde_json::to_string(job).expect("a job serializes"));
        self.ui.info(&format!(
            "would queue {} -> {}",
            file.label(),
            job.output_key
        ));
    }

    /// Puts the file where the workers read it and its job on the queue.
    async fn send(&mut self, file: &Candidate, job: &Job, sha256: &str) -> Result<(), NotQueued> {
        self.upload(file, job, sha256).await?;
        unchanged(file)?;
        self.publish(job).await
    }

    /// Probes the file's streams (in a blocking task, within
    /// `--probe-timeout`). A file GStreamer cannot read is skipped as not
    /// media; one that went away, as vanished.
    async fn probe(&self, file: &Candidate) -> Result<MediaInfo, NotQueued> {
        if let Err(e) = std::fs::File::open(&file.path) {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(NotQueued::vanished());
            }
            return Err(NotQueued::Failed(format!("cannot read it: {e}")));
        }
        let path = file.path.clone();
        let timeout = self.options.cli.probe_timeout;
        match tokio::task::spawn_blocking(move || pipeline::probe(&path, timeout)).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(_)) if !file.path.exists() => Err(NotQueued::vanished()),
            Ok(Err(e)) => Err(NotQueued::Skipped(SkipReason::NotMedia, e.message)),
            Err(e) => Err(NotQueued::Failed(format!("probing it crashed: {e}"))),
        }
    }

    /// Whether the probed file needs transcoding to the target format: the
    /// source details for its job, or why it is skipped.
    fn judge(&self, file: &Candidate, info: &MediaInfo) -> Result<SourceInfo, NotQueued> {
        match inspect::judge(&file.path, file.size, info, &self.options.target) {
            Verdict::Transcode(source) => Ok(*source),
            Verdict::Skip(reason, detail) => Err(NotQueued::Skipped(reason, detail)),
        }
    }

    /// The file's input and output keys; fails when another file of this
    /// run took the same output key.
    fn keys(&self, file: &Candidate) -> Result<Keys, NotQueued> {
        let keys = self
            .options
            .keys_for(&file.path, &file.rel)
            .map_err(NotQueued::Failed)?;
        if let Some(other) = self.state.outputs.get(&keys.output) {
            return Err(NotQueued::Failed(format!(
                "its output key {:?} is already taken by {other} in this run",
                keys.output
            )));
        }
        Ok(keys)
    }

    /// The file's job, with the id derived from its content hash and keys,
    /// checked the way the worker will check it.
    fn job(&self, keys: &Keys, sha256: &str, source: SourceInfo) -> Result<Job, NotQueued> {
        let job = Job {
            job_id: inspect::job_id(sha256, &keys.input, &keys.output),
            input_key: keys.input.clone(),
            output_key: keys.output.clone(),
            transcode_options: self.options.cli.transcode_options.clone(),
            preset: self.options.cli.preset.clone(),
            source: Some(source),
            priority: Some(self.options.cli.priority),
            requires: Vec::new(),
            webhook: None,
            outputs: None,
            segment_seconds: self.options.cli.segment_seconds,
        };
        let body = serde_json::to_vec(&job).expect("a job serializes");
        Job::parse(&body).map_err(|e| {
            NotQueued::Failed(format!("the worker would refuse its job: {}", e.message))
        })
    }

    /// Asks the storage's record whether the job was queued or transcoded
    /// already, or its output key belongs to something else (unless
    /// `--force`). A file whose content changed since it was queued goes on.
    async fn look_up(&self, file: &Candidate, job: &Job) -> Result<(), NotQueued> {
        if self.options.cli.force {
            return Ok(());
        }
        let output_key = &job.output_key;
        let status = record::status(&self.storage, &job.job_id, &job.input_key, output_key)
            .await
            .map_err(|e| NotQueued::Failed(format!("cannot check the storage: {e}")))?;
        match status {
            Status::New => Ok(()),
            Status::Changed { previous_job_id } => {
                self.ui.info(&format!(
                    "changed {}: its content differs from when it was queued as {previous_job_id}",
                    file.label()
                ));
                Ok(())
            }
            Status::Queued => Err(NotQueued::Skipped(
                SkipReason::AlreadyQueued,
                job.job_id.clone(),
            )),
            Status::Transcoded => Err(NotQueued::Skipped(
                SkipReason::AlreadyTranscoded,
                output_key.clone(),
            )),
            Status::OutputExists => Err(NotQueued::Skipped(
                SkipReason::OutputExists,
                format!("{output_key}; --force replaces it"),
            )),
            Status::TakenBy { input_key: other } => Err(NotQueued::Failed(format!(
                "its output key {output_key:?} was queued for another input, {other:?}; rename one of them or use --force"
            ))),
        }
    }

    /// Uploads the file to its input key with its job id and content hash
    /// as metadata, unless an earlier run left the same content there. In
    /// place (directory backend) there is nothing to upload. An interrupt
    /// stops the upload.
    async fn upload(&self, file: &Candidate, job: &Job, sha256: &str) -> Result<(), NotQueued> {
        if let Mode::InPlace { .. } = self.options.mode {
            return Ok(());
        }
        let input_key = &job.input_key;
        let uploaded = record::input_is_uploaded(&self.storage, input_key, sha256, file.size).await;
        if let Ok(true) = uploaded {
            return Ok(());
        }
        let metadata = [
            (record::META_JOB_ID.to_string(), job.job_id.clone()),
            (record::META_SHA256.to_string(), sha256.to_string()),
        ];
        let label = file.label();
        let upload = publish::upload(
            &self.storage,
            &self.ui,
            &file.path,
            input_key,
            &metadata,
            file.size,
            &label,
        );
        let result = tokio::select! {
            result = upload => result,
            _ = self.cancel.cancelled() => Err(StorageError::Local("interrupted".into())),
        };
        result.map_err(|e| NotQueued::Failed(format!("upload to {input_key:?} failed: {e}")))
    }

    /// Publishes the job, confirmed, telling the follower (`--wait`) to
    /// expect it first so no event is missed. Notes a lost connection.
    async fn publish(&mut self, job: &Job) -> Result<(), NotQueued> {
        let Some(broker) = self.state.broker.clone() else {
            return Err(NotQueued::Failed("not connected to RabbitMQ".into()));
        };
        if let Some(follower) = &self.state.follower {
            follower.expect(&job.job_id);
        }
        let Err(e) = publish::publish(&broker, &self.options.settings, job).await else {
            return Ok(());
        };
        if let Some(follower) = &self.state.follower {
            follower.forget(&job.job_id);
        }
        if !broker.is_connected() {
            self.state.broker_lost = true;
        }
        Err(NotQueued::Failed(format!("publishing its job failed: {e}")))
    }

    /// Writes the marker that records the queued job beside its output. The
    /// job is queued either way; a failure is a warning.
    async fn record(&self, file: &Candidate, job: &Job, sha256: String) {
        let marker = Marker {
            job_id: job.job_id.clone(),
            input_key: job.input_key.clone(),
            output_key: job.output_key.clone(),
            content_sha256: sha256,
            size: file.size,
            queued_at: now_rfc3339(),
            queued_from: record::origin(&file.path),
        };
        if let Err(e) = record::write_marker(&self.storage, &marker).await {
            self.ui.line(&format!(
                "warning: {} is queued, but recording it failed ({e}); a later run may queue it again",
                file.label()
            ));
        }
    }

    /// Reports the queued file, follows its job with `--wait`, and archives
    /// the original with `--archive`: now, or with `--wait` once its job
    /// completed.
    fn queued(&mut self, file: &Candidate, job: &Job) {
        let label = file.label();
        self.ui.info(&format!(
            "queued  {label} -> {} (job {})",
            job.output_key, job.job_id
        ));
        self.state.followed.push(Followed {
            job_id: job.job_id.clone(),
            label,
        });
        if let Some(dir) = &self.options.archive {
            if self.options.cli.wait {
                self.state
                    .pending_archive
                    .insert(job.job_id.clone(), (file.path.clone(), file.rel.clone()));
            } else if !archive_one(&self.ui, &file.path, dir, &file.rel) {
                self.state.archive_failures += 1;
            }
        }
    }
}

/// The SHA-256 of the file's content (in a blocking task), which the job
/// id is derived from.
async fn hash(file: &Candidate) -> Result<String, NotQueued> {
    let path = file.path.clone();
    match tokio::task::spawn_blocking(move || inspect::content_sha256(&path)).await {
        Ok(Ok(sha256)) => Ok(sha256),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(NotQueued::vanished()),
        Ok(Err(e)) => Err(NotQueued::Failed(format!("cannot read it: {e}"))),
        Err(e) => Err(NotQueued::Failed(format!("hashing it crashed: {e}"))),
    }
}

/// Checks the file still has the size and modification time the scan
/// found, so what was probed, hashed and uploaded is what is queued.
fn unchanged(file: &Candidate) -> Result<(), NotQueued> {
    let now = std::fs::metadata(&file.path).ok();
    let unchanged = now
        .as_ref()
        .is_some_and(|m| m.len() == file.size && m.modified().ok() == file.modified);
    if unchanged {
        Ok(())
    } else {
        Err(NotQueued::Failed(
            "it changed (or vanished) while it was being queued; it is queued on a later run once it stays the same".into(),
        ))
    }
}
