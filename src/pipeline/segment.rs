//! Encoding one part of a segmented job: a video segment (the frames
//! whose stream time is in `[from, until)`, through the job's video
//! branch, into a file of the output's container) or the audio part
//! (every audio track of the whole input, through the plan's audio
//! branch, into one file).
//!
//! `filesrc ! decodebin`: only the streams a part needs are decoded (the
//! others stop at their parser, through `autoplug-continue`, and go to a
//! `fakesink`). A video segment seeks to its start (a flushing accurate
//! seek, once its video reaches the encoder: the demuxer starts at the key
//! frame at or before it), and a probe before the encoder keeps exactly the
//! frames whose stream time is in the segment, whatever the seek did: two
//! neighbouring segments decode the same frames with the same timestamps,
//! so each frame goes to exactly one of them. The encoder is new for each
//! segment, so its first frame is a key frame (an IDR for H.264 and
//! H.265). The probe also rebases the timestamps so the part file starts
//! at 0; the part's first stream time travels beside it, and the join puts
//! every frame back at its stream time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::build::record_decoders;
use super::bus::{app, run_to_end, start_error, wait_for, FAILED, LINKED, WRITTEN};
use super::outputs::{branch, link_branch};
use super::part_spec::{AudioSpec, EncodedAudio, EncodedVideo, PartInput, VideoSpec};
use super::ranged::{self, ReadStats};
use super::tracks::Watch;
use super::{caps_name, discard, internal, make, path_str, NullOnDrop};
use crate::error::{ErrorKind, JobError};
use gstreamer as gst;
use gstreamer::prelude::*;

/// Where the timeline probe stands.
#[derive(Debug, Default)]
struct Timeline {
    from: Option<u64>,
    until: Option<u64>,
    /// Stream time that becomes 0 in the part file: the first frame kept.
    origin: Option<u64>,
    /// The segment of the stream before the probe, per pad.
    segments: Vec<(gst::Pad, gst::FormattedSegment<gst::ClockTime>)>,
    frames: u64,
    last: Option<u64>,
    end: u64,
    /// Frames before `from` and after `until`.
    before: u64,
    after: u64,
    /// The segment's last frame has passed.
    done: bool,
    /// An end of stream has passed.
    ended: bool,
    error: Option<JobError>,
}

type Shared = Arc<Mutex<Timeline>>;

/// What a recorder of decoders holds.
fn taken(decoders: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *decoders.lock().unwrap_or_else(|e| e.into_inner()))
}

