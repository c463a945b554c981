//! Test videos, made at test time from test patterns with `gst-launch-1.0`
//! (and ffmpeg for WMV).
//!
//! Every fixture is made once and cached in `target/tmp/fixtures/` (file
//! names carry a hash of the pipeline, so a changed recipe makes a new file;
//! files are written under a temporary name and renamed, so concurrent test
//! processes are safe). Treat the returned files as read-only: copy one
//! before modifying it.
//!
//! All videos are 25 fps test patterns; durations are whole seconds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Frame rate of all fixture videos.
pub const FPS: u32 = 25;

/// Bump to remake every cached fixture.
const RECIPE_VERSION: u32 = 1;

/// How long one `gst-launch-1.0` run may take.
const GST_TIMEOUT: Duration = Duration::from_secs(120);

/// WMV2 video (320x240) + WMA v2 audio (44.1 kHz mono) in ASF: `.wmv`,
/// made with ffmpeg: GStreamer's asfmux writes files whose video timestamps
/// start 1000 hours after the audio's, which real cameras and encoders do not.
pub fn wmv_with_audio(secs: u32) -> PathBuf {
    let args = tokens(&format!(
        "-f lavfi -i testsrc=size=320x240:rate={FPS}:duration={secs} \
         -f lavfi -i sine=frequency=440:sample_rate=44100:duration={secs} \
         -c:v wmv2 -b:v 800k -c:a wmav2 -b:a 128k -f asf"
    ));
    make_with(Tool::Ffmpeg, "wmv_with_audio", secs, "wmv", args)
}

/// WMV2 video of `width`x`height` (testsrc2: moving, so encoders work) +
/// WMA v2 audio (44.1 kHz mono) in ASF: `.wmv`, made with ffmpeg; two
/// compressed streams, so a transcode needs one video and one audio
/// decoder.
pub fn wmv_sized_with_audio(secs: u32, width: u32, height: u32) -> PathBuf {
    let args = tokens(&format!(
        "-f lavfi -i testsrc2=size={width}x{height}:rate={FPS}:duration={secs} \
         -f lavfi -i sine=frequency=440:sample_rate=44100:duration={secs} \
         -c:v wmv2 -b:v 2M -c:a wmav2 -b:a 128k -f asf"
    ));
    make_with(
        Tool::Ffmpeg,
        &format!("wmv_{height}p_with_audio"),
        secs,
        "wmv",
        args,
    )
}

/// A "VHS capture": MPEG-2 video (352x288) + MPEG-1 Layer II audio (48 kHz
/// stereo) in an MPEG program stream: `.mpg`.
pub fn mpeg2_ps_with_mp2(secs: u32) -> PathBuf {
    let frames = secs * FPS;
    // avenc_mpeg2video of gst-libav 1.22.0 (Debian 12) rejects every frame
    // rate ("MPEG-1/2 does not support 1000000000/1 fps"): prefer mpeg2enc.
    let video_enc = if element_exists("mpeg2enc") {
        "mpeg2enc format=3"
    } else {
        "avenc_mpeg2video"
    };
    let audio_enc = if element_exists("avenc_mp2") {
        "avenc_mp2"
    } else {
        "twolamemp2enc"
    };
    let mut p = video_src(frames, 352, 288, "ball");
    p.extend(tokens(&format!(
        "! {video_enc} ! mpegvideoparse ! queue ! mpegpsmux name=mux ! filesink"
    )));
    p.extend(audio_src(frames, 48000));
    p.extend(tokens(&format!(
        "! {audio_enc} ! mpegaudioparse ! queue ! mux."
    )));
    make("mpeg2_ps_with_mp2", secs, "mpg", p)
}

/// Motion JPEG (320x240) + 16-bit PCM audio (44.1 kHz stereo) in QuickTime: `.mov`.
pub fn mjpeg_mov(secs: u32) -> PathBuf {
    let frames = secs * FPS;
    let mut p = video_src(frames, 320, 240, "smpte");
    p.extend(tokens("! jpegenc ! queue ! qtmux name=mux ! filesink"));
    p.extend(audio_src(frames, 44100));
    p.extend(tokens("! audio/x-raw,format=S16LE ! queue ! mux."));
    make("mjpeg_mov", secs, "mov", p)
}

/// MPEG-4 Part 2 video (320x240), no audio, in AVI: `.avi`.
pub fn video_only(secs: u32) -> PathBuf {
    let mut p = video_src(secs * FPS, 320, 240, "smpte");
    p.extend(tokens("! avenc_mpeg4 ! queue ! avimux ! filesink"));
    make("video_only", secs, "avi", p)
}

