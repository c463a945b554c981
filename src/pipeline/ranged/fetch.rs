//! The HTTP side of the range source: fetching a block of the input by a
//! range request to its presigned URL (checking that the input did not
//! change), tried again on transient failures, and keeping the blocks
//! fetched in the block folder.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Ranged, ReadStats};
use crate::byte_range::{answer, RangeAnswer};

/// A failed read: whether the input is gone (or changed), and what happened.
#[derive(Debug)]
pub(super) struct ReadError {
    pub(super) gone: bool,
    pub(super) message: String,
}

/// Fetches blocks of the input and keeps them in the block folder (shared
/// by the element and its threads fetching ahead).
#[derive(Clone)]
pub(super) struct Fetcher {
    pub(super) ranged: Ranged,
    pub(super) client: reqwest::blocking::Client,
    pub(super) stats: Arc<ReadStats>,
}

/// Counter of the temporary names of blocks being written.
static TEMP: AtomicU64 = AtomicU64::new(0);

impl Fetcher {
    /// The first byte and the length of block `index`.
    pub(super) fn range_of(&self, index: u64) -> (u64, usize) {
        let start = index * self.ranged.block_size;
        let len = self.ranged.block_size.min(self.ranged.size - start) as usize;
        (start, len)
    }

    fn path_of(&self, index: u64) -> PathBuf {
        self.ranged.blocks.join(index.to_string())
    }

    /// Whether block `index` is in the block folder, whole.
    pub(super) fn has(&self, index: u64) -> bool {
        std::fs::metadata(self.path_of(index))
            .is_ok_and(|m| m.len() == self.range_of(index).1 as u64)
    }

    /// Block `index` from the block folder, if it is there whole.
    pub(super) fn kept(&self, index: u64) -> Option<Vec<u8>> {
        std::fs::read(self.path_of(index))
            .ok()
            .filter(|bytes| bytes.len() == self.range_of(index).1)
    }

    /// Writes fetched block `index` into the folder (under a temporary
    /// name first, so a reader never finds half a block). Best effort: a
    /// block not kept is fetched again when it is needed again.
    pub(super) fn keep(&self, index: u64, bytes: &[u8]) {
        let path = self.path_of(index);
        let n = TEMP.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_extension(format!("{}-{n}.part", std::process::id()));
        if std::fs::write(&temp, bytes).is_err() || std::fs::rename(&temp, path).is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }

    /// `len` bytes from `start`, by a range request, tried again up to
    /// `retries` times on transient failures.
    pub(super) fn fetch(&self, start: u64, len: usize, retries: u32) -> Result<Vec<u8>, ReadError> {
        let mut last = None;
        for attempt in 0..=retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << (2 * (attempt - 1))));
            }
            match self.request(start, len) {
                Ok(bytes) => {
                    self.stats
                        .fetched
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Err(e) if e.gone => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn request(&self, start: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let end = start + len as u64 - 1;
        let what = format!("bytes {start}-{end} of the input");
        let transient = |message: String| ReadError {
            gone: false,
            message,
        };
        let mut request = self
            .client
            .get(&self.ranged.url)
            .header(reqwest::header::RANGE, format!("bytes={start}-{end}"));
        if let Some(etag) = &self.ranged.etag {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{etag}\""));
        }
        // Without the URL: it carries the signature.
        let response = request
            .send()
            .map_err(|e| transient(format!("{what}: {}", e.without_url())))?;
        let gone = |why: &str| ReadError {
            gone: true,
            message: format!("{what}: the input {why}"),
        };
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok());
        match answer(status.as_u16(), etag, self.ranged.etag.as_deref()) {
            RangeAnswer::Range => {}
            RangeAnswer::Gone => return Err(gone("is gone (HTTP 404)")),
            RangeAnswer::Changed(why) => {
                return Err(gone(&format!("changed since the job was split ({why})")))
            }
            RangeAnswer::Whole => {
                return Err(transient(format!(
                    "{what}: the storage answered with the whole input (HTTP {status}): it does not serve byte ranges"
                )))
            }
            RangeAnswer::Failed => return Err(transient(format!("{what}: HTTP {status}"))),
        }
        let mut bytes = Vec::with_capacity(len);
        response
            .take(len as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| transient(format!("{what}: {e}")))?;
        if bytes.len() != len {
            return Err(transient(format!(
                "{what}: {} bytes arrived, {len} were asked for",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}
