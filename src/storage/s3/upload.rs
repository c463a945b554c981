//! Uploads to S3 with their request bodies streamed from the file: one
//! request for a small output, a multipart upload of parts presigned one
//! by one for a large one, and the unfinished uploads of earlier attempts
//! aborted.

use super::*;

/// Bytes of each part of a multipart upload (more for outputs over
/// [`MAX_PARTS`] of them). S3 takes parts of 5 MiB to 5 GiB; a part streams
/// from the file, so its size costs no memory.
pub(super) const PART_SIZE: u64 = 16 << 20;
/// The most parts S3 takes in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Bytes read from the file for each piece of an upload's body.
const BODY_PIECE: usize = 64 << 10;
/// How long a presigned upload URL is valid; each is made right before
/// its request.
const PRESIGNED_FOR_SECS: u32 = 3600;

impl S3Store {
    /// Aborts multipart uploads of `key` left by earlier attempts (a worker
    /// killed in the middle of an upload cannot abort its own). Best effort:
    /// failures are logged; a bucket lifecycle rule
    /// (AbortIncompleteMultipartUpload) is the backstop.
    pub(super) async fn abort_stale_uploads(&self, key: &str) {
        let (control, _, key) = self.route(key);
        let pages = match control.list_multiparts_uploads(Some(key), None).await {
            Ok(pages) => pages,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list unfinished uploads");
                return;
            }
        };
        for upload in pages
            .iter()
            .flat_map(|p| &p.uploads)
            .filter(|u| u.key == key)
        {
            match control.abort_upload(key, &upload.id).await {
                Ok(()) => {
                    tracing::info!(key, upload_id = %upload.id, "aborted an unfinished upload of an earlier attempt")
                }
                Err(e) => tracing::warn!(key, error = %e, "cannot abort an unfinished upload"),
            }
        }
    }
}

/// One upload of a file to an object, its request bodies streamed from the
/// file (see the module documentation).
pub(super) struct Upload<'a> {
    pub(super) store: &'a S3Store,
    pub(super) http: &'a reqwest::Client,
    /// The bucket, without a request timeout.
    pub(super) bucket: &'a Bucket,
    /// The storage key, for messages.
    pub(super) key: &'a str,
    /// The key within the bucket.
    pub(super) inner: &'a str,
    pub(super) src: &'a Path,
    pub(super) counter: &'a Transferred,
}

impl Upload<'_> {
    /// Uploads the `size` bytes of the file with `metadata`: one request
    /// up to one part, else a multipart upload of at most
    /// `upload_concurrency` parts at a time, aborted if it fails.
    pub(super) async fn run(
        &self,
        size: u64,
        metadata: &[(String, String)],
    ) -> Result<(), StorageError> {
        let content_type = content_type_for(self.key);
        let mut meta = HeaderMap::new();
        for (name, value) in metadata {
            let header = HeaderName::try_from(format!("x-amz-meta-{name}"));
            match (header, HeaderValue::try_from(value.as_str())) {
                (Ok(header), Ok(value)) => meta.insert(header, value),
                _ => {
                    return Err(StorageError::Local(format!(
                        "metadata {name}: not a valid HTTP header"
                    )))
                }
            };
        }
        let part = part_size(size);
        if size <= part {
            let mut headers = meta;
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            let url = self
                .bucket
                .presign_put(self.inner, PRESIGNED_FOR_SECS, Some(headers.clone()), None)
                .await
                .map_err(|e| self.store.error(self.key, e))?;
            self.put(&url, headers, 0, size).await?;
            return Ok(());
        }
        let upload_id = self
            .bucket
            .with_extra_headers(meta)
            .map_err(|e| self.store.error(self.key, e))?
            .initiate_multipart_upload(self.inner, content_type)
            .await
            .map_err(|e| self.store.error(self.key, e))?
            .upload_id;
        let parts: Vec<(u32, u64)> = (0..size.div_ceil(part))
            .map(|i| (i as u32 + 1, i * part))
            .collect();
        let uploaded: Result<Vec<Part>, StorageError> = futures_util::stream::iter(parts)
            .map(|(number, start)| self.put_part(&upload_id, number, start, part.min(size - start)))
            .buffer_unordered(self.store.upload_concurrency)
            .try_collect()
            .await;
        let completed = match uploaded {
            Ok(mut parts) => {
                parts.sort_by_key(|p| p.part_number);
                self.bucket
                    .complete_multipart_upload(self.inner, &upload_id, parts)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.store.error(self.key, e))
            }
            Err(e) => Err(e),
        };
        if completed.is_err() {
            if let Err(e) = self.bucket.abort_upload(self.inner, &upload_id).await {
                tracing::debug!(error = %e, "cannot abort a failed upload");
            }
        }
        completed
    }

    /// Uploads part `number`, `len` bytes of the file from `start`;
    /// returns it with its ETag.
    async fn put_part(
        &self,
        upload_id: &str,
        number: u32,
        start: u64,
        len: u64,
    ) -> Result<Part, StorageError> {
        let query = HashMap::from([
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ]);
        let url = self
            .bucket
            .presign_put(self.inner, PRESIGNED_FOR_SECS, None, Some(query))
            .await
            .map_err(|e| self.store.error(self.key, e))?;
        let etag = self.put(&url, HeaderMap::new(), start, len).await?;
        Ok(Part {
            part_number: number,
            etag,
        })
    }

    /// PUTs `len` bytes of the file from `start` to the presigned `url`,
    /// with `headers` (those the URL was signed with); returns the ETag.
    async fn put(
        &self,
        url: &str,
        headers: HeaderMap,
        start: u64,
        len: u64,
    ) -> Result<String, StorageError> {
        let local = |e: std::io::Error| StorageError::Local(format!("{}: {e}", self.src.display()));
        let mut file = tokio::fs::File::open(self.src).await.map_err(local)?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(local)?;
        let counter = self.counter.clone();
        let reader =
            InspectReader::new(file.take(len), move |bytes| counter.add(bytes.len() as u64));
        let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(reader, BODY_PIECE));
        let response = self
            .http
            .put(url)
            .headers(headers)
            .header(CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!("{}: {}", self.store.describe(), with_causes(&e)))
            })?;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(self
                .store
                .error(self.key, S3Error::HttpFailWithBody(status.as_u16(), body)));
        }
        Ok(etag)
    }
}

/// The part size of a multipart upload of `size` bytes: [`PART_SIZE`], or
/// more when that would make over [`MAX_PARTS`] parts.
fn part_size(size: u64) -> u64 {
    PART_SIZE.max(size.div_ceil(MAX_PARTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_16_mib_unless_that_makes_more_than_10000() {
        assert_eq!(part_size(0), 16 << 20);
        assert_eq!(part_size(PART_SIZE * MAX_PARTS), 16 << 20);
        let huge = PART_SIZE * MAX_PARTS + 1;
        assert!(part_size(huge) > PART_SIZE);
        assert_eq!(huge.div_ceil(part_size(huge)), MAX_PARTS);
    }
}
