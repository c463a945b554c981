//! Verifying a written output before it is stored, without decoding it:
//! the container's headers are read by its own demuxer (`filesrc !
//! qtdemux` or `matroskademux`), which exposes one pad per track
//! with its caps and knows the duration; no buffer goes past the demuxer.
//! That costs milliseconds where the Discoverer, which starts a decoder for
//! each stream, cost tenths of a second.
//!
//! The file is held to the input and to what the writing pipeline reports
//! ([`Written`]): it is not empty, its headers parse, it has a video track,
//! as many audio tracks as the input, as many subtitle tracks as were
//! written, a duration within the tolerance of the input's, and its video
//! track on its own too, measured by the media time that reached the
//! muxer (the container's duration is that of its longest track, so a
//! fragment that ends the video early would otherwise pass whenever the
//! audio runs on). The reference is the input's duration: GStreamer's
//! demuxers do not tell a track's own duration, and the video that
//! entered the branch is no measure of the input's (a branch that stops
//! taking frames stops its input too). So an input whose own video ends
//! more than the tolerance before its audio fails verification; the
//! tolerance is `pipeline.duration_tolerance`.

use std::path::Path;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::tracks::{TrackKind, Written};
use super::{
    caps_name, init, make, path_str, AudioStream, MediaInfo, NullOnDrop, SubtitleStream,
    VideoStream,
};
use crate::error::{ErrorKind, JobError};

/// How long reading the headers may take; they take milliseconds.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// The application message the demuxer's `no-more-pads` posts.
const HEADERS_READ: &str = "transcode-worker/headers-read";

/// Checks that the file at `path`, written by `muxer`, is well formed with
/// the tracks and durations the input (`input`) and the writing pipeline
/// (`written`) promise, within `tolerance_ms`; returns what its headers
/// say. Every failure is [`ErrorKind::OutputInvalid`].
pub fn verify(
    path: &Path,
    muxer: &str,
    tolerance_ms: u64,
    input: &MediaInfo,
    written: &Written,
) -> Result<MediaInfo, JobError> {
    let bad = |why: String| JobError::new(ErrorKind::OutputInvalid, format!("the output {why}"));
    let size = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot be read: {e}")))?
        .len();
    if size == 0 {
        return Err(bad("is empty".into()));
    }
    let out =
        read_headers(path, demuxer_for(muxer)?).map_err(|e| bad(format!("does not parse: {e}")))?;
    if out.video.is_none() {
        return Err(bad("has no video stream".into()));
    }
    if out.audio.len() != input.audio.len() {
        return Err(bad(format!(
            "has {} but the input has {}",
            tracks(out.audio.len(), "audio"),
            input.audio.len()
        )));
    }
    let audio = written.count(TrackKind::Audio);
    if audio != input.audio.len() {
        return Err(bad(format!(
            "was written with {} but the input has {}",
            tracks(audio, "audio"),
            input.audio.len()
        )));
    }
    let subtitles = written.count(TrackKind::Subtitle);
    if out.subtitles.len() != subtitles {
        return Err(bad(format!(
            "has {} but the pipeline wrote {subtitles}",
            tracks(out.subtitles.len(), "subtitle")
        )));
    }
    if let (Some(want), Some(got)) = (input.duration_ms, out.duration_ms) {
        if want.abs_diff(got) > tolerance_ms {
            return Err(bad(format!(
                "lasts {:.2} s but the input lasts {:.2} s",
                secs(got),
                secs(want)
            )));
        }
    }
    check_video(written, input, tolerance_ms, "the output")?;
    Ok(out)
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Checks that video reached the muxer for as long as the input lasts
/// (within `tolerance_ms`); `what` names the output in the message.
pub(super) fn check_video(
    written: &Written,
    input: &MediaInfo,
    tolerance_ms: u64,
    what: &str,
) -> Result<(), JobError> {
    let bad = |why: String| JobError::new(ErrorKind::OutputInvalid, why);
    let Some(video_out) = written.video_out() else {
        return Err(bad(format!("{what} has no video frames")));
    };
    if let Some(want) = input.duration_ms {
        let got = video_out.duration().as_millis() as u64;
        if want.abs_diff(got) > tolerance_ms {
            return Err(bad(format!(
                "{what}'s video lasts {:.2} s but the input lasts {:.2} s",
                secs(got),
                secs(want)
            )));
        }
    }
    Ok(())
}

/// "no audio track", "1 audio track", "2 audio tracks".
fn tracks(n: usize, kind: &str) -> String {
    match n {
        0 => format!("no {kind} track"),
        1 => format!("1 {kind} track"),
        n => format!("{n} {kind} tracks"),
    }
}

/// The demuxer that reads what `muxer` writes.
pub(super) fn demuxer_for(muxer: &str) -> Result<&'static str, JobError> {
    match muxer {
        "mp4mux" | "qtmux" => Ok("qtdemux"),
        "matroskamux" | "webmmux" => Ok("matroskademux"),
        other => Err(JobError::new(
            ErrorKind::Internal,
            format!("no demuxer is known for {other}'s output"),
        )),
    }
}

