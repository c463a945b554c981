//! Joining the parts of a segmented job into its output, without encoding
//! anything: each video segment is read in order by its own demuxer (one
//! at a time, whatever their number) and its packets, put back at their
//! stream time, go through an `appsrc` into the output's muxer; the audio
//! part's demuxer feeds the muxer's audio pads beside it. The packets are
//! checked on the way: each segment holds the frames its encode reported,
//! its first frame is a key frame and sits where the segment starts, the
//! decoding timestamps only grow, and every segment begins where the one
//! before it ends, so the output has no gap and no repeated frame. The
//! output is then verified like any output ([`super::verify()`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use super::bus::run_to_end;
use super::discard;
use super::tracks::{Span, TrackKind, Watch, Written, WrittenTrack};
use super::verify::demuxer_for;
use super::{caps_name, internal, make, path_str, MediaInfo, NullOnDrop};
use crate::error::{ErrorKind, JobError};

/// Added to every timestamp pushed into the output, under a segment that
/// starts there, so that the decoding timestamps of the first frames
/// (before their presentation timestamps) stay positive.
const OFFSET_NS: u64 = 1000 * 3600 * 1_000_000_000;
/// Longest a part file may give no packet before its read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A stored part, fetched into a local file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartFile {
    /// Where it is.
    pub path: PathBuf,
    /// Stream time of its first frame or sample, ns (it starts at 0).
    pub first_ns: u64,
    /// Frames its encode wrote (0 for the audio part).
    pub frames: u64,
    /// Stream time where it ends, ns.
    pub end_ns: u64,
}

/// The parts to join and the output to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The video segments, in order.
    pub video: Vec<PartFile>,
    /// The audio part, when the input has audio.
    pub audio: Option<PartFile>,
    /// Audio tracks the audio part holds.
    pub audio_tracks: usize,
    /// The output file.
    pub output: PathBuf,
    /// The output's muxer (the parts are in its container).
    pub muxer: String,
    /// The input, as probed: what the output is verified against.
    pub input: MediaInfo,
    /// Nominal frame duration, ns.
    pub frame_ns: u64,
    /// Allowed difference between input and output duration, ms.
    pub duration_tolerance_ms: u64,
}

/// What the join made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// What the verification read from the output's headers.
    pub media: MediaInfo,
    /// Video frames written.
    pub frames: u64,
    /// Milliseconds the join took (reading, writing, verifying).
    pub join_ms: u64,
}

/// What the video feeder has pushed.
#[derive(Debug, Default)]
struct Fed {
    frames: u64,
    first: Option<i64>,
    end: i64,
    last_pts: Option<i64>,
    error: Option<JobError>,
}

/// Joins `spec`'s parts into its output, then verifies it.
pub fn join(
    spec: &JoinSpec,
    on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<Joined, JobError> {
    super::init()?;
    let started = Instant::now();
    check_continuity(spec)?;
    let pipeline = gst::Pipeline::new();
    let _guard = NullOnDrop(pipeline.clone());
    let mux = make(&spec.muxer)?;
    let sink = make("filesink")?;
    sink.set_property("location", path_str(&spec.output)?);
    let appsrc = make("appsrc")?;
    appsrc.set_property_from_str("format", "time");
    appsrc.set_property("block", true);
    appsrc.set_property("max-bytes", 16u64 << 20);
    appsrc.set_property("handle-segment-change", true);
    pipeline
        .add_many([&appsrc, &mux, &sink])
        .map_err(internal)?;
    let video_pad = mux
        .request_pad_simple("video_%u")
        .ok_or_else(|| internal(format!("{} gives no video pad", spec.muxer)))?;
    appsrc
        .static_pad("src")
        .expect("appsrc has a src")
        .link(&video_pad)
        .map_err(|_| bad(format!("the video segments cannot go into {}", spec.muxer)))?;
    mux.link(&sink).map_err(internal)?;
    let audio_watches = link_audio(&pipeline, &mux, spec)?;
    let fed = Arc::new(Mutex::new(Fed::default()));
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| internal("cannot start the join"))?;
    let demuxer = demuxer_for(&spec.muxer)?;
    let feeder = {
        let (appsrc, fed, parts, weak) = (
            appsrc.clone(),
            fed.clone(),
            spec.video.clone(),
            pipeline.downgrade(),
        );
        std::thread::spawn(move || {
            let result = feed(&appsrc, &parts, demuxer, &fed);
            let _ = appsrc.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
            if let Err(e) = result {
                lock(&fed).error.get_or_insert(e);
                if let Some(p) = weak.upgrade() {
                    let _ = p.post_message(gst::message::Application::new(
                        gst::Structure::new_empty("transcode-worker/part-failed"),
                    ));
                }
            }
        })
    };
    let duration = spec.input.duration_ms.map(Duration::from_millis);
    let f = fed.clone();
    let position = move || {
        lock(&f)
            .last_pts
            .map(|p| Duration::from_nanos(p.max(0) as u64))
    };
    let f = fed.clone();
    let ran = run_to_end(&pipeline, &bus, duration, on_position, position, || {
        lock(&f).error.clone()
    });
    let _ = pipeline.set_state(gst::State::Null);
    let _ = feeder.join();
    let fed = lock(&fed);
    if let Some(e) = &fed.error {
        return Err(e.clone());
    }
    ran?;
    let wanted: u64 = spec.video.iter().map(|p| p.frames).sum();
    if fed.frames != wanted {
        return Err(bad(format!(
            "the joined video has {} frames but its segments were encoded with {wanted}",
            fed.frames
        )));
    }
    let mut tracks = vec![WrittenTrack {
        kind: TrackKind::Video,
        span: fed.first.map(|first| Span {
            start_ns: first.max(0) as u64,
            end_ns: fed.end.max(first).max(0) as u64,
        }),
        format: Default::default(),
    }];
    tracks.extend(audio_watches.iter().map(|w| WrittenTrack {
        kind: TrackKind::Audio,
        span: w.span(),
        format: w.format(),
    }));
    let written = Written {
        tracks,
        left_out: Vec::new(),
    };
    let media = super::verify(
        &spec.output,
        &spec.muxer,
        spec.duration_tolerance_ms,
        &spec.input,
        &written,
    )?;
    Ok(Joined {
        media,
        frames: fed.frames,
        join_ms: started.elapsed().as_millis() as u64,
    })
}

