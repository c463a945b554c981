//! One attempt of one job, as a sequence of named steps:
//!
//! 1. **plan**: what each output gets (see [`crate::plan`]) and whether
//!    the keys are allowed; nothing is downloaded for a job that cannot run;
//! 2. **fetch**: look the input up, recognise the outputs an earlier
//!    attempt already stored, check the attempt budget and the free space,
//!    and copy the input into the attempt's scratch folder;
//! 3. **transcode**: run the pipeline process on the outputs not stored
//!    yet, all from one decode; it also verifies them (so a crash while
//!    verifying is isolated too); its positions become progress, and it is
//!    aborted when it stalls;
//! 4. **store**: upload the verified outputs (see [`super::store`]).
//!
//! A redelivered job makes only the outputs its earlier attempts did not
//! store. The scratch folder is removed however the attempt ends.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Worker;
use crate::error::{ErrorKind, JobError};
use crate::job::{Job, Phase};
use crate::pipeline::{Made, Outcome, Output, TranscodeSpec};
use crate::plan::{OutputPlan, Plan};
use crate::progress::Reporter;
use crate::storage::{Storage, Transferred};
use crate::transcoder::ChildEvent;

/// One attempt of a job on this worker.
pub(super) struct Attempt<'a> {
    pub(super) worker: &'a Worker,
    pub(super) job: &'a Job,
    pub(super) number: u32,
    pub(super) reporter: &'a Reporter,
}

/// What a successful attempt stored: every output of the job, in order.
#[derive(Debug)]
pub(super) struct Produced {
    /// Each output.
    pub(super) outputs: Vec<Stored>,
}

/// One stored output.
#[derive(Debug)]
pub(super) struct Stored {
    /// Its key.
    pub(super) key: String,
    /// The bytes stored (every file of an HLS package).
    pub(super) size: u64,
    /// The verified output, when this attempt made it (not when an earlier
    /// attempt had stored it).
    pub(super) made: Option<Made>,
}

/// What the fetch step found.
struct Fetched {
    /// Each output's fingerprint.
    fingerprints: Vec<String>,
    /// The bytes of each output an earlier attempt stored.
    stored: Vec<Option<u64>>,
    /// Where the pipeline reads the input; `None` when every output is
    /// stored already.
    input: Option<PathBuf>,
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
        let fetched = self.fetch(&plan, folder.path()).await?;
        let mut outputs: Vec<Stored> = plan
            .outputs
            .iter()
            .zip(&fetched.stored)
            .map(|(o, stored)| Stored {
                key: o.key.clone(),
                size: stored.unwrap_or(0),
                made: None,
            })
            .collect();
        let Some(input) = fetched.input else {
            return Ok(Produced { outputs });
        };
        let missing: Vec<usize> = (0..plan.outputs.len())
            .filter(|&i| fetched.stored[i].is_none())
            .collect();
        let paths: Vec<PathBuf> = missing
            .iter()
            .map(|i| folder.path().join(format!("output-{i}")))
            .collect();
        let outcome = self.transcode(&plan, &missing, &paths, input).await?;
        let to_store: Vec<ToStore<'_>> = missing
            .iter()
            .zip(&paths)
            .zip(&outcome.outputs)
            .map(|((&i, path), made)| ToStore {
                plan: &plan.outputs[i],
                path,
                made,
                fingerprint: &fetched.fingerprints[i],
            })
            .collect();
        let sizes = self.store(&to_store).await?;
        for ((i, size), made) in missing.into_iter().zip(sizes).zip(outcome.outputs) {
            outputs[i].size = size;
            outputs[i].made = Some(made);
        }
        drop(folder);
        Ok(Produced { outputs })
    }

    /// Step 1: the pipeline, and the keys checked against the storage.
    pub(super) fn plan(&self) -> Result<Plan, JobError> {
        let plan = self.worker.plan_for(self.job)?;
        self.worker.storage.check_key(&self.job.input_key)?;
        for output in &plan.outputs {
            self.worker.storage.check_key(&output.key)?;
        }
        Ok(plan)
    }

    /// Step 2: the input, unless every output is already stored.
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
        let fingerprints: Vec<String> = plan
            .outputs
            .iter()
            .map(|o| o.fingerprint(&job.input_key, expected.size))
            .collect();
        let mut stored = Vec::new();
        for (output, fingerprint) in plan.outputs.iter().zip(&fingerprints) {
            let found = self.already_stored(&output.key, fingerprint).await?;
            if found.is_some() {
                tracing::info!(key = %output.key, "the verified output is already stored (an earlier attempt made it); not making it again");
            }
            stored.push(found);
        }
        if stored.iter().all(Option::is_some) {
            return Ok(Fetched {
                fingerprints,
                stored,
                input: None,
            });
        }
        // Checked only now: a job whose earlier attempt stored its outputs
        // but whose ack was lost (a crash, a broker failover) is done,
        // whatever its delivery count says.
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
            (0, expected.size),
            self.reporter,
            Phase::Downloading,
            w.download_stall_timeout,
        )
        .await?;
        self.worker.fault_point(Phase::Downloading);
        Ok(Fetched {
            fingerprints,
            stored,
            input: Some(input.path),
        })
    }

    /// Step 3: the pipeline process makes and verifies the outputs
    /// `missing` (indexes into the plan) at `paths`, from one decode.
    async fn transcode(
        &self,
        plan: &Plan,
        missing: &[usize],
        paths: &[PathBuf],
        input: PathBuf,
    ) -> Result<Outcome, JobError> {
        let settings = &self.worker.settings;
        let spec = TranscodeSpec {
            input,
            outputs: missing
                .iter()
                .zip(paths)
                .map(|(&i, path)| Output {
                    key: plan.outputs[i].key.clone(),
                    path: path.clone(),
                    target: plan.outputs[i].target.clone(),
                })
                .collect(),
            duration_tolerance_ms: settings.pipeline.duration_tolerance.as_millis() as u64,
            max_input: (
                settings.pipeline.max_width,
                settings.pipeline.max_height,
                settings.pipeline.max_duration.as_millis() as u64,
            ),
        };
        for &i in missing {
            let output = &plan.outputs[i];
            let encodings: Vec<&str> = output
                .target
                .encodings()
                .iter()
                .map(|e| e.video.as_str())
                .collect();
            tracing::info!(key = %output.key, preset = ?output.preset, video = ?encodings, "transcoding");
        }
        self.reporter.update(Phase::Transcoding, 0.0, None).await;
        let outcome = self
            .run_pipeline(&spec, settings.worker.transcode_stall_timeout)
            .await?;
        tracing::info!(
            outputs = outcome.outputs.len(),
            decoders = ?outcome.decoders,
            probe_ms = outcome.timings.probe_ms,
            stream_ms = outcome.timings.stream_ms,
            encoder_flush_ms = outcome.timings.encoder_flush_ms,
            muxer_finish_ms = outcome.timings.muxer_finish_ms,
            stop_ms = outcome.timings.stop_ms,
            verify_ms = outcome.timings.verify_ms,
            "outputs verified"
        );
        let several = plan.outputs.len() > 1;
        let mut left_out = Vec::new();
        for (output, made) in spec.outputs.iter().zip(&outcome.outputs) {
            let m = &made.media;
            tracing::info!(
                key = %output.key,
                duration_ms = ?m.duration_ms,
                height = ?m.video.as_ref().map(|v| v.height),
                audio_tracks = m.audio.len(),
                subtitle_tracks = m.subtitles.len(),
                variants = made.variants.len(),
                "output verified"
            );
            for note in &made.notes {
                tracing::info!(key = %output.key, "{note}");
            }
            for track in &made.tracks_left_out {
                tracing::warn!(key = %output.key, track = %track, "input track not carried");
                left_out.push(if several {
                    format!("{}: {track}", output.key)
                } else {
                    track.clone()
                });
            }
        }
        self.reporter.tracks_left_out(left_out);
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
        let (tx, rx) = mpsc::unbounded_channel();
        drive(
            self.worker.transcoder.run(spec, tx),
            rx,
            self.reporter,
            stall,
        )
        .await
    }
}

