//! The input of a segmented job on this worker: read from S3 by ranges
//! (`segments.fetch_input = "ranges"`), the blocks fetched kept for the
//! job's next parts here; or fetched whole once and kept, or fetched
//! ahead, while another worker splits the job, when this one has nothing
//! to do (`"whole"`, and on storage that answers range requests with the
//! whole object). The worker that split the job has it whole.

use super::*;
use crate::config::FetchInput;
use crate::pipeline::{PartInput, Ranged};

impl Worker {
    /// Where the parts of a job read its input `key` (as `info`
    /// describes it) on this worker, and what holds it here while they
    /// run: by ranges when the settings ask for it and the storage can
    /// presign and serves ranges, else a whole copy ([`Worker::kept_input`]).
    pub(super) async fn part_input(
        &self,
        key: &str,
        info: &ObjectInfo,
        reporter: &Reporter,
    ) -> Result<(PartInput, LocalInput), JobError> {
        // A worker that holds the input (the splitter's copy, or blocks
        // of an earlier part) needs no answer from the storage.
        let by_ranges = self.reads_by_ranges()
            && (self.inputs.holds(key, info) || self.storage_serves_ranges(key).await);
        if by_ranges {
            let w = &self.settings.worker;
            let held = self
                .inputs
                .blocks(&self.scratch, key, info, w.min_free_space_mb)?;
            if held.whole {
                return Ok((PartInput::File(held.path.clone()), held));
            }
            // Valid as long as a part may run (the job's time limit),
            // and at least an hour.
            let secs = w.job_timeout.as_secs().clamp(3600, 7 * 24 * 3600) as u32;
            if let Some(url) = self.storage.presign_get(key, secs).await? {
                let ranged = Ranged {
                    url,
                    size: info.size,
                    etag: info.version.clone(),
                    blocks: held.path.clone(),
                    block_size: self.settings.segments.range_block_kib << 10,
                    read_ahead: self.settings.segments.range_read_ahead,
                };
                return Ok((PartInput::Ranged(ranged), held));
            }
        }
        let held = self.kept_input(key, info, reporter).await?;
        Ok((PartInput::File(held.path.clone()), held))
    }

    /// Whether this worker's parts read their input by ranges (as far as
    /// it knows: until its first such part, it has not asked the storage
    /// whether it serves ranges).
    pub(super) fn reads_by_ranges(&self) -> bool {
        self.settings.segments.fetch_input == FetchInput::Ranges
            && self.storage.presigns()
            && self.serves_ranges.get() != Some(&false)
    }

    /// Whether the storage answers range requests with ranges, asked once
    /// with `key`. A storage that answers with the whole object (a proxy
    /// that drops `Range`) would fail every read of a range source, so the
    /// parts download their input instead. A question that fails is asked
    /// again at the next part; this one reads by ranges, whose reads say
    /// what fails.
    async fn storage_serves_ranges(&self, key: &str) -> bool {
        let asked = self
            .serves_ranges
            .get_or_try_init(|| async {
                let serves = self.storage.serves_ranges(key).await?;
                if !serves {
                    tracing::warn!(
                        "the storage answers range requests with the whole object: parts download their input instead of reading it by ranges"
                    );
                }
                Ok::<_, crate::storage::StorageError>(serves)
            })
            .await;
        match asked {
            Ok(serves) => *serves,
            Err(e) => {
                tracing::debug!(error = %e, "could not ask the storage whether it serves ranges");
                true
            }
        }
    }

    /// The input `key` (as `info` describes it) on this machine: kept from
    /// an earlier part of the job, or fetched and kept for the next.
    pub(super) async fn kept_input(
        &self,
        key: &str,
        info: &ObjectInfo,
        reporter: &Reporter,
    ) -> Result<LocalInput, JobError> {
        let w = &self.settings.worker;
        self.inputs
            .get(
                &self.storage,
                &self.scratch,
                key,
                info,
                Some(reporter),
                w.download_stall_timeout,
                w.min_free_space_mb,
            )
            .await
    }

    /// Fetches the input a worker splitting `job_id` announced, for the
    /// parts of it this worker may take (kept like the input of a part
    /// it ran), unless the input changed since.
    pub(in crate::worker) async fn prefetch(self: Arc<Self>, job_id: String, seen: InputSeen) {
        let span = tracing::info_span!("prefetch", job_id = %job_id);
        async {
            if self.reads_by_ranges() {
                return tracing::debug!("parts read their input by ranges; nothing to fetch ahead");
            }
            let info = match self.storage.head(&seen.key).await {
                Ok(Some(info)) if info.size == seen.size && info.version == seen.version => info,
                Ok(_) => return tracing::debug!(key = %seen.key, "the announced input is gone or changed"),
                Err(e) => return tracing::debug!(error = %e, "cannot look at the announced input"),
            };
            let w = &self.settings.worker;
            let started = std::time::Instant::now();
            let fetched = self
                .inputs
                .get(
                    &self.storage,
                    &self.scratch,
                    &seen.key,
                    &info,
                    None,
                    w.download_stall_timeout,
                    w.min_free_space_mb,
                )
                .await;
            match fetched {
                Ok(_) => tracing::info!(
                    key = %seen.key,
                    ms = started.elapsed().as_millis() as u64,
                    "fetched the input of a job being split, for its parts"
                ),
                Err(e) => tracing::info!(error = %e, "could not fetch the input of a job being split"),
            }
        }
        .instrument(span)
        .await
    }
}
