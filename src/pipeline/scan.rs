//! Scanning an input for the cuts of a segmented job: every packet of its
//! first video stream is read through `parsebin` (a demuxer and a parser,
//! no decoder), noting each frame's stream time and which frames are key
//! frames. Reading without decoding costs a small part of an encode; it
//! tells the planner where a segment can start without decoding frames it
//! then throws away, and how many frames the input has.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use super::{caps_name, internal, make, path_str, MediaInfo, NullOnDrop};
use crate::error::{ErrorKind, JobError};

/// What a scan learned about the input's first video stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// What the probe found (tracks, duration).
    pub media: MediaInfo,
    /// Video frames (packets) read.
    pub frames: u64,
    /// Stream time of the earliest frame, ns.
    pub first_ns: u64,
    /// Stream time of the latest frame plus its duration, ns.
    pub end_ns: u64,
    /// Nominal duration of one frame, ns: from the stream's frame rate,
    /// else the most common gap between frames.
    pub frame_ns: u64,
    /// Stream times of the key frames, ns, in order.
    pub keyframes: Vec<u64>,
}

/// What the pad probe gathers.
#[derive(Debug, Default)]
struct Gathered {
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    times: Vec<u64>,
    keyframes: Vec<u64>,
    frames: u64,
    end_ns: u64,
    frame_ns: Option<u64>,
    untimed: u64,
}

/// Reads every packet of the first video stream of `path` (probed as
/// `media`), calling `on_position` with the stream time reached.
pub fn scan(
    path: &std::path::Path,
    media: MediaInfo,
    on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<Scan, JobError> {
    super::init()?;
    let pipeline = gst::Pipeline::new();
    let _guard = NullOnDrop(pipeline.clone());
    let src = make("filesrc")?;
    src.set_property("location", path_str(path)?);
    let parse = make("parsebin")?;
    pipeline.add_many([&src, &parse]).map_err(internal)?;
    src.link(&parse).map_err(internal)?;
    let gathered = Arc::new(Mutex::new(Gathered::default()));
    let video_taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let weak = pipeline.downgrade();
    let g = gathered.clone();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let is_video = caps_name(Some(&caps)).starts_with("video/");
        if is_video && !video_taken.swap(true, std::sync::atomic::Ordering::SeqCst) {
            if let Some(s) = caps.structure(0) {
                if let Ok(rate) = s.get::<gst::Fraction>("framerate") {
                    if rate.numer() > 0 && rate.denom() > 0 {
                        lock(&g).frame_ns =
                            Some(1_000_000_000u64 * rate.denom() as u64 / rate.numer() as u64);
                    }
                }
            }
            let g = g.clone();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    gather(&g, info);
                    gst::PadProbeReturn::Ok
                },
            );
        }
        super::discard(&pipeline, pad);
    });
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| internal("cannot start the scan"))?;
    let duration = media.duration_ms.map(Duration::from_millis);
    let position = || {
        lock(&gathered)
            .times
            .last()
            .map(|t| Duration::from_nanos(*t))
    };
    super::bus::run_to_end(&pipeline, &bus, duration, on_position, position, || None)?;
    let _ = pipeline.set_state(gst::State::Null);
    let mut g = lock(&gathered);
    if g.frames == 0 {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            "the input's video stream has no frames",
        ));
    }
    if g.untimed > 0 {
        return Err(JobError::new(
            ErrorKind::UndecodableInput,
            format!(
                "{} of the input's {} video frames carry no timestamp, so the input cannot be cut into segments",
                g.untimed, g.frames
            ),
        ));
    }
    g.times.sort_unstable();
    g.keyframes.sort_unstable();
    g.keyframes.dedup();
    let frame_ns = g
        .frame_ns
        .or_else(|| common_gap(&g.times))
        .unwrap_or(40_000_000);
    Ok(Scan {
        media,
        frames: g.frames,
        first_ns: g.times.first().copied().unwrap_or(0),
        end_ns: g.end_ns.max(g.times.last().map_or(0, |t| t + frame_ns)),
        frame_ns,
        keyframes: std::mem::take(&mut g.keyframes),
    })
}

fn lock(g: &Mutex<Gathered>) -> std::sync::MutexGuard<'_, Gathered> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes a buffer's stream time (and whether it is a key frame), or the
/// segment it is in.
fn gather(g: &Mutex<Gathered>, info: &gst::PadProbeInfo) {
    let mut g = lock(g);
    if let Some(event) = info.event() {
        if let gst::EventView::Segment(s) = event.view() {
            g.segment = s.segment().downcast_ref::<gst::ClockTime>().cloned();
        }
        return;
    }
    let Some(buffer) = info.buffer() else {
        return;
    };
    g.frames += 1;
    let time = match (&g.segment, buffer.pts()) {
        (Some(segment), Some(pts)) => segment.to_stream_time(pts),
        _ => None,
    };
    let Some(time) = time.map(|t| t.nseconds()) else {
        g.untimed += 1;
        return;
    };
    g.times.push(time);
    let end = time + buffer.duration().map_or(0, |d| d.nseconds());
    g.end_ns = g.end_ns.max(end);
    if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
        g.keyframes.push(time);
    }
}

/// The most common gap between consecutive times (sorted), if any.
fn common_gap(times: &[u64]) -> Option<u64> {
    let mut gaps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 0)
        .collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_gap_is_the_median_of_the_positive_gaps() {
        assert_eq!(common_gap(&[0, 40, 80, 120, 200]), Some(40));
        assert_eq!(common_gap(&[5]), None);
        assert_eq!(common_gap(&[0, 0, 33, 66]), Some(33));
    }
}
