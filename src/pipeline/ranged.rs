//! Reading a part's input from S3 by byte ranges: a source element that
//! answers the demuxer's reads (pull mode, random access, as `filesrc`
//! does) with HTTP range requests to a presigned GET URL of the input, in
//! blocks of [`Ranged::block_size`] bytes.
//!
//! A worker that encodes one segment of a long input needs the bytes of
//! that segment (from the key frame before its cut) and the container's
//! index, not the whole file: with this source it fetches those. Each
//! block fetched is kept as a file in the block folder (one per input and
//! worker, in its scratch), so the worker's next parts of the same job,
//! and the index every part reads, are fetched once. The element holds at
//! most two blocks in memory.
//!
//! Every request carries `If-Match` with the ETag the job was split at
//! (and the ETag of each answer is checked, for servers that ignore it),
//! so an input replaced while the job runs fails the part instead of
//! mixing two files. Failed requests (connection, 5xx) are tried again
//! [`RETRIES`] times; what is left is a resource error on the bus, which
//! the pipeline's error classification turns into "input not found" (404,
//! changed) or "storage unavailable" (anything else: the part is retried). The
//! URL carries a signature and is never logged or put into a message.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_base as gst_base;
use gstreamer_base::prelude::*;
use gstreamer_base::subclass::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a part reads its input by ranges.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ranged {
    /// A presigned GET URL of the input (secret: it grants reading it).
    pub url: String,
    /// The input's size in bytes (from the job's plan).
    pub size: u64,
    /// The input's ETag when the job was split, sent as `If-Match`.
    pub etag: Option<String>,
    /// The folder of blocks fetched so far (shared by the worker's parts of
    /// this input).
    pub blocks: PathBuf,
    /// Bytes of each range request.
    pub block_size: u64,
}

impl std::fmt::Debug for Ranged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranged")
            .field("url", &"(presigned, not shown)")
            .field("size", &self.size)
            .field("etag", &self.etag)
            .field("blocks", &self.blocks)
            .field("block_size", &self.block_size)
            .finish()
    }
}

/// How many times a failed range request is tried again.
const RETRIES: u32 = 3;
/// Blocks held in memory by one element.
const IN_MEMORY: usize = 2;

glib::wrapper! {
    /// The source element (not registered: made by [`source`]).
    pub struct RangeSrc(ObjectSubclass<imp::RangeSrc>)
        @extends gst_base::BaseSrc, gst::Element, gst::Object;
}

/// A source element reading `ranged`; the bytes it fetches from storage
/// (not those found in the block folder) are added to `fetched`.
pub(super) fn source(ranged: &Ranged, fetched: Arc<AtomicU64>) -> Result<gst::Element, String> {
    std::fs::create_dir_all(&ranged.blocks)
        .map_err(|e| format!("cannot make the block folder: {e}"))?;
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let element: RangeSrc = glib::Object::new();
    *element
        .imp()
        .reader
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Reader {
        ranged: ranged.clone(),
        client,
        held: Vec::new(),
        fetched,
        temp: 0,
    });
    Ok(element.upcast())
}

/// A failed read: whether the input is gone (or changed), and what happened.
#[derive(Debug)]
struct ReadError {
    gone: bool,
    message: String,
}

/// The state of one element: where it reads, and the blocks it holds.
struct Reader {
    ranged: Ranged,
    client: reqwest::blocking::Client,
    /// Blocks in memory, most recently used last.
    held: Vec<(u64, Arc<Vec<u8>>)>,
    fetched: Arc<AtomicU64>,
    /// Counter of the temporary names of blocks being written.
    temp: u64,
}

impl Reader {
    /// Copies bytes from `offset` into `out`; returns how many (fewer only
    /// at the end of the input).
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, ReadError> {
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            if at >= self.ranged.size {
                break;
            }
            let index = at / self.ranged.block_size;
            let block = self.block(index)?;
            let within = (at - index * self.ranged.block_size) as usize;
            if within >= block.len() {
                break;
            }
            let n = (block.len() - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(done)
    }

    /// Block `index`: held, in the block folder, or fetched (and kept there).
    fn block(&mut self, index: u64) -> Result<Arc<Vec<u8>>, ReadError> {
        if let Some(i) = self.held.iter().position(|(b, _)| *b == index) {
            let entry = self.held.remove(i);
            let block = entry.1.clone();
            self.held.push(entry);
            return Ok(block);
        }
        let start = index * self.ranged.block_size;
        let len = self.ranged.block_size.min(self.ranged.size - start) as usize;
        let path = self.ranged.blocks.join(index.to_string());
        let block = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == len => bytes,
            _ => {
                let bytes = self.fetch(start, len)?;
                self.keep(&path, &bytes);
                bytes
            }
        };
        let block = Arc::new(block);
        if self.held.len() == IN_MEMORY {
            self.held.remove(0);
        }
        self.held.push((index, block.clone()));
        Ok(block)
    }

