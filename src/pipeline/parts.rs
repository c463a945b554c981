//! The pipelines of a segmented job, as the pipeline process runs them:
//! a [`PartRequest`] in, a [`PartOutcome`] out.
//!
//! - scan (scan.rs): probe the input and read its video packets for the
//!   key frames a cut may land on;
//! - video and audio (segment.rs): encode one video segment, or the
//!   audio of the whole input, into a part file;
//! - join (join.rs): the parts into the output, without encoding, then
//!   verify it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::join::{JoinSpec, Joined};
use super::part_spec::{AudioSpec, EncodedAudio, EncodedVideo, VideoSpec};
use super::scan::Scan;
use crate::error::JobError;

/// What the pipeline process is asked to do for a segmented job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "part_request", rename_all = "snake_case")]
pub enum PartRequest {
    /// Probe and scan an input.
    Scan {
        /// The input file.
        input: PathBuf,
        /// Largest input accepted: width, height (pixels) and duration (ms).
        max_input: (u32, u32, u64),
    },
    /// Encode one video segment.
    Video(VideoSpec),
    /// Encode the audio part.
    Audio(AudioSpec),
    /// Encode a video segment and, in a second pipeline beside it, the
    /// audio part, as a whole-file transcode encodes its audio beside its
    /// video (positions are the video's).
    VideoAndAudio {
        /// The video segment.
        video: VideoSpec,
        /// The audio part.
        audio: AudioSpec,
    },
    /// Join the parts into the output and verify it.
    Join(JoinSpec),
}

/// What a [`PartRequest`] made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "made", rename_all = "snake_case")]
pub enum PartOutcome {
    /// The scan of an input.
    Scanned(Scan),
    /// A video segment.
    Video(EncodedVideo),
    /// The audio part.
    Audio(EncodedAudio),
    /// A video segment and the audio part encoded beside it.
    VideoAndAudio {
        /// The video segment.
        video: EncodedVideo,
        /// The audio part.
        audio: EncodedAudio,
        /// How long the audio part took, ms.
        audio_ms: u64,
    },
    /// The joined, verified output.
    Joined(Joined),
}

