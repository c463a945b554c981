//! S3-compatible object storage (MinIO, Garage, AWS) through rust-s3.
//!
//! Downloads stream into a file and are checked against the object's size,
//! so a truncated body is never handed to GStreamer; a large one comes in
//! parts of one version of the object, several at a time (`download.rs`).
//! Uploads stream from the file, as a multipart upload for anything over
//! one part ([`upload::PART_SIZE`]), which S3 makes visible under the key
//! only when it completes. Transfers
//! have no whole-request timeout (rust-s3's default would cut any transfer
//! longer than a minute); the worker watches their byte counters instead.
//!
//! rust-s3 signs every request, but it sends a request body only from
//! memory: its uploads read each 8 MiB part into a buffer and copy it once
//! more into the request, so two parts in flight cost the worker some 35 MB
//! for as long as a large output uploads. So the body of each upload
//! request (a whole small output, or one part) goes out with reqwest,
//! streamed from the file in 64 KiB pieces, to a URL rust-s3 presigns for
//! it (AWS Signature Version 4 with an unsigned payload, as S3, MinIO and
//! Garage accept); rust-s3 starts, completes and aborts the multipart
//! uploads. With anonymous credentials, which cannot presign, uploads go
//! through rust-s3's own buffered upload.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::Part;
use s3::{Bucket, Region};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::{InspectReader, InspectWriter, ReaderStream};

use super::{
    bare_etag, content_type_for, with_retries, Listed, LocalInput, ObjectInfo, StorageError,
    Transferred,
};
use crate::config::StorageSettings;

mod download;
mod read;
mod small;
mod upload;

use download::Download;
use upload::Upload;

/// Bytes of a download buffered before they are written to the scratch file.
const WRITE_BUFFER: usize = 1 << 20;
/// Timeout of requests without a body (HEAD).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// An S3 bucket, and the other buckets on the same endpoint that jobs may
/// name with `s3://BUCKET/key` locations (`storage.extra_buckets`).
#[derive(Debug, Clone)]
pub struct S3Store {
    /// For small requests, with a timeout.
    control: Box<Bucket>,
    /// For transfers, without a whole-request timeout.
    transfer: Box<Bucket>,
    /// The other buckets, by name: (control, transfer).
    others: std::collections::BTreeMap<String, (Box<Bucket>, Box<Bucket>)>,
    endpoint: String,
    retry_for: Duration,
    upload_concurrency: usize,
    download_concurrency: usize,
    /// Sends the bodies of uploads (see the module documentation); `None`
    /// with anonymous credentials.
    uploads: Option<reqwest::Client>,
}

impl S3Store {
    /// Opens the bucket named by the settings (no request is made).
    pub fn new(settings: &StorageSettings) -> Result<S3Store, StorageError> {
        let config_error = |e: S3Error| StorageError::Unavailable(format!("S3 set-up: {e}"));
        let region = if settings.endpoint.is_empty() {
            settings
                .region
                .parse::<Region>()
                .map_err(|e| StorageError::Unavailable(format!("S3 region: {e}")))?
        } else {
            Region::Custom {
                region: settings.region.clone(),
                endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            }
        };
        let anonymous = settings.access_key.is_empty();
        let credentials = if anonymous {
            Credentials::anonymous().map_err(|e| StorageError::Unavailable(e.to_string()))?
        } else {
            Credentials::new(
                Some(&settings.access_key),
                Some(settings.secret_key.expose_secret()),
                None,
                None,
                None,
            )
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
        };
        let path_style = settings.path_style.unwrap_or(!settings.endpoint.is_empty());
        let open = |name: &str| -> Result<(Box<Bucket>, Box<Bucket>), StorageError> {
            let mut bucket =
                Bucket::new(name, region.clone(), credentials.clone()).map_err(config_error)?;
            if path_style {
                bucket.set_path_style();
            }
            let mut control = bucket.clone();
            control.set_request_timeout(Some(CONTROL_TIMEOUT));
            bucket.set_request_timeout(None);
            Ok((control, bucket))
        };
        let (control, transfer) = open(&settings.bucket)?;
        let mut others = std::collections::BTreeMap::new();
        for name in settings
            .extra_buckets
            .iter()
            .filter(|b| **b != settings.bucket)
        {
            others.insert(name.clone(), open(name)?);
        }
        Ok(S3Store {
            control,
            transfer,
            others,
            endpoint: settings.endpoint.clone(),
            retry_for: settings.retry_for,
            upload_concurrency: settings.upload_concurrency,
            download_concurrency: settings.download_concurrency,
            uploads: if anonymous {
                None
            } else {
                Some(reqwest::Client::builder().build().map_err(|e| {
                    StorageError::Unavailable(format!("HTTP client: {}", with_causes(&e)))
                })?)
            },
        })
    }