    /// Writes a fetched block into the folder (under a temporary name
    /// first, so a reader never finds half a block). Best effort: a block
    /// not kept is fetched again when it is needed again.
    fn keep(&mut self, path: &Path, bytes: &[u8]) {
        self.temp += 1;
        let temp = path.with_extension(format!("{}-{}.part", std::process::id(), self.temp));
        if std::fs::write(&temp, bytes).is_err() || std::fs::rename(&temp, path).is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }

    /// `len` bytes from `start`, by a range request, tried again on
    /// transient failures.
    fn fetch(&self, start: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut last = None;
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << (2 * (attempt - 1))));
            }
            match self.request(start, len) {
                Ok(bytes) => {
                    self.fetched
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
        let status = response.status();
        let gone = |why: &str| ReadError {
            gone: true,
            message: format!("{what}: the input {why}"),
        };
        match status.as_u16() {
            206 => {}
            404 => return Err(gone("is gone (HTTP 404)")),
            412 => return Err(gone("changed since the job was split (HTTP 412)")),
            416 => {
                return Err(gone(
                    "changed since the job was split (it is shorter: HTTP 416)",
                ))
            }
            _ => return Err(transient(format!("{what}: HTTP {status}"))),
        }
        // Checked here too: not every S3 server honours `If-Match`.
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("W/").trim_matches('"'));
        if let (Some(expected), Some(etag)) = (&self.ranged.etag, etag) {
            if etag != expected {
                return Err(gone("changed since the job was split (another ETag)"));
            }
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

mod imp {
    use super::*;

    /// The element's instance: its reader, set once by [`source`].
    #[derive(Default)]
    pub struct RangeSrc {
        pub(super) reader: Mutex<Option<Reader>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for RangeSrc {
        const NAME: &'static str = "TranscodeWorkerRangeSrc";
        type Type = super::RangeSrc;
        type ParentType = gst_base::BaseSrc;
    }

    impl ObjectImpl for RangeSrc {
        fn constructed(&self) {
            self.parent_constructed();
            self.obj().set_format(gst::Format::Bytes);
        }
    }

    impl GstObjectImpl for RangeSrc {}

    impl ElementImpl for RangeSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static METADATA: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                std::sync::LazyLock::new(|| {
                    gst::subclass::ElementMetadata::new(
                        "Storage range source",
                        "Source/Network",
                        "Reads an input from S3 by byte ranges, keeping the blocks it fetched",
                        "transcode-worker",
                    )
                });
            Some(&METADATA)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                std::sync::LazyLock::new(|| {
                    vec![gst::PadTemplate::new(
                        "src",
                        gst::PadDirection::Src,
                        gst::PadPresence::Always,
                        &gst::Caps::new_any(),
                    )
                    .expect("a valid template")]
                });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSrcImpl for RangeSrc {
        fn is_seekable(&self) -> bool {
            true
        }

        fn size(&self) -> Option<u64> {
            self.reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|r| r.ranged.size)
        }

        fn fill(
            &self,
            offset: u64,
            length: u32,
            buffer: &mut gst::BufferRef,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            let Some(reader) = reader.as_mut() else {
                gst::element_imp_error!(self, gst::CoreError::Failed, ["no input set"]);
                return Err(gst::FlowError::Error);
            };
            if offset >= reader.ranged.size {
                return Err(gst::FlowError::Eos);
            }
            let read = {
                let mut map = buffer.map_writable().map_err(|_| {
                    gst::element_imp_error!(self, gst::CoreError::Failed, ["cannot map a buffer"]);
                    gst::FlowError::Error
                })?;
                let want = (length as usize).min(map.len());
                reader.read_at(offset, &mut map[..want])
            };
            match read {
                Ok(n) => {
                    buffer.set_size(n);
                    Ok(gst::FlowSuccess::Ok)
                }
                Err(e) => {
                    let kind = if e.gone {
                        gst::ResourceError::NotFound
                    } else {
                        gst::ResourceError::Read
                    };
                    gst::element_imp_error!(
                        self,
                        kind,
                        ("reading the input from storage: {}", e.message)
                    );
                    Err(gst::FlowError::Error)
                }
            }
        }
    }
}

/// Whether `source` is a range source (for the error classification).
pub(super) fn is_range_source(source: &gst::Object) -> bool {
    source.is::<RangeSrc>()
}