/// Awaits `run`, a pipeline process's work, turning the positions it sends
/// on `events` into transcoding progress, and fails it as stalled when its
/// position stops moving for `stall`.
pub(super) async fn drive<T>(
    run: impl Future<Output = Result<T, JobError>>,
    mut events: mpsc::UnboundedReceiver<ChildEvent>,
    reporter: &Reporter,
    stall: Duration,
) -> Result<T, JobError> {
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
            Some(event) = events.recv() => {
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

impl Worker {
    /// Aborts the process after `phase` when fault injection asks for it
    /// (only in builds with the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    pub(super) fn fault_point(&self, phase: Phase) {
        if self.settings.worker.crash_after == Some(phase) {
            tracing::error!(%phase, "fault injection: aborting the worker");
            std::process::abort();
        }
    }

    /// Fault injection is not built in.
    #[cfg(not(feature = "fault-injection"))]
    pub(super) fn fault_point(&self, _phase: Phase) {}
}

/// Awaits a transfer while reporting its bytes as progress of `phase`:
/// `base` bytes of `total` were moved before it (by earlier transfers of
/// the same phase). Fails it as stalled when no byte moves for `stall`.
pub(super) async fn watch_transfer<T>(
    transfer: impl Future<Output = Result<T, crate::storage::StorageError>>,
    counter: &Transferred,
    (base, total): (u64, u64),
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
                reporter.transferred(phase, base + counter.get(), total);
                return result.map_err(JobError::from);
            }
            _ = tick.tick() => {
                let now = counter.get();
                reporter.transferred(phase, base + now, total);
                if now != last {
                    last = now;
                    moved_at = Instant::now();
                } else if moved_at.elapsed() >= stall {
                    return Err(JobError::new(ErrorKind::Stalled, format!(
                        "{} made no progress for {}",
                        if phase == Phase::Uploading { "the upload" } else { "the download" },
                        humantime::format_duration(stall))));
                }
                let fraction = if total > 0 { (base + now) as f64 / total as f64 } else { 0.0 };
                reporter.update(phase, fraction, None).await;
            }
        }
    }
}

/// One output to store: where it is, what it is, what it depends on.
pub(super) struct ToStore<'p> {
    /// Its plan.
    pub(super) plan: &'p OutputPlan,
    /// The file, or the folder of the package, in the scratch folder.
    pub(super) path: &'p Path,
    /// What the pipeline made and verified.
    pub(super) made: &'p Made,
    /// Its fingerprint.
    pub(super) fingerprint: &'p str,
}

impl ToStore<'_> {
    /// Every file to upload, in order: (local path, key).
    pub(super) fn files(&self) -> Vec<(PathBuf, String)> {
        if self.made.files.is_empty() {
            return vec![(self.path.to_path_buf(), self.plan.key.clone())];
        }
        let folder = self
            .plan
            .key
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| format!("{dir}/"));
        self.made
            .files
            .iter()
            .map(|f| (self.path.join(f), format!("{folder}{f}")))
            .collect()
    }
}
