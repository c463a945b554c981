//! Presigned GET URLs, for the pipeline process to read an input by byte
//! ranges without the worker's credentials (see
//! [`crate::pipeline::Ranged`]), and whether the server answers ranges.

use reqwest::header::RANGE;

use super::*;
use crate::byte_range::{answer, RangeAnswer};

impl S3Store {
    /// Whether it can presign URLs (not with anonymous credentials).
    pub(in crate::storage) fn presigns(&self) -> bool {
        self.uploads.is_some()
    }

    /// A URL that reads `key` (ranges too) for `secs` seconds; `None` with
    /// anonymous credentials, which cannot presign.
    pub(in crate::storage) async fn presign_get(
        &self,
        key: &str,
        secs: u32,
    ) -> Result<Option<String>, StorageError> {
        if !self.presigns() {
            return Ok(None);
        }
        let (_, transfer, inner) = self.route(key);
        transfer
            .presign_get(inner, secs, None)
            .await
            .map(Some)
            .map_err(|e| self.error(key, e))
    }

    /// Whether the server answers a range request for `key` with the
    /// range (HTTP 206) rather than the whole object (a server or proxy
    /// that drops `Range`): one request, by a presigned URL, for the
    /// object's first byte, whose answer is not read when it is the whole
    /// object. `true` when this store cannot presign (nothing of it is
    /// read by ranges then).
    pub(in crate::storage) async fn serves_ranges(&self, key: &str) -> Result<bool, StorageError> {
        let (Some(http), Some(url)) = (&self.uploads, self.presign_get(key, 600).await?) else {
            return Ok(true);
        };
        let response = http
            .get(url)
            .header(RANGE, "bytes=0-0")
            .send()
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "{}: {key:?}: {}",
                    self.describe(),
                    with_causes(&e.without_url())
                ))
            })?;
        let status = response.status().as_u16();
        match answer(status, None, None) {
            RangeAnswer::Range => Ok(true),
            RangeAnswer::Whole => Ok(false),
            _ => {
                let body = response.text().await.unwrap_or_default();
                Err(self.error(key, S3Error::HttpFailWithBody(status, body)))
            }
        }
    }
}
