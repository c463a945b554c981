//! The renditions of a transcode, built before the pipeline starts: for
//! each output of the spec its muxer and `filesink`, or for each chosen
//! variant of an HLS package an `hlssink2` writing its segments and
//! playlist; and in front of each, the video branch (with the worker's
//! scaler when the encoding scales, see [`crate::rendition::sizing`]) and
//! one audio branch per audio track it carries. A branch is the checked
//! launch text of a preset or fragment, built as a bin that may hold no
//! source or sink ([`branch`]).
//!
//! Every branch starts with a `queue` after the `tee` of its stream, so a
//! slow encoder holds the others back (the tee waits for the fullest
//! queue) but cannot deadlock them:
//! - the audio queues hold [`AUDIO_QUEUE_SECONDS`] of decoded audio (a few
//!   MiB), more than any encoder's look-ahead delays its video, so a muxer
//!   waiting for its video never stops the audio tee that the other
//!   muxers wait on;
//! - no sink prerolls (`async=false`; `hlssink2` handles its own): a sink
//!   that stopped at its first buffer until every sink had one would hold
//!   its branch, and through the tee every other, while an encoder that
//!   looks ahead further than a queue holds (x264's medium preset: 40
//!   frames) waits for frames that never come.
//!
//! For HLS, every variant's encoder is asked for a key frame at each
//! multiple of the segment length (`hlssink2` sends the requests), with
//! its longest key frame interval (`key-int-max`) set to the segment's
//! frames and x264's scene-cut key frames off: segments of every variant
//! start with a key frame at the same times.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{internal, make, path_str, MediaInfo, TranscodeSpec};
use crate::error::{ErrorKind, JobError};
use crate::hls::{SEGMENT_PATTERN, VARIANT_PLAYLIST};
use crate::rendition::{chosen_variants, sizing, Encoding, Target};

/// Seconds of decoded audio each audio branch's queue holds.
pub const AUDIO_QUEUE_SECONDS: u64 = 10;
/// Bytes each audio branch's queue holds at most (10 s of 8-channel 96 kHz
/// float audio).
const AUDIO_QUEUE_BYTES: u32 = 32 << 20;

/// One encode into one muxer: a file output, or a variant of a package.
pub(super) struct Rendition {
    /// The output of the spec it belongs to.
    pub output: usize,
    /// The variant's folder (HLS), or "" for a file.
    pub variant: String,
    /// The muxer, or the `hlssink2`.
    pub mux: gst::Element,
    /// The muxer's factory name.
    pub muxer: String,
    /// The audio branch's launch text (for tracks the probe missed).
    pub audio: String,
    /// The video branch, linked to the muxer.
    pub video: gst::Bin,
    /// One audio branch per audio track it carries, linked to the muxer.
    pub audio_ready: Vec<gst::Bin>,
    /// Why its frames are shorter than the encoding asks, if they are.
    pub note: Option<String>,
}

impl Rendition {
    /// Whether it is a variant of an HLS package (one audio track, no
    /// subtitles).
    pub fn hls(&self) -> bool {
        !self.variant.is_empty()
    }

    /// Its name in element names and messages: `out0`, `out1-720p`.
    pub fn label(&self) -> String {
        if self.hls() {
            format!("out{}-{}", self.output, self.variant)
        } else {
            format!("out{}", self.output)
        }
    }
}

