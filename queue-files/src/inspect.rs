//! What a file is: the target format, the verdict on a probed file (queue it
//! or skip it, and why), the probe details published with the job, and the
//! file's content identity (a streamed SHA-256).

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use transcode_worker::job::SourceInfo;
use transcode_worker::pipeline::MediaInfo;

/// Why a file is not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Already in the target codec and container.
    AlreadyTarget,
    /// GStreamer cannot read it as media (a text file, a corrupt video, a
    /// format without an installed plugin).
    NotMedia,
    /// Media without a video stream (audio only, a still image).
    NoVideo,
    /// Queued by an earlier run with the same content.
    AlreadyQueued,
    /// Its output exists and was made from the same content.
    AlreadyTranscoded,
    /// An output exists under its output key, made by someone else.
    OutputExists,
    /// Left out by `--include` / `--exclude`.
    Excluded,
    /// A symbolic link or another file that is not a regular file.
    NotRegular,
    /// It disappeared between the listing and its turn.
    Vanished,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::AlreadyTarget => "already in the target format",
            SkipReason::NotMedia => "not a video GStreamer can read",
            SkipReason::NoVideo => "no video stream",
            SkipReason::AlreadyQueued => "already queued",
            SkipReason::AlreadyTranscoded => "already transcoded",
            SkipReason::OutputExists => "output already exists",
            SkipReason::Excluded => "excluded by --include/--exclude",
            SkipReason::NotRegular => "not a regular file",
            SkipReason::Vanished => "vanished during the scan",
        })
    }
}

/// The format files are transcoded to; files already in it are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Caps name of the video codec, e.g. `video/x-h264`.
    pub codec: String,
    /// Extension of the outputs, lower case, without the dot, e.g. `mp4`.
    pub ext: String,
    /// Caps name of the container the extension stands for.
    pub container: &'static str,
    /// Extensions that name the same container (`mp4` and `m4v`).
    pub same_exts: &'static [&'static str],
}

impl Target {
    /// The target for a codec name (`h264`, `h265`, `vp9`, `av1` or a caps
    /// name) and a container extension the worker writes.
    pub fn new(codec: &str, ext: &str) -> Result<Target, String> {
        let codec = match codec.to_ascii_lowercase().as_str() {
            "h264" | "h.264" | "avc" => "video/x-h264".to_string(),
            "h265" | "h.265" | "hevc" => "video/x-h265".to_string(),
            "vp9" => "video/x-vp9".to_string(),
            "vp8" => "video/x-vp8".to_string(),
            "av1" => "video/x-av1".to_string(),
            other if other.contains('/') => other.to_string(),
            other => {
                return Err(format!(
                    "--target-codec {other:?} is not known: use h264, h265, vp9, vp8, av1 or a caps name such as video/x-h264"
                ))
            }
        };
        let ext = ext.trim_start_matches('.').to_ascii_lowercase();
        let (container, same_exts): (&'static str, &'static [&'static str]) = match ext.as_str()
        {
            "mp4" | "m4v" => ("video/quicktime", &["mp4", "m4v"]),
            "mov" => ("video/quicktime", &["mov"]),
            "mkv" => ("video/x-matroska", &["mkv"]),
            "webm" => ("video/webm", &["webm"]),
            other => {
                return Err(format!(
                    "--target-ext {other:?} is not a container the worker writes: use mp4, m4v, mov, mkv or webm"
                ))
            }
        };
        Ok(Target {
            codec,
            ext,
            container,
            same_exts,
        })
    }

    /// E.g. `video/x-h264 in .mp4`.
    pub fn describe(&self) -> String {
        format!("{} in .{}", self.codec, self.ext)
    }

    /// Whether the file at `path`, probed as `info`, is already in the
    /// target format: the codec, the container, and the file's extension
    /// (an H.264 `.mov` still needs rewrapping to become an `.mp4`).
    pub fn is_met_by(&self, path: &Path, info: &MediaInfo) -> bool {
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| self.same_exts.contains(&e.to_ascii_lowercase().as_str()))
            .unwrap_or(false);
        let codec_ok = info.video.as_ref().map(|v| v.codec.as_str()) == Some(self.codec.as_str());
        let container_ok = info.container.as_deref() == Some(self.container);
        ext_ok && codec_ok && container_ok
    }
}

/// What to do with a probed file.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Transcode it; the probe details for the job.
    Transcode(Box<SourceInfo>),
    /// Leave it, for this reason, with details for people.
    Skip(SkipReason, String),
}