/// The container type GStreamer's type finders see in the first bytes of
/// the file at `path`.
fn container_of(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16 * 1024);
    std::fs::File::open(path)
        .and_then(|f| f.take(16 * 1024).read_to_end(&mut head))
        .ok()?;
    let (_, caps) = gst::SliceTypeFind::type_find(&head);
    caps.map(|c| caps_name(Some(&c)))
}

/// Reads the headers of the file at `path` with `demuxer`: the container,
/// the duration, and the caps of each track. The demuxer's pads are
/// blocked at their first buffer, so nothing past the headers is read
/// (but the index a demuxer may need to know the duration).
pub(super) fn read_headers(path: &Path, demuxer: &str) -> Result<MediaInfo, String> {
    init().map_err(|e| e.message)?;
    let pipeline = gst::Pipeline::new();
    let _guard = NullOnDrop(pipeline.clone());
    let src = make("filesrc").map_err(|e| e.message)?;
    src.set_property("location", path_str(path).map_err(|e| e.message)?);
    let demux = make(demuxer).map_err(|e| e.message)?;
    pipeline
        .add_many([&src, &demux])
        .and_then(|_| src.link(&demux))
        .map_err(|e| e.to_string())?;
    demux.connect_pad_added(|_, pad| {
        pad.add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER,
            |_, _| gst::PadProbeReturn::Ok,
        );
    });
    demux.connect_no_more_pads(|demux| {
        let _ = demux.post_message(gst::message::Application::new(gst::Structure::new_empty(
            HEADERS_READ,
        )));
    });
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let error = |msg: &gst::Message| match msg.view() {
        gst::MessageView::Error(err) => Some(format!(
            "{} ({})",
            err.error(),
            err.debug().unwrap_or_default()
        )),
        _ => None,
    };
    if pipeline.set_state(gst::State::Paused).is_err() {
        let msg = bus.timed_pop_filtered(gst::ClockTime::ZERO, &[gst::MessageType::Error]);
        return Err(msg
            .as_ref()
            .and_then(error)
            .unwrap_or_else(|| "the demuxer does not start".into()));
    }
    let deadline = Instant::now() + HEADERS_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[
                gst::MessageType::Application,
                gst::MessageType::Error,
                gst::MessageType::Eos,
            ],
        ) else {
            return Err(format!(
                "{demuxer} read no headers in {} s",
                HEADERS_TIMEOUT.as_secs()
            ));
        };
        match msg.view() {
            gst::MessageView::Application(app)
                if app.structure().is_some_and(|s| s.name() == HEADERS_READ) =>
            {
                break
            }
            gst::MessageView::Eos(_) => return Err("it ends before its headers".into()),
            _ => {
                if let Some(e) = error(&msg) {
                    return Err(e);
                }
            }
        }
    }
    let pads = demux.src_pads();
    let mut info = MediaInfo {
        container: container_of(path),
        duration_ms: pads
            .first()
            .and_then(|p| p.query_duration::<gst::ClockTime>())
            .map(|d| d.mseconds()),
        ..Default::default()
    };
    for pad in &pads {
        let Some(caps) = pad.current_caps() else {
            continue;
        };
        let Some(s) = caps.structure(0) else {
            continue;
        };
        let codec = s.name().to_string();
        let int = |field: &str| s.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok());
        if codec.starts_with("video/") || codec.starts_with("image/") {
            let fps = s
                .get::<gst::Fraction>("framerate")
                .ok()
                .filter(|f| f.denom() > 0)
                .map_or(0.0, |f| f64::from(f.numer()) / f64::from(f.denom()));
            let video = VideoStream {
                codec,
                width: int("width").unwrap_or(0),
                height: int("height").unwrap_or(0),
                frame_rate: fps,
                bitrate: 0,
                pixel_aspect_ratio: None,
            };
            info.video.get_or_insert(video);
        } else if codec.starts_with("audio/") {
            info.audio.push(AudioStream {
                codec,
                channels: int("channels").unwrap_or(0),
                sample_rate: int("rate").unwrap_or(0),
                language: None,
            });
        } else {
            info.subtitles.push(SubtitleStream {
                codec,
                language: None,
            });
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{probe, Span, WrittenTrack};
    use std::process::Command;

    /// Runs ffmpeg with `args` writing `out`.
    fn ffmpeg(args: &str, out: &Path) {
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y"])
            .args(args.split_whitespace())
            .arg(out)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success(), "ffmpeg {args} {}", out.display());
    }

    const VIDEO: &str = "-f lavfi -i testsrc=size=160x120:rate=25:duration=2";
    const AUDIO: &str = "-f lavfi -i sine=frequency=440:sample_rate=48000:duration=2";

    /// Verifies `path`, written by `muxer`, with a tolerance of 500 ms.
    fn check_file(
        path: &Path,
        muxer: &str,
        input: &MediaInfo,
        written: &Written,
    ) -> Result<MediaInfo, JobError> {
        verify(path, muxer, 500, input, written)
    }

    /// What a pipeline that carried a 2 s video and `audio` audio tracks
    /// into the muxer reports.
    fn written(audio: usize, video_out_ms: u64) -> Written {
        let span = |ms: u64| {
            Some(Span {
                start_ns: 0,
                end_ns: ms * 1_000_000,
            })
        };
        let mut tracks = vec![WrittenTrack {
            kind: TrackKind::Video,
            span: span(video_out_ms),
            ..Default::default()
        }];
        tracks.extend((0..audio).map(|_| WrittenTrack {
            kind: TrackKind::Audio,
            span: span(2000),
            ..Default::default()
        }));
        Written {
            tracks,
            ..Written::default()
        }
    }

    /// An output that lacks the audio its input had is rejected. The
    /// worker's own pipeline gives every audio track of the input its
    /// branch and fails the attempt when one cannot be linked, so it cannot
    /// be made to drop audio; the check is shown on real files instead: an
    /// input with audio, and an output (a real MP4) with none.
    #[test]
    fn an_output_without_the_audio_its_input_had_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mkv");
        ffmpeg(&format!("{VIDEO} {AUDIO} -c:v mpeg4 -c:a aac"), &input);
        let input = probe(&input, Duration::from_secs(30)).unwrap();
        assert_eq!(input.audio.len(), 1, "{input:?}");

        let silent = dir.path().join("silent.mp4");
        ffmpeg(&format!("{VIDEO} -c:v mpeg4"), &silent);
        let err = check_file(&silent, "mp4mux", &input, &written(0, 2000)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutputInvalid);
        assert_eq!(
            err.message,
            "the output has no audio track but the input has 1"
        );

        // The same check passes the output that has it.
        let whole = dir.path().join("whole.mp4");
        ffmpeg(&format!("{VIDEO} {AUDIO} -c:v mpeg4 -c:a aac"), &whole);
        let out = check_file(&whole, "mp4mux", &input, &written(1, 2000)).unwrap();
        // And holds the pipeline to the input too.
        let err = check_file(&whole, "mp4mux", &input, &written(0, 2000)).unwrap_err();
        assert_eq!(
            err.message,
            "the output was written with no audio track but the input has 1"
        );
        assert_eq!(out.audio.len(), 1);
        assert_eq!(out.container.as_deref(), Some("video/quicktime"));
    }

    #[test]
    fn a_video_track_shorter_than_the_input_is_rejected_though_the_audio_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mkv");
        ffmpeg(&format!("{VIDEO} {AUDIO} -c:v mpeg4 -c:a aac"), &input);
        let input = probe(&input, Duration::from_secs(30)).unwrap();
        // The container lasts 2 s (its audio does), its video one frame.
        let short = dir.path().join("short.mkv");
        let one_frame = VIDEO.replace("duration=2", "duration=0.04");
        ffmpeg(&format!("{one_frame} {AUDIO} -c:v mpeg4 -c:a aac"), &short);
        let err = check_file(&short, "matroskamux", &input, &written(1, 40)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutputInvalid);
        assert!(
            err.message
                .starts_with("the output's video lasts 0.04 s but the input lasts 2.0"),
            "{}",
            err.message
        );
    }

    #[test]
    fn garbage_empty_and_missing_tracks_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mkv");
        ffmpeg(&format!("{VIDEO} -c:v mpeg4"), &input);
        let input = probe(&input, Duration::from_secs(30)).unwrap();
        let check = |name: &str, bytes: &[u8], written: &Written| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = check_file(&path, "mp4mux", &input, written).unwrap_err();
            assert_eq!(err.kind, ErrorKind::OutputInvalid);
            err.message
        };
        assert_eq!(
            check("empty.mp4", b"", &written(0, 2000)),
            "the output is empty"
        );
        let garbage = check("garbage.mp4", &[7u8; 4096], &written(0, 2000));
        assert!(
            garbage.starts_with("the output does not parse"),
            "{garbage}"
        );
        // A truncated MP4: its index (at the end) is missing.
        let whole = dir.path().join("whole.mp4");
        ffmpeg(&format!("{VIDEO} -c:v mpeg4"), &whole);
        let bytes = std::fs::read(&whole).unwrap();
        let cut = check("cut.mp4", &bytes[..bytes.len() / 2], &written(0, 2000));
        assert!(cut.starts_with("the output does not parse"), "{cut}");
        // A subtitle track was written that the file does not have.
        let mut promised = written(0, 2000);
        promised.tracks.push(WrittenTrack {
            kind: TrackKind::Subtitle,
            span: None,
            ..Default::default()
        });
        assert_eq!(
            check("whole2.mp4", &bytes, &promised),
            "the output has no subtitle track but the pipeline wrote 1"
        );
    }
}
