//! Joining the stored parts of a segmented job into its output, without
//! encoding: the parts fetched several at a time, joined in the pipeline
//! process, checked against the plan.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, TryStreamExt};

use super::*;

impl Worker {
    /// Joins the stored parts of `plan` into the job's output, verifies
    /// and stores it with the attempt's store step.
    pub(super) async fn join(
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
        let files = self
            .fetch_parts(plan, &objects, records, folder.path())
            .await?;
        let (mut video, mut audio) = (Vec::new(), None);
        for (part, file) in files {
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

    /// Makes the stored parts of `plan` (each with its done record) local
    /// files in `folder`, in their order, `storage.download_concurrency`
    /// of them at a time: the join waits for all of them, and on storage
    /// far away each part one after another would be a round trip and a
    /// single request's speed.
    async fn fetch_parts(
        &self,
        plan: &SegmentPlan,
        objects: &Objects<'_>,
        records: Vec<(Part, Done)>,
        folder: &std::path::Path,
    ) -> Result<Vec<(Part, PartFile)>, JobError> {
        let started = std::time::Instant::now();
        let (count, bytes) = (
            records.len(),
            records.iter().map(|(_, d)| d.size).sum::<u64>(),
        );
        let (in_flight, at_once) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let fetch = |(part, done): (Part, Done)| {
            let (in_flight, at_once) = (&in_flight, &at_once);
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                at_once.fetch_max(now, Ordering::SeqCst);
                let path = self
                    .fetch_part(&objects.part_key(plan, part), folder.join(part.name()))
                    .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let file = PartFile {
                    path: path?,
                    first_ns: done.first_ns,
                    frames: done.frames,
                    end_ns: done.end_ns,
                };
                Ok::<_, JobError>((part, file))
            }
        };
        let files = futures_util::stream::iter(records)
            .map(fetch)
            .buffered(self.settings.storage.download_concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        tracing::info!(
            parts = count,
            bytes,
            at_once = at_once.load(Ordering::SeqCst),
            ms = started.elapsed().as_millis() as u64,
            "fetched the parts to join"
        );
        Ok(files)
    }

    /// Makes the stored part `key` a local file, in `folder` (made here).
    pub(super) async fn fetch_part(&self, key: &str, folder: PathBuf) -> Result<PathBuf, JobError> {
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
}

/// The segments of `plan` holding fewer frames than their length gives
/// (at the input's nominal frame rate), as words: `segment 2 holds 50 of
/// about 100 frames`.
pub(super) fn short_segments(plan: &SegmentPlan, video: &[PartFile]) -> String {
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
