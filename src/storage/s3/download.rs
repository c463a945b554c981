//! Downloads from S3 in parts: byte ranges of [`PART_SIZE`], up to
//! `storage.download_concurrency` of them at a time, each streamed into
//! its place in the scratch file. One request's speed is often capped well
//! below the link's (across the internet, to AWS from elsewhere), so a
//! large input comes in several times faster; memory is a write buffer of
//! [`PART_WRITE_BUFFER`] a part in flight, whatever the size.
//!
//! Every request carries `If-Match` with the ETag of the HEAD that sized
//! the download (and each answer's ETag is checked, for servers that
//! ignore it), so the parts are all of one version of the object. Ranges
//! go out with reqwest to a URL rust-s3 presigns, as the uploads' bodies
//! do; with anonymous credentials, which cannot presign, for an object of
//! one part, and from a server that answers a range with the whole object
//! ([`StorageError::Unsupported`], its body not read), the download is
//! one request.

use reqwest::header::{IF_MATCH, RANGE};

use crate::byte_range::{answer, RangeAnswer};

use super::upload::PART_SIZE;
use super::*;

/// Bytes of a part buffered before they are written to the file: smaller
/// than a whole download's [`WRITE_BUFFER`], as several parts are in flight
/// (and the file's own writes copy what they are given).
const PART_WRITE_BUFFER: usize = 256 << 10;
/// How long the presigned URL of a download is valid (a download that
/// takes longer fails and is tried again with a new one).
const PRESIGNED_FOR_SECS: u32 = 24 * 3600;

/// One download of an object in parts into a file.
pub(super) struct Download<'a> {
    pub(super) store: &'a S3Store,
    pub(super) http: &'a reqwest::Client,
    /// The storage key, for messages.
    pub(super) key: &'a str,
    /// What the HEAD found: the size to come, the ETag to ask for.
    pub(super) info: &'a ObjectInfo,
    pub(super) dest: &'a Path,
    pub(super) counter: &'a Transferred,
}

impl Download<'_> {
    /// Whether `size` bytes are worth downloading in parts.
    pub(super) fn in_parts(size: u64, concurrency: usize) -> bool {
        concurrency > 1 && size > PART_SIZE
    }

    /// Fetches every part into the file (made, or cut, to the object's size).
    pub(super) async fn run(&self) -> Result<(), StorageError> {
        let Some(url) = self.store.presign_get(self.key, PRESIGNED_FOR_SECS).await? else {
            return Err(StorageError::Unsupported(
                "anonymous credentials cannot presign the ranges' URL".into(),
            ));
        };
        let size = self.info.size;
        let file = tokio::fs::File::create(self.dest)
            .await
            .map_err(|e| self.local(e))?;
        file.set_len(size).await.map_err(|e| self.local(e))?;
        drop(file);
        let parts: Vec<(u64, u64)> = (0..size.div_ceil(PART_SIZE))
            .map(|i| i * PART_SIZE)
            .map(|start| (start, PART_SIZE.min(size - start)))
            .collect();
        futures_util::stream::iter(parts)
            .map(|(start, len)| self.part(&url, start, len))
            .buffer_unordered(self.store.download_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    fn local(&self, e: std::io::Error) -> StorageError {
        StorageError::Local(format!("{}: {e}", self.dest.display()))
    }

    /// Fetches `len` bytes from `start` into the same place of the file.
    async fn part(&self, url: &str, start: u64, len: u64) -> Result<(), StorageError> {
        let end = start + len - 1;
        let unavailable = |what: String| {
            StorageError::Unavailable(format!(
                "{}: bytes {start}-{end} of {:?}: {what}",
                self.store.describe(),
                self.key
            ))
        };
        let mut request = self
            .http
            .get(url)
            .header(RANGE, format!("bytes={start}-{end}"));
        if let Some(etag) = &self.info.version {
            request = request.header(IF_MATCH, format!("\"{etag}\""));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(with_causes(&e.without_url())))?;
        let status = response.status();
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok());
        match answer(status.as_u16(), etag, self.info.version.as_deref()) {
            RangeAnswer::Range => {}
            RangeAnswer::Changed(why) => {
                return Err(unavailable(format!(
                    "the object changed while it was downloaded ({why})"
                )))
            }
            RangeAnswer::Whole => {
                return Err(StorageError::Unsupported(format!(
                    "{} answered a range request with HTTP {status}, not 206",
                    self.store.describe()
                )))
            }
            RangeAnswer::Gone | RangeAnswer::Failed => {
                // An error's body: a short XML document.
                let body = response.text().await.unwrap_or_default();
                return Err(self
                    .store
                    .error(self.key, S3Error::HttpFailWithBody(status.as_u16(), body)));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.dest)
            .await
            .map_err(|e| self.local(e))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| self.local(e))?;
        let mut writer = tokio::io::BufWriter::with_capacity(PART_WRITE_BUFFER, file);
        let mut body = response.bytes_stream();
        let mut got = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| unavailable(with_causes(&e.without_url())))?;
            got += chunk.len() as u64;
            if got > len {
                return Err(unavailable(format!(
                    "more than the {len} bytes asked for came"
                )));
            }
            writer.write_all(&chunk).await.map_err(|e| self.local(e))?;
            self.counter.add(chunk.len() as u64);
        }
        writer.flush().await.map_err(|e| self.local(e))?;
        if got != len {
            return Err(unavailable(format!("cut short: {got} of {len} bytes")));
        }
        Ok(())
    }
}