/// H.264 (x264, 320x240) + AAC audio (44.1 kHz stereo) in MP4: `.mp4`, an
/// input that is already in the target codec.
pub fn h264_mp4(secs: u32) -> PathBuf {
    let frames = secs * FPS;
    let mut p = video_src(frames, 320, 240, "smpte");
    p.extend(tokens(
        "! x264enc speed-preset=ultrafast threads=1 ! h264parse ! queue ! mp4mux name=mux ! filesink",
    ));
    p.extend(audio_src(frames, 44100));
    p.extend(tokens("! avenc_aac ! queue ! mux."));
    make("h264_mp4", secs, "mp4", p)
}

/// H.264 (x264, 320x240) in MP4 without audio: `.mp4`.
pub fn h264_mp4_video_only(secs: u32) -> PathBuf {
    let mut p = video_src(secs * FPS, 320, 240, "smpte");
    p.extend(tokens(
        "! x264enc speed-preset=ultrafast threads=1 ! h264parse ! mp4mux ! filesink",
    ));
    make("h264_mp4_video_only", secs, "mp4", p)
}

/// H.264 (x264, 320x240) in MP4, a key frame every second, with AAC
/// audio (44.1 kHz stereo) when `audio`: `.mp4` (each segment of a
/// segmented job starts on a key frame, so a part reads little of the
/// input before its segment).
pub fn h264_mp4_key_every_second(secs: u32, audio: bool) -> PathBuf {
    let frames = secs * FPS;
    let mut p = video_src(frames, 320, 240, "smpte");
    p.extend(tokens(&format!(
        "! x264enc speed-preset=ultrafast threads=1 key-int-max={FPS} ! h264parse ! queue ! mp4mux name=mux ! filesink"
    )));
    if audio {
        p.extend(audio_src(frames, 44100));
        p.extend(tokens("! avenc_aac ! queue ! mux."));
    }
    let name = if audio {
        "h264_aac_mp4_key_every_second"
    } else {
        "h264_mp4_key_every_second"
    };
    make(name, secs, "mp4", p)
}

/// MPEG-4 Part 2 video (320x240), two audio tracks, MPEG-1 Layer II at
/// 440 Hz in English (`eng`) and AAC at 660 Hz in French (`fre`), and an
/// SRT text subtitle track in German (`ger`) with one cue a second
/// (`Cue N & <i>more</i>`), in Matroska: `.mkv`, made with ffmpeg as the
/// original service's encoder (`-map 0`) would keep it.
pub fn two_audio_and_subtitles(secs: u32) -> PathBuf {
    let srt = subtitle_file(secs);
    let mut args = tokens(&format!(
        "-f lavfi -i testsrc=size=320x240:rate={FPS}:duration={secs} \
         -f lavfi -i sine=frequency=440:sample_rate=48000:duration={secs} \
         -f lavfi -i sine=frequency=660:sample_rate=48000:duration={secs} -i"
    ));
    args.push(srt.display().to_string());
    args.extend(tokens(
        "-map 0 -map 1 -map 2 -map 3 -c:v mpeg4 -q:v 5 -c:a:0 mp2 -c:a:1 aac -c:s srt \
         -metadata:s:a:0 language=eng -metadata:s:a:1 language=fre \
         -metadata:s:s:0 language=ger -f matroska",
    ));
    make_with(Tool::Ffmpeg, "two_audio_and_subtitles", secs, "mkv", args)
}

/// H.264 video (320x240) and a DVB subtitle track (bitmaps, which neither
/// MP4 nor Matroska can hold) in MPEG-TS: `.ts`.
pub fn dvb_subtitles(secs: u32) -> PathBuf {
    let mut p = video_src(secs * FPS, 320, 240, "smpte");
    p.extend(tokens(
        "! x264enc speed-preset=ultrafast threads=1 ! h264parse ! queue ! mpegtsmux name=mux ! filesink",
    ));
    p.extend(tokens(&format!(
        "videotestsrc is-live=false num-buffers={} pattern=ball \
         ! video/x-raw,format=AYUV,width=320,height=240,framerate=2/1 \
         ! dvbsubenc ! queue ! mux.",
        secs * 2
    )));
    make("dvb_subtitles", secs, "ts", p)
}

