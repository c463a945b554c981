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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::join::{JoinSpec, Joined};
use super::scan::Scan;
use super::segment::{AudioSpec, EncodedAudio, EncodedVideo, VideoSpec};
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
        PartRequest::VideoAndAudio { video, audio } => {
            let beside = std::thread::scope(|scope| {
                let audio = scope.spawn(|| {
                    let started = std::time::Instant::now();
                    super::segment::encode_audio(audio, |_, _| {})
                        .map(|a| (a, started.elapsed().as_millis() as u64))
                });
                let video = super::segment::encode_video(video, on_position);
                let audio = audio
                    .join()
                    .unwrap_or_else(|_| Err(super::internal("the audio part's pipeline panicked")));
                video.and_then(|video| audio.map(|audio| (video, audio)))
            });
            beside.map(|(video, (audio, audio_ms))| PartOutcome::VideoAndAudio {
                video,
                audio,
                audio_ms,
            })
        }
        PartRequest::Join(spec) => super::join::join(spec, on_position).map(PartOutcome::Joined),
    }
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
        let input = dir.path().join("in.mp4");
        ffmpeg(
            "-f lavfi -i testsrc=size=320x240:rate=25:duration=6 -f lavfi -i sine=frequency=440:sample_rate=48000:duration=6 -c:v libx264 -pix_fmt yuv420p -g 25 -bf 3 -c:a aac",
            &input,
        );
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
            input: input.clone(),
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
                input: input.clone(),
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
