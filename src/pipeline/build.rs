//! Building and running the transcode pipeline: `filesrc ! decodebin`,
//! the renditions of [`super::outputs`] (each a video branch and an audio
//! branch per audio track into its muxer), linked by [`super::route`]
//! through a `tee` per stream as `decodebin` exposes the streams; counting
//! the decoders it creates; and turning GStreamer's errors into job errors
//! of the right kind, naming the output they come from.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::bus::{classify, poll, start_error};
use super::outputs;
use super::route::{Router, ROUTING_FAILED};
use super::subtitles::decoder_caps;
use super::tracks::{Watch, Written};
use super::{init, internal, make, path_str, MediaInfo, NullOnDrop, Timings, TranscodeSpec};
use crate::error::{ErrorKind, JobError};

/// What a run wrote, for [`super::finish`].
#[derive(Debug, Clone, Default)]
pub struct Transcoded {
    /// For each output of the spec, in order: its renditions (one for a
    /// file, the chosen variants for an HLS package) and the sentences of
    /// the variants left out.
    pub outputs: Vec<(Vec<Rendered>, Vec<String>)>,
    /// The decoders the pipeline created (element factories).
    pub decoders: Vec<String>,
    /// Where the run's time went (all but probing and verifying).
    pub timings: Timings,
}

/// What one rendition wrote.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// The variant's folder (HLS), or "".
    pub variant: String,
    /// What reached its muxer.
    pub written: Written,
    /// Why its frames are shorter than its encoding asks, if they are.
    pub note: Option<String>,
}

/// Runs the transcode described by `spec` for an input that `input`
/// describes, calling `on_position(position, duration)` about every
/// 250 ms. The input is decoded once, whatever the number of outputs.
/// Returns what was written, for [`super::finish`].
pub fn transcode(
    spec: &TranscodeSpec,
    input: &MediaInfo,
    mut on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<Transcoded, JobError> {
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
    pipeline.add_many([&src, &decode]).map_err(internal)?;
    src.link(&decode).map_err(internal)?;
    let (renditions, left_out) = outputs::build(&pipeline, spec, input)?;
    let mut caps = decode.property::<gst::Caps>("caps");
    for r in renditions.iter().filter(|r| !r.hls()) {
        caps.merge(decoder_caps(&decode, &r.mux));
    }
    decode.set_property("caps", caps);
    let decoders = record_decoders(&decode)?;
    let video_in: Vec<_> = renditions
        .iter()
        .map(|r| Watch::on(&r.video.static_pad("sink").expect("a branch has a sink")))
        .collect();
    let video_out: Vec<_> = renditions
        .iter()
        .map(|r| Watch::on(&r.video.static_pad("src").expect("a branch has a src")))
        .collect();
    let made: Vec<(usize, String, Option<String>)> = renditions
        .iter()
        .map(|r| (r.output, r.variant.clone(), r.note.clone()))
        .collect();
    let duration = input.duration_ms.map(Duration::from_millis);
    let router = std::sync::Arc::new(Router::new(&pipeline, renditions, duration));
    let r = router.clone();
    decode.connect_pad_added(move |_, pad| r.route(pad));
    let r = router.clone();
    decode.connect_no_more_pads(move |_| r.all_exposed());
    let failed = |e: JobError| name_output(e, spec, &router.labels(), &made);

    let started = Instant::now();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| failed(start_error(&bus)))?;
    loop {
        if let Some(msg) = poll(&bus) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(err) => {
                    return Err(router.error().unwrap_or_else(|| failed(classify(err))))
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
        // The slowest branch is where the job stands.
        let positions: Option<Vec<Duration>> = video_in.iter().map(|w| w.position()).collect();
        if let Some(position) = positions.and_then(|p| p.into_iter().min()) {
            let duration = duration.or_else(|| {
                pipeline
                    .query_duration::<gst::ClockTime>()
                    .map(|d| Duration::from_nanos(d.nseconds()))
            });
            on_position(position, duration);
        }
    }
    let ended = Instant::now();
    // The formats come from the caps, which stopping clears.
    let written = router.written();
    let stopping = Instant::now();
    pipeline
        .set_state(gst::State::Null)
        .map_err(|_| internal("cannot stop the pipeline"))?;
    drop(guard);
    let timings = end_timings(
        started,
        last_eos(&video_in),
        last_eos(&video_out),
        ended,
        stopping.elapsed(),
    );
    if let Some(e) = router.error() {
        return Err(e);
    }
    if video_in.iter().any(|w| w.buffers() == 0) {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input's video stream produced no frames",
        ));
    }
    let mut outputs: Vec<(Vec<Rendered>, Vec<String>)> = left_out
        .into_iter()
        .map(|notes| (Vec::new(), notes))
        .collect();
    for ((output, variant, note), written) in made.into_iter().zip(written) {
        outputs[output].0.push(Rendered {
            variant,
            written,
            note,
        });
    }
    let decoders = decoders.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Transcoded {
        outputs,
        decoders,
        timings,
    })
}

/// Says which output a GStreamer error comes from, when its source is an
/// element of one rendition (named `<label>-video`, `<label>-mux`, ...).
fn name_output(
    mut e: JobError,
    spec: &TranscodeSpec,
    labels: &[String],
    made: &[(usize, String, Option<String>)],
) -> JobError {
    if spec.outputs.len() < 2 && made.len() < 2 {
        return e;
    }
    let found = labels
        .iter()
        .zip(made)
        .find(|(label, _)| e.message.contains(&format!(":{label}-")));
    if let Some((_, (output, variant, _))) = found {
        let key = &spec.outputs[*output].key;
        let which = if variant.is_empty() {
            format!("the output {key:?}")
        } else {
            format!("the output {key:?} (variant {variant})")
        };
        e.message = format!("{which}: {}", e.message);
    }
    e
}

/// When the end of the stream had passed every pad of `watches`, if it
/// has passed them all.
fn last_eos(watches: &[std::sync::Arc<Watch>]) -> Option<Instant> {
    let ends: Option<Vec<Instant>> = watches.iter().map(|w| w.eos_at()).collect();
    ends?.into_iter().max()
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

/// The decoders `decode` (a `decodebin`) creates, by element factory,
/// as it creates them.
pub(super) fn record_decoders(
    decode: &gst::Element,
) -> Result<std::sync::Arc<std::sync::Mutex<Vec<String>>>, JobError> {
    let decoders = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = decoders.clone();
    let decode_bin = decode
        .downcast_ref::<gst::Bin>()
        .ok_or_else(|| internal("decodebin is not a bin"))?;
    decode_bin.connect_deep_element_added(move |_, _, element| {
        let Some(factory) = element.factory() else {
            return;
        };
        let klass = factory
            .metadata(gst::ELEMENT_METADATA_KLASS)
            .unwrap_or_default();
        if klass.contains("Decoder") {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(factory.name().to_string());
        }
    });
    Ok(decoders)
}
