//! Segmented jobs on the worker (the design is in [`crate::segment`]):
//!
//! - **split** ([`Worker::split`]): in place of a whole-file attempt, the
//!   worker that took the job fetches and scans the input, writes the
//!   plan, queues one part task per part beside the job (confirmed), and
//!   the job is acked;
//! - **part** ([`Worker::handle_part`]): a part task, taken like a job:
//!   the part is encoded (unless an earlier attempt stored it), stored,
//!   and recorded as done;
//! - **join**: the task that stores the last part claims the job's end,
//!   joins the parts without encoding, stores the output with the
//!   attempt's store step, and settles the job through
//!   [`Worker::settle_as`] (`completed`, the record, the webhook); a part
//!   that fails for good claims the end too, and the job's own message
//!   is dead-lettered with the reason. The job's objects are removed once
//!   it has ended.
//!
//! A segmented job has one file output (MP4, MOV, MKV or WebM); a job
//! with several outputs or an HLS package, or whose video branch cannot be
//! cut ([`crate::segment::plan::unsegmentable`]), runs whole.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::attempt::{drive, watch_transfer, Attempt, Produced, Stored, ToStore};
use super::store::META_JOB_ID;
use super::Abort;
use super::Worker;
use crate::broker::{dead_letter_headers, Broker, DeadLetter, Delivery};
use crate::error::{Disposition, ErrorKind, JobError};
use crate::history::JobState;
use crate::job::{Job, Phase};
use crate::pipeline::{AudioSpec, JoinSpec, Made, PartFile, PartOutcome, PartRequest, VideoSpec};
use crate::plan::OutputPlan;
use crate::progress::{PartShare, Reporter};
use crate::rendition::{sizing, Encoding, Target};
use crate::segment::objects::extension;
use crate::segment::plan::{cut, unsegmentable};
use crate::segment::{Done, End, Ending, Objects, Part, PartTask, SegmentPlan};
use crate::storage::{Storage, Transferred};

/// What the split of a job came to.
pub(super) enum Split {
    /// The parts are queued: the job's message can be acked.
    Queued,
    /// The job runs whole, for this reason.
    Whole(String),
}

/// What a part task came to.
enum PartEnd {
    /// The part is stored; other parts are still to come.
    Stored,
    /// The job had ended (joined, failed or cancelled) before this task.
    Ended,
    /// This task joined the job: its output is stored.
    Joined(Produced),
}

