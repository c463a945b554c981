//! One attempt of one job, as a sequence of named steps:
//!
//! 1. **plan**: what pipeline the job gets and whether its keys are
//!    allowed; nothing is downloaded for a job that cannot run;
//! 2. **fetch**: look the input up, recognise an output an earlier attempt
//!    already stored, check the attempt budget and the free space, and
//!    copy the input into the attempt's scratch folder;
//! 3. **transcode**: run the pipeline process, which also verifies its
//!    output (so a crash while verifying is isolated too), turning its
//!    positions into progress and aborting it when it stalls;
//! 4. **store**: upload the verified output with metadata naming the job
//!    and the settings it was made with.
//!
//! The scratch folder is removed however the attempt ends.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Worker;
use crate::error::{ErrorKind, JobError};
use crate::job::{Job, Phase};
use crate::pipeline::{MediaInfo, Outcome, TranscodeSpec};
use crate::plan::Plan;
use crate::progress::Reporter;
use crate::storage::{Storage, Transferred};
use crate::transcoder::ChildEvent;

/// Object metadata naming the job that made an output.
const META_JOB_ID: &str = "transcode-job-id";
/// Object metadata identifying the settings an output was made with.
const META_FINGERPRINT: &str = "transcode-fingerprint";

/// One attempt of a job on this worker.
pub(super) struct Attempt<'a> {
    worker: &'a Worker,
    job: &'a Job,
    number: u32,
    reporter: &'a Reporter,
}

/// What a successful attempt stored.
#[derive(Debug)]
pub(super) struct Produced {
    /// The stored output's size in bytes.
    pub(super) size: u64,
    /// The verified output, when this attempt made it (not when an earlier
    /// attempt had stored it).
    pub(super) media: Option<MediaInfo>,
}

/// What the fetch step found.
enum Fetched {
    /// An earlier attempt stored the verified output (of this size):
    /// nothing to do.
    AlreadyStored(u64),
    /// The input is in the scratch folder (or readable in place).
    Input {
        /// Where the pipeline reads it.
        path: PathBuf,
        /// What the output will depend on, stored with it.
        fingerprint: String,
    },
}

impl<'a> Attempt<'a> {
    /// Attempt `number` of `job`, reporting through `reporter`.
    pub(super) fn new(
        worker: &'a Worker,
        job: &'a Job,
        number: u32,
        reporter: &'a Reporter,
    ) -> Self {
        Attempt {
            worker,
            job,
            number,
            reporter,
        }
    }

    /// Runs the steps in order; the first error ends the attempt.
    pub(super) async fn run(&self) -> Result<Produced, JobError> {
        let plan = self.plan()?;
        let folder = self.worker.scratch.attempt_folder()?;
        let (input, fingerprint) = match self.fetch(&plan, folder.path()).await? {
            Fetched::AlreadyStored(size) => return Ok(Produced { size, media: None }),
            Fetched::Input { path, fingerprint } => (path, fingerprint),
        };
        let output = folder.path().join("output");
        let outcome = self.transcode(&plan, input, &output).await?;
        let size = self.store(&plan, &output, fingerprint).await?;
        drop(folder);
        Ok(Produced {
            size,
            media: Some(outcome.output),
        })
    }

    /// Step 1: the pipeline, and the keys checked against the storage.
    fn plan(&self) -> Result<Plan, JobError> {
        let plan = self.worker.plan_for(self.job)?;
        self.worker.storage.check_key(&self.job.input_key)?;
        self.worker.storage.check_key(&self.job.output_key)?;
        Ok(plan)
    }

