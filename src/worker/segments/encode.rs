//! Encoding one part of a segmented job: a video segment or the audio
//! part, in the pipeline process, into a part file of the output's
//! container.

use super::*;

impl Worker {
    /// The work of a part task: encode and store the part unless it is
    /// stored, and join the job when it was the last.
    pub(super) async fn run_part(
        &self,
        broker: &Broker,
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
        let mut made = plan.made_by(part);
        if self.carries_audio(broker, plan, job, part, &stored).await? {
            made.push(Part::Audio);
        }
        let todo: Vec<Part> = made.into_iter().filter(|p| !stored.contains(p)).collect();
        if todo.is_empty() {
            tracing::info!(
                "{part} is stored already (an earlier attempt made it); not encoding it again"
            );
        } else {
            self.encode_share(plan, job, part, &stored, &todo, reporter)
                .await?;
        }
        let mut stored = objects.stored_parts(plan).await?;
        if stored.len() < plan.parts().len()
            && self.takes_audio_last(broker, plan, part, &stored).await?
        {
            tracing::info!(
                "every video segment is stored and no task carries the audio part: encoding it here"
            );
            self.encode_share(plan, job, part, &stored, &[Part::Audio], reporter)
                .await?;
            stored = objects.stored_parts(plan).await?;
        }
        if stored.len() < plan.parts().len() {
            return Ok(PartEnd::Stored);
        }
        let claim = End::new(part, Ending::Join, None, &self.id);
        let holds = self.claims(broker).claim_end(plan, &claim).await?;
        if holds.token != claim.token {
            tracing::info!(by = %holds.by, "another part ends the job");
            return Ok(PartEnd::Ended);
        }
        tracing::info!("the last part is stored; joining the job");
        self.join(plan, job, attempt, reporter)
            .await
            .map(PartEnd::Joined)
    }

    /// Whether the task of `part` encodes the audio part beside its own
    /// (when the plan has it go by claim and it is not `stored`): this
    /// task holds the claim (an earlier attempt of it made it), or makes
    /// it now because this worker has the input here (it split the job,
    /// or ran an earlier part of it) or reads it whole (then the first
    /// task to start claims it). A worker reading the input by ranges so
    /// leaves the audio part, which reads all of it, to the worker that
    /// split the job, unless that one takes no part before its own second.
    async fn carries_audio(
        &self,
        broker: &Broker,
        plan: &SegmentPlan,
        job: &Job,
        part: Part,
        stored: &[Part],
    ) -> Result<bool, JobError> {
        if !plan.audio_by_claim || stored.contains(&Part::Audio) || part == Part::Audio {
            return Ok(false);
        }
        let objects = self.objects();
        if let Some(claim) = objects.audio_claim(plan).await? {
            return Ok(claim.by == part.name());
        }
        let info = ObjectInfo {
            size: plan.input_size,
            version: plan.input_version.clone(),
            metadata: Vec::new(),
        };
        if self.reads_by_ranges() && !self.inputs.holds(&job.input_key, &info) {
            return Ok(false);
        }
        self.claim_audio(broker, plan, part).await
    }

    /// Claims the audio part for the task of `part`: whether it won.
    async fn claim_audio(
        &self,
        broker: &Broker,
        plan: &SegmentPlan,
        part: Part,
    ) -> Result<bool, JobError> {
        let claim = AudioClaim::new(part, &self.id);
        let holds = self.claims(broker).claim_audio(plan, &claim).await?;
        Ok(holds.by == claim.by)
    }

    /// Whether the task of `part`, its own parts stored, encodes the audio
    /// part now: it is all that is missing and no task has claimed it (no
    /// worker with the input here took a part, and none took a second),
    /// and this task wins the claim.
    async fn takes_audio_last(
        &self,
        broker: &Broker,
        plan: &SegmentPlan,
        part: Part,
        stored: &[Part],
    ) -> Result<bool, JobError> {
        let missing: Vec<Part> = (plan.parts().into_iter())
            .filter(|p| !stored.contains(p))
            .collect();
        let objects = self.objects();
        if !plan.audio_by_claim
            || missing != [Part::Audio]
            || objects.audio_claim(plan).await?.is_some()
        {
            return Ok(false);
        }
        self.claim_audio(broker, plan, part).await
    }

    /// Encodes `todo` for the task of `part`, its progress the share of
    /// the job they are (`stored` done before).
    async fn encode_share(
        &self,
        plan: &SegmentPlan,
        job: &Job,
        part: Part,
        stored: &[Part],
        todo: &[Part],
        reporter: &Reporter,
    ) -> Result<(), JobError> {
        let share = PartShare {
            part: part.name(),
            segment: match part {
                Part::Video(i) => Some(i),
                Part::Audio => None,
            },
            segments: plan.cuts.len() as u32,
            base: stored.iter().map(|p| plan.weight(*p)).sum(),
            weight: todo.iter().map(|p| plan.weight(*p)).sum(),
        };
        let reporter = reporter.clone().for_part(share);
        self.encode_parts(plan, job, todo, &reporter).await
    }

