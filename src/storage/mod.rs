//! Where inputs come from and outputs go: S3-compatible object storage
//! ([`s3`], through rust-s3) or a plain directory ([`directory`], a NAS or
//! NFS mount), behind one small enum.
//!
//! Transfers stream between storage and files in the job's scratch folder,
//! so memory does not grow with the size of a video. Transient failures are
//! retried with exponential backoff and jitter for `storage.retry_for`;
//! a transfer counts its bytes into a [`Transferred`] counter so the worker
//! can report progress and notice a stalled transfer.

pub mod directory;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::config::{Backend, StorageSettings};
use crate::error::{ErrorKind, JobError};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// No object under that key.
    #[error("no object with key {key:?} in {store}")]
    NotFound {
        /// The key asked for.
        key: String,
        /// Which storage, e.g. `bucket videos`.
        store: String,
    },
    /// The key is not acceptable for this storage.
    #[error("key {key:?} is not allowed: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// The storage could not be reached or failed; worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A local file operation failed.
    #[error("local file error: {0}")]
    Local(String),
    /// The storage does not implement a request the worker made (S3
    /// `NotImplemented`, HTTP 501).
    #[error("not supported by the storage: {0}")]
    Unsupported(String),
}

/// Creates of one key asked at once by [`Storage::create_if_absent_flaw`].
pub const PROBE_CREATES: usize = 8;

impl StorageError {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

impl From<StorageError> for JobError {
    fn from(e: StorageError) -> JobError {
        let kind = match &e {
            StorageError::NotFound { .. } => ErrorKind::InputNotFound,
            StorageError::InvalidKey { .. } => ErrorKind::InvalidJob,
            StorageError::Unavailable(_) => ErrorKind::StorageUnavailable,
            StorageError::Local(_) | StorageError::Unsupported(_) => ErrorKind::Internal,
        };
        JobError::new(kind, e.to_string())
    }
}

/// What storage knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// User metadata (S3 `x-amz-meta-*`), lower-case names.
    pub metadata: Vec<(String, String)>,
    /// What changes when the content changes: the S3 ETag (without its
    /// quotes), or on the directory backend the size and modification
    /// time; `None` when the server gives no ETag.
    pub version: Option<String>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Its version as [`ObjectInfo::version`], when the listing gives it
    /// (some S3 servers list no ETags: ask [`Storage::head`]).
    pub version: Option<String>,
    /// When it was last written, as the storage says it (S3's
    /// `LastModified`, or the file's modification time).
    pub modified: String,
}

/// A byte counter shared between a transfer and whoever watches it.
#[derive(Debug, Clone, Default)]
pub struct Transferred(Arc<AtomicU64>);

impl Transferred {
    /// Bytes moved so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A local file holding the input of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInput {
    /// Where the pipeline reads it.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// The configured storage backend.
#[derive(Debug, Clone)]
pub enum Storage {
    /// S3-compatible object storage.
    S3(s3::S3Store),
    /// A directory tree.
    Directory(directory::DirStore),
}

impl Storage {
    /// Opens the backend named by the settings.
    pub fn from_settings(settings: &StorageSettings) -> Result<Storage, StorageError> {
        Ok(match settings.backend {
            Backend::S3 => Storage::S3(s3::S3Store::new(settings)?),
            Backend::Directory => {
                Storage::Directory(directory::DirStore::new(&settings.directory)?)
            }
        })
    }

    /// A short description for logs, e.g. `bucket videos at http://minio:9000`.
    pub fn describe(&self) -> String {
        match self {
            Storage::S3(s) => s.describe(),
            Storage::Directory(d) => d.describe(),
        }
    }

    /// Checks that `key` is acceptable to this backend, without touching
    /// storage (the directory backend confines keys to its root).
    pub fn check_key(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::S3(_) => Ok(()),
            Storage::Directory(d) => d.check_key(key),
        }
    }