fn bad(message: String) -> JobError {
    JobError::new(ErrorKind::OutputInvalid, message)
}

fn lock(f: &Mutex<Fed>) -> std::sync::MutexGuard<'_, Fed> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Refuses segments that do not follow each other: each must begin
/// where the one before it ends, within half a frame.
fn check_continuity(spec: &JoinSpec) -> Result<(), JobError> {
    let half = (spec.frame_ns / 2) as i64;
    for (i, pair) in spec.video.windows(2).enumerate() {
        let gap = pair[1].first_ns as i64 - pair[0].end_ns as i64;
        if gap.abs() > half {
            let what = if gap > 0 { "a gap" } else { "an overlap" };
            return Err(bad(format!(
                "segment {} begins at {:.3} s but segment {i} ends at {:.3} s: {what} of {:.3} s",
                i + 1,
                pair[1].first_ns as f64 / 1e9,
                pair[0].end_ns as f64 / 1e9,
                gap.abs() as f64 / 1e9
            )));
        }
    }
    Ok(())
}

/// Links the audio part's tracks into audio pads of `mux` (requested
/// before the pipeline starts), each shifted to its stream time.
fn link_audio(
    pipeline: &gst::Pipeline,
    mux: &gst::Element,
    spec: &JoinSpec,
) -> Result<Vec<Arc<Watch>>, JobError> {
    let Some(part) = &spec.audio else {
        return Ok(Vec::new());
    };
    let src = make("filesrc")?;
    src.set_property("location", path_str(&part.path)?);
    let demux = make(demuxer_for(&spec.muxer)?)?;
    pipeline.add_many([&src, &demux]).map_err(internal)?;
    src.link(&demux).map_err(internal)?;
    let mut ready = std::collections::VecDeque::new();
    let mut watches = Vec::new();
    for _ in 0..spec.audio_tracks {
        let queue = make("queue")?;
        pipeline.add(&queue).map_err(internal)?;
        let pad = mux
            .request_pad_simple("audio_%u")
            .ok_or_else(|| internal(format!("{} gives no audio pad", spec.muxer)))?;
        let out = queue.static_pad("src").expect("a queue has a src");
        out.link(&pad).map_err(internal)?;
        watches.push(Watch::on(&out));
        ready.push_back(queue);
    }
    let offset = part.first_ns as i64;
    let ready = Mutex::new(ready);
    let weak = pipeline.downgrade();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let audio = caps_name(Some(&pad.query_caps(None))).starts_with("audio/");
        let next = audio
            .then(|| ready.lock().unwrap_or_else(|e| e.into_inner()).pop_front())
            .flatten();
        match next {
            Some(queue) => {
                pad.set_offset(offset);
                let _ = pad.link(&queue.static_pad("sink").expect("a queue has a sink"));
            }
            None => discard(&pipeline, pad),
        }
    });
    Ok(watches)
}

