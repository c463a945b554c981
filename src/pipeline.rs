//! GStreamer: probing media, building and running the transcode pipeline,
//! and verifying its output. Everything here blocks; the worker runs it in a
//! separate process (see [`crate::transcoder`]), `queue-files` calls
//! [`probe`] directly.
//!
//! The pipeline is `filesrc ! decodebin`, then the job's video branch and,
//! when the input has audio, the audio branch, into the muxer and a
//! `filesink`. The worker owns the source, decoder, muxer and sink; file
//! paths are set as element properties, never pasted into launch text; the
//! job only supplies the (already checked) video branch. Pads the plan has
//! no branch for (a second audio track, subtitles) go to a `fakesink`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_pbutils as pbutils;
use gstreamer_pbutils::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, JobError};

/// What a probe learned about a media file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// Container caps name, e.g. `video/quicktime` (none for an elementary stream).
    pub container: Option<String>,
    /// Duration, when known.
    pub duration_ms: Option<u64>,
    /// The first video stream.
    pub video: Option<VideoStream>,
    /// The first audio stream.
    pub audio: Option<AudioStream>,
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
}

/// What to run: everything the pipeline process needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscodeSpec {
    /// Input file.
    pub input: std::path::PathBuf,
    /// Output file (in the job's scratch folder).
    pub output: std::path::PathBuf,
    /// Checked video branch.
    pub video: String,
    /// Audio branch.
    pub audio: String,
    /// Muxer element.
    pub muxer: String,
    /// Allowed difference between input and output duration, in ms.
    pub duration_tolerance_ms: u64,
    /// Largest input accepted: width, height (pixels) and duration (ms).
    pub max_input: (u32, u32, u64),
}

/// Refuses inputs larger or longer than `spec.max_input`.
pub fn check_input_limits(spec: &TranscodeSpec, input: &MediaInfo) -> Result<(), JobError> {
    let (max_w, max_h, max_ms) = spec.max_input;
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

fn caps_name(caps: Option<gst::Caps>) -> String {
    caps.and_then(|c| c.structure(0).map(|s| s.name().to_string()))
        .unwrap_or_default()
}

/// Probes `path` with GStreamer's Discoverer.
///
/// A file that is not media, or that no installed plugin decodes, is
/// [`ErrorKind::UndecodableInput`].
pub fn probe(path: &Path, timeout: Duration) -> Result<MediaInfo, JobError> {
    init()?;
    let undecodable = |why: String| {
        JobError::new(
            ErrorKind::UndecodableInput,
            format!("{} cannot be decoded: {why}", file_label(path)),
        )
    };
    let uri = gst::glib::filename_to_uri(path, None)
        .map_err(|e| JobError::new(ErrorKind::Internal, e.to_string()))?;
    let discoverer =
        pbutils::Discoverer::new(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))
            .map_err(|e| JobError::new(ErrorKind::Internal, e.to_string()))?;
    let info = discoverer
        .discover_uri(&uri)
        .map_err(|e| undecodable(e.to_string()))?;
    match info.result() {
        pbutils::DiscovererResult::Ok => {}
        pbutils::DiscovererResult::MissingPlugins => {
            return Err(undecodable(format!(
                "missing GStreamer plugins: {}",
                info.missing_elements_installer_details().join(", ")
            )))
        }
        other => return Err(undecodable(format!("{other:?}"))),
    }
    let container = info
        .stream_info()
        .filter(|s| s.is::<pbutils::DiscovererContainerInfo>())
        .map(|c| caps_name(c.caps()));
    let video = info
        .video_streams()
        .into_iter()
        .find(|v| !v.is_image())
        .map(|v| {
            let fr = v.framerate();
            VideoStream {
                codec: caps_name(v.caps()),
                width: v.width(),
                height: v.height(),
                frame_rate: if fr.denom() > 0 {
                    f64::from(fr.numer()) / f64::from(fr.denom())
                } else {
                    0.0
                },
                bitrate: v.bitrate(),
            }
        });
    let audio = info.audio_streams().first().map(|a| AudioStream {
        codec: caps_name(a.caps()),
        channels: a.channels(),
        sample_rate: a.sample_rate(),
    });
    Ok(MediaInfo {
        container,
        duration_ms: info.duration().map(|d| d.mseconds()),
        video,
        audio,
    })
}

fn file_label(path: &Path) -> String {
    match path.file_name() {
        Some(name) => format!("the file {:?}", name.to_string_lossy()),
        None => "the file".to_string(),
    }
}

/// Sets the pipeline to `Null` however the run ends.
struct NullOnDrop(gst::Pipeline);

