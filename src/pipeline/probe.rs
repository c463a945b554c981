//! Probing an input with GStreamer's Discoverer: its container, duration,
//! first video stream, and every audio and subtitle stream with its
//! language. The Discoverer decodes up to the first frames; that is what
//! tells an input no installed plugin can decode from one that is fine.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_pbutils as pbutils;
use gstreamer_pbutils::prelude::*;

use super::{caps_name, file_label, init, AudioStream, MediaInfo, SubtitleStream, VideoStream};
use crate::error::{ErrorKind, JobError};

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
        .map(|c| caps_name(c.caps().as_deref()));
    let video = info
        .video_streams()
        .into_iter()
        .find(|v| !v.is_image())
        .map(|v| {
            let fr = v.framerate();
            VideoStream {
                codec: caps_name(v.caps().as_deref()),
                width: v.width(),
                height: v.height(),
                frame_rate: if fr.denom() > 0 {
                    f64::from(fr.numer()) / f64::from(fr.denom())
                } else {
                    0.0
                },
                bitrate: v.bitrate(),
                pixel_aspect_ratio: {
                    let par = v.par();
                    let (n, d) = (par.numer(), par.denom());
                    (n > 0 && d > 0 && n != d).then_some((n as u32, d as u32))
                },
            }
        });
    let audio = info
        .audio_streams()
        .iter()
        .map(|a| AudioStream {
            codec: caps_name(a.caps().as_deref()),
            channels: a.channels(),
            sample_rate: a.sample_rate(),
            language: a.language().map(|l| l.to_string()),
        })
        .collect();
    let subtitles = info
        .subtitle_streams()
        .iter()
        .map(|s| SubtitleStream {
            codec: caps_name(s.caps().as_deref()),
            language: s.language().map(|l| l.to_string()),
        })
        .collect();
    Ok(MediaInfo {
        container,
        duration_ms: info.duration().map(|d| d.mseconds()),
        video,
        audio,
        subtitles,
    })
}
