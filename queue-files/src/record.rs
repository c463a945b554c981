//! What was queued already, recorded in the storage itself so that a run
//! from any machine sees it (no local state file).
//!
//! - After a job is published, a small JSON marker is stored under
//!   `<output key>.queued.json`, beside the output: the job id (derived
//!   from the content), the keys, the content hash and size.
//! - The worker stores the output with `x-amz-meta-transcode-job-id` (S3).
//! - Uploaded inputs carry `x-amz-meta-transcode-content-sha256` and
//!   `x-amz-meta-transcode-job-id`, so an input whose upload finished but
//!   whose job was not published is not uploaded a second time.
//!
//! A file is new when there is no marker and no output; already queued
//! when the marker holds the same job id; already transcoded when the
//! output exists and was made for (or queued as) the same job id; changed
//! when the marker holds another id for the same input (it is queued
//! again, and its output replaced).

use std::path::Path;

use serde::{Deserialize, Serialize};
use transcode_worker::storage::{Storage, StorageError, Transferred};

/// Suffix of the marker stored beside each queued output.
pub const MARKER_SUFFIX: &str = ".queued.json";
/// Metadata name of the job id (on inputs queue-files uploads and on outputs the worker stores).
pub const META_JOB_ID: &str = "transcode-job-id";
/// Metadata name of the input's content hash.
pub const META_SHA256: &str = "transcode-content-sha256";

/// The record of one queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The job's id.
    pub job_id: String,
    /// The job's input key.
    pub input_key: String,
    /// The job's output key.
    pub output_key: String,
    /// SHA-256 of the input's content, hex.
    pub content_sha256: String,
    /// Size of the input in bytes.
    pub size: u64,
    /// When it was queued, RFC 3339 UTC.
    pub queued_at: String,
    /// Which machine queued it, and from which local path.
    pub queued_from: String,
}

/// Where a file stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Nothing recorded and no output: queue it.
    New,
    /// The marker holds this job id and there is no output yet.
    Queued,
    /// The output exists and belongs to this job id.
    Transcoded,
    /// An output exists that nothing links to this file.
    OutputExists,
    /// The marker holds another job id for this input (its content changed).
    Changed {
        /// The job id of the earlier content.
        previous_job_id: String,
    },
    /// The marker belongs to another input with the same output key.
    TakenBy {
        /// The other input's key.
        input_key: String,
    },
}

/// The marker key of an output key.
pub fn marker_key(output_key: &str) -> String {
    format!("{output_key}{MARKER_SUFFIX}")
}

/// Reads the marker of `output_key`, if any. An unreadable marker counts
/// as none (with a warning): the file is then queued again, never lost.
pub async fn read_marker(
    storage: &Storage,
    output_key: &str,
) -> Result<Option<Marker>, StorageError> {
    let key = marker_key(output_key);
    let scratch = tempfile::tempdir().map_err(|e| StorageError::Local(e.to_string()))?;
    let local = match storage
        .fetch(&key, scratch.path(), &Transferred::default())
        .await
    {
        Ok(local) => local,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = tokio::fs::read(&local.path)
        .await
        .map_err(|e| StorageError::Local(format!("{}: {e}", local.path.display())))?;
    match serde_json::from_slice::<Marker>(&bytes) {
        Ok(marker) => Ok(Some(marker)),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring an unreadable queue marker");
            Ok(None)
        }
    }
}

/// Stores `marker` beside its output.
pub async fn write_marker(storage: &Storage, marker: &Marker) -> Result<(), StorageError> {
    let scratch = tempfile::tempdir().map_err(|e| StorageError::Local(e.to_string()))?;
    let path = scratch.path().join("marker.json");
    let body = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    tokio::fs::write(&path, body)
        .await
        .map_err(|e| StorageError::Local(format!("{}: {e}", path.display())))?;
    storage
        .store(
            &path,
            &marker_key(&marker.output_key),
            &[(META_JOB_ID.to_string(), marker.job_id.clone())],
            &Transferred::default(),
        )
        .await
}