impl Drop for NullOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Runs the transcode described by `spec` for an input that `input` describes,
/// calling `on_position(position, duration)` about every 250 ms.
pub fn transcode(
    spec: &TranscodeSpec,
    input: &MediaInfo,
    mut on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<(), JobError> {
    init()?;
    if input.video.is_none() {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input has no video stream",
        ));
    }
    let pipeline = gst::Pipeline::new();
    let guard = NullOnDrop(pipeline.clone());
    let make = |factory: &str| {
        gst::ElementFactory::make(factory).build().map_err(|e| {
            JobError::new(
                ErrorKind::Internal,
                format!("GStreamer element {factory} is not available: {e}"),
            )
        })
    };
    let src = make("filesrc")?;
    src.set_property("location", path_str(&spec.input)?);
    let decode = make("decodebin")?;
    let mux = make(&spec.muxer)?;
    let sink = make("filesink")?;
    sink.set_property("location", path_str(&spec.output)?);
    let video = branch(&spec.video, "video")?;
    pipeline
        .add_many([&src, &decode, video.upcast_ref(), &mux, &sink])
        .map_err(internal)?;
    src.link(&decode).map_err(internal)?;
    mux.link(&sink).map_err(internal)?;
    link_branch(&video, &mux, &spec.muxer, "video")?;
    let audio = if input.audio.is_some() {
        let audio = branch(&spec.audio, "audio")?;
        pipeline.add(&audio).map_err(internal)?;
        link_branch(&audio, &mux, &spec.muxer, "audio")?;
        Some(audio)
    } else {
        None
    };
    let video_stats = watch_branch(&video);
    connect_decoder(&pipeline, &decode, video.clone(), audio);

    pipeline.set_state(gst::State::Playing).map_err(|_| {
        bus_error(&pipeline).unwrap_or_else(|| internal("cannot start the pipeline"))
    })?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let duration = input.duration_ms.map(Duration::from_millis);
    loop {
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(250),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(err) => return Err(classify(err)),
                _ => {}
            }
        }
        if let Some(position) = video_stats.position() {
            let duration = duration.or_else(|| {
                pipeline
                    .query_duration::<gst::ClockTime>()
                    .map(|d| Duration::from_nanos(d.nseconds()))
            });
            on_position(position, duration);
        }
    }
    pipeline
        .set_state(gst::State::Null)
        .map_err(|_| internal("cannot stop the pipeline"))?;
    drop(guard);
    if video_stats.buffers.load(Ordering::Relaxed) == 0 {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input's video stream produced no frames",
        ));
    }
    Ok(())
}

/// What has entered a branch: buffers, and the first and latest timestamps.
#[derive(Debug)]
struct BranchStats {
    buffers: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
}

impl BranchStats {
    /// Media time that has entered the branch. Measured at the branch's
    /// input rather than at the sink, so it does not lag by the encoder's
    /// look-ahead.
    fn position(&self) -> Option<Duration> {
        let first = self.first_pts.load(Ordering::Relaxed);
        let last = self.last_pts.load(Ordering::Relaxed);
        (first != u64::MAX).then(|| Duration::from_nanos(last.saturating_sub(first)))
    }
}

