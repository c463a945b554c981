//! Storing what an attempt made, and recognising what an earlier attempt
//! of the same job stored.
//!
//! Every stored object carries metadata naming the job
//! (`transcode-job-id`, which also keeps `ingest` from taking the farm's
//! own objects for uploads), the settings it was made with
//! (`transcode-fingerprint`), the worker and the preset. A file output
//! made shorter than its preset asks (no upscaling) says so in
//! `transcode-scaled`.
//!
//! An HLS package is stored file by file: each variant's segments, then
//! its playlist, and the master playlist last, so a reader never sees a
//! playlist naming a segment that is not there yet. The master playlist
//! also records the package's size (`transcode-package-bytes`): its
//! presence, with the job's id and fingerprint, is what says the whole
//! package is stored.

use std::path::Path;

use super::attempt::{watch_transfer, Attempt, ToStore};
use crate::error::{ErrorKind, JobError};
use crate::job::Phase;
use crate::storage::Transferred;

/// Object metadata naming the job that made an output.
pub(super) const META_JOB_ID: &str = "transcode-job-id";
/// Object metadata identifying the settings an output was made with.
pub(super) const META_FINGERPRINT: &str = "transcode-fingerprint";
/// Object metadata of a file made shorter than its preset asks.
const META_SCALED: &str = "transcode-scaled";
/// Object metadata of a master playlist: the bytes of its whole package.
const META_PACKAGE_BYTES: &str = "transcode-package-bytes";
/// Object metadata of a master playlist: its variants.
const META_VARIANTS: &str = "transcode-variants";

impl Attempt<'_> {
    /// The bytes stored under `key` by an earlier attempt of this job with
    /// the settings of `fingerprint` (it was verified before it was
    /// stored; for an HLS package, the whole package), if any.
    pub(super) async fn already_stored(
        &self,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<u64>, JobError> {
        let Some(info) = self
            .worker
            .storage
            .head(key)
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
        let size = meta(META_PACKAGE_BYTES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(info.size);
        Ok(stored.then_some(size))
    }

    /// Uploads `outputs`, one after the other, each file with its metadata;
    /// returns the bytes stored of each. A cancel that came while the
    /// transcode ran stops the attempt before anything is stored.
    pub(super) async fn store(&self, outputs: &[ToStore<'_>]) -> Result<Vec<u64>, JobError> {
        let (w, job) = (&self.worker.settings.worker, self.job);
        if self.worker.cancel_requested(&job.job_id).await {
            return Err(JobError::new(
                ErrorKind::Cancelled,
                "cancelled on request before its output was stored",
            ));
        }
        let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let files: Vec<Vec<(std::path::PathBuf, String)>> =
            outputs.iter().map(ToStore::files).collect();
        let total: u64 = files.iter().flatten().map(|(p, _)| size(p)).sum();
        self.reporter.update(Phase::Uploading, 0.0, None).await;
        let mut done = 0;
        let mut sizes = Vec::new();
        for (output, files) in outputs.iter().zip(&files) {
            let package: u64 = files.iter().map(|(p, _)| size(p)).sum();
            let metadata = self.metadata(output);
            for (i, (path, key)) in files.iter().enumerate() {
                self.worker.storage.check_key(key)?;
                let last = i + 1 == files.len();
                let mut metadata = metadata.clone();
                if last && files.len() > 1 {
                    metadata.push((META_PACKAGE_BYTES.to_string(), package.to_string()));
                }
                let counter = Transferred::default();
                watch_transfer(
                    self.worker.storage.store(path, key, &metadata, &counter),
                    &counter,
                    (done, total),
                    self.reporter,
                    Phase::Uploading,
                    w.upload_stall_timeout,
                )
                .await?;
                done += size(path);
            }
            tracing::info!(bytes = package, key = %output.plan.key, files = files.len(), "output stored");
            sizes.push(package);
            self.worker.fault_point(Phase::Uploading);
        }
        Ok(sizes)
    }

    /// The metadata of every file of `output`.
    fn metadata(&self, output: &ToStore<'_>) -> Vec<(String, String)> {
        let mut metadata = vec![
            (META_JOB_ID.to_string(), self.job.job_id.clone()),
            (META_FINGERPRINT.to_string(), output.fingerprint.to_string()),
            ("transcode-worker".to_string(), self.worker.id.clone()),
        ];
        if let Some(preset) = &output.plan.preset {
            metadata.push(("transcode-preset".to_string(), preset.clone()));
        }
        if output.made.variants.is_empty() {
            if let Some(note) = output.made.notes.first() {
                metadata.push((META_SCALED.to_string(), note.clone()));
            }
        } else {
            let variants: Vec<String> = output
                .made
                .variants
                .iter()
                .map(|v| format!("{} {}x{}", v.name, v.width, v.height))
                .collect();
            metadata.push((META_VARIANTS.to_string(), variants.join(", ")));
        }
        metadata
    }
}
