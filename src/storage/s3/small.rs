//! Small objects (records, markers, claims): one request each, and the
//! create-if-absent the claims of segmented jobs rely on.

use super::*;

impl S3Store {
    /// Stores the small object `bytes` under `key` (one request).
    pub(in crate::storage) async fn put_small(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<(), StorageError> {
        let (control, _, inner) = self.route(key);
        with_retries("S3 PUT", self.retry_for, || async {
            control
                .put_object_with_content_type(inner, bytes, content_type)
                .await
                .map(|_| ())
                .map_err(|e| self.error(key, e))
        })
        .await
    }

    /// Stores `bytes` under `key` unless an object is there
    /// (`If-None-Match: *`); `true` when this call made it.
    pub(in crate::storage) async fn put_small_new(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<bool, StorageError> {
        let (control, _, inner) = self.route(key);
        with_retries("S3 PUT", self.retry_for, || async {
            let request = control
                .put_object_builder(inner, bytes)
                .with_content_type(content_type)
                .with_header("if-none-match", "*")
                .map_err(|e| StorageError::Local(format!("If-None-Match: {e}")))?;
            match request.execute().await {
                Ok(_) => Ok(true),
                Err(S3Error::HttpFailWithBody(412, _)) => Ok(false),
                Err(S3Error::HttpFailWithBody(status, body))
                    if status == 501 || s3_error_code(&body) == "NotImplemented" =>
                {
                    Err(StorageError::Unsupported(format!(
                        "{} answered HTTP {status} ({}) to a PUT with If-None-Match",
                        self.describe(),
                        s3_error_code(&body)
                    )))
                }
                Err(e) => Err(self.error(key, e)),
            }
        })
        .await
    }

    /// The small object `key` (at most `limit` bytes, else an error), or
    /// `None` when there is none.
    pub(in crate::storage) async fn get_small(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let (control, _, inner) = self.route(key);
        with_retries("S3 GET", self.retry_for, || async {
            match control.get_object(inner).await {
                Ok(response) if response.bytes().len() > limit => Err(StorageError::Local(
                    format!("{key:?} is larger than {limit} bytes"),
                )),
                Ok(response) => Ok(Some(response.bytes().to_vec())),
                Err(e) => match self.error(key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await
    }
}
