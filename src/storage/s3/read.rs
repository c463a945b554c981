//! Presigned GET URLs, for the pipeline process to read an input by byte
//! ranges without the worker's credentials (see
//! [`crate::pipeline::Ranged`]).

use super::*;

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
}