    /// The buckets (control, transfer) and the key within its bucket of a
    /// storage key: `s3://BUCKET/key` for one of the extra buckets, else a
    /// key of the main bucket.
    fn route<'k>(&self, key: &'k str) -> (&Bucket, &Bucket, &'k str) {
        if let Some((bucket, inner)) = key
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
        {
            if let Some((control, transfer)) = self.others.get(bucket) {
                return (control, transfer, inner);
            }
        }
        (&self.control, &self.transfer, key)
    }

    pub(super) fn describe(&self) -> String {
        if self.endpoint.is_empty() {
            format!("bucket {}", self.control.name())
        } else {
            format!("bucket {} at {}", self.control.name(), self.endpoint)
        }
    }

    fn error(&self, key: &str, e: S3Error) -> StorageError {
        match e {
            S3Error::HttpFailWithBody(404, _) => StorageError::NotFound {
                key: key.to_string(),
                store: self.describe(),
            },
            S3Error::HttpFailWithBody(status, body) => StorageError::Unavailable(format!(
                "{} answered HTTP {status} for {key:?}: {}",
                self.describe(),
                s3_error_code(&body)
            )),
            S3Error::Io(e) => StorageError::Local(e.to_string()),
            other => {
                StorageError::Unavailable(format!("{}: {}", self.describe(), with_causes(&other)))
            }
        }
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let (control, _, inner) = self.route(key);
        with_retries("S3 HEAD", self.retry_for, || async {
            match control.head_object(inner).await {
                Ok((head, _)) => Ok(Some(ObjectInfo {
                    size: head.content_length.unwrap_or(0).max(0) as u64,
                    version: head.e_tag.as_deref().and_then(bare_etag),
                    metadata: head
                        .metadata
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect(),
                })),
                Err(e) => match self.error(key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await
    }

    /// Downloads `key`, as a HEAD just made describes it (`info`), into
    /// the file `dest` (streamed through a buffer of [`WRITE_BUFFER`]
    /// bytes; in parts when it is large, see `download.rs`), retrying
    /// transient failures; a download of another size is one.
    pub(super) async fn fetch(
        &self,
        key: &str,
        info: &ObjectInfo,
        dest: &std::path::Path,
        counter: &Transferred,
    ) -> Result<LocalInput, StorageError> {
        let expected = info.size;
        let (_, transfer, inner) = self.route(key);
        with_retries("S3 download", self.retry_for, || async {
            counter.reset();
            if let (Some(http), true) = (
                &self.uploads,
                Download::in_parts(expected, self.download_concurrency),
            ) {
                let download = Download {
                    store: self,
                    http,
                    key,
                    info,
                    dest,
                    counter,
                };
                match download.run().await {
                    Ok(()) => {
                        return Ok(LocalInput {
                            path: dest.to_path_buf(),
                            size: expected,
                        })
                    }
                    Err(StorageError::Unsupported(why)) => {
                        tracing::warn!(key, why, "downloading in one request");
                        counter.reset();
                    }
                    Err(e) => return Err(e),
                }
            }
            let file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| StorageError::Local(format!("{}: {e}", dest.display())))?;
            // Each write to a tokio file is a trip to the blocking thread
            // pool; a bounded buffer makes those trips 1 MiB each instead
            // of one per network chunk of a few KiB.
            let buffered = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
            let mut writer = InspectWriter::new(buffered, |bytes| counter.add(bytes.len() as u64));
            transfer
                .get_object_to_writer(inner, &mut writer)
                .await
                .map_err(|e| self.error(key, e))?;
            let mut buffered = writer.into_inner();
            buffered
                .flush()
                .await
                .map_err(|e| StorageError::Local(e.to_string()))?;
            let file = buffered.into_inner();
            let got = file
                .metadata()
                .await
                .map_err(|e| StorageError::Local(e.to_string()))?
                .len();
            if got != expected {
                return Err(StorageError::Unavailable(format!(
                    "download of {key:?} was cut short: {got} of {expected} bytes"
                )));
            }
            Ok(LocalInput {
                path: dest.to_path_buf(),
                size: got,
            })
        })
        .await
    }

    pub(super) async fn store(
        &self,
        src: &std::path::Path,
        key: &str,
        metadata: &[(String, String)],
        counter: &Transferred,
    ) -> Result<(), StorageError> {
        let size = tokio::fs::metadata(src)
            .await
            .map_err(|e| StorageError::Local(format!("{}: {e}", src.display())))?
            .len();
        self.abort_stale_uploads(key).await;
        let (_, transfer, inner) = self.route(key);
        with_retries("S3 upload", self.retry_for, || async {
            counter.reset();
            match &self.uploads {
                Some(http) => {
                    let upload = Upload {
                        store: self,
                        http,
                        bucket: transfer,
                        key,
                        inner,
                        src,
                        counter,
                    };
                    upload.run(size, metadata).await
                }
                None => {
                    self.store_buffered(transfer, key, inner, src, metadata, counter)
                        .await
                }
            }
        })
        .await?;
        match self.head(key).await? {
            Some(info) if info.size == size => Ok(()),
            Some(info) => Err(StorageError::Unavailable(format!(
                "stored {key:?} has {} bytes, expected {size}",
                info.size
            ))),
            None => Err(StorageError::Unavailable(format!(
                "{key:?} is missing right after it was stored"
            ))),
        }
    }

    /// Uploads `src` with rust-s3's own streamed upload, which holds each
    /// 8 MiB part in memory (twice): for anonymous credentials only.
    async fn store_buffered(
        &self,
        transfer: &Bucket,
        key: &str,
        inner: &str,
        src: &Path,
        metadata: &[(String, String)],
        counter: &Transferred,
    ) -> Result<(), StorageError> {
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| StorageError::Local(format!("{}: {e}", src.display())))?;
        let mut reader = InspectReader::new(file, |bytes| counter.add(bytes.len() as u64));
        let mut request = transfer
            .put_object_stream_builder(inner)
            .with_content_type(content_type_for(key))
            .with_max_concurrent_chunks(self.upload_concurrency);
        for (name, value) in metadata {
            request = request
                .with_metadata(name, value)
                .map_err(|e| StorageError::Local(format!("metadata {name}: {e}")))?;
        }
        request
            .execute_stream(&mut reader)
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Up to `max` keys under `prefix` that sort after `start_after`, in
    /// order.
    pub(super) async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        let (control, _, inner) = self.route(prefix);
        with_retries("S3 LIST", self.retry_for, || async {
            let (page, _) = control
                .list_page(
                    inner.to_string(),
                    None,
                    None,
                    start_after.map(str::to_string),
                    Some(max),
                )
                .await
                .map_err(|e| self.error(prefix, e))?;
            Ok(page.contents.into_iter().map(|o| o.key).collect())
        })
        .await
    }

    /// Deletes `key` (no error when there is none).
    pub(super) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (control, _, inner) = self.route(key);
        with_retries("S3 DELETE", self.retry_for, || async {
            match control.delete_object(inner).await {
                Ok(_) => Ok(()),
                Err(e) => match self.error(key, e) {
                    StorageError::NotFound { .. } => Ok(()),
                    other => Err(other),
                },
            }
        })
        .await
    }

    /// Aborts the unfinished multipart uploads of `key` (an upload cut off
    /// by a cancel).
    pub(super) async fn abort_uploads(&self, key: &str) {
        self.abort_stale_uploads(key).await;
    }

    /// Every object of the main bucket under `prefix`, all pages.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let pages = with_retries("S3 listing", self.retry_for, || async {
            self.control
                .list(prefix.to_string(), None)
                .await
                .map_err(|e| self.error(prefix, e))
        })
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.contents)
            .map(|object| Listed {
                version: object.e_tag.as_deref().and_then(bare_etag),
                key: object.key,
                size: object.size,
                modified: object.last_modified,
            })
            .collect())
    }

    /// Whether the bucket exists: lists at most one key of it.
    pub(super) async fn exists(&self) -> Result<bool, StorageError> {
        with_retries("S3 bucket check", self.retry_for, || async {
            match self
                .control
                .list_page(String::new(), None, None, None, Some(1))
                .await
            {
                Ok(_) => Ok(true),
                Err(S3Error::HttpFailWithBody(404, _)) => Ok(false),
                Err(e) => Err(self.error("", e)),
            }
        })
        .await
    }
}

/// `error` followed by each of its causes that adds something, so that the
/// reason of a failed request is seen (a refused TLS certificate, a refused
/// connection), not only "error sending request".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The `<Code>` of an S3 error body, or the body's start.
fn s3_error_code(body: &str) -> String {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string())
        .unwrap_or_else(|| body.chars().take(120).collect())
}

#[cfg(test)]
mod tests;