/// Builds every rendition of `spec` for an input that `input` describes
/// into `pipeline`. Returns them, and for each output the sentences of the
/// variants of a ladder left out.
pub(super) fn build(
    pipeline: &gst::Pipeline,
    spec: &TranscodeSpec,
    input: &MediaInfo,
) -> Result<(Vec<Rendition>, Vec<Vec<String>>), JobError> {
    let mut renditions = Vec::new();
    let mut notes = Vec::new();
    let height = input.video.as_ref().map_or(0, |v| v.height);
    for (i, output) in spec.outputs.iter().enumerate() {
        match &output.target {
            Target::File(encoding) => {
                let mux = make(&encoding.muxer)?;
                mux.set_property("name", format!("out{i}-mux"));
                let sink = make("filesink")?;
                sink.set_property("location", path_str(&output.path)?);
                // A sink that prerolls on its first buffer would hold its
                // branch, and through the tees every other, until all sinks
                // prerolled: one behind an encoder that looks ahead further
                // than the queues hold never would.
                sink.set_property("async", false);
                pipeline.add_many([&mux, &sink]).map_err(internal)?;
                mux.link(&sink).map_err(internal)?;
                let r = rendition(pipeline, i, "", encoding, mux, input, None);
                renditions.push(r.map_err(|e| named(e, spec, i, ""))?);
                notes.push(Vec::new());
            }
            Target::Hls(package) => {
                let (chosen, left_out) = chosen_variants(&package.variants, height);
                for v in chosen.into_iter().map(|c| &package.variants[c]) {
                    let folder = output.path.join(&v.name);
                    std::fs::create_dir_all(&folder)
                        .map_err(|e| internal(format!("cannot make {}: {e}", folder.display())))?;
                    let sink = make(crate::rendition::HLS_MUXER)?;
                    sink.set_property("name", format!("out{i}-{}-hls", v.name));
                    sink.set_property("location", path_str(&folder.join(SEGMENT_PATTERN))?);
                    sink.set_property(
                        "playlist-location",
                        path_str(&folder.join(VARIANT_PLAYLIST))?,
                    );
                    sink.set_property("target-duration", package.segment_seconds);
                    sink.set_property("max-files", 0u32);
                    sink.set_property("playlist-length", 0u32);
                    // Its own sinks preroll inside it, for the same reason.
                    sink.set_property("async-handling", true);
                    pipeline.add(&sink).map_err(internal)?;
                    let hls = Some(package.segment_seconds);
                    let r = rendition(pipeline, i, &v.name, &v.encoding, sink, input, hls);
                    renditions.push(r.map_err(|e| named(e, spec, i, &v.name))?);
                }
                notes.push(left_out);
            }
        }
    }
    Ok((renditions, notes))
}

/// `e`, naming the output `i` of `spec` (and the `variant`) it is about
/// when there is more than one rendition to tell apart.
fn named(mut e: JobError, spec: &TranscodeSpec, i: usize, variant: &str) -> JobError {
    let key = &spec.outputs[i].key;
    if !variant.is_empty() {
        e.message = format!("the output {key:?} (variant {variant}): {}", e.message);
    } else if spec.outputs.len() > 1 {
        e.message = format!("the output {key:?}: {}", e.message);
    }
    e
}

/// One rendition into `mux` (already in `pipeline`): its video branch and
/// an audio branch per audio track it carries, linked. `segment_seconds`:
/// a variant of an HLS package with that segment length.
fn rendition(
    pipeline: &gst::Pipeline,
    output: usize,
    variant: &str,
    encoding: &Encoding,
    mux: gst::Element,
    input: &MediaInfo,
    segment_seconds: Option<u32>,
) -> Result<Rendition, JobError> {
    let source = input.video.as_ref();
    let sized = sizing(
        encoding,
        source.map_or(0, |v| v.width),
        source.map_or(0, |v| v.height),
        source.and_then(|v| v.pixel_aspect_ratio).unwrap_or((1, 1)),
    );
    let video_text = match sized.scale_to {
        Some((width, height)) => format!(
            "videoconvert ! videoscale ! video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 ! {}",
            encoding.video
        ),
        None => encoding.video.clone(),
    };
    let mut r = Rendition {
        output,
        variant: variant.to_string(),
        mux,
        muxer: encoding.muxer.clone(),
        audio: encoding.audio.clone(),
        video: branch(&video_text, "video")?,
        audio_ready: Vec::new(),
        note: sized.note,
    };
    let label = r.label();
    r.video.set_property("name", format!("{label}-video"));
    if let Some(secs) = segment_seconds {
        fixed_key_frames(&r.video, secs, source.map_or(0.0, |v| v.frame_rate));
    }
    pipeline.add(&r.video).map_err(internal)?;
    link(&r, &r.video, "video")?;
    // An HLS variant carries one audio track (hlssink2 muxes one).
    let tracks = if r.hls() {
        input.audio.len().min(1)
    } else {
        input.audio.len()
    };
    for n in 0..tracks {
        let bin = audio_branch(&r.audio)?;
        bin.set_property("name", format!("{label}-audio{n}"));
        pipeline.add(&bin).map_err(internal)?;
        link(&r, &bin, "audio")?;
        r.audio_ready.push(bin);
    }
    Ok(r)
}