/// Decides about the file at `path` of `size` bytes, probed as `info`.
pub fn judge(path: &Path, size: u64, info: &MediaInfo, target: &Target) -> Verdict {
    let Some(video) = &info.video else {
        let what = match info.audio.first() {
            Some(a) => format!("audio only ({})", a.codec),
            None => "no video stream".to_string(),
        };
        return Verdict::Skip(SkipReason::NoVideo, what);
    };
    if target.is_met_by(path, info) {
        return Verdict::Skip(
            SkipReason::AlreadyTarget,
            format!("already {}", target.describe()),
        );
    }
    Verdict::Transcode(Box::new(source_info(size, info, video)))
}

fn source_info(
    size: u64,
    info: &MediaInfo,
    video: &transcode_worker::pipeline::VideoStream,
) -> SourceInfo {
    let duration_secs = info
        .duration_ms
        .filter(|ms| *ms > 0)
        .map(|ms| ms as f64 / 1000.0);
    let bitrate = match duration_secs {
        Some(secs) => Some((size as f64 * 8.0 / secs).round() as u64),
        None if video.bitrate > 0 => Some(u64::from(video.bitrate)),
        None => None,
    };
    SourceInfo {
        container: info.container.clone(),
        video_codec: Some(video.codec.clone()),
        audio_codec: info.audio.first().map(|a| a.codec.clone()),
        width: (video.width > 0).then_some(video.width),
        height: (video.height > 0).then_some(video.height),
        frame_rate: (video.frame_rate > 0.0)
            .then_some((video.frame_rate * 1000.0).round() / 1000.0),
        bitrate,
        duration_secs: duration_secs.map(|s| (s * 1000.0).round() / 1000.0),
        size_bytes: Some(size),
    }
}

/// SHA-256 of the file's content as lower-case hex, read in 1 MiB chunks
/// (memory does not grow with the file). Blocking.
pub fn content_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The job id of a file: `qf-` and 32 hex digits of the SHA-256 of its
/// content hash and its input and output keys. The same content queued
/// under the same keys always gets the same id; a changed file gets a new
/// one, and two identical files at different paths get different ones.
pub fn job_id(content_sha256: &str, input_key: &str, output_key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [content_sha256, input_key, output_key] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex(&hasher.finalize());
    format!("qf-{}", &digest[..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use transcode_worker::pipeline::{AudioStream, VideoStream};

    fn media(container: &str, codec: &str) -> MediaInfo {
        MediaInfo {
            container: Some(container.into()),
            duration_ms: Some(2000),
            video: Some(VideoStream {
                codec: codec.into(),
                width: 320,
                height: 240,
                frame_rate: 25.0,
                bitrate: 0,
                pixel_aspect_ratio: None,
            }),
            audio: vec![AudioStream {
                codec: "audio/mpeg".into(),
                channels: 2,
                sample_rate: 44100,
                language: None,
            }],
            subtitles: Vec::new(),
        }
    }

    #[test]
    fn h264_mp4_is_skipped_but_h264_mov_and_wmv_are_not() {
        let t = Target::new("h264", "mp4").unwrap();
        let info = media("video/quicktime", "video/x-h264");
        assert!(matches!(
            judge(Path::new("a/b.MP4"), 1000, &info, &t),
            Verdict::Skip(SkipReason::AlreadyTarget, _)
        ));
        assert!(matches!(
            judge(Path::new("a/b.mov"), 1000, &info, &t),
            Verdict::Transcode(_)
        ));
        let wmv = media("video/x-ms-asf", "video/x-wmv");
        let Verdict::Transcode(src) = judge(Path::new("x.wmv"), 250_000, &wmv, &t) else {
            panic!("a WMV is transcoded");
        };
        assert_eq!(src.width, Some(320));
        assert_eq!(src.bitrate, Some(1_000_000));
        assert_eq!(src.duration_secs, Some(2.0));
        assert_eq!(src.size_bytes, Some(250_000));
    }

    #[test]
    fn audio_only_is_no_video() {
        let t = Target::new("h264", "mp4").unwrap();
        let mut info = media("audio/mpeg", "x");
        info.video = None;
        assert!(matches!(
            judge(Path::new("a.mp3"), 10, &info, &t),
            Verdict::Skip(SkipReason::NoVideo, _)
        ));
    }

    #[test]
    fn targets_are_checked() {
        assert!(Target::new("mpeg7", "mp4").is_err());
        assert!(Target::new("h264", "avi").is_err());
        assert_eq!(Target::new("HEVC", ".MKV").unwrap().ext, "mkv");
    }

    #[test]
    fn job_ids_follow_content_and_keys_and_are_valid() {
        let a = job_id("abc", "in/a.wmv", "out/a.mp4");
        assert_eq!(a, job_id("abc", "in/a.wmv", "out/a.mp4"));
        assert_ne!(a, job_id("abd", "in/a.wmv", "out/a.mp4"));
        assert_ne!(a, job_id("abc", "in/b.wmv", "out/b.mp4"));
        assert_eq!(a.len(), 35);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn hashes_files_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            content_sha256(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
