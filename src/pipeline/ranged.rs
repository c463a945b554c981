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
//! most two blocks in memory, and each block being fetched ahead (see
//! below) until it is kept.
//!
//! Every request carries `If-Match` with the ETag the job was split at
//! (and the ETag of each answer is checked, for servers that ignore it),
//! so an input replaced while the job runs fails the part instead of
//! mixing two files. Failed requests (connection, 5xx) are tried again
//! [`RETRIES`] times; what is left is a resource error on the bus, which
//! the pipeline's error classification turns into "input not found" (404,
//! changed) or "storage unavailable" (anything else: the part is retried). The
//! URL carries a signature and is never logged or put into a message.
//!
//! Storage far away makes each block a wait: once a part has read
//! [`SEQUENTIAL`] blocks in a row (as it does through its segment; its
//! reads of the container's header and index are a block or two), the
//! source fetches the following [`Ranged::read_ahead`] blocks in threads
//! of their own, while the
//! pipeline decodes and encodes what it has; a read of a block being
//! fetched ahead waits for it instead of fetching it twice. A part's end
//! waits (up to [`FINISH_WAIT`]) for the blocks still being fetched, so
//! that what it fetched is counted; at most that many blocks past the end
//! of each run of reads are fetched in vain (kept for the worker's next
//! parts).
//!
//! The element itself is in `element.rs`; the HTTP requests and the block
//! folder, in `fetch.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_base as gst_base;
use serde::{Deserialize, Serialize};

mod element;
mod fetch;

use fetch::{Fetcher, ReadError};

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
    /// Blocks fetched ahead of a sequential read (0: none).
    #[serde(default)]
    pub read_ahead: u64,
}

impl std::fmt::Debug for Ranged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranged")
            .field("url", &"(presigned, not shown)")
            .field("size", &self.size)
            .field("etag", &self.etag)
            .field("blocks", &self.blocks)
            .field("block_size", &self.block_size)
            .field("read_ahead", &self.read_ahead)
            .finish()
    }
}

/// How many times a failed range request is tried again.
const RETRIES: u32 = 3;
/// Blocks held in memory by one element.
const IN_MEMORY: usize = 2;
/// Blocks read in a row, each the one after the last, before the next
/// are fetched ahead: a part's reads of the container's header and index
/// run through a block or two; its segment's, through many.
const SEQUENTIAL: u64 = 3;
/// How long the end of a part waits for the blocks being fetched ahead.
const FINISH_WAIT: Duration = Duration::from_secs(10);

glib::wrapper! {
    /// The source element (not registered: made by [`source`]).
    pub struct RangeSrc(ObjectSubclass<element::RangeSrc>)
        @extends gst_base::BaseSrc, gst::Element, gst::Object;
}

/// What a part's range source did: bytes fetched (all, and of those the
/// bytes fetched ahead of the reads), and how long its reads waited for
/// storage.
#[derive(Debug, Default)]
pub(super) struct ReadStats {
    fetched: AtomicU64,
    fetched_ahead: AtomicU64,
    waited_ns: AtomicU64,
}

impl ReadStats {
    /// Bytes fetched from storage (not those found in the block folder).
    pub(super) fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Of [`ReadStats::fetched`], the bytes fetched ahead of the reads.
    pub(super) fn fetched_ahead(&self) -> u64 {
        self.fetched_ahead.load(Ordering::Relaxed)
    }

    /// Milliseconds the reads waited for a block to arrive from storage.
    pub(super) fn waited_ms(&self) -> u64 {
        self.waited_ns.load(Ordering::Relaxed) / 1_000_000
    }
}

/// A source element reading `ranged`, noting what it does in `stats`.
pub(super) fn source(ranged: &Ranged, stats: Arc<ReadStats>) -> Result<gst::Element, String> {
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
        fetcher: Fetcher {
            ranged: ranged.clone(),
            client,
            stats,
        },
        held: Vec::new(),
        last: None,
        run: 0,
        ahead: Arc::default(),
        threads: Vec::new(),
    });
    Ok(element.upcast())
}