    /// Step 2: the input, unless the output is already stored.
    async fn fetch(&self, plan: &Plan, folder: &Path) -> Result<Fetched, JobError> {
        let (w, job, storage) = (&self.worker.settings.worker, self.job, &self.worker.storage);
        self.reporter.update(Phase::Downloading, 0.0, None).await;
        let Some(expected) = storage.head(&job.input_key).await.map_err(JobError::from)? else {
            return Err(JobError::new(
                ErrorKind::InputNotFound,
                format!(
                    "there is no input {:?} in {}",
                    job.input_key,
                    storage.describe()
                ),
            ));
        };
        let fingerprint = plan.fingerprint(job, expected.size);
        if let Some(size) = self.already_stored(&fingerprint).await? {
            tracing::info!(key = %job.output_key, "the verified output of this job is already stored; not transcoding again");
            return Ok(Fetched::AlreadyStored(size));
        }
        // Checked only now: a job whose earlier attempt stored its output but
        // whose ack was lost (a crash, a broker failover) is done, whatever
        // its delivery count says.
        let max = w.max_attempts;
        if self.number > max {
            return Err(JobError::new(
                ErrorKind::AttemptsExhausted,
                format!("all {max} attempts are used up; the last ended without a result (the worker running it crashed, was stopped, or lost the broker)"),
            ));
        }
        let local_copy = matches!(storage, Storage::S3(_));
        self.worker.scratch.check_free_space(
            if local_copy { expected.size } else { 0 },
            w.min_free_space_mb,
        )?;
        let counter = Transferred::default();
        let input = watch_transfer(
            storage.fetch_known(&job.input_key, &expected, folder, &counter),
            &counter,
            expected.size,
            self.reporter,
            Phase::Downloading,
            w.download_stall_timeout,
        )
        .await?;
        self.worker.fault_point(Phase::Downloading);
        Ok(Fetched::Input {
            path: input.path,
            fingerprint,
        })
    }

    /// The size of the output an earlier attempt of the same job with the
    /// same settings stored (it was verified before it was stored), if any.
    async fn already_stored(&self, fingerprint: &str) -> Result<Option<u64>, JobError> {
        let Some(info) = self
            .worker
            .storage
            .head(&self.job.output_key)
            .await
            .map_err(JobError::from)?
        else {
            return Ok(None);
        };
        let meta = |name: &str| {
            info.metadata
                .iter()
                .find(|(k, _)| k == name || k.ends_with(&format!("-{name}")))
                .map(|(_, v)| v.as_str())
        };
        let stored = info.size > 0
            && meta(META_JOB_ID) == Some(self.job.job_id.as_str())
            && meta(META_FINGERPRINT) == Some(fingerprint);
        Ok(stored.then_some(info.size))
    }

    /// Step 3: the pipeline process makes and verifies `output`.
    async fn transcode(
        &self,
        plan: &Plan,
        input: PathBuf,
        output: &Path,
    ) -> Result<Outcome, JobError> {
        let settings = &self.worker.settings;
        let spec = TranscodeSpec {
            input,
            output: output.to_path_buf(),
            video: plan.video.clone(),
            audio: plan.audio.clone(),
            muxer: plan.muxer.to_string(),
            duration_tolerance_ms: settings.pipeline.duration_tolerance.as_millis() as u64,
            max_input: (
                settings.pipeline.max_width,
                settings.pipeline.max_height,
                settings.pipeline.max_duration.as_millis() as u64,
            ),
        };
        tracing::info!(video = %plan.video, muxer = plan.muxer, preset = ?plan.preset, "transcoding");
        self.reporter.update(Phase::Transcoding, 0.0, None).await;
        let outcome = self
            .run_pipeline(&spec, settings.worker.transcode_stall_timeout)
            .await?;
        let out = &outcome.output;
        tracing::info!(
            duration_ms = ?out.duration_ms,
            audio_tracks = out.audio.len(),
            subtitle_tracks = out.subtitles.len(),
            probe_ms = outcome.timings.probe_ms,
            stream_ms = outcome.timings.stream_ms,
            encoder_flush_ms = outcome.timings.encoder_flush_ms,
            muxer_finish_ms = outcome.timings.muxer_finish_ms,
            stop_ms = outcome.timings.stop_ms,
            verify_ms = outcome.timings.verify_ms,
            "output verified"
        );
        for track in &outcome.tracks_left_out {
            tracing::warn!(track = %track, "input track not carried");
        }
        self.reporter
            .tracks_left_out(outcome.tracks_left_out.clone());
        self.worker.fault_point(Phase::Transcoding);
        Ok(outcome)
    }