/// Watches the buffers entering `bin`.
fn watch_branch(bin: &gst::Bin) -> Arc<BranchStats> {
    let stats = Arc::new(BranchStats {
        buffers: AtomicU64::new(0),
        first_pts: AtomicU64::new(u64::MAX),
        last_pts: AtomicU64::new(0),
    });
    if let Some(pad) = bin.static_pad("sink") {
        let stats = stats.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            stats.buffers.fetch_add(1, Ordering::Relaxed);
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                stats.first_pts.fetch_min(pts.nseconds(), Ordering::Relaxed);
                stats.last_pts.fetch_max(pts.nseconds(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
    stats
}

/// Checks that `output` is a playable file with the expected streams and a
/// duration within `spec.duration_tolerance_ms` of the input's.
pub fn verify(spec: &TranscodeSpec, input: &MediaInfo) -> Result<MediaInfo, JobError> {
    let bad = |why: String| JobError::new(ErrorKind::OutputInvalid, format!("the output {why}"));
    let size = std::fs::metadata(&spec.output)
        .map_err(|e| bad(format!("cannot be read: {e}")))?
        .len();
    if size == 0 {
        return Err(bad("is empty".into()));
    }
    let out = probe(&spec.output, Duration::from_secs(60))
        .map_err(|e| bad(format!("does not parse: {}", e.message)))?;
    if out.video.is_none() {
        return Err(bad("has no video stream".into()));
    }
    if input.audio.is_some() != out.audio.is_some() {
        return Err(bad(format!(
            "has {} audio stream but the input has {}",
            if out.audio.is_some() { "an" } else { "no" },
            if input.audio.is_some() { "one" } else { "none" }
        )));
    }
    if let (Some(want), Some(got)) = (input.duration_ms, out.duration_ms) {
        if want.abs_diff(got) > spec.duration_tolerance_ms {
            return Err(bad(format!(
                "lasts {:.2} s but the input lasts {:.2} s",
                got as f64 / 1000.0,
                want as f64 / 1000.0
            )));
        }
    }
    Ok(out)
}

fn internal(e: impl std::fmt::Display) -> JobError {
    JobError::new(ErrorKind::Internal, format!("GStreamer: {e}"))
}

fn path_str(path: &Path) -> Result<&str, JobError> {
    path.to_str().ok_or_else(|| {
        JobError::new(
            ErrorKind::InvalidJob,
            format!("the path {path:?} is not valid UTF-8"),
        )
    })
}

/// Builds a branch bin from checked launch text and refuses any source or
/// sink in it (a second line of defence behind the fragment allowlist).
fn branch(text: &str, what: &str) -> Result<gst::Bin, JobError> {
    let bin = gst::parse::bin_from_description(&format!("queue ! {text}"), true).map_err(|e| {
        let message = format!("the {what} branch {text:?} does not parse: {e}");
        // A missing element is this machine's installation, not the job's fault.
        let kind = if e.matches(gst::ParseError::NoSuchElement) {
            ErrorKind::Internal
        } else {
            ErrorKind::InvalidPipeline
        };
        JobError::new(kind, message)
    })?;
    let invalid = |why: String| JobError::new(ErrorKind::InvalidPipeline, why);
    for element in bin.iterate_recurse().into_iter().flatten() {
        let klass = element
            .factory()
            .map(|f| {
                f.metadata(gst::ELEMENT_METADATA_KLASS)
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        if klass.contains("Source") || klass.contains("Sink") {
            return Err(invalid(format!(
                "the {what} branch may not contain a source or sink ({})",
                element.name()
            )));
        }
    }
    Ok(bin)
}

fn link_branch(
    bin: &gst::Bin,
    mux: &gst::Element,
    muxer: &str,
    what: &str,
) -> Result<(), JobError> {
    bin.link(mux).map_err(|_| {
        JobError::new(
            ErrorKind::InvalidPipeline,
            format!("the {what} branch's output cannot go into {muxer} (wrong codec for this container?)"),
        )
    })
}

/// Links each decoded stream to its branch the first time one of its kind
/// appears; any other stream goes to a fakesink so it cannot stall the pipeline.
fn connect_decoder(
    pipeline: &gst::Pipeline,
    decode: &gst::Element,
    video: gst::Bin,
    audio: Option<gst::Bin>,
) {
    let pipeline = pipeline.downgrade();
    let targets = Arc::new(Mutex::new((Some(video), audio)));
    decode.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let mut targets = targets.lock().unwrap_or_else(|e| e.into_inner());
        let target = if name.starts_with("video/") {
            targets.0.take()
        } else if name.starts_with("audio/") {
            targets.1.take()
        } else {
            None
        };
        let linked = target
            .and_then(|bin| bin.static_pad("sink"))
            .map(|sink| pad.link(&sink).is_ok())
            .unwrap_or(false);
        if !linked {
            if let Ok(fake) = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .property("async", false)
                .build()
            {
                if pipeline.add(&fake).is_ok() {
                    let _ = fake.sync_state_with_parent();
                    if let Some(sink) = fake.static_pad("sink") {
                        let _ = pad.link(&sink);
                    }
                }
            }
        }
    });
}

fn bus_error(pipeline: &gst::Pipeline) -> Option<JobError> {
    let bus = pipeline.bus()?;
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(err) => Some(classify(err)),
        _ => None,
    }
}

/// Turns a GStreamer error message into a job error of the right kind.
fn classify(err: &gst::message::Error) -> JobError {
    let source = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "pipeline".into());
    let e = err.error();
    let mut message = format!("GStreamer error in {source}: {e}");
    if let Some(debug) = err.debug() {
        let debug: String = debug.chars().take(400).collect();
        message.push_str(&format!(" ({debug})"));
    }
    let kind = match e.kind::<gst::StreamError>() {
        Some(
            gst::StreamError::Decode
            | gst::StreamError::Demux
            | gst::StreamError::TypeNotFound
            | gst::StreamError::WrongType
            | gst::StreamError::CodecNotFound
            | gst::StreamError::Format,
        ) => ErrorKind::UndecodableInput,
        _ if e.kind::<gst::CoreError>() == Some(gst::CoreError::Negotiation)
            || message.contains("not-negotiated") =>
        {
            ErrorKind::InvalidPipeline
        }
        _ => ErrorKind::TranscodeFailed,
    };
    JobError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TranscodeSpec {
        TranscodeSpec {
            input: "in".into(),
            output: "out".into(),
            video: "x264enc".into(),
            audio: String::new(),
            muxer: "mp4mux".into(),
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