/// Pushes every frame of `parts`, in order, into `appsrc` at its stream
/// time, checking each part against what its encode reported.
fn feed(
    appsrc: &gst::Element,
    parts: &[PartFile],
    demuxer: &str,
    fed: &Mutex<Fed>,
) -> Result<(), JobError> {
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_nseconds(OFFSET_NS));
    let mut caps: Option<gst::Caps> = None;
    let mut last_dts: Option<i64> = None;
    for (index, part) in parts.iter().enumerate() {
        let reader = Reader::open(part, demuxer)?;
        let mut frames = 0u64;
        let mut first_pts: Option<i64> = None;
        while let Some(sample) = reader.next()? {
            let (Some(buffer), Some(sample_caps), Some(sample_segment)) =
                (sample.buffer_owned(), sample.caps_owned(), sample.segment())
            else {
                continue;
            };
            let seg = sample_segment
                .downcast_ref::<gst::ClockTime>()
                .ok_or_else(|| bad(format!("segment {index} is not timed")))?;
            let wanted = caps.get_or_insert_with(|| sample_caps.clone());
            if !wanted.is_strictly_equal(&sample_caps) {
                return Err(bad(format!(
                    "segment {index} was encoded differently from segment 0 ({sample_caps} against {wanted})"
                )));
            }
            let shift = part.first_ns as i64;
            let pts = running(seg, buffer.pts())
                .ok_or_else(|| bad(format!("a frame of segment {index} has no timestamp")))?
                + shift;
            let dts = running(seg, buffer.dts()).map(|d| d + shift);
            if frames == 0 && buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                return Err(bad(format!(
                    "segment {index} does not begin with a key frame"
                )));
            }
            if let (Some(dts), Some(last)) = (dts, last_dts) {
                if dts <= last {
                    return Err(bad(format!(
                        "the decoding timestamps go back at {:.3} s in segment {index}",
                        dts as f64 / 1e9
                    )));
                }
            }
            last_dts = dts.or(last_dts);
            frames += 1;
            first_pts = Some(first_pts.map_or(pts, |f: i64| f.min(pts)));
            let end = pts + buffer.duration().map_or(0, |d| d.nseconds() as i64);
            {
                let mut f = lock(fed);
                f.frames += 1;
                f.first = Some(f.first.map_or(pts, |x| x.min(pts)));
                f.end = f.end.max(end);
                f.last_pts = Some(f.last_pts.map_or(pts, |x| x.max(pts)));
            }
            let mut out = buffer;
            {
                let out = out.make_mut();
                out.set_pts(at(pts));
                out.set_dts(dts.map(at));
            }
            let sample = gst::Sample::builder()
                .buffer(&out)
                .caps(wanted)
                .segment(&segment)
                .build();
            let flow = appsrc.emit_by_name::<gst::FlowReturn>("push-sample", &[&sample]);
            if flow != gst::FlowReturn::Ok {
                return Err(internal(format!(
                    "the output took no more frames ({flow:?})"
                )));
            }
        }
        if frames != part.frames {
            return Err(bad(format!(
                "segment {index} holds {frames} frames but its encode wrote {}",
                part.frames
            )));
        }
        let starts = first_pts.unwrap_or(0) - part.first_ns as i64;
        if starts.abs() > 1_000_000 {
            return Err(bad(format!(
                "segment {index} begins {:.3} s away from where it was cut",
                starts as f64 / 1e9
            )));
        }
    }
    Ok(())
}

/// The running time of `ts` in `segment`, ns (negative before its start).
fn running(
    segment: &gst::FormattedSegment<gst::ClockTime>,
    ts: Option<gst::ClockTime>,
) -> Option<i64> {
    match segment.to_running_time_full(ts)? {
        gst::Signed::Positive(t) => Some(t.nseconds() as i64),
        gst::Signed::Negative(t) => Some(-(t.nseconds() as i64)),
    }
}

/// A stream time as a timestamp under the output's segment.
fn at(ns: i64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds((OFFSET_NS as i64 + ns).max(0) as u64)
}

/// One part file read packet by packet: `filesrc ! demuxer ! appsink`.
struct Reader {
    pipeline: gst::Pipeline,
    sink: gst::Element,
}

impl Reader {
    fn open(part: &PartFile, demuxer: &str) -> Result<Reader, JobError> {
        let pipeline = gst::Pipeline::new();
        let src = make("filesrc")?;
        src.set_property("location", path_str(&part.path)?);
        let demux = make(demuxer)?;
        let sink = make("appsink")?;
        sink.set_property("sync", false);
        sink.set_property("max-buffers", 64u32);
        pipeline.add_many([&src, &demux, &sink]).map_err(internal)?;
        src.link(&demux).map_err(internal)?;
        let (s, weak) = (sink.clone(), pipeline.downgrade());
        demux.connect_pad_added(move |_, pad| {
            let video = caps_name(Some(&pad.query_caps(None)));
            let target = s.static_pad("sink").expect("appsink has a sink");
            if (video.starts_with("video/") || video.starts_with("image/")) && !target.is_linked() {
                let _ = pad.link(&target);
            } else if let Some(p) = weak.upgrade() {
                discard(&p, pad);
            }
        });
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| bad(format!("{} does not open", part.path.display())))?;
        Ok(Reader { pipeline, sink })
    }

    /// The next packet, `None` at the end; a demuxer error, or a file
    /// that gives nothing for [`READ_TIMEOUT`], fails.
    fn next(&self) -> Result<Option<gst::Sample>, JobError> {
        let bus = self.pipeline.bus().expect("a pipeline has a bus");
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let wait = 100_000_000u64;
            if let Some(sample) = self
                .sink
                .emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&wait])
            {
                return Ok(Some(sample));
            }
            if self.sink.property::<bool>("eos") {
                return Ok(None);
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                if let gst::MessageView::Error(err) = msg.view() {
                    return Err(bad(format!(
                        "a segment does not read back: {}",
                        err.error()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(bad(format!(
                    "a segment gave no frame for {} s",
                    READ_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