    /// Encodes `parts` of `plan` (one part, or a video segment and the
    /// audio part beside it, in one pipeline process), stores each and
    /// records it as done.
    pub(super) async fn encode_parts(
        &self,
        plan: &SegmentPlan,
        job: &Job,
        parts: &[Part],
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
        let (input, _held) = self.part_input(&job.input_key, &info, reporter).await?;
        let folder = self.scratch.attempt_folder()?;
        let file = |part: Part| {
            folder
                .path()
                .join(format!("{}.{}", part.name(), extension(&plan.muxer)))
        };
        let video = |i: u32| -> Result<VideoSpec, JobError> {
            let cut = plan
                .cut(i)
                .ok_or_else(|| invalid_task(format!("the plan has no segment {i}")))?;
            Ok(VideoSpec {
                input: input.clone(),
                output: file(Part::Video(i)),
                video: plan.video.clone(),
                muxer: plan.muxer.clone(),
                from_ns: cut.from_ns,
                until_ns: cut.until_ns,
                seek_ns: cut.seek_ns,
            })
        };
        let audio = || AudioSpec {
            input: input.clone(),
            output: file(Part::Audio),
            audio: plan.audio.clone(),
            muxer: plan.muxer.clone(),
            tracks: plan.media.audio.len(),
        };
        let request = match parts {
            [Part::Video(i)] => PartRequest::Video(video(*i)?),
            [Part::Audio] => PartRequest::Audio(audio()),
            [Part::Video(i), Part::Audio] => PartRequest::VideoAndAudio {
                video: video(*i)?,
                audio: audio(),
            },
            _ => return Err(unexpected("parts of one task")),
        };
        let names: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        tracing::info!("encoding {}", names.join(" and "));
        let started = std::time::Instant::now();
        reporter.update(Phase::Transcoding, 0.0, None).await;
        let outcome = self.run_part_pipeline(&request, reporter).await?;
        let encode_ms = started.elapsed().as_millis() as u64;
        if let PartOutcome::Video(v) | PartOutcome::VideoAndAudio { video: v, .. } = &outcome {
            tracing::debug!(
                decoded_before = v.decoded_before,
                decoded_after = v.decoded_after,
                "frames decoded outside the segment"
            );
        }
        // What this task fetched by ranges (nothing from a copy): bytes,
        // bytes fetched ahead, milliseconds its reads waited.
        let (fetched, ahead, waited_ms) = match &outcome {
            PartOutcome::Video(v) => (v.fetched, v.fetched_ahead, v.read_wait_ms),
            PartOutcome::Audio(a) => (a.fetched, a.fetched_ahead, a.read_wait_ms),
            PartOutcome::VideoAndAudio {
                video: v, audio: a, ..
            } => (
                v.fetched + a.fetched,
                v.fetched_ahead + a.fetched_ahead,
                v.read_wait_ms + a.read_wait_ms,
            ),
            _ => (0, 0, 0),
        };
        if fetched > 0 {
            tracing::info!(
                bytes = fetched,
                ahead,
                waited_ms,
                "fetched part of the input by ranges"
            );
            reporter.transferred(Phase::Downloading, fetched, info.size);
        }
        // Per part: frames, audio tracks, first and end stream times, ms.
        let made: Vec<(Part, u64, usize, u64, u64, u64)> = match (outcome, parts) {
            (PartOutcome::Video(v), [part]) => {
                vec![(*part, v.frames, 0, v.first_ns, v.end_ns, encode_ms)]
            }
            (PartOutcome::Audio(a), [part]) => {
                vec![(*part, 0, a.tracks, a.first_ns, a.end_ns, encode_ms)]
            }
            (
                PartOutcome::VideoAndAudio {
                    video: v,
                    audio: a,
                    audio_ms,
                },
                [part, audio],
            ) => vec![
                (*part, v.frames, 0, v.first_ns, v.end_ns, encode_ms),
                (*audio, 0, a.tracks, a.first_ns, a.end_ns, audio_ms),
            ],
            _ => return Err(unexpected("part encode")),
        };
        self.fault_point(Phase::Transcoding);
        for (part, frames, tracks, first_ns, end_ns, encode_ms) in made {
            let file = file(part);
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
        }
        Ok(())
    }

    /// Runs `request` in a pipeline process, its positions as progress.
    pub(super) async fn run_part_pipeline(
        &self,
        request: &PartRequest,
        reporter: &Reporter,
    ) -> Result<PartOutcome, JobError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stall = self.settings.worker.transcode_stall_timeout;
        drive(self.transcoder.run_part(request, tx), rx, reporter, stall).await
    }
}
