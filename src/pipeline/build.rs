//! Building and running the transcode pipeline: `filesrc ! decodebin`, the
//! job's video branch and an audio branch per audio track, linked by
//! [`super::route`] as `decodebin` exposes the streams, with the subtitle
//! tracks, into the muxer and a `filesink`; and turning GStreamer's errors
//! into job errors of the right kind.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::route::{Router, ROUTING_FAILED};
use super::subtitles::decoder_caps;
use super::tracks::{Watch, Written};
use super::{init, internal, make, path_str, MediaInfo, NullOnDrop, Timings, TranscodeSpec};
use crate::error::{ErrorKind, JobError};

/// Runs the transcode described by `spec` for an input that `input` describes,
/// calling `on_position(position, duration)` about every 250 ms. Returns
/// what was written, for [`super::verify`].
pub fn transcode(
    spec: &TranscodeSpec,
    input: &MediaInfo,
    mut on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<Written, JobError> {
    init()?;
    if input.video.is_none() {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input has no video stream",
        ));
    }
    let pipeline = gst::Pipeline::new();
    let guard = NullOnDrop(pipeline.clone());
    let src = make("filesrc")?;
    src.set_property("location", path_str(&spec.input)?);
    let decode = make("decodebin")?;
    let mux = make(&spec.muxer)?;
    decode.set_property("caps", decoder_caps(&decode, &mux));
    let sink = make("filesink")?;
    sink.set_property("location", path_str(&spec.output)?);
    let video = branch(&spec.video, "video")?;
    pipeline
        .add_many([&src, &decode, video.upcast_ref(), &mux, &sink])
        .map_err(internal)?;
    src.link(&decode).map_err(internal)?;
    mux.link(&sink).map_err(internal)?;
    link_branch(&video, &mux, &spec.muxer, "video")?;
    let mut audio = Vec::new();
    for _ in &input.audio {
        let bin = branch(&spec.audio, "audio")?;
        pipeline.add(&bin).map_err(internal)?;
        link_branch(&bin, &mux, &spec.muxer, "audio")?;
        audio.push(bin);
    }
    let video_in = Watch::on(&video.static_pad("sink").expect("a branch has a sink"));
    let video_out = Watch::on(&video.static_pad("src").expect("a branch has a src"));
    let duration = input.duration_ms.map(Duration::from_millis);
    let router = std::sync::Arc::new(Router::new(&pipeline, &mux, spec, video, audio, duration));
    let r = router.clone();
    decode.connect_pad_added(move |_, pad| r.route(pad));
    let r = router.clone();
    decode.connect_no_more_pads(move |_| r.all_exposed());

    let started = Instant::now();
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        bus_error(&pipeline).unwrap_or_else(|| internal("cannot start the pipeline"))
    })?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    loop {
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(250),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Application,
            ],
        ) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(err) => {
                    return Err(router.error().unwrap_or(classify(err)))
                }
                gst::MessageView::Application(app)
                    if app.structure().is_some_and(|s| s.name() == ROUTING_FAILED) =>
                {
                    return Err(router
                        .error()
                        .unwrap_or_else(|| internal("a stream could not be linked")));
                }
                _ => {}
            }
        }
        if let Some(position) = video_in.position() {
            let duration = duration.or_else(|| {
                pipeline
                    .query_duration::<gst::ClockTime>()
                    .map(|d| Duration::from_nanos(d.nseconds()))
            });
            on_position(position, duration);
        }
    }
    let ended = Instant::now();
    pipeline
        .set_state(gst::State::Null)
        .map_err(|_| internal("cannot stop the pipeline"))?;
    drop(guard);
    let timings = end_timings(
        started,
        video_in.eos_at(),
        video_out.eos_at(),
        ended,
        ended.elapsed(),
    );
    if let Some(e) = router.error() {
        return Err(e);
    }
    if video_in.buffers() == 0 {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input's video stream produced no frames",
        ));
    }
    Ok(Written {
        timings,
        ..router.written()
    })
}

/// The stages of a run that started at `started` and whose end of stream
/// entered the video branch at `video_in_end`, left it at `video_out_end`
/// and reached the sink at `ended` (each end clamped between its
/// neighbours, so the stages add up to the whole); it then took `stop` to
/// stop.
fn end_timings(
    started: Instant,
    video_in_end: Option<Instant>,
    video_out_end: Option<Instant>,
    ended: Instant,
    stop: Duration,
) -> Timings {
    let video_in_end = video_in_end.unwrap_or(ended).clamp(started, ended);
    let video_out_end = video_out_end.unwrap_or(ended).clamp(video_in_end, ended);
    let ms = |d: Duration| d.as_millis() as u64;
    Timings {
        stream_ms: ms(video_in_end - started),
        encoder_flush_ms: ms(video_out_end - video_in_end),
        muxer_finish_ms: ms(ended - video_out_end),
        stop_ms: ms(stop),
        ..Timings::default()
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
pub(super) fn classify(err: &gst::message::Error) -> JobError {
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