fn lock(t: &Mutex<Timeline>) -> std::sync::MutexGuard<'_, Timeline> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes the video segment `spec` describes.
pub fn encode_video(
    spec: &VideoSpec,
    on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<EncodedVideo, JobError> {
    super::init()?;
    let reads = Arc::new(ReadStats::default());
    let (pipeline, decode, mux) =
        start_part(&spec.input, &reads, &spec.output, &spec.muxer, "video")?;
    let _guard = NullOnDrop(pipeline.clone());
    let decoders = record_decoders(&decode)?;
    let video = branch(&spec.video, "video")?;
    pipeline.add(&video).map_err(internal)?;
    link_branch(&video, &mux, &spec.muxer, "video")?;
    let timeline: Shared = Arc::new(Mutex::new(Timeline {
        from: spec.from_ns,
        until: spec.until_ns,
        ..Default::default()
    }));
    let sink = video.static_pad("sink").expect("a branch has a sink");
    keep_segment(&sink, timeline.clone(), &pipeline);
    let weak = pipeline.downgrade();
    let t = timeline.clone();
    decode.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let raw = caps_name(Some(&pad.query_caps(None))).starts_with("video/x-raw");
        if raw && !sink.is_linked() && pad.link(&sink).is_ok() {
            let _ = pipeline.post_message(app(LINKED));
        } else {
            end_with_segment(pad, t.clone());
            discard(&pipeline, pad);
        }
    });
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| start_error(&bus))?;
    if let Some(seek) = spec.seek_ns.filter(|s| *s > 0) {
        // Frames decoded before the seek are before the segment: the
        // probe drops them.
        wait_for(&bus, LINKED, Duration::from_secs(60))?;
        // Sent up from the decoder (the muxer downstream has no time to
        // seek in). An accurate seek keeps the stream times of the frames
        // what they are without a seek; a key-unit seek moves them.
        let seek = gst::event::Seek::new(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            gst::ClockTime::from_nseconds(seek),
            gst::SeekType::None,
            gst::ClockTime::NONE,
        );
        let decoder = video.static_pad("sink").and_then(|p| p.peer());
        if !decoder.is_some_and(|p| p.send_event(seek)) {
            // Correct anyway (the probe keeps the segment's frames), only slower.
            tracing::debug!("the seek was refused; decoding from the start");
        }
    }
    let from = spec.from_ns.unwrap_or(0);
    let length = spec
        .until_ns
        .map(|u| Duration::from_nanos(u.saturating_sub(from)));
    let t = timeline.clone();
    let position = move || {
        let t = lock(&t);
        t.last
            .map(|last| Duration::from_nanos(last.saturating_sub(from)))
    };
    let t = timeline.clone();
    run_to_end(&pipeline, &bus, length, on_position, position, || {
        lock(&t).error.clone()
    })?;
    let _ = pipeline.set_state(gst::State::Null);
    let t = lock(&timeline);
    if let Some(e) = &t.error {
        return Err(e.clone());
    }
    match t.origin {
        Some(first_ns) if t.frames > 0 => Ok(EncodedVideo {
            frames: t.frames,
            first_ns,
            end_ns: t.end.max(first_ns),
            decoders: taken(&decoders),
            decoded_before: t.before,
            decoded_after: t.after,
            fetched: reads.fetched(),
            fetched_ahead: reads.fetched_ahead(),
            read_wait_ms: reads.waited_ms(),
        }),
        _ => Err(JobError::new(
            ErrorKind::UndecodableInput,
            format!(
                "no frame of the input could be decoded between {:.3} s and {}",
                from as f64 / 1e9,
                spec.until_ns.map_or("its end".to_string(), |u| format!(
                    "{:.3} s",
                    u as f64 / 1e9
                ))
            ),
        )),
    }
}

/// Encodes the audio part `spec` describes.
pub fn encode_audio(
    spec: &AudioSpec,
    on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<EncodedAudio, JobError> {
    super::init()?;
    let reads = Arc::new(ReadStats::default());
    let (pipeline, decode, mux) =
        start_part(&spec.input, &reads, &spec.output, &spec.muxer, "audio")?;
    let _guard = NullOnDrop(pipeline.clone());
    let decoders = record_decoders(&decode)?;
    let timeline: Shared = Arc::default();
    let mut ready = VecDeque::new();
    let mut watches = Vec::new();
    for _ in 0..spec.tracks {
        let bin = branch(&spec.audio, "audio")?;
        pipeline.add(&bin).map_err(internal)?;
        link_branch(&bin, &mux, &spec.muxer, "audio")?;
        let sink = bin.static_pad("sink").expect("a branch has a sink");
        keep_segment(&sink, timeline.clone(), &pipeline);
        watches.push(Watch::on(
            &bin.static_pad("src").expect("a branch has a src"),
        ));
        ready.push_back(sink);
    }
    let ready = Arc::new(Mutex::new(ready));
    let weak = pipeline.downgrade();
    let r = ready.clone();
    decode.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let raw = caps_name(Some(&pad.query_caps(None))).starts_with("audio/x-raw");
        let next = raw
            .then(|| r.lock().unwrap_or_else(|e| e.into_inner()).pop_front())
            .flatten();
        match next {
            Some(sink) => {
                let _ = pad.link(&sink);
            }
            None => discard(&pipeline, pad),
        }
    });
    // A track the probe saw but the decoder did not expose must not hold
    // the muxer back: it ends at once (and the join then lacks a track).
    let r = ready.clone();
    decode.connect_no_more_pads(move |_| {
        for sink in r.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            sink.send_event(gst::event::Eos::new());
        }
    });
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| start_error(&bus))?;
    let t = timeline.clone();
    let position = move || lock(&t).last.map(Duration::from_nanos);
    let t = timeline.clone();
    run_to_end(&pipeline, &bus, None, on_position, position, || {
        lock(&t).error.clone()
    })?;
    let _ = pipeline.set_state(gst::State::Null);
    let t = lock(&timeline);
    if let Some(e) = &t.error {
        return Err(e.clone());
    }
    let tracks = watches.iter().filter(|w| w.buffers() > 0).count();
    Ok(EncodedAudio {
        tracks,
        first_ns: t.origin.unwrap_or(0),
        end_ns: t.end,
        decoders: taken(&decoders),
        fetched: reads.fetched(),
        fetched_ahead: reads.fetched_ahead(),
        read_wait_ms: reads.waited_ms(),
    })
}

