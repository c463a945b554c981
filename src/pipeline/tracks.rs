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
//! is `output_invalid`, see [`super::verify()`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// The kind of a track.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrackKind {
    /// Video.
    #[default]
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrittenTrack {
    /// What it is.
    pub kind: TrackKind,
    /// The media time that reached the muxer; `None` when nothing did.
    pub span: Option<Span>,
    /// What its first buffer was, as the caps said.
    pub format: Format,
}

/// What the caps (and the first bytes) of a track that reached the muxer
/// say about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Format {
    /// Frame size in pixels (video).
    pub size: Option<(u32, u32)>,
    /// Frames per second (video), when the caps give it.
    pub frame_rate: Option<f64>,
    /// The RFC 6381 codec name (`avc1.64001f`, `mp4a.40.2`), when known.
    pub codec: Option<String>,
}

/// What the writing pipeline knows about the file it wrote: the promise
/// [`super::verify()`] holds the file to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    /// The tracks linked into the muxer, in the order they were linked.
    pub tracks: Vec<WrittenTrack>,
    /// Input tracks the output does not carry, one sentence each naming
    /// the track and why (see the module documentation).
    pub left_out: Vec<String>,
}

impl Written {
    /// How many tracks of `kind` were linked into the muxer.
    pub fn count(&self, kind: TrackKind) -> usize {
        self.tracks.iter().filter(|t| t.kind == kind).count()
    }

    /// The media time of the video that reached the muxer.
    pub fn video_out(&self) -> Option<Span> {
        self.first(TrackKind::Video).and_then(|t| t.span)
    }

    /// The first track of `kind`.
    pub fn first(&self, kind: TrackKind) -> Option<&WrittenTrack> {
        self.tracks.iter().find(|t| t.kind == kind)
    }
}

/// How many bytes of a track's first buffer are kept: enough for the
/// parameter sets at the head of an H.264 key frame.
const FIRST_BYTES: usize = 1024;

/// Counts the buffers passing a pad and the media time they cover, keeps
/// the caps and the first bytes of the first buffer, and notes when the
/// end of the stream passed it.
#[derive(Debug)]
pub(super) struct Watch {
    buffers: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    end: AtomicU64,
    eos_at: Mutex<Option<Instant>>,
    first: Mutex<Option<(gst::Caps, Vec<u8>)>>,
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
            first: Mutex::new(None),
        });
        let w = watch.clone();
        let types = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
        pad.add_probe(types, move |pad, info| {
            if let Some(event) = info.event() {
                if event.type_() == gst::EventType::Eos {
                    *w.eos_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                return gst::PadProbeReturn::Ok;
            }
            if w.buffers.fetch_add(1, Ordering::Relaxed) == 0 {
                if let (Some(caps), Some(buffer)) = (pad.current_caps(), info.buffer()) {
                    let bytes = buffer
                        .map_readable()
                        .map(|m| m.as_slice()[..m.size().min(FIRST_BYTES)].to_vec())
                        .unwrap_or_default();
                    *w.first.lock().unwrap_or_else(|e| e.into_inner()) = Some((caps, bytes));
                }
            }
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

    /// What the first buffer's caps and bytes say.
    pub(super) fn format(&self) -> Format {
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        let Some((caps, bytes)) = first.as_ref() else {
            return Format::default();
        };
        let Some(s) = caps.structure(0) else {
            return Format::default();
        };
        let int = |field: &str| s.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok());
        let size = int("width").zip(int("height"));
        let frame_rate = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .filter(|f| f.denom() > 0 && f.numer() > 0)
            .map(|f| f64::from(f.numer()) / f64::from(f.denom()));
        let codec_data = s
            .get::<gst::Buffer>("codec_data")
            .ok()
            .and_then(|b| b.map_readable().ok().map(|m| m.as_slice().to_vec()));
        let codec = match s.name().as_str() {
            "video/x-h264" => crate::hls::avc1_codec(codec_data.as_deref().unwrap_or(bytes)),
            "audio/mpeg" => match (int("mpegversion"), int("layer")) {
                (Some(2 | 4), _) => Some(crate::hls::aac_codec(codec_data.as_deref())),
                (Some(1), Some(3)) => Some("mp4a.40.34".into()),
                _ => None,
            },
            "audio/x-ac3" => Some("ac-3".into()),
            "audio/x-eac3" => Some("ec-3".into()),
            _ => None,
        };
        Format {
            size,
            frame_rate,
            codec,
        }
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
