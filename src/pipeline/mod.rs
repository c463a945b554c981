//! GStreamer: probing media, building and running the transcode pipeline,
//! and verifying its output. Everything here blocks; the worker runs it in a
//! separate process (see [`crate::transcoder`]), `queue-files` calls
//! [`probe()`] directly.
//!
//! - [`probe()`] (probe.rs): what an input holds, with GStreamer's Discoverer;
//! - [`transcode`] (build.rs): `filesrc ! decodebin`, decoded **once**,
//!   each decoded stream into a `tee` with one branch per rendition
//!   (outputs.rs: each output's muxer and sink, or an `hlssink2` per
//!   variant of an HLS package; the scaler; the HLS key frame settings);
//! - tracks.rs: the tracks carried and what reached each muxer; route.rs:
//!   which decoded stream goes where; subtitles.rs: what each container
//!   takes as subtitles;
//! - [`verify()`] (verify.rs): a written file's headers against the input
//!   and against what the pipeline wrote, without decoding anything;
//! - [`finish`] (package.rs): each output verified; an HLS package's
//!   variants checked and aligned, their playlists and the master
//!   playlist written;
//! - [`run_part`] (parts.rs): the pipelines of segmented jobs (scan.rs,
//!   segment.rs, join.rs; what a part is asked and reports in
//!   part_spec.rs), each run to its end by bus.rs; a part reads its input
//!   from a local file or from S3 by byte ranges (ranged.rs).
//!
//! The worker owns the source, decoder, muxer and sink; file paths are set
//! as element properties, never pasted into launch text; the job only
//! supplies the (already checked) video branch.

mod build;
mod bus;
mod join;
mod outputs;
mod package;
mod part_spec;
mod parts;
mod probe;
mod ranged;
mod route;
mod scan;
mod segment;
mod subtitles;
mod tracks;
mod verify;

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, JobError};
use crate::rendition::Target;

pub use build::{transcode, Transcoded};
pub use join::{JoinSpec, Joined, PartFile};
pub use package::finish;
pub use part_spec::{AudioSpec, EncodedAudio, EncodedVideo, PartInput, VideoSpec};
pub use parts::{run_part, PartOutcome, PartRequest};
pub use probe::probe;
pub use ranged::Ranged;
pub use scan::Scan;
pub use tracks::{Span, TrackKind, Written, WrittenTrack};
pub use verify::verify;

/// What a probe learned about a media file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// Container caps name, e.g. `video/quicktime` (none for an elementary stream).
    pub container: Option<String>,
    /// Duration, when known.
    pub duration_ms: Option<u64>,
    /// The first video stream.
    pub video: Option<VideoStream>,
    /// Every audio stream, in the container's order.
    #[serde(default)]
    pub audio: Vec<AudioStream>,
    /// Every subtitle stream, in the container's order.
    #[serde(default)]
    pub subtitles: Vec<SubtitleStream>,
}

/// A video stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoStream {
    /// Caps name, e.g. `video/x-h264`.
    pub codec: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second (0 when unknown).
    pub frame_rate: f64,
    /// Bitrate in bits per second (0 when unknown).
    pub bitrate: u32,
    /// Pixel aspect ratio (width, height), when not square.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_aspect_ratio: Option<(u32, u32)>,
}

/// An audio stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioStream {
    /// Caps name, e.g. `audio/mpeg`.
    pub codec: String,
    /// Channels.
    pub channels: u32,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Language code (ISO 639), when the container names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// A subtitle stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtitleStream {
    /// Caps name, e.g. `text/x-raw` or `subpicture/x-dvd`.
    pub codec: String,
    /// Language code (ISO 639), when the container names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// What to run: everything the pipeline process needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscodeSpec {
    /// Input file.
    pub input: std::path::PathBuf,
    /// What to make of its one decode, each output into its own path.
    pub outputs: Vec<Output>,
    /// Allowed difference between input and output duration, in ms.
    pub duration_tolerance_ms: u64,
    /// Largest input accepted: width, height (pixels) and duration (ms).
    pub max_input: (u32, u32, u64),
}

/// One output to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The key it will be stored under (for messages, and the master
    /// playlist's file name).
    pub key: String,
    /// The file to write (in the job's scratch folder), or for an HLS
    /// package the folder to write it in.
    pub path: std::path::PathBuf,
    /// What it is and how it is encoded.
    pub target: Target,
}

