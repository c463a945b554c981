//! What `ingest` has made already, recorded in the storage itself so that
//! a restart, another machine or a second `ingest` sees it (no local state
//! file): after the broker confirms a job, a small JSON marker is stored
//! under `_transcode/ingest/<job id>.json`. Before a job is published its
//! marker is looked up; a job with a marker is not made again.
//!
//! `_transcode/` is the farm's own prefix: `ingest` never treats an object
//! under it as an input, whatever its rules say.

use serde::{Deserialize, Serialize};

use super::INTERNAL_PREFIX;
use crate::storage::{Storage, StorageError};

/// The folder of the markers.
pub fn prefix() -> String {
    format!("{INTERNAL_PREFIX}ingest/")
}

/// The record of one job made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The job's id.
    pub job_id: String,
    /// The bucket of the input (`directory` on the directory backend).
    pub bucket: String,
    /// The input's key.
    pub input_key: String,
    /// The input's version the job was made for (ETag, or size and time).
    pub version: String,
    /// The keys of the job's outputs.
    pub output_keys: Vec<String>,
    /// The number of the rule that made it.
    pub rule: usize,
    /// When the broker confirmed the job, RFC 3339 UTC.
    pub made_at: String,
    /// Which `ingest` made it (`host:pid`).
    pub made_by: String,
}

/// The key of the marker of `job_id`.
pub fn marker_key(job_id: &str) -> String {
    format!("{}{job_id}.json", prefix())
}

/// Whether the job `job_id` was made already.
pub async fn is_made(storage: &Storage, job_id: &str) -> Result<bool, StorageError> {
    Ok(storage.head(&marker_key(job_id)).await?.is_some())
}

/// Stores `marker`.
pub async fn write(storage: &Storage, marker: &Marker) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    storage.put_small(&marker_key(&marker.job_id), &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_marker_is_found_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            Storage::Directory(crate::storage::directory::DirStore::new(dir.path()).unwrap());
        assert!(!is_made(&storage, "ingest-1").await.unwrap());
        let marker = Marker {
            job_id: "ingest-1".into(),
            bucket: "directory".into(),
            input_key: "up/a.mov".into(),
            version: "5-17".into(),
            output_keys: vec!["r/a.mp4".into()],
            rule: 1,
            made_at: crate::job::now_rfc3339(),
            made_by: "host:1".into(),
        };
        write(&storage, &marker).await.unwrap();
        assert!(is_made(&storage, "ingest-1").await.unwrap());
        assert!(!is_made(&storage, "ingest-2").await.unwrap());
        let stored = std::fs::read(dir.path().join("_transcode/ingest/ingest-1.json")).unwrap();
        assert_eq!(serde_json::from_slice::<Marker>(&stored).unwrap(), marker);
    }
}