/// The state of one element: where it reads, the blocks it holds, and
/// those being fetched ahead.
struct Reader {
    fetcher: Fetcher,
    /// Blocks in memory, most recently used last.
    held: Vec<(u64, Arc<Vec<u8>>)>,
    /// The block read last.
    last: Option<u64>,
    /// How many blocks in a row, each the one after the last, were read
    /// up to the last.
    run: u64,
    /// The blocks being fetched ahead.
    ahead: Arc<Ahead>,
    /// The threads fetching ahead (each fetches one block).
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The blocks being fetched ahead of the reads; a read of one of them
/// waits for it instead of fetching it again.
#[derive(Default)]
struct Ahead {
    fetching: Mutex<Vec<u64>>,
    settled: Condvar,
}

impl Ahead {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.fetching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until block `index` is not being fetched ahead.
    fn wait_for(&self, index: u64) {
        let mut fetching = self.lock();
        while fetching.contains(&index) {
            fetching = self
                .settled
                .wait(fetching)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Block `index` is no longer being fetched ahead.
    fn settle(&self, index: u64) {
        self.lock().retain(|&i| i != index);
        self.settled.notify_all();
    }
}

impl Reader {
    /// Copies bytes from `offset` into `out`; returns how many (fewer only
    /// at the end of the input).
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, ReadError> {
        let ranged = &self.fetcher.ranged;
        let (size, block_size) = (ranged.size, ranged.block_size);
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            if at >= size {
                break;
            }
            let index = at / block_size;
            let block = self.block(index)?;
            let within = (at - index * block_size) as usize;
            if within >= block.len() {
                break;
            }
            let n = (block.len() - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(done)
    }

    /// Block `index`: held, in the block folder, or fetched (and kept
    /// there). A read that makes [`SEQUENTIAL`] blocks read in a row starts
    /// fetching the next [`Ranged::read_ahead`] blocks.
    fn block(&mut self, index: u64) -> Result<Arc<Vec<u8>>, ReadError> {
        if self.last != Some(index) {
            let on = self.last.is_some_and(|last| last + 1 == index);
            self.run = if on { self.run + 1 } else { 1 };
            if self.run >= SEQUENTIAL {
                self.fetch_ahead(index);
            }
            self.last = Some(index);
        }
        if let Some(i) = self.held.iter().position(|(b, _)| *b == index) {
            let entry = self.held.remove(i);
            let block = entry.1.clone();
            self.held.push(entry);
            return Ok(block);
        }
        let waiting = std::time::Instant::now();
        self.ahead.wait_for(index);
        let block = match self.fetcher.kept(index) {
            Some(bytes) => bytes,
            None => {
                let (start, len) = self.fetcher.range_of(index);
                let bytes = self.fetcher.fetch(start, len, RETRIES)?;
                self.fetcher.keep(index, &bytes);
                bytes
            }
        };
        let waited = waiting.elapsed().as_nanos() as u64;
        let stats = &self.fetcher.stats;
        stats.waited_ns.fetch_add(waited, Ordering::Relaxed);
        let block = Arc::new(block);
        if self.held.len() == IN_MEMORY {
            self.held.remove(0);
        }
        self.held.push((index, block.clone()));
        Ok(block)
    }

    /// Starts fetching the blocks after `index` (up to
    /// [`Ranged::read_ahead`] of them) that are not held, kept or being
    /// fetched, each in a thread of its own. Best effort: a block that
    /// could not be fetched ahead is fetched when it is read.
    fn fetch_ahead(&mut self, index: u64) {
        let blocks = self
            .fetcher
            .ranged
            .size
            .div_ceil(self.fetcher.ranged.block_size);
        let finished: Vec<_> = {
            let (done, running) = std::mem::take(&mut self.threads)
                .into_iter()
                .partition(|t| t.is_finished());
            self.threads = running;
            done
        };
        for thread in finished {
            let _ = thread.join();
        }
        for next in index + 1..=index + self.fetcher.ranged.read_ahead {
            if next >= blocks
                || self.held.iter().any(|(b, _)| *b == next)
                || self.ahead.lock().contains(&next)
                || self.fetcher.has(next)
            {
                continue;
            }
            self.ahead.lock().push(next);
            let (fetcher, ahead) = (self.fetcher.clone(), self.ahead.clone());
            let spawned = std::thread::Builder::new()
                .name("tw-read-ahead".into())
                .spawn(move || {
                    let (start, len) = fetcher.range_of(next);
                    if let Ok(bytes) = fetcher.fetch(start, len, 0) {
                        fetcher.keep(next, &bytes);
                        let ahead_bytes = bytes.len() as u64;
                        fetcher
                            .stats
                            .fetched_ahead
                            .fetch_add(ahead_bytes, Ordering::Relaxed);
                    }
                    ahead.settle(next);
                });
            match spawned {
                Ok(thread) => self.threads.push(thread),
                Err(_) => self.ahead.settle(next),
            }
        }
    }

    /// Waits for the blocks being fetched ahead, so that what the part
    /// fetched is counted when it ends; up to [`FINISH_WAIT`], then the
    /// threads still fetching are left to end on their own (storage that
    /// hangs does not hold the part's end).
    fn finish(&mut self) {
        let deadline = std::time::Instant::now() + FINISH_WAIT;
        let mut fetching = self.ahead.lock();
        while !fetching.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            fetching = self
                .ahead
                .settled
                .wait_timeout(fetching, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(fetching);
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether `source` is a range source (for the error classification).
pub(super) fn is_range_source(source: &gst::Object) -> bool {
    source.is::<RangeSrc>()
}
