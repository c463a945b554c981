//! The tracks of a transcode: what is carried from the input, what the
//! output container can hold, and what reached the muxer.
//!
//! Every track of the input is carried, as the original service's `-map 0`
//! did: the first video stream through the job's video branch, each audio
//! stream through its own instance of the plan's audio branch, and each
//! subtitle stream the container can hold as it is (Matroska and WebM:
//! whatever `matroskamux`/`webmmux` take on their subtitle pads, text, SSA/ASS,
//! Kate, DVD subpictures; MP4 and MOV: text, as 3GPP timed text, `tx3g`, and
//! on MOV closed captions). The language of each track (the stream's
//! `GST_TAG_LANGUAGE_CODE`) travels with it through the branch to the muxer,
//! which writes it in the track header.
//!
//! A track the container cannot hold (a bitmap subtitle in MP4, a Blu-ray
//! PGS subtitle anywhere, a second video stream) is **left out and
//! recorded**, not refused: the job completes, and every such track is
//! named, with the reason, in the worker's log and in the job's `completed`
//! event (`tracks_left_out`). Refusing the job instead would make some
//! inputs impossible to transcode into some containers (and PGS into any),
//! with no job field to accept the loss; the video and audio are what a job
//! is for, and the record lets its client see what the output lacks. A
//! track that the container can hold but the pipeline fails to carry is not
//! left out: it fails the attempt (the audio branch's output not fitting
//! the muxer is `invalid_pipeline`; a track missing from the written file
//! is `output_invalid`, see [`super::verify`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// The kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// Video.
    Video,
    /// Audio.
    Audio,
    /// Subtitles or captions.
    Subtitle,
}

impl TrackKind {
    /// The word for it in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
            TrackKind::Subtitle => "subtitle",
        }
    }
}

/// Media time covered by the buffers seen on a pad: from the earliest
/// timestamp to the latest timestamp plus its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Earliest timestamp, ns.
    pub start_ns: u64,
    /// Latest end (timestamp plus duration), ns.
    pub end_ns: u64,
}

impl Span {
    /// How long the span lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
}

/// A track the pipeline linked into the muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenTrack {
    /// What it is.
    pub kind: TrackKind,
    /// The media time that reached the muxer; `None` when nothing did.
    pub span: Option<Span>,
}

/// What the writing pipeline knows about the file it wrote: the promise
/// [`super::verify`] holds the file to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The tracks linked into the muxer, in the order they were linked.
    pub tracks: Vec<WrittenTrack>,
    /// Input tracks the output does not carry, one sentence each naming
    /// the track and why (see the module documentation).
    pub left_out: Vec<String>,
    /// Where the pipeline's time went, from its start to its stop.
    pub timings: super::Timings,
}

impl Written {
    /// How many tracks of `kind` were linked into the muxer.
    pub fn count(&self, kind: TrackKind) -> usize {
        self.tracks.iter().filter(|t| t.kind == kind).count()
    }

    /// The media time of the video that reached the muxer.
    pub fn video_out(&self) -> Option<Span> {
        self.tracks
            .iter()
            .find(|t| t.kind == TrackKind::Video)
            .and_then(|t| t.span)
    }
}

/// Counts the buffers passing a pad and the media time they cover, and
/// notes when the end of the stream passed it.
#[derive(Debug)]
pub(super) struct Watch {
    buffers: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    end: AtomicU64,
    eos_at: Mutex<Option<Instant>>,
}

impl Watch {
    /// Watches the buffers passing `pad`.
    pub(super) fn on(pad: &gst::Pad) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            buffers: AtomicU64::new(0),
            first_pts: AtomicU64::new(u64::MAX),
            last_pts: AtomicU64::new(0),
            end: AtomicU64::new(0),
            eos_at: Mutex::new(None),
        });
        let w = watch.clone();
        let types = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
        pad.add_probe(types, move |_, info| {
            if let Some(event) = info.event() {
                if event.type_() == gst::EventType::Eos {
                    *w.eos_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                return gst::PadProbeReturn::Ok;
            }
            w.buffers.fetch_add(1, Ordering::Relaxed);
            if let Some(buffer) = info.buffer() {
                if let Some(pts) = buffer.pts() {
                    let pts = pts.nseconds();
                    let end = pts + buffer.duration().map_or(0, |d| d.nseconds());
                    w.first_pts.fetch_min(pts, Ordering::Relaxed);
                    w.last_pts.fetch_max(pts, Ordering::Relaxed);
                    w.end.fetch_max(end, Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
        watch
    }

    /// How many buffers passed.
    pub(super) fn buffers(&self) -> u64 {
        self.buffers.load(Ordering::Relaxed)
    }

    /// From the first timestamp to the latest one: for progress, so the
    /// position does not run ahead by a frame's duration.
    pub(super) fn position(&self) -> Option<Duration> {
        let first = self.first_pts.load(Ordering::Relaxed);
        let last = self.last_pts.load(Ordering::Relaxed);
        (first != u64::MAX).then(|| Duration::from_nanos(last.saturating_sub(first)))
    }

    /// When the end of the stream passed the pad, if it has.
    pub(super) fn eos_at(&self) -> Option<Instant> {
        *self.eos_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The media time the buffers covered.
    pub(super) fn span(&self) -> Option<Span> {
        let first = self.first_pts.load(Ordering::Relaxed);
        (first != u64::MAX).then(|| Span {
            start_ns: first,
            end_ns: self.end.load(Ordering::Relaxed).max(first),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_measure_from_the_first_timestamp_to_the_last_end() {
        let span = Span {
            start_ns: 40_000_000,
            end_ns: 2_040_000_000,
        };
        assert_eq!(span.duration(), Duration::from_secs(2));
        let backwards = Span {
            start_ns: 5,
            end_ns: 1,
        };
        assert_eq!(backwards.duration(), Duration::ZERO);
    }
}
