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
//! The part steps are in `encode.rs`, the join in `join.rs`, how the
//! claims are settled in `claims.rs`, the input
//! a worker keeps for its parts (or fetches ahead) in `input.rs`, and the
//! clean-up of jobs whose tasks were lost in `cleanup.rs`.
//!
//! A segmented job has one file output (MP4, MOV, MKV or WebM); a job
//! with several outputs or an HLS package, or whose video branch cannot be
//! cut ([`crate::segment::plan::unsegmentable`]), runs whole.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::attempt::{drive, watch_transfer, Attempt, Produced, Stored, ToStore};
use super::placement::Placement;
use super::store::META_JOB_ID;
use super::Abort;
use super::Worker;
use crate::broker::{dead_letter_headers, Broker, DeadLetter, Delivery};
use crate::control::InputSeen;
use crate::error::{Disposition, ErrorKind, JobError};
use crate::history::JobState;
use crate::job::{Job, Phase};
use crate::pipeline::{AudioSpec, JoinSpec, Made, PartFile, PartOutcome, PartRequest, VideoSpec};
use crate::plan::OutputPlan;
use crate::progress::{PartShare, Reporter};
use crate::rendition::{sizing, Encoding, Target};
use crate::segment::input::LocalInput;
use crate::segment::objects::extension;
use crate::segment::plan::{cut, unsegmentable};
use crate::segment::{AudioClaim, Done, End, Ending, Objects, Part, PartTask, SegmentPlan};
use crate::storage::{ObjectInfo, Storage, Transferred};

mod claims;
mod cleanup;
mod encode;
mod input;
mod join;

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
        let claims_on_broker = match self.claims_flaw().await? {
            Some(why) => {
                tracing::info!("the job's claims are settled on the broker: {why}");
                true
            }
            None => false,
        };
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
                    .filter(|&task| earlier.made_by(task).iter().any(|p| !stored.contains(p)))
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
        if !matches!(storage, Storage::Directory(_)) {
            // Idle workers fetch the input now, beside this one, rather
            // than once their first part of the job comes.
            let seen = InputSeen {
                key: job.input_key.clone(),
                size: info.size,
                version: info.version.clone(),
            };
            if let Err(e) = crate::control::announce_input(broker, &job.job_id, seen).await {
                tracing::debug!(error = %e, "could not announce the input to the idle workers");
            }
        }
        reporter.update(Phase::Downloading, 0.0, None).await;
        let input = self.kept_input(&job.input_key, &info, reporter).await?;
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
        let mut segment_plan = SegmentPlan {
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
            audio_beside: None,
            audio_by_claim: false,
            claims_on_broker,
            left_out,
            split_by: self.id.clone(),
            created_at: crate::job::now_rfc3339(),
        };
        segment_plan.carry_audio_by_claim();
        objects.write_plan(&segment_plan).await?;
        // The parts' events go out in order through the job's mark; a
        // job whose split is redone (its ack lost) keeps the mark it has.
        // It outlives the search for abandoned jobs (hourly, for jobs
        // unchanged for `abandon_after`), which removes it. Without a mark
        // (the broker refused it) the events go out as they are.
        let expires = self.settings.segments.abandon_after * 2 + Duration::from_secs(3600);
        if let Err(e) = broker
            .start_mark(&job.job_id, reporter.percent(), expires)
            .await
        {
            tracing::warn!(error = %e, "no progress mark for the job: its parts' events may take its percentage back");
        }
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
        mut delivery: Delivery,
        abort: Abort,
        task: PartTask,
        part: Part,
    ) {
        let attempt = delivery.attempt();
        let job_id = task.segment_of.clone();
        let span = tracing::info_span!("job", job_id = %job_id, part = %part.name(), attempt);
        async {
            let reporter = Reporter::new(broker.clone(), &job_id, attempt, &self.id, &self.status)
                .in_order();
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
            match self.place_part(&plan, &job, &mut delivery).await {
                Placement::Run => {}
                Placement::Wait(waiting) => {
                    return self
                        .wait_elsewhere(&broker, &delivery, &reporter, &waiting, Some(part))
                        .await
                }
                Placement::GiveUp(error) => {
                    return self
                        .fail_job(&broker, &delivery, &reporter, &plan, Some(&job), part, error)
                        .await
                }
            }
            let limit = self.settings.worker.job_timeout;
            let run = self.run_part(&broker, &plan, &job, part, attempt, &reporter);
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
                        self.remove_objects(&broker, &job_id).await;
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
        let objects = self.claims(broker);
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
            self.remove_objects(broker, &plan.job_id).await;
        }
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