/// `filesrc ! decodebin` (or the range source, noting what it does in
/// `reads`) and `muxer ! filesink` in a new pipeline: the decoder
/// decodes only streams of the kind `keep` (`video` or `audio`), and the
/// sink tells the bus when it has written everything.
fn start_part(
    input: &PartInput,
    reads: &Arc<ReadStats>,
    output: &std::path::Path,
    muxer: &str,
    keep: &'static str,
) -> Result<(gst::Pipeline, gst::Element, gst::Element), JobError> {
    let pipeline = gst::Pipeline::new();
    let src = match input {
        PartInput::File(path) => {
            let src = make("filesrc")?;
            src.set_property("location", path_str(path)?);
            src
        }
        PartInput::Ranged(ranged) => ranged::source(ranged, reads.clone())
            .map_err(|e| JobError::new(ErrorKind::Internal, format!("the range source: {e}")))?,
    };
    let decode = make("decodebin")?;
    // An elementary stream (out of a demuxer or a parser) of another kind
    // than `keep` is not decoded.
    decode.connect("autoplug-continue", false, move |values| {
        let pad = values.get(1).and_then(|v| v.get::<gst::Pad>().ok());
        let caps = values.get(2).and_then(|v| v.get::<gst::Caps>().ok());
        let name = caps_name(caps.as_deref());
        let kind = match name.split('/').next().unwrap_or_default() {
            "image" => "video",
            other => other,
        };
        // decodebin asks with its own ghost pad; what made the stream is
        // the element of the pad it targets.
        let made_by = pad.and_then(|p| match p.clone().downcast::<gst::GhostPad>() {
            Ok(ghost) => ghost.target(),
            Err(_) => Some(p),
        });
        let elementary = made_by
            .and_then(|p| p.parent_element())
            .and_then(|e| e.factory())
            .and_then(|f| {
                f.metadata(gst::ELEMENT_METADATA_KLASS)
                    .map(|k| k.to_string())
            })
            .is_some_and(|klass| klass.contains("Demux") || klass.contains("Parse"));
        Some((kind == keep || !elementary).to_value())
    });
    let mux = make(muxer)?;
    let sink = make("filesink")?;
    sink.set_property("location", path_str(output)?);
    sink.set_property("async", false);
    pipeline
        .add_many([&src, &decode, &mux, &sink])
        .map_err(internal)?;
    src.link(&decode).map_err(internal)?;
    mux.link(&sink).map_err(internal)?;
    let weak = pipeline.downgrade();
    sink.static_pad("sink")
        .expect("a sink has a sink pad")
        .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            if info
                .event()
                .is_some_and(|e| e.type_() == gst::EventType::Eos)
            {
                if let Some(p) = weak.upgrade() {
                    let _ = p.post_message(app(WRITTEN));
                }
            }
            gst::PadProbeReturn::Ok
        });
    Ok((pipeline, decode, mux))
}