    /// Size and metadata of `key`, or `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self {
            Storage::S3(s) => s.head(key).await,
            Storage::Directory(d) => d.head(key).await,
        }
    }

    /// Makes the object `key` available as a local file, downloading it into
    /// `scratch` when needed; counts the bytes into `counter`.
    pub async fn fetch(
        &self,
        key: &str,
        scratch: &Path,
        counter: &Transferred,
    ) -> Result<LocalInput, StorageError> {
        let info = self
            .head(key)
            .await?
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
                store: self.describe(),
            })?;
        self.fetch_known(key, &info, scratch, counter).await
    }

    /// [`Storage::fetch`] for an object that [`Storage::head`] has just
    /// described as `info`, without a second look-up: its size is what an
    /// S3 download must come to, and the directory backend's file size.
    pub async fn fetch_known(
        &self,
        key: &str,
        info: &ObjectInfo,
        scratch: &Path,
        counter: &Transferred,
    ) -> Result<LocalInput, StorageError> {
        match self {
            Storage::S3(s) => s.fetch(key, info, &scratch.join("input"), counter).await,
            Storage::Directory(d) => d.fetch(key, info.size).await,
        }
    }

    /// Whether [`Storage::presign_get`] makes URLs (S3 with credentials).
    pub fn presigns(&self) -> bool {
        matches!(self, Storage::S3(s) if s.presigns())
    }

    /// A URL that reads `key` (by ranges too) without credentials for
    /// `secs` seconds: `None` on the directory backend (read in place) and
    /// with anonymous S3 credentials, which cannot presign.
    pub async fn presign_get(&self, key: &str, secs: u32) -> Result<Option<String>, StorageError> {
        match self {
            Storage::S3(s) => s.presign_get(key, secs).await,
            Storage::Directory(_) => Ok(None),
        }
    }

    /// Whether the storage answers a range request for `key` with the range
    /// rather than the whole object (one small request on S3; the
    /// directory backend reads in place, so `true`).
    pub async fn serves_ranges(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            Storage::S3(s) => s.serves_ranges(key).await,
            Storage::Directory(_) => Ok(true),
        }
    }

    /// Stores the file `src` under `key`, with user `metadata`. The object
    /// appears under `key` only once it is complete.
    pub async fn store(
        &self,
        src: &Path,
        key: &str,
        metadata: &[(String, String)],
        counter: &Transferred,
    ) -> Result<(), StorageError> {
        match self {
            Storage::S3(s) => s.store(src, key, metadata, counter).await,
            Storage::Directory(d) => d.store(src, key, metadata, counter).await,
        }
    }

    /// Stores the small object `bytes` (a record, a marker) under `key`.
    pub async fn put_small(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        match self {
            Storage::S3(s) => s.put_small(key, bytes, "application/json").await,
            Storage::Directory(d) => d.put_small(key, bytes).await,
        }
    }

    /// Stores the small object `bytes` under `key` only if there is no
    /// object there yet: `true` when this call made it. S3 asks with
    /// `If-None-Match: *` (AWS S3 honours it since August 2024; some
    /// servers ignore it, Garage 2.5.0 among them, and some refuse it:
    /// [`Storage::create_if_absent_flaw`] tells); the directory backend
    /// links the file into place, which fails when one is there. Callers
    /// that must know who won read the object back.
    pub async fn put_small_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        match self {
            Storage::S3(s) => s.put_small_new(key, bytes, "application/json").await,
            Storage::Directory(d) => d.put_small_new(key, bytes).await,
        }
    }

    /// Why a create-if-absent ([`Storage::put_small_new`]) on this storage
    /// can have more than one winner, or `None` when it has one: asks
    /// [`PROBE_CREATES`] creates of `key` (a key no one else uses) at
    /// once, counts the winners, and removes the object. A storage that
    /// ignores `If-None-Match` lets them all win; one that refuses it
    /// answers `NotImplemented`.
    pub async fn create_if_absent_flaw(&self, key: &str) -> Result<Option<String>, StorageError> {
        let asks = (0..PROBE_CREATES).map(|_| self.put_small_new(key, b"{}"));
        let answers = futures_util::future::join_all(asks).await;
        if let Err(e) = self.delete(key).await {
            tracing::debug!(error = %e, key, "could not remove the create-if-absent probe");
        }
        let mut won = 0;
        for answer in answers {
            match answer {
                Ok(true) => won += 1,
                Ok(false) => {}
                Err(StorageError::Unsupported(why)) => {
                    return Ok(Some(format!(
                        "the storage refuses a create-if-absent (If-None-Match: *): {why}"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(match won {
            1 => None,
            0 => Some(format!(
                "none of {PROBE_CREATES} create-if-absent requests (If-None-Match: *) made at once for one new key succeeded, \
                 where one should"
            )),
            _ => Some(format!(
                "{won} of {PROBE_CREATES} create-if-absent requests (If-None-Match: *) made at once for one key succeeded, \
                 so the storage ignores the condition"
            )),
        })
    }

    /// The small object `key` (at most `limit` bytes), or `None` when
    /// there is none.
    pub async fn get_small(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::S3(s) => s.get_small(key, limit).await,
            Storage::Directory(d) => d.get_small(key, limit).await,
        }
    }

    /// Up to `max` keys directly under the folder `prefix` (ending in `/`)
    /// that sort after `start_after`, in order: one page of a listing.
    pub async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::S3(s) => s.list_keys(prefix, start_after, max).await,
            Storage::Directory(d) => d.list_keys(prefix, start_after, max).await,
        }
    }

    /// Deletes `key` (no error when there is none).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::S3(s) => s.delete(key).await,
            Storage::Directory(d) => d.delete(key).await,
        }
    }

    /// Removes the folder `prefix` (a key prefix ending in `/`) when it
    /// holds no file, with the empty folders inside it: the directory
    /// backend's folders, which S3 does not have, go with the last object
    /// in them.
    pub async fn remove_empty_folder(&self, prefix: &str) -> Result<(), StorageError> {
        match self {
            Storage::S3(_) => Ok(()),
            Storage::Directory(d) => d.remove_empty_folder(prefix).await,
        }
    }

    /// Aborts unfinished uploads of `key` (S3 multipart uploads cut off by
    /// a cancel; the directory backend leaves no partial file behind).
    pub async fn abort_uploads(&self, key: &str) {
        if let Storage::S3(s) = self {
            s.abort_uploads(key).await;
        }
    }

    /// Every object whose key starts with `prefix`, in no promised order.
    /// S3 lists page by page (retrying transient failures); the directory
    /// backend walks the folder, leaving out hidden files (its own
    /// temporary files and metadata sidecars) and symbolic links.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        match self {
            Storage::S3(s) => s.list(prefix).await,
            Storage::Directory(d) => d.list(prefix).await,
        }
    }

    /// Whether the bucket (or the directory) exists, with one small request;
    /// an error when the storage cannot be reached or refuses the request.
    pub async fn exists(&self) -> Result<bool, StorageError> {
        match self {
            Storage::S3(s) => s.exists().await,
            Storage::Directory(d) => d.exists().await,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, or `retry_for` has been
/// spent in backoff delays between attempts.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    retry_for: Duration,
    op: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .without_max_times()
        .with_total_delay(Some(retry_for));
    op.retry(backoff)
        .when(StorageError::is_transient)
        .notify(|e, delay| tracing::warn!(error = %e, ?delay, "{what} failed, retrying"))
        .await
}

/// An S3 ETag without the quotes S3 puts around it; `None` when empty.
pub fn bare_etag(etag: &str) -> Option<String> {
    let bare = etag.trim().trim_matches('"');
    (!bare.is_empty()).then(|| bare.to_string())
}

/// The MIME type for an output key, from its extension.
pub fn content_type_for(key: &str) -> &'static str {
    match Path::new(key)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("mp4") | Some("m4v") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("mkv") => "video/x-matroska",
        Some("webm") => "video/webm",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        _ => "application/octet-stream",
    }
}