    /// Runs the pipeline process, turning its positions into progress and
    /// aborting it when its position stops moving for `stall`.
    async fn run_pipeline(
        &self,
        spec: &TranscodeSpec,
        stall: Duration,
    ) -> Result<Outcome, JobError> {
        let reporter = self.reporter;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = self.worker.transcoder.run(spec, tx);
        tokio::pin!(run);
        let started = Instant::now();
        let mut moved_at = Instant::now();
        let mut position = 0u64;
        let mut fraction = 0.0;
        let mut eta = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                result = &mut run => return result,
                Some(event) = rx.recv() => {
                    if let ChildEvent::Position { position_ms, duration_ms } = event {
                        if position_ms > position {
                            position = position_ms;
                            moved_at = Instant::now();
                        }
                        reporter.media_position(position, duration_ms);
                        if let Some(total) = duration_ms.filter(|d| *d > 0) {
                            fraction = (position as f64 / total as f64).min(1.0);
                            if fraction > 0.0 {
                                let elapsed = started.elapsed().as_secs_f64();
                                eta = Some(Duration::from_secs_f64(elapsed / fraction * (1.0 - fraction)));
                            }
                        }
                        reporter.update(Phase::Transcoding, fraction, eta).await;
                    }
                }
                _ = tick.tick() => {
                    if moved_at.elapsed() >= stall {
                        return Err(JobError::new(ErrorKind::Stalled, format!(
                            "the transcode made no progress for {}", humantime::format_duration(stall))));
                    }
                    reporter.update(Phase::Transcoding, fraction, eta).await;
                }
            }
        }
    }

    /// Step 4: uploads the verified output under the job's output key;
    /// returns its size.
    async fn store(
        &self,
        plan: &Plan,
        output: &Path,
        fingerprint: String,
    ) -> Result<u64, JobError> {
        let (w, job) = (&self.worker.settings.worker, self.job);
        // A cancel that came while the transcode ran stops the attempt
        // here at the latest: nothing is stored.
        if self.worker.cancel_requested(&job.job_id).await {
            return Err(JobError::new(
                ErrorKind::Cancelled,
                "cancelled on request before its output was stored",
            ));
        }
        let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        self.reporter.update(Phase::Uploading, 0.0, None).await;
        let mut metadata = vec![
            (META_JOB_ID.to_string(), job.job_id.clone()),
            (META_FINGERPRINT.to_string(), fingerprint),
            ("transcode-worker".to_string(), self.worker.id.clone()),
        ];
        if let Some(preset) = &plan.preset {
            metadata.push(("transcode-preset".to_string(), preset.clone()));
        }
        let counter = Transferred::default();
        watch_transfer(
            self.worker
                .storage
                .store(output, &job.output_key, &metadata, &counter),
            &counter,
            size,
            self.reporter,
            Phase::Uploading,
            w.upload_stall_timeout,
        )
        .await?;
        tracing::info!(bytes = size, key = %job.output_key, "output stored");
        self.worker.fault_point(Phase::Uploading);
        Ok(size)
    }
}

impl Worker {
    /// Aborts the process after `phase` when fault injection asks for it
    /// (only in builds with the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    fn fault_point(&self, phase: Phase) {
        if self.settings.worker.crash_after == Some(phase) {
            tracing::error!(%phase, "fault injection: aborting the worker");
            std::process::abort();
        }
    }

    /// Fault injection is not built in.
    #[cfg(not(feature = "fault-injection"))]
    fn fault_point(&self, _phase: Phase) {}
}

/// Awaits a transfer while reporting its bytes as progress of `phase`;
/// fails it as stalled when no byte moves for `stall`.
async fn watch_transfer<T>(
    transfer: impl Future<Output = Result<T, crate::storage::StorageError>>,
    counter: &Transferred,
    total: u64,
    reporter: &Reporter,
    phase: Phase,
    stall: Duration,
) -> Result<T, JobError> {
    tokio::pin!(transfer);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = counter.get();
    let mut moved_at = Instant::now();
    loop {
        tokio::select! {
            result = &mut transfer => {
                reporter.transferred(phase, counter.get(), total);
                return result.map_err(JobError::from);
            }
            _ = tick.tick() => {
                let now = counter.get();
                reporter.transferred(phase, now, total);
                if now != last {
                    last = now;
                    moved_at = Instant::now();
                } else if moved_at.elapsed() >= stall {
                    return Err(JobError::new(ErrorKind::Stalled, format!(
                        "{} made no progress for {}",
                        if phase == Phase::Uploading { "the upload" } else { "the download" },
                        humantime::format_duration(stall))));
                }
                let fraction = if total > 0 { now as f64 / total as f64 } else { 0.0 };
                reporter.update(phase, fraction, None).await;
            }
        }
    }
}