/// An SRT file with one cue a second for `secs` seconds:
/// `Cue N & <i>more</i>` from N.2 s to N.8 s.
fn subtitle_file(secs: u32) -> PathBuf {
    assert!(secs < 60, "cue times are written as seconds under a minute");
    let path = fixture_dir().join(format!("cues-{secs}s-v{RECIPE_VERSION}.srt"));
    memoized(path.display().to_string(), || {
        if !path.exists() {
            let mut text = String::new();
            for n in 0..secs {
                let _ = write!(
                    text,
                    "{}\n00:00:{n:02},200 --> 00:00:{n:02},800\nCue {n} & <i>more</i>\n\n",
                    n + 1
                );
            }
            write_atomically(&path, |tmp| {
                std::fs::write(tmp, &text).map_err(|e| e.to_string())
            });
        }
        path.clone()
    })
}

/// 64 KiB of deterministic garbage named like a video: `.avi`.
pub fn corrupt() -> PathBuf {
    memoized("corrupt.avi".into(), || {
        let path = fixture_dir().join(format!("corrupt-v{RECIPE_VERSION}.avi"));
        if !path.exists() {
            let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
            let bytes: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    // xorshift64
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            write_atomically(&path, |tmp| {
                std::fs::write(tmp, &bytes).map_err(|e| e.to_string())
            });
        }
        path
    })
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Decodes the whole file with `gst-launch-1.0 filesrc ! decodebin ! fakesink`
/// and requires a decoded video and/or audio stream (a missing stream makes
/// the pipeline stall, reported as a timeout).
pub fn decode_check(path: &Path, video: bool, audio: bool) -> Result<(), String> {
    assert!(
        video || audio,
        "decode_check needs at least one stream kind"
    );
    let mut args = tokens("-q filesrc");
    args.push(format!("location={}", path.display()));
    args.extend(tokens("! decodebin name=d"));
    if video {
        args.extend(tokens("d. ! video/x-raw ! queue ! fakesink sync=false"));
    }
    if audio {
        args.extend(tokens("d. ! audio/x-raw ! queue ! fakesink sync=false"));
    }
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(&args);
    let out = super::run_with_timeout(&mut cmd, Duration::from_secs(60))
        .map_err(|e| format!("decoding {} (a stream may be missing): {e}", path.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "decoding {} failed ({}):\n{}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`decode_check`], panicking on failure.
pub fn assert_decodes(path: &Path, video: bool, audio: bool) {
    if let Err(e) = decode_check(path, video, audio) {
        panic!("{e}");
    }
}

/// What GStreamer's discoverer says about a media file.
#[derive(Clone, Debug)]
pub struct MediaInfo {
    pub duration: Option<Duration>,
    /// Caps name of the container, e.g. `video/quicktime`, `video/x-msvideo`.
    pub container: Option<String>,
    pub video: Vec<VideoStream>,
    pub audio: Vec<AudioStream>,
}

#[derive(Clone, Debug)]
pub struct VideoStream {
    /// Caps name, e.g. `video/x-h264`, `video/mpeg`, `image/jpeg`.
    pub media_type: String,
    /// Full caps as a string.
    pub caps: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Debug)]
pub struct AudioStream {
    /// Caps name, e.g. `audio/mpeg`, `audio/x-wma`, `audio/x-raw`.
    pub media_type: String,
    pub caps: String,
    pub channels: u32,
    pub sample_rate: u32,
}

/// Runs GStreamer's discoverer on `path` (in this process; panics on error).
pub fn probe(path: &Path) -> MediaInfo {
    use gstreamer_pbutils::prelude::*;

    gstreamer::init().expect("gstreamer init");
    let uri = gstreamer::glib::filename_to_uri(path, None)
        .unwrap_or_else(|e| panic!("no URI for {}: {e}", path.display()));
    let discoverer = gstreamer_pbutils::Discoverer::new(gstreamer::ClockTime::from_seconds(30))
        .expect("discoverer");
    let info = discoverer
        .discover_uri(&uri)
        .unwrap_or_else(|e| panic!("cannot discover {}: {e}", path.display()));
    let caps_of = |s: &gstreamer_pbutils::DiscovererStreamInfo| {
        let caps = s.caps();
        let name = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .map(|st| st.name().to_string())
            .unwrap_or_default();
        (name, caps.map(|c| c.to_string()).unwrap_or_default())
    };
    MediaInfo {
        duration: info.duration().map(|d| Duration::from_nanos(d.nseconds())),
        container: info
            .stream_info()
            .filter(|s| s.is::<gstreamer_pbutils::DiscovererContainerInfo>())
            .map(|s| caps_of(&s).0),
        video: info
            .video_streams()
            .iter()
            .map(|v| {
                let (media_type, caps) = caps_of(v.upcast_ref());
                VideoStream {
                    media_type,
                    caps,
                    width: v.width(),
                    height: v.height(),
                }
            })
            .collect(),
        audio: info
            .audio_streams()
            .iter()
            .map(|a| {
                let (media_type, caps) = caps_of(a.upcast_ref());
                AudioStream {
                    media_type,
                    caps,
                    channels: a.channels(),
                    sample_rate: a.sample_rate(),
                }
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Making and caching
// ---------------------------------------------------------------------------

fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn video_src(frames: u32, width: u32, height: u32, pattern: &str) -> Vec<String> {
    tokens(&format!(
        "videotestsrc is-live=false num-buffers={frames} pattern={pattern} \
         ! video/x-raw,format=I420,width={width},height={height},framerate={FPS}/1,pixel-aspect-ratio=1/1"
    ))
}

/// Audio with one buffer per video frame: same duration as the video.
fn audio_src(frames: u32, rate: u32) -> Vec<String> {
    tokens(&format!(
        "audiotestsrc is-live=false num-buffers={frames} samplesperbuffer={} wave=sine freq=440 \
         ! audio/x-raw,rate={rate},channels=2 ! audioconvert",
        rate / FPS
    ))
}

fn element_exists(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", name])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn fixture_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join("fixtures");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
    .clone()
}

/// Runs `make` once per key in this process; concurrent callers for the same
/// key wait for the first one.
fn memoized(key: String, make: impl FnOnce() -> PathBuf) -> PathBuf {
    static MEMO: Mutex<Option<HashMap<String, Arc<OnceLock<PathBuf>>>>> = Mutex::new(None);
    let cell = {
        let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        memo.get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default()
            .clone()
    };
    cell.get_or_init(make).clone()
}

/// FNV-1a: a hash that is stable across Rust versions, for cache file names.
fn fnv1a(data: &str) -> u64 {
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) {
    let tmp = path.with_file_name(format!(
        ".{}.{}-{:08x}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        panic!("cannot make fixture {}: {e}", path.display());
    }
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), path.display()));
}

/// Makes `{name}-{secs}s-{hash}.{ext}` with `gst-launch-1.0 PIPELINE
/// location=FILE ...` (`pipeline` ends with the `filesink`, more branches
/// may follow) unless it is already cached.
fn make(name: &str, secs: u32, ext: &str, pipeline: Vec<String>) -> PathBuf {
    make_with(Tool::GstLaunch, name, secs, ext, pipeline)
}

/// The program that makes a fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// `gst-launch-1.0 -q PIPELINE`, the file is the `filesink` location.
    GstLaunch,
    /// `ffmpeg -v error -y ARGS FILE`.
    Ffmpeg,
}

fn make_with(tool: Tool, name: &str, secs: u32, ext: &str, mut pipeline: Vec<String>) -> PathBuf {
    assert!(secs > 0, "fixture durations are whole seconds > 0");
    let recipe = format!("v{RECIPE_VERSION} {tool:?} {}", pipeline.join(" "));
    let key = format!("{name}-{secs}s-{:016x}.{ext}", fnv1a(&recipe));
    memoized(key.clone(), move || {
        let path = fixture_dir().join(&key);
        if path.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            return path;
        }
        write_atomically(&path, |tmp| {
            let mut cmd = match tool {
                Tool::GstLaunch => {
                    let sink = pipeline
                        .iter()
                        .position(|t| t == "filesink")
                        .expect("pipeline has a filesink");
                    pipeline.insert(sink + 1, format!("location={}", tmp.display()));
                    let mut cmd = Command::new("gst-launch-1.0");
                    cmd.arg("-q").args(&pipeline);
                    cmd
                }
                Tool::Ffmpeg => {
                    pipeline.push(tmp.display().to_string());
                    let mut cmd = Command::new("ffmpeg");
                    cmd.args(["-nostdin", "-v", "error", "-y"]).args(&pipeline);
                    cmd
                }
            };
            let out = super::run_with_timeout(&mut cmd, GST_TIMEOUT)?;
            let size = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
            if out.status.success() && size > 0 {
                return Ok(());
            }
            let mut msg = format!(
                "{tool:?} {} => {}, {size} bytes written\n",
                pipeline.join(" "),
                out.status
            );
            let _ = write!(
                msg,
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Err(msg)
        });
        path
    })
}
