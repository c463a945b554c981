//! The input of a segmented job on this worker: fetched once and kept
//! for the job's next parts here, or fetched ahead, while another worker
//! splits the job, when this one has nothing to do.

use super::*;

impl Worker {
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