/// How a pipeline run ended well: every output verified, and what the run
/// took to make them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Each output of the spec, in order.
    pub outputs: Vec<Made>,
    /// The decoders the pipeline created (element factories), one per
    /// decoded input stream however many outputs it made.
    pub decoders: Vec<String>,
    /// Where the time of the run went.
    #[serde(default)]
    pub timings: Timings,
}

/// One verified output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Made {
    /// What the verification read from its headers (for an HLS package,
    /// of its tallest variant, with the package's duration).
    pub media: MediaInfo,
    /// Input tracks it does not carry, one sentence each naming the track
    /// and the reason (see [`Written::left_out`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks_left_out: Vec<String>,
    /// What was made otherwise than asked: a height kept because the
    /// source is shorter (no upscaling), variants left out of a ladder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// For an HLS package: its variants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantMade>,
    /// For an HLS package: every file, relative to the output's folder, in
    /// the order to store them (each variant's segments, then its
    /// playlist; the master playlist last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// One variant of an HLS package, as the master playlist lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantMade {
    /// Its folder.
    pub name: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Peak segment bit rate, bits per second.
    pub bandwidth: u64,
    /// RFC 6381 codec names.
    pub codecs: Vec<String>,
    /// Segments.
    pub segments: usize,
}

/// Where the time of one pipeline run went, in milliseconds, stage by
/// stage; together they are the whole run. The worker logs them with the
/// verified output, and the benchmarks take the end of a job apart with
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Probing the input.
    pub probe_ms: u64,
    /// From the start of the transcode to the end of the input's video
    /// entering the (last) video branch: decoding and encoding as it
    /// streams.
    pub stream_ms: u64,
    /// From then to the end leaving the (last) video branch: its queue
    /// and encoder passing on the frames they still hold (x264 encodes its
    /// lookahead at the end of the stream).
    pub encoder_flush_ms: u64,
    /// From then to the end of the stream at the file sink: the other
    /// branches ending and the muxer finishing the file (its index).
    pub muxer_finish_ms: u64,
    /// Stopping the pipeline.
    pub stop_ms: u64,
    /// Verifying the outputs.
    pub verify_ms: u64,
}

/// Refuses inputs larger or longer than `spec.max_input`.
pub fn check_input_limits(spec: &TranscodeSpec, input: &MediaInfo) -> Result<(), JobError> {
    check_limits(spec.max_input, input)
}

/// Refuses inputs larger or longer than `max_input` (width, height in
/// pixels, duration in ms).
pub fn check_limits(max_input: (u32, u32, u64), input: &MediaInfo) -> Result<(), JobError> {
    let (max_w, max_h, max_ms) = max_input;
    let too =
        |what: String| JobError::new(ErrorKind::InvalidJob, format!("the input is too {what}"));
    if let Some(v) = &input.video {
        if v.width > max_w || v.height > max_h {
            return Err(too(format!(
                "large: {}x{}, the limit is {max_w}x{max_h}",
                v.width, v.height
            )));
        }
    }
    if let Some(ms) = input.duration_ms.filter(|ms| *ms > max_ms) {
        return Err(too(format!(
            "long: {:.0} s, the limit is {:.0} s",
            ms as f64 / 1000.0,
            max_ms as f64 / 1000.0
        )));
    }
    Ok(())
}

/// Initializes GStreamer once; a failure means the worker cannot transcode at all.
pub fn init() -> Result<(), JobError> {
    gst::init().map_err(|e| JobError::new(ErrorKind::Internal, format!("GStreamer: {e}")))
}

/// Elements a job is likely to need besides those its launch texts name:
/// the decoders, demuxers and type finders `decodebin` plugs in, and what
/// the Discoverer uses. Loading their plugins ahead of time is most of what
/// a pipeline process spends before its first buffer.
pub const LIKELY_ELEMENTS: &[&str] = &[
    "uridecodebin",
    "typefind",
    "avdec_h264",
    "qtdemux",
    "asfdemux",
    "avidemux",
    "matroskademux",
    "mpegpsdemux",
    "tsdemux",
    "mpegvideoparse",
    "h264parse",
    "jpegdec",
    "videoscale",
];