/// An audio branch with its queue sized as the module documentation says.
pub(super) fn audio_branch(text: &str) -> Result<gst::Bin, JobError> {
    let bin = branch(text, "audio")?;
    if let Some(queue) = bin
        .iterate_elements()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == "queue"))
    {
        queue.set_property("max-size-time", AUDIO_QUEUE_SECONDS * 1_000_000_000);
        queue.set_property("max-size-bytes", AUDIO_QUEUE_BYTES);
        queue.set_property("max-size-buffers", 0u32);
    }
    Ok(bin)
}

/// Links a branch of `r` into its muxer: a new pad of a file muxer, or the
/// `video` or `audio` pad of an `hlssink2` (which takes any caps on both,
/// so the pad is named).
pub(super) fn link(r: &Rendition, bin: &gst::Bin, what: &str) -> Result<(), JobError> {
    if !r.hls() {
        return link_branch(bin, &r.mux, &r.muxer, what);
    }
    let sink = r
        .mux
        .request_pad_simple(what)
        .ok_or_else(|| internal(format!("{} gives no {what} pad", r.muxer)))?;
    let src = bin.static_pad("src").expect("a branch has a src");
    src.link(&sink).map(|_| ()).map_err(|e| {
        internal(format!(
            "cannot link the {what} branch to {}: {e:?}",
            r.muxer
        ))
    })
}

/// Gives the encoders of an HLS variant's video branch a key frame at
/// least every segment (`key-int-max`, from the frame rate), and turns off
/// x264's scene-cut key frames; `hlssink2` asks for the key frames at the
/// segment boundaries themselves.
fn fixed_key_frames(video: &gst::Bin, segment_seconds: u32, frame_rate: f64) {
    let frames = (frame_rate * f64::from(segment_seconds)).round() as u32;
    for element in video.iterate_recurse().into_iter().flatten() {
        if frames > 0 {
            if let Some(spec) = element.find_property("key-int-max") {
                let current = element.property_value("key-int-max");
                let too_long = match spec.value_type() {
                    t if t == u32::static_type() => {
                        current.get::<u32>().is_ok_and(|v| v == 0 || v > frames)
                    }
                    t if t == i32::static_type() => current
                        .get::<i32>()
                        .is_ok_and(|v| v <= 0 || v as u32 > frames),
                    _ => false,
                };
                if too_long {
                    let value = if spec.value_type() == i32::static_type() {
                        (frames as i32).to_value()
                    } else {
                        frames.to_value()
                    };
                    element.set_property_from_value("key-int-max", &value);
                }
            }
        }
        if element.factory().is_some_and(|f| f.name() == "x264enc") {
            element.set_property("option-string", "scenecut=0");
        }
    }
}

/// Builds a branch bin from checked launch text and refuses any source or
/// sink in it (a second line of defence behind the fragment allowlist).
pub(super) fn branch(text: &str, what: &str) -> Result<gst::Bin, JobError> {
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

/// Links a branch's output into a new pad of the muxer.
pub(super) fn link_branch(
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