impl Worker {
    /// The storage objects of segmented jobs.
    fn objects(&self) -> Objects<'_> {
        Objects::new(&self.storage, &self.settings.segments.prefix)
    }

    /// The segment length `job` is encoded in, if it is segmented: its own
    /// `segment_seconds`, or `segments.seconds` when the worker splits
    /// inputs longer than `segments.auto_above` and the job's
    /// `source.duration_secs` says the input is.
    pub(super) fn segmenting(&self, job: &Job) -> Option<f64> {
        if let Some(seconds) = job.segment_seconds {
            return Some(seconds);
        }
        let s = &self.settings.segments;
        let long = job
            .source
            .as_ref()
            .and_then(|source| source.duration_secs)
            .is_some_and(|d| !s.auto_above.is_zero() && d > s.auto_above.as_secs_f64());
        long.then_some(s.seconds)
    }

    /// Splits `job` (its message `delivery`) into parts of about `seconds`
    /// and queues their tasks; or says why it runs whole.
    pub(super) async fn split(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        attempt: &Attempt<'_>,
        seconds: f64,
    ) -> Result<Split, JobError> {
        let job = attempt.job;
        let reporter = attempt.reporter;
        let plan = attempt.plan()?;
        let [output] = plan.outputs.as_slice() else {
            return Ok(Split::Whole(format!(
                "segment_seconds applies to jobs with one output; this one has {}",
                plan.outputs.len()
            )));
        };
        let Target::File(encoding) = &output.target else {
            return Ok(Split::Whole(
                "segment_seconds does not apply to HLS packages (they are segmented already)"
                    .into(),
            ));
        };
        if let Some(why) = unsegmentable(&encoding.video) {
            return Ok(Split::Whole(why));
        }
        let storage = &self.storage;
        let Some(info) = storage.head(&job.input_key).await? else {
            return Err(JobError::new(
                ErrorKind::InputNotFound,
                format!(
                    "there is no input {:?} in {}",
                    job.input_key,
                    storage.describe()
                ),
            ));
        };
        let fingerprint = output.fingerprint(&job.input_key, info.size);
        if attempt
            .already_stored(&output.key, &fingerprint)
            .await?
            .is_some()
        {
            return Ok(Split::Whole("its output is stored already".into()));
        }
        let objects = self.objects();
        if let Some(earlier) = objects.plan(&job.job_id).await? {
            if earlier.fingerprint == fingerprint && earlier.input_version == info.version {
                // Split before, but the ack was lost: queue again the
                // parts not stored (a part queued twice is encoded once).
                let stored = objects.stored_parts(&earlier).await?;
                let missing: Vec<Part> = earlier
                    .queue_order()
                    .into_iter()
                    .filter(|p| !stored.contains(p))
                    .collect();
                tracing::info!(
                    plan = %earlier.plan_id,
                    parts = missing.len(),
                    "the job was split before; queueing its parts not stored yet"
                );
                self.queue_parts(broker, &earlier, &missing).await?;
                return Ok(Split::Queued);
            }
            tracing::info!(plan = %earlier.plan_id, "removing the objects of an earlier plan of the job made with other settings");
            objects.remove(&job.job_id).await?;
        }
        let w = &self.settings.worker;
        if attempt.number > w.max_attempts {
            return Err(JobError::new(
                ErrorKind::AttemptsExhausted,
                format!("all {} attempts are used up; the last ended without a result (the worker running it crashed, was stopped, or lost the broker)", w.max_attempts),
            ));
        }
        reporter.update(Phase::Downloading, 0.0, None).await;
        let input = self
            .inputs
            .get(
                storage,
                &self.scratch,
                &job.input_key,
                &info,
                reporter,
                w.download_stall_timeout,
                w.min_free_space_mb,
            )
            .await?;
        let p = &self.settings.pipeline;
        let request = PartRequest::Scan {
            input: input.path.clone(),
            max_input: (p.max_width, p.max_height, p.max_duration.as_millis() as u64),
        };
        let scan = match self.run_part_pipeline(&request, reporter).await {
            Ok(PartOutcome::Scanned(scan)) => scan,
            Ok(_) => return Err(unexpected("scan")),
            // Whole, it meets the same problem, or decodes with timestamps
            // its container lacks (AVI gives most packets none).
            Err(e) if e.kind == ErrorKind::UndecodableInput => {
                return Ok(Split::Whole(format!("the input cannot be cut: {e}")))
            }
            Err(e) => return Err(e),
        };
        let cuts = cut(&scan, seconds);
        if cuts.len() < 2 {
            return Ok(Split::Whole(format!(
                "the input ({:.1} s) is too short for two segments of {seconds} s",
                scan.end_ns.saturating_sub(scan.first_ns) as f64 / 1e9
            )));
        }
        let media = scan.media.clone();
        let left_out = media
            .subtitles
            .iter()
            .enumerate()
            .map(|(i, _)| format!("subtitle track {i}: segmented jobs carry video and audio only"))
            .collect();
        let segment_plan = SegmentPlan {
            plan_id: uuid::Uuid::new_v4().simple().to_string(),
            job_id: job.job_id.clone(),
            message: String::from_utf8_lossy(delivery.body()).into_owned(),
            queue: delivery.queue().to_string(),
            attempt: attempt.number,
            history: delivery.history(),
            fingerprint,
            video: scaled_video(encoding, &media),
            audio: encoding.audio.clone(),
            muxer: encoding.muxer.clone(),
            preset: output.preset.clone(),
            input_size: info.size,
            input_version: info.version.clone(),
            media,
            frames: scan.frames,
            first_ns: scan.first_ns,
            end_ns: scan.end_ns,
            frame_ns: scan.frame_ns,
            cuts,
            left_out,
            split_by: self.id.clone(),
            created_at: crate::job::now_rfc3339(),
        };
        objects.write_plan(&segment_plan).await?;
        let parts = segment_plan.queue_order();
        tracing::info!(
            plan = %segment_plan.plan_id,
            segments = segment_plan.cuts.len(),
            parts = parts.len(),
            frames = segment_plan.frames,
            "split the job; queueing its parts"
        );
        self.queue_parts(broker, &segment_plan, &parts).await?;
        Ok(Split::Queued)
    }

    /// Publishes the tasks of `parts` of `plan` to the job's queue, each
    /// confirmed by the broker.
    async fn queue_parts(
        &self,
        broker: &Broker,
        plan: &SegmentPlan,
        parts: &[Part],
    ) -> Result<(), JobError> {
        for &part in parts {
            let body = PartTask::new(plan, part).body();
            crate::broker::until_taken("a part task", || {
                broker.publish_confirmed(&plan.queue, &body, Default::default())
            })
            .await
            .map_err(|e| {
                JobError::new(
                    ErrorKind::BrokerUnavailable,
                    format!("could not queue {part}: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Runs a part task (`delivery`) to the end and settles it.
    pub(super) async fn handle_part(
        self: Arc<Self>,
        broker: Arc<Broker>,
        delivery: Delivery,
        abort: Abort,
        task: PartTask,
        part: Part,
    ) {
        let attempt = delivery.attempt();
        let job_id = task.segment_of.clone();
        let span = tracing::info_span!("job", job_id = %job_id, part = %part.name(), attempt);
        async {
            let reporter = Reporter::new(broker.clone(), &job_id, attempt, &self.id, &self.status);
            let plan = match self.objects().plan(&job_id).await {
                Ok(Some(plan)) if plan.plan_id == task.plan => plan,
                Ok(_) => {
                    tracing::info!("the job of this part task has ended; dropping the task");
                    return delivery.ack().await;
                }
                Err(e) => {
                    let error = JobError::from(e);
                    return self
                        .settle(&broker, &delivery, &reporter, &job_id, None, Err(error))
                        .await;
                }
            };
            let origin = (plan.message.as_bytes(), plan.queue.as_str());
            let job = match plan.job() {
                Ok(job) => job,
                Err(e) => {
                    return self
                        .fail_job(&broker, &delivery, &reporter, &plan, None, part, e)
                        .await
                }
            };
            let limit = self.settings.worker.job_timeout;
            let run = self.run_part(&plan, &job, part, attempt, &reporter);
            let result = tokio::select! {
                r = tokio::time::timeout(limit, run) => r.unwrap_or_else(|_| Err(JobError::new(
                    ErrorKind::Stalled,
                    format!("{part} ran longer than the limit of {}", humantime::format_duration(limit)),
                ))),
                reason = abort.fired() => Err(reason),
                _ = reporter.cancel_requested() => Err(JobError::new(
                    ErrorKind::Cancelled,
                    "cancelled on request while it ran",
                )),
            };
            match result {
                Ok(PartEnd::Stored) | Ok(PartEnd::Ended) => delivery.ack().await,
                Ok(PartEnd::Joined(produced)) => {
                    // Given back when `completed` could not go out: the
                    // task comes again, finds its join claim and the stored
                    // output, and completes the job then.
                    if self.settle_as(&broker, &delivery, &reporter, &job_id, Some(&job), Ok(produced), Some(origin))
                        .await
                    {
                        self.remove_objects(&job_id).await;
                    }
                }
                Err(error) => {
                    let max = self.settings.worker.max_attempts;
                    match error.disposition(attempt, max) {
                        Disposition::DeadLetter | Disposition::Cancel => {
                            self.fail_job(&broker, &delivery, &reporter, &plan, Some(&job), part, error)
                                .await
                        }
                        _ => {
                            self.settle_as(&broker, &delivery, &reporter, &job_id, Some(&job), Err(error), Some(origin))
                                .await;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Ends `plan`'s job after `part` failed for good (or was cancelled):
    /// claims the end, then settles the task as the job (a `failed` event,
    /// the job's message dead-lettered; or `cancelled`), and removes the
    /// job's objects. When another part ended the job first, the task is
    /// only acked.
    #[allow(clippy::too_many_arguments)]
    async fn fail_job(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        plan: &SegmentPlan,
        job: Option<&Job>,
        part: Part,
        error: JobError,
    ) {
        let objects = self.objects();
        let ending = if error.kind == ErrorKind::Cancelled {
            Ending::Cancel
        } else {
            Ending::Fail
        };
        let claim = End::new(part, ending, Some(error.clone()), &self.id);
        let holds = match objects.claim_end(plan, &claim).await {
            Ok(holds) => holds,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the end of the job; giving the part task back");
                return delivery.give_back().await;
            }
        };
        let mine = holds.token == claim.token || holds.by == claim.by;
        if !mine {
            tracing::info!(by = %holds.by, "the job was ended by another part; dropping this one's failure: {error}");
            return delivery.ack().await;
        }
        if holds.token != claim.token {
            // This part's own join claim, ending otherwise.
            if let Err(e) = objects.rewrite_end(plan, &claim).await {
                tracing::warn!(error = %e, "cannot rewrite the end claim");
            }
        }
        let error = JobError::new(error.kind, format!("{part}: {}", error.message));
        let origin = (plan.message.as_bytes(), plan.queue.as_str());
        let ended = self
            .settle_as(
                broker,
                delivery,
                reporter,
                &plan.job_id,
                job,
                Err(error),
                Some(origin),
            )
            .await;
        if ended {
            self.remove_objects(&plan.job_id).await;
        }
    }

    /// Ends the segmented jobs none of whose objects changed for
    /// `segments.abandon_after` (every worker that had one of their part
    /// tasks died and the broker lost the tasks, or the join's worker died
    /// for good): a job that never ended fails (its `failed` event, its
    /// record, its webhook, its message dead-lettered as `stalled`), and
    /// the objects of every such job are removed. A job is ended once
    /// however many workers look at the same time: the end claim decides.
    pub(super) async fn clean_abandoned(&self, broker: &Arc<Broker>) {
        let after = self.settings.segments.abandon_after;
        let objects = self.objects();
        let found = match objects.abandoned(after).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for abandoned segmented jobs");
                return;
            }
        };
        for abandoned in found {
            let job_id = abandoned.job_id.as_str();
            let span = tracing::info_span!("job", job_id = %job_id);
            async {
                if let Some(plan) = &abandoned.plan {
                    let error = JobError::new(
                        ErrorKind::Stalled,
                        format!(
                            "no part of the segmented job moved for {}: its part tasks were lost",
                            humantime::format_duration(after)
                        ),
                    );
                    let claim = End {
                        by: "abandoned".into(),
                        token: uuid::Uuid::new_v4().simple().to_string(),
                        ending: Ending::Fail,
                        error: Some(error.clone()),
                        worker: self.id.clone(),
                        at: crate::job::now_rfc3339(),
                    };
                    match objects.claim_end(plan, &claim).await {
                        Ok(holds) if holds.token == claim.token => {
                            tracing::warn!("{}", error.message);
                            self.abandon(broker, plan, &error).await;
                        }
                        Ok(holds) => tracing::warn!(
                            by = %holds.by,
                            "the abandoned job was being ended, but its objects were left"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot claim the end of an abandoned job");
                            return;
                        }
                    }
                }
                self.remove_objects(job_id).await;
            }
            .instrument(span)
            .await;
        }
    }

    /// Fails the abandoned job of `plan` for `error`.
    async fn abandon(&self, broker: &Arc<Broker>, plan: &SegmentPlan, error: &JobError) {
        let reporter = Reporter::new(
            broker.clone(),
            &plan.job_id,
            plan.attempt,
            &self.id,
            &self.status,
        );
        if let Err(e) = reporter.failed(error, false).await {
            tracing::warn!(error = %e, "could not publish the failed event");
        }
        self.record(&plan.job_id, |r| {
            r.mark(
                JobState::Dead,
                Some(plan.attempt),
                Some(&self.id),
                format!(
                    "failed for good; in the dead-letter queue: {}",
                    error.message
                ),
            );
        })
        .await;
        if let Ok(job) = plan.job() {
            crate::webhook::notify(broker, &job, crate::webhook::Ended::Failed(error)).await;
        }
        let why = DeadLetter {
            job_id: &plan.job_id,
            error,
            worker: &self.id,
        };
        let headers = dead_letter_headers(&why, plan.attempt, plan.history.clone(), &plan.queue);
        let dead_letter = || broker.dead_letter(plan.message.as_bytes(), headers.clone());
        if let Err(e) = crate::broker::until_taken("the dead letter", dead_letter).await {
            tracing::error!(error = %e, "could not dead-letter the abandoned job");
        }
    }

    /// Removes a job's segment objects (logged when it cannot: the
    /// pruning pass finds them later), and the copy of its input this
    /// worker kept.
    async fn remove_objects(&self, job_id: &str) {
        if let Ok(Some(plan)) = self.objects().plan(job_id).await {
            if let Ok(job) = plan.job() {
                self.inputs.forget(&job.input_key);
            }
        }
        match self.objects().remove(job_id).await {
            Ok(n) => tracing::info!(objects = n, "removed the job's segment objects"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the job's segment objects"),
        }
    }

    /// The work of a part task: encode and store the part unless it is
    /// stored, and join the job when it was the last.
    async fn run_part(
        &self,
        plan: &SegmentPlan,
        job: &Job,
        part: Part,
        attempt: u32,
        reporter: &Reporter,
    ) -> Result<PartEnd, JobError> {
        let objects = self.objects();
        let own_join = |end: &End| end.by == part.name() && end.ending == Ending::Join;
        match objects.end(plan).await? {
            Some(end) if own_join(&end) => {
                tracing::info!("this part claimed the job's join before; joining again");
                return self
                    .join(plan, job, attempt, reporter)
                    .await
                    .map(PartEnd::Joined);
            }
            Some(end) => {
                tracing::info!(by = %end.by, ending = ?end.ending, "the job has ended");
                return Ok(PartEnd::Ended);
            }
            None => {}
        }
        if self.cancel_requested(&plan.job_id).await {
            return Err(JobError::new(
                ErrorKind::Cancelled,
                "cancelled on request before this part started",
            ));
        }
        let stored = objects.stored_parts(plan).await?;
        if stored.contains(&part) {
            tracing::info!(
                "{part} is stored already (an earlier attempt made it); not encoding it again"
            );
        } else {
            let base: f64 = stored.iter().map(|p| plan.weight(*p)).sum();
            let share = PartShare {
                part: part.name(),
                segment: match part {
                    Part::Video(i) => Some(i),
                    Part::Audio => None,
                },
                segments: plan.cuts.len() as u32,
                base,
                weight: plan.weight(part),
            };
            let reporter = reporter.clone().for_part(share);
            self.encode_part(plan, job, part, &reporter).await?;
        }
        let stored = objects.stored_parts(plan).await?;
        if stored.len() < plan.parts().len() {
            return Ok(PartEnd::Stored);
        }
        let claim = End::new(part, Ending::Join, None, &self.id);
        let holds = objects.claim_end(plan, &claim).await?;
        if holds.token != claim.token {
            tracing::info!(by = %holds.by, "another part ends the job");
            return Ok(PartEnd::Ended);
        }
        tracing::info!("the last part is stored; joining the job");
        self.join(plan, job, attempt, reporter)
            .await
            .map(PartEnd::Joined)
    }

    /// Encodes `part` of `plan`, stores it and records it as done.
    async fn encode_part(
        &self,
        plan: &SegmentPlan,
        job: &Job,
        part: Part,
        reporter: &Reporter,
    ) -> Result<(), JobError> {
        let (w, storage) = (&self.settings.worker, &self.storage);
        reporter.update(Phase::Downloading, 0.0, None).await;
        let info = storage.head(&job.input_key).await?;
        let info = info.filter(|i| i.size == plan.input_size && i.version == plan.input_version);
        let Some(info) = info else {
            return Err(JobError::new(
                ErrorKind::InputNotFound,
                format!(
                    "the input {:?} is gone or changed since the job was split",
                    job.input_key
                ),
            ));
        };
        let input = self
            .inputs
            .get(
                storage,
                &self.scratch,
                &job.input_key,
                &info,
                reporter,
                w.download_stall_timeout,
                w.min_free_space_mb,
            )
            .await?;
        let folder = self.scratch.attempt_folder()?;
        let file = folder
            .path()
            .join(format!("{}.{}", part.name(), extension(&plan.muxer)));
        let request = match part {
            Part::Video(i) => {
                let cut = plan
                    .cut(i)
                    .ok_or_else(|| invalid_task(format!("the plan has no {part}")))?;
                PartRequest::Video(VideoSpec {
                    input: input.path.clone(),
                    output: file.clone(),
                    video: plan.video.clone(),
                    muxer: plan.muxer.clone(),
                    from_ns: cut.from_ns,
                    until_ns: cut.until_ns,
                    seek_ns: cut.seek_ns,
                })
            }
            Part::Audio => PartRequest::Audio(AudioSpec {
                input: input.path.clone(),
                output: file.clone(),
                audio: plan.audio.clone(),
                muxer: plan.muxer.clone(),
                tracks: plan.media.audio.len(),
            }),
        };
        tracing::info!("encoding {part}");
        let started = std::time::Instant::now();
        reporter.update(Phase::Transcoding, 0.0, None).await;
        let outcome = self.run_part_pipeline(&request, reporter).await?;
        let encode_ms = started.elapsed().as_millis() as u64;
        let (frames, tracks, first_ns, end_ns) = match outcome {
            PartOutcome::Video(v) => (v.frames, 0, v.first_ns, v.end_ns),
            PartOutcome::Audio(a) => (0, a.tracks, a.first_ns, a.end_ns),
            _ => return Err(unexpected("part encode")),
        };
        self.fault_point(Phase::Transcoding);
        let key = self.objects().part_key(plan, part);
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let metadata = vec![
            (META_JOB_ID.to_string(), plan.job_id.clone()),
            ("transcode-worker".to_string(), self.id.clone()),
        ];
        reporter.update(Phase::Uploading, 0.0, None).await;
        let counter = Transferred::default();
        watch_transfer(
            storage.store(&file, &key, &metadata, &counter),
            &counter,
            (0, size),
            reporter,
            Phase::Uploading,
            w.upload_stall_timeout,
        )
        .await?;
        let done = Done {
            part: part.name(),
            worker: self.id.clone(),
            frames,
            tracks,
            first_ns,
            end_ns,
            size,
            encode_ms,
            at: crate::job::now_rfc3339(),
        };
        self.objects().write_done(plan, part, &done).await?;
        tracing::info!(
            part = %part.name(),
            frames,
            first_s = first_ns as f64 / 1e9,
            bytes = size,
            encode_ms,
            "part stored"
        );
        Ok(())
    }

    /// Joins the stored parts of `plan` into the job's output, verifies
    /// and stores it with the attempt's store step.
    async fn join(
        &self,
        plan: &SegmentPlan,
        job: &Job,
        attempt: u32,
        reporter: &Reporter,
    ) -> Result<Produced, JobError> {
        let output = OutputPlan {
            key: job.output_key.clone(),
            preset: plan.preset.clone(),
            target: Target::File(Encoding {
                video: plan.video.clone(),
                audio: plan.audio.clone(),
                muxer: plan.muxer.clone(),
                max_height: None,
                upscale: false,
            }),
        };
        let joiner = Attempt::new(self, job, attempt, reporter);
        self.storage.check_key(&output.key)?;
        if let Some(size) = joiner
            .already_stored(&output.key, &plan.fingerprint)
            .await?
        {
            tracing::info!(key = %output.key, "the joined output is stored already");
            return Ok(Produced {
                outputs: vec![Stored {
                    key: output.key,
                    size,
                    made: None,
                }],
            });
        }
        let objects = self.objects();
        let mut records = Vec::new();
        for part in plan.parts() {
            let done = objects.done(plan, part).await?.ok_or_else(|| {
                JobError::new(ErrorKind::Internal, format!("{part} has no done record"))
            })?;
            records.push((part, done));
        }
        // The parts (downloaded from S3), then the output, about as large.
        let parts_size: u64 = records.iter().map(|(_, d)| d.size).sum();
        let downloaded = matches!(self.storage, Storage::S3(_));
        self.scratch.check_free_space(
            if downloaded {
                parts_size * 2
            } else {
                parts_size
            },
            self.settings.worker.min_free_space_mb,
        )?;
        let folder = self.scratch.attempt_folder()?;
        let mut video = Vec::new();
        let mut audio = None;
        for (part, done) in records {
            let path = self
                .fetch_part(
                    &objects.part_key(plan, part),
                    folder.path().join(part.name()),
                )
                .await?;
            let file = PartFile {
                path,
                first_ns: done.first_ns,
                frames: done.frames,
                end_ns: done.end_ns,
            };
            match part {
                Part::Video(_) => video.push(file),
                Part::Audio => audio = Some(file),
            }
        }
        let frames: u64 = video.iter().map(|p| p.frames).sum();
        if frames != plan.frames {
            return Err(JobError::new(
                ErrorKind::UndecodableInput,
                format!(
                    "the segments hold {frames} frames but the input has {}: frames of the input could not be decoded ({})",
                    plan.frames,
                    short_segments(plan, &video)
                ),
            ));
        }
        let path = folder
            .path()
            .join(format!("output.{}", extension(&plan.muxer)));
        let spec = JoinSpec {
            video,
            audio,
            audio_tracks: plan.media.audio.len(),
            output: path.clone(),
            muxer: plan.muxer.clone(),
            input: plan.media.clone(),
            frame_ns: plan.frame_ns,
            duration_tolerance_ms: self.settings.pipeline.duration_tolerance.as_millis() as u64,
        };
        let PartOutcome::Joined(joined) = self
            .run_part_pipeline(&PartRequest::Join(spec), reporter)
            .await?
        else {
            return Err(unexpected("join"));
        };
        tracing::info!(
            frames = joined.frames,
            join_ms = joined.join_ms,
            "joined and verified"
        );
        reporter.tracks_left_out(plan.left_out.clone());
        let made = Made {
            media: joined.media,
            tracks_left_out: plan.left_out.clone(),
            ..Default::default()
        };
        let sizes = joiner
            .store(&[ToStore {
                plan: &output,
                path: &path,
                made: &made,
                fingerprint: &plan.fingerprint,
            }])
            .await?;
        Ok(Produced {
            outputs: vec![Stored {
                key: output.key,
                size: sizes.first().copied().unwrap_or(0),
                made: Some(made),
            }],
        })
    }

    /// Makes the stored part `key` a local file, in `folder` (made here).
    async fn fetch_part(&self, key: &str, folder: PathBuf) -> Result<PathBuf, JobError> {
        let info = self.storage.head(key).await?.ok_or_else(|| {
            JobError::new(
                ErrorKind::Internal,
                format!("the stored part {key:?} is gone"),
            )
        })?;
        if matches!(self.storage, Storage::S3(_)) {
            std::fs::create_dir_all(&folder).map_err(|e| {
                JobError::new(
                    ErrorKind::Internal,
                    format!("cannot make {}: {e}", folder.display()),
                )
            })?;
        }
        let local = self
            .storage
            .fetch_known(key, &info, &folder, &Transferred::default())
            .await?;
        Ok(local.path)
    }

    /// Runs `request` in a pipeline process, its positions as progress.
    async fn run_part_pipeline(
        &self,
        request: &PartRequest,
        reporter: &Reporter,
    ) -> Result<PartOutcome, JobError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stall = self.settings.worker.transcode_stall_timeout;
        drive(self.transcoder.run_part(request, tx), rx, reporter, stall).await
    }
}

/// The video branch of a segmented job: the encoding's, after the scaler
/// when its preset scales the input (as the whole-file pipeline does).
fn scaled_video(encoding: &Encoding, media: &crate::pipeline::MediaInfo) -> String {
    let source = media.video.as_ref();
    let sized = sizing(
        encoding,
        source.map_or(0, |v| v.width),
        source.map_or(0, |v| v.height),
        source.and_then(|v| v.pixel_aspect_ratio).unwrap_or((1, 1)),
    );
    match sized.scale_to {
        Some((width, height)) => format!(
            "videoconvert ! videoscale ! video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 ! {}",
            encoding.video
        ),
        None => encoding.video.clone(),
    }
}

/// The segments of `plan` holding fewer frames than their length gives
/// (at the input's nominal frame rate), as words: `segment 2 holds 50 of
/// about 100 frames`.
fn short_segments(plan: &SegmentPlan, video: &[PartFile]) -> String {
    let frame = plan.frame_ns.max(1);
    let short: Vec<String> = plan
        .cuts
        .iter()
        .zip(video)
        .enumerate()
        .filter_map(|(i, (cut, file))| {
            let length = cut.length_ns(plan.first_ns, plan.end_ns);
            let about = (length + frame / 2) / frame;
            (file.frames < about)
                .then(|| format!("segment {i} holds {} of about {about} frames", file.frames))
        })
        .collect();
    if short.is_empty() {
        "no segment is short of its length".into()
    } else {
        short.join(", ")
    }
}

fn unexpected(what: &str) -> JobError {
    JobError::new(
        ErrorKind::Internal,
        format!("the pipeline process answered the {what} with something else"),
    )
}

fn invalid_task(message: String) -> JobError {
    JobError::new(ErrorKind::InvalidJob, message)
}