/// Where the file with `job_id`, `input_key` and `output_key` stands.
pub async fn status(
    storage: &Storage,
    job_id: &str,
    input_key: &str,
    output_key: &str,
) -> Result<Status, StorageError> {
    let output = storage.head(output_key).await?;
    let output_job = output.as_ref().and_then(|o| {
        o.metadata
            .iter()
            .find(|(k, _)| k == META_JOB_ID)
            .map(|(_, v)| v.clone())
    });
    if output_job.as_deref() == Some(job_id) {
        return Ok(Status::Transcoded);
    }
    let marker = read_marker(storage, output_key).await?;
    Ok(match marker {
        Some(m) if m.input_key != input_key => Status::TakenBy {
            input_key: m.input_key,
        },
        Some(m) if m.job_id == job_id => {
            // The directory backend keeps no metadata: an output present
            // with the marker of this job is this job's output.
            if output.is_some() && output_job.is_none() {
                Status::Transcoded
            } else {
                Status::Queued
            }
        }
        Some(m) => Status::Changed {
            previous_job_id: m.job_id,
        },
        None if output.is_some() => Status::OutputExists,
        None => Status::New,
    })
}

/// Whether `input_key` already holds this content (uploaded by an earlier
/// run whose publish did not happen): same size and content hash.
pub async fn input_is_uploaded(
    storage: &Storage,
    input_key: &str,
    sha256: &str,
    size: u64,
) -> Result<bool, StorageError> {
    Ok(match storage.head(input_key).await? {
        Some(info) => {
            info.size == size
                && info
                    .metadata
                    .iter()
                    .any(|(k, v)| k == META_SHA256 && v == sha256)
        }
        None => false,
    })
}

/// `user@host:path` for the marker, so people can tell where a job came from.
pub fn origin(path: &Path) -> String {
    format!(
        "{}:{}",
        gethostname::gethostname().to_string_lossy(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use transcode_worker::storage::directory::DirStore;

    fn marker(job_id: &str, input_key: &str) -> Marker {
        Marker {
            job_id: job_id.into(),
            input_key: input_key.into(),
            output_key: "out/a.mp4".into(),
            content_sha256: "abc".into(),
            size: 3,
            queued_at: "now".into(),
            queued_from: "here".into(),
        }
    }

    #[tokio::test]
    async fn markers_decide_the_status_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::Directory(DirStore::new(dir.path()).unwrap());
        assert_eq!(
            status(&storage, "j1", "a.wmv", "out/a.mp4").await.unwrap(),
            Status::New
        );
        write_marker(&storage, &marker("j1", "a.wmv"))
            .await
            .unwrap();
        assert_eq!(
            read_marker(&storage, "out/a.mp4").await.unwrap(),
            Some(marker("j1", "a.wmv"))
        );
        assert_eq!(
            status(&storage, "j1", "a.wmv", "out/a.mp4").await.unwrap(),
            Status::Queued
        );
        assert_eq!(
            status(&storage, "j2", "a.wmv", "out/a.mp4").await.unwrap(),
            Status::Changed {
                previous_job_id: "j1".into()
            }
        );
        assert_eq!(
            status(&storage, "j3", "a.avi", "out/a.mp4").await.unwrap(),
            Status::TakenBy {
                input_key: "a.wmv".into()
            }
        );
        std::fs::write(dir.path().join("out/a.mp4"), b"video").unwrap();
        assert_eq!(
            status(&storage, "j1", "a.wmv", "out/a.mp4").await.unwrap(),
            Status::Transcoded
        );
        assert_eq!(
            status(&storage, "j9", "b.wmv", "out/b.mp4").await.unwrap(),
            Status::New
        );
        std::fs::write(dir.path().join("out/b.mp4"), b"video").unwrap();
        assert_eq!(
            status(&storage, "j9", "b.wmv", "out/b.mp4").await.unwrap(),
            Status::OutputExists
        );
    }

    #[tokio::test]
    async fn an_unreadable_marker_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/a.mp4.queued.json"), b"{not json").unwrap();
        let storage = Storage::Directory(DirStore::new(dir.path()).unwrap());
        assert_eq!(read_marker(&storage, "out/a.mp4").await.unwrap(), None);
    }
}