/// Runs `request`, calling `on_position(position, duration)` as it goes.
pub fn run_part(
    request: &PartRequest,
    on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<PartOutcome, JobError> {
    match request {
        PartRequest::Scan { input, max_input } => {
            let media = super::probe(input, Duration::from_secs(60))?;
            super::check_limits(*max_input, &media)?;
            super::scan::scan(input, media, on_position).map(PartOutcome::Scanned)
        }
        PartRequest::Video(spec) => {
            super::segment::encode_video(spec, on_position).map(PartOutcome::Video)
        }
        PartRequest::Audio(spec) => {
            super::segment::encode_audio(spec, on_position).map(PartOutcome::Audio)
        }
        PartRequest::VideoAndAudio { video, audio } => encode_beside(video, audio, on_position),
        PartRequest::Join(spec) => super::join::join(spec, on_position).map(PartOutcome::Joined),
    }
}

/// A position and, when known, the duration a pipeline reported.
type Heard = (Duration, Option<Duration>);

/// Encodes `video` and, in a thread beside it, `audio`. Positions are in
/// the segment's time, at the share done of the slower of the two, so an
/// audio part that outlasts its segment (the audio of a long input) still
/// moves, and the stall watch does not take it for a hung pipeline.
fn encode_beside(
    video: &VideoSpec,
    audio: &AudioSpec,
    mut on_position: impl FnMut(Duration, Option<Duration>),
) -> Result<PartOutcome, JobError> {
    // The audio's position and duration as it last reported them (`None`
    // before its first report): its share done is 0 until it reports, and
    // unknown (`None`) when its pipeline cannot tell its duration.
    let heard: Arc<Mutex<Option<Heard>>> = Arc::default();
    let audio_share = || match *heard.lock().unwrap_or_else(|e| e.into_inner()) {
        None => Some(0.0),
        Some((at, of)) => of
            .filter(|d| !d.is_zero())
            .map(|d| (at.as_secs_f64() / d.as_secs_f64()).min(1.0)),
    };
    std::thread::scope(|scope| {
        let h = heard.clone();
        let audio_thread = scope.spawn(move || {
            let started = std::time::Instant::now();
            super::segment::encode_audio(audio, |at, of| {
                *h.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, of));
            })
            .map(|a| (a, started.elapsed().as_millis() as u64))
        });
        let mut length = None;
        let video = super::segment::encode_video(video, |at, of| {
            length = of.or(length);
            let Some(of) = of.filter(|d| !d.is_zero()) else {
                return on_position(at, None);
            };
            let share = (at.as_secs_f64() / of.as_secs_f64()).min(1.0);
            let share = audio_share().map_or(share, |a| share.min(a));
            on_position(of.mul_f64(share), Some(of));
        });
        // The video is done: the audio's share alone, until it ends (past
        // the segment's length when its duration is unknown, so it moves).
        let length = length.unwrap_or(Duration::from_secs(1));
        while !audio_thread.is_finished() {
            let at = match audio_share() {
                Some(share) => length.mul_f64(share),
                None => {
                    let heard = *heard.lock().unwrap_or_else(|e| e.into_inner());
                    length + heard.map_or(Duration::ZERO, |(at, _)| at)
                }
            };
            on_position(at, Some(length));
            std::thread::sleep(Duration::from_millis(250));
        }
        let audio = audio_thread
            .join()
            .unwrap_or_else(|_| Err(super::internal("the audio part's pipeline panicked")));
        let (video, (audio, audio_ms)) = (video?, audio?);
        Ok(PartOutcome::VideoAndAudio {
            video,
            audio,
            audio_ms,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{AudioSpec, JoinSpec, PartFile, VideoSpec};
    use std::path::Path;
    use std::process::Command;

    fn ffmpeg(args: &str, out: &Path) {
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y"])
            .args(args.split_whitespace())
            .arg(out)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success(), "ffmpeg {args}");
    }

    /// An H.264 + AAC MP4 in `dir` of `secs` seconds at `size`, 25 frames
    /// a second, a key frame every second; `-bf B` given as `bframes`.
    fn h264_aac(dir: &Path, size: &str, secs: u32, bframes: &str) -> std::path::PathBuf {
        let input = dir.join("in.mp4");
        ffmpeg(
            &format!(
                "-f lavfi -i testsrc=size={size}:rate=25:duration={secs} -f lavfi -i sine=frequency=440:sample_rate=48000:duration={secs} -c:v libx264 -pix_fmt yuv420p -g 25 {bframes} -c:a aac"
            ),
            &input,
        );
        input
    }

    /// `ffprobe` of the video packets of `path`: (pts, dts, key) in seconds.
    fn packets(path: &Path) -> Vec<(f64, Option<f64>, bool)> {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts_time,dts_time,flags",
                "-of",
                "csv=p=0",
            ])
            .arg(path)
            .output()
            .expect("ffprobe runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].parse().unwrap(), f[1].parse().ok(), f[2].contains('K'))
            })
            .collect()
    }

    fn run(request: &PartRequest) -> PartOutcome {
        run_part(request, |_, _| {}).unwrap_or_else(|e| panic!("{request:?}: {e}"))
    }

    /// Three segments and the audio part, joined; with `beside`, the
    /// audio part is encoded beside the last segment in one request.
    fn join_three(muxer: &str, ext: &str, video: &str, audio: &str, beside: bool) {
        let dir = tempfile::tempdir().unwrap();
        let input = h264_aac(dir.path(), "320x240", 6, "-bf 3");
        let PartOutcome::Scanned(scan) = run(&PartRequest::Scan {
            input: input.clone(),
            max_input: (4096, 4096, 3_600_000),
        }) else {
            panic!()
        };
        assert_eq!(scan.frames, 150);
        assert_eq!(scan.keyframes.len(), 6, "{scan:?}");
        // Cuts at a key frame (2 s) and in the middle of a GOP (4.2 s).
        let half = scan.frame_ns / 2;
        let cuts = [
            None,
            Some(2_000_000_000 - half),
            Some(4_200_000_000 - half),
            None,
        ];
        let seeks = [None, Some(2_000_000_000), Some(4_000_000_000)];
        let audio_out = dir.path().join(format!("a.{ext}"));
        let audio_spec = AudioSpec {
            input: input.clone().into(),
            output: audio_out.clone(),
            audio: audio.into(),
            muxer: muxer.into(),
            tracks: 1,
        };
        let mut encoded_audio = None;
        let mut parts = Vec::new();
        let mut video_decoders = Vec::new();
        for i in 0..3 {
            let output = dir.path().join(format!("v{i}.{ext}"));
            let spec = VideoSpec {
                input: input.clone().into(),
                output: output.clone(),
                video: video.into(),
                muxer: muxer.into(),
                from_ns: cuts[i],
                until_ns: cuts[i + 1],
                seek_ns: seeks[i],
            };
            let v = if beside && i == 2 {
                let PartOutcome::VideoAndAudio {
                    video,
                    audio,
                    audio_ms,
                } = run(&PartRequest::VideoAndAudio {
                    video: spec,
                    audio: audio_spec.clone(),
                })
                else {
                    panic!()
                };
                assert!(audio_ms > 0);
                encoded_audio = Some(audio);
                video
            } else {
                let PartOutcome::Video(v) = run(&PartRequest::Video(spec)) else {
                    panic!()
                };
                v
            };
            eprintln!("part {i}: {v:?}");
            assert_eq!(
                v.decoders.len(),
                1,
                "a video part decodes its video stream and nothing else: {:?}",
                v.decoders
            );
            video_decoders = v.decoders.clone();
            parts.push(PartFile {
                path: output,
                first_ns: v.first_ns,
                frames: v.frames,
                end_ns: v.end_ns,
            });
        }
        assert_eq!(parts.iter().map(|p| p.frames).sum::<u64>(), 150);
        let a = match encoded_audio {
            Some(a) => a,
            None => {
                let PartOutcome::Audio(a) = run(&PartRequest::Audio(audio_spec.clone())) else {
                    panic!()
                };
                a
            }
        };
        eprintln!("audio: {a:?}");
        assert_eq!(
            a.decoders.len(),
            1,
            "the audio part decodes its audio track and nothing else: {:?}",
            a.decoders
        );
        assert_ne!(
            a.decoders, video_decoders,
            "the audio part decoded the video"
        );
        let output = dir.path().join(format!("out.{ext}"));
        let PartOutcome::Joined(j) = run(&PartRequest::Join(JoinSpec {
            video: parts,
            audio: Some(PartFile {
                path: audio_out,
                first_ns: a.first_ns,
                frames: 0,
                end_ns: a.end_ns,
            }),
            audio_tracks: 1,
            output: output.clone(),
            muxer: muxer.into(),
            input: scan.media.clone(),
            frame_ns: scan.frame_ns,
            duration_tolerance_ms: 500,
        })) else {
            panic!()
        };
        eprintln!("joined: {j:?}");
        let pk = packets(&output);
        assert_eq!(pk.len(), 150);
        let mut pts: Vec<f64> = pk.iter().map(|p| p.0).collect();
        pts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (i, w) in pts.windows(2).enumerate() {
            assert!((w[1] - w[0] - 0.04).abs() < 0.002, "gap at {i}: {w:?}");
        }
        let keys: Vec<f64> = pk.iter().filter(|p| p.2).map(|p| p.0).collect();
        eprintln!("keys {keys:?} first pts {}", pts[0]);
        assert!(keys.iter().any(|k| (k - 2.0).abs() < 0.01));
        assert!(keys.iter().any(|k| (k - 4.2).abs() < 0.01));
    }

    /// The audio of a whole input may take longer than its segment: the
    /// positions of the pair keep moving until the audio ends (no gap
    /// near the stall watch's), and end at the whole segment.
    #[test]
    fn a_pair_keeps_reporting_while_its_audio_outlasts_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let input = h264_aac(dir.path(), "160x120", 4, "");
        let video = VideoSpec {
            input: input.clone().into(),
            output: dir.path().join("v.mp4"),
            video: "videoconvert ! x264enc speed-preset=ultrafast".into(),
            muxer: "mp4mux".into(),
            from_ns: None,
            until_ns: Some(180_000_000),
            seek_ns: None,
        };
        // About 190 buffers of AAC input at 10 ms each: 1.9 s or more,
        // however fast the machine, against a few frames of video.
        let audio = AudioSpec {
            input: input.into(),
            output: dir.path().join("a.mp4"),
            audio: format!("identity sleep-time=10000 ! {}", crate::plan::DEFAULT_AAC),
            muxer: "mp4mux".into(),
            tracks: 1,
        };
        let mut seen = Vec::new();
        let outcome = run_part(&PartRequest::VideoAndAudio { video, audio }, |at, of| {
            seen.push((std::time::Instant::now(), at, of))
        })
        .expect("the pair");
        let ended = std::time::Instant::now();
        let PartOutcome::VideoAndAudio { video, audio, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(video.frames, 5);
        assert!(audio.end_ns > 3_900_000_000, "{audio:?}");
        let first = seen.first().expect("positions").0;
        let mut times: Vec<_> = seen.iter().map(|s| s.0).collect();
        times.push(ended);
        let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            ended - first > Duration::from_millis(1500),
            "the audio was not slow"
        );
        assert!(
            gap < Duration::from_millis(1000),
            "a gap of {gap:?} in {seen:?}"
        );
        let shares: Vec<f64> = seen
            .iter()
            .filter_map(|(_, at, of)| of.map(|of| at.as_secs_f64() / of.as_secs_f64()))
            .collect();
        assert!(shares.windows(2).all(|w| w[1] >= w[0]), "{shares:?}");
        assert!(*shares.last().unwrap() > 0.9, "{shares:?}");
    }

    /// A segment stops its decoder at its end (the end of stream the probe
    /// sends answers the next frame "end of stream"): the decoder does not
    /// go on through the rest of the input while the encoder finishes (a
    /// slow encoder here, so that a decoder left running would decode most
    /// of the input's 500 frames).
    #[test]
    fn a_segment_stops_decoding_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let input = h264_aac(dir.path(), "320x240", 20, "-bf 2");
        let spec = |from_ns: Option<u64>, until_ns: Option<u64>, seek_ns| VideoSpec {
            input: input.clone().into(),
            output: dir.path().join(format!("v{}.mp4", from_ns.unwrap_or(0))),
            video: "identity sleep-time=20000 ! videoconvert ! x264enc speed-preset=ultrafast"
                .into(),
            muxer: "mp4mux".into(),
            from_ns,
            until_ns,
            seek_ns,
        };
        let half = 20_000_000;
        for (from, until, seek) in [
            (None, Some(2_000_000_000 - half), None),
            (
                Some(4_000_000_000 - half),
                Some(6_000_000_000 - half),
                Some(4_000_000_000),
            ),
        ] {
            let PartOutcome::Video(v) = run(&PartRequest::Video(spec(from, until, seek))) else {
                panic!()
            };
            assert_eq!(v.frames, 50, "{v:?}");
            assert!(
                (1..=10).contains(&v.decoded_after),
                "the decoder went on past the segment: {v:?}"
            );
        }
    }

    #[test]
    fn three_segments_join_into_mp4() {
        join_three(
            "mp4mux",
            "mp4",
            "videoconvert ! x264enc speed-preset=ultrafast",
            crate::plan::DEFAULT_AAC,
            false,
        );
    }

    #[test]
    fn three_segments_with_b_frames_and_the_audio_beside_one_join_into_mp4() {
        join_three(
            "mp4mux",
            "mp4",
            "videoconvert ! x264enc speed-preset=medium",
            crate::plan::DEFAULT_AAC,
            true,
        );
    }

    #[test]
    fn three_segments_and_the_audio_beside_one_join_into_mkv() {
        join_three(
            "matroskamux",
            "mkv",
            "videoconvert ! x264enc speed-preset=medium",
            crate::plan::DEFAULT_AAC,
            true,
        );
    }

    #[test]
    fn three_segments_join_into_webm() {
        join_three(
            "webmmux",
            "webm",
            "videoconvert ! vp9enc deadline=1 cpu-used=8",
            crate::plan::DEFAULT_OPUS,
            false,
        );
    }
}