/// The probe before a part's encoder: keeps the frames whose stream time
/// is in `[from, until)`, rebased so the first one kept is at 0 (under a
/// segment of its own from 0); ends the branch after the last one.
fn keep_segment(sink: &gst::Pad, timeline: Shared, pipeline: &gst::Pipeline) {
    let weak = pipeline.downgrade();
    sink.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            if let Some(event) = info.event() {
                return match event.view() {
                    gst::EventView::Segment(s) => {
                        let Some(segment) = s.segment().downcast_ref::<gst::ClockTime>() else {
                            return gst::PadProbeReturn::Ok;
                        };
                        let mut t = lock(&timeline);
                        t.segments.retain(|(p, _)| p != pad);
                        t.segments.push((pad.clone(), segment.clone()));
                        let mut ours = gst::FormattedSegment::<gst::ClockTime>::new();
                        ours.set_start(gst::ClockTime::ZERO);
                        info.data = Some(gst::PadProbeData::Event(gst::event::Segment::new(&ours)));
                        gst::PadProbeReturn::Ok
                    }
                    // One end of stream: the probe's own (after the
                    // segment's last frame) or the input's.
                    gst::EventView::Eos(_) => {
                        let mut t = lock(&timeline);
                        if std::mem::replace(&mut t.ended, true) {
                            consume(info)
                        } else {
                            gst::PadProbeReturn::Ok
                        }
                    }
                    _ => gst::PadProbeReturn::Ok,
                };
            }
            let mut t = lock(&timeline);
            let (pts, duration) = match info.buffer() {
                Some(b) => (b.pts(), b.duration()),
                None => return gst::PadProbeReturn::Ok,
            };
            if t.done {
                t.after += 1;
                return consume(info);
            }
            if t.error.is_some() {
                return consume(info);
            }
            let segment = t.segments.iter().find(|(p, _)| p == pad).map(|(_, s)| s);
            let Some(time) = segment
                .and_then(|s| s.to_stream_time(pts))
                .map(|t| t.nseconds())
            else {
                t.error = Some(JobError::new(
                    ErrorKind::UndecodableInput,
                    "a decoded frame has no timestamp, so it cannot be placed in a segment",
                ));
                if let Some(p) = weak.upgrade() {
                    let _ = p.post_message(app(FAILED));
                }
                return consume(info);
            };
            if t.from.is_some_and(|from| time < from) {
                t.before += 1;
                return consume(info);
            }
            if t.until.is_some_and(|until| time >= until) {
                t.done = true;
                t.after += 1;
                drop(t);
                // Once the end of stream has passed this pad, a frame
                // pushed into it gets "end of stream" back before any
                // probe: the decoder stops here.
                pad.send_event(gst::event::Eos::new());
                return consume(info);
            }
            let origin = *t.origin.get_or_insert(time);
            t.frames += 1;
            t.last = Some(t.last.map_or(time, |l| l.max(time)));
            t.end = t.end.max(time + duration.map_or(0, |d| d.nseconds()));
            drop(t);
            if let Some(buffer) = info.buffer_mut() {
                let buffer = buffer.make_mut();
                buffer.set_pts(gst::ClockTime::from_nseconds(time.saturating_sub(origin)));
                buffer.set_dts(gst::ClockTime::NONE);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Ends the stream of `pad` (one the part does not encode) once the
/// segment's last frame has passed, so the demuxer stops reading the
/// input there instead of going on to its end for this stream (which, on
/// an input read by ranges, would fetch it).
fn end_with_segment(pad: &gst::Pad, timeline: Shared) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if !lock(&timeline).done {
            return gst::PadProbeReturn::Ok;
        }
        drop(info.take_buffer());
        info.flow_res = Err(gst::FlowError::Eos);
        gst::PadProbeReturn::Handled
    });
}

/// Takes a probe's buffer or event out of the stream. (`Handled` with the
/// data taken: with `Drop`, GStreamer 1.22 would unreference the data the
/// binding already took.)
fn consume(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
    drop(info.take_buffer());
    drop(info.take_event());
    info.flow_res = Ok(gst::FlowSuccess::Ok);
    gst::PadProbeReturn::Handled
}