/// Initializes GStreamer and loads the plugins of the element factories
/// `names` (unknown names, and plugins that fail to load, are skipped: the
/// pipeline that needs them reports that), so a pipeline built later does
/// not pay for loading them.
pub fn preload<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), JobError> {
    init()?;
    for factory in names.into_iter().filter_map(gst::ElementFactory::find) {
        let _ = factory.load();
    }
    // Type finding runs on every input: load the type finders too.
    for factory in gst::TypeFindFactory::factories() {
        let _ = factory.load();
    }
    Ok(())
}

/// Checks that GStreamer works and that every element in `factories` is
/// installed; names the missing ones. Also brings the plugin registry up to
/// date, so that pipeline processes (which never rewrite it) start from it.
pub fn check_installed<'a>(factories: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    gst::init().map_err(|e| format!("GStreamer does not start: {e}"))?;
    let mut missing: Vec<&str> = factories
        .into_iter()
        .filter(|f| gst::ElementFactory::find(f).is_none())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "GStreamer elements not installed: {} (on Debian: gstreamer1.0-plugins-base, -good, -bad, -ugly and gstreamer1.0-libav)",
            missing.join(", ")
        ))
    }
}

/// The installed element factories: (name, klass) of each, e.g.
/// `("x264enc", "Codec/Encoder/Video")`. Call after [`check_installed`]
/// (GStreamer initialised).
pub fn installed_factories() -> Vec<(String, String)> {
    gst::Registry::get()
        .features(gst::ElementFactory::static_type())
        .into_iter()
        .filter_map(|f| f.downcast::<gst::ElementFactory>().ok())
        .map(|f| {
            let klass = f
                .metadata(gst::ELEMENT_METADATA_KLASS)
                .unwrap_or_default()
                .to_string();
            (f.name().to_string(), klass)
        })
        .collect()
}

/// The name of the first structure of `caps` (`video/x-h264`), or "".
fn caps_name(caps: Option<&gst::CapsRef>) -> String {
    caps.and_then(|c| c.structure(0).map(|s| s.name().to_string()))
        .unwrap_or_default()
}

/// `the file "NAME"`, for messages about `path`.
fn file_label(path: &Path) -> String {
    match path.file_name() {
        Some(name) => format!("the file {:?}", name.to_string_lossy()),
        None => "the file".to_string(),
    }
}

/// An internal GStreamer failure (not the job's fault).
fn internal(e: impl std::fmt::Display) -> JobError {
    JobError::new(ErrorKind::Internal, format!("GStreamer: {e}"))
}

/// `path` as the UTF-8 text GStreamer's `location` properties take.
fn path_str(path: &Path) -> Result<&str, JobError> {
    path.to_str().ok_or_else(|| {
        JobError::new(
            ErrorKind::InvalidJob,
            format!("the path {path:?} is not valid UTF-8"),
        )
    })
}

/// Sends a stream nowhere, so it cannot stall the pipeline.
fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    let Ok(fake) = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
    else {
        return;
    };
    if pipeline.add(&fake).is_ok() {
        let _ = fake.sync_state_with_parent();
        if let Some(sink) = fake.static_pad("sink") {
            let _ = pad.link(&sink);
        }
    }
}

/// Makes an element of `factory`; a missing one is this machine's fault.
fn make(factory: &str) -> Result<gst::Element, JobError> {
    gst::ElementFactory::make(factory).build().map_err(|e| {
        JobError::new(
            ErrorKind::Internal,
            format!("GStreamer element {factory} is not available: {e}"),
        )
    })
}

/// Sets the pipeline to `Null` however the run ends.
struct NullOnDrop(gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TranscodeSpec {
        TranscodeSpec {
            input: "in".into(),
            outputs: Vec::new(),
            duration_tolerance_ms: 500,
            max_input: (1920, 1080, 60_000),
        }
    }

    fn media(width: u32, height: u32, ms: u64) -> MediaInfo {
        MediaInfo {
            duration_ms: Some(ms),
            video: Some(VideoStream {
                width,
                height,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inputs_beyond_the_limits_are_refused() {
        assert!(check_input_limits(&spec(), &media(1920, 1080, 60_000)).is_ok());
        let err = check_input_limits(&spec(), &media(3840, 2160, 1000)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(err.message.contains("3840x2160"), "{}", err.message);
        let err = check_input_limits(&spec(), &media(640, 480, 61_000)).unwrap_err();
        assert!(err.message.contains("long"), "{}", err.message);
    }
}
