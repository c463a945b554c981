//! Every track of the input carried: each audio track through its own
//! audio branch, each subtitle track the container can hold, with its
//! language; a track the container cannot hold named in the `completed`
//! event and the log; and outputs held to their video track's own length.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::{Phase, Progress};

use crate::common::farm::Farm;
use crate::common::{fixtures, run_with_timeout};

/// Long enough for a few small transcodes on a loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// One stream as ffprobe sees it: type, codec and language tag.
#[derive(Debug, PartialEq, Eq)]
struct Stream {
    kind: String,
    codec: String,
    language: Option<String>,
}

fn stream(kind: &str, codec: &str, language: Option<&str>) -> Stream {
    Stream {
        kind: kind.into(),
        codec: codec.into(),
        language: language.map(str::to_string),
    }
}

/// The streams of `path`, in order, as ffprobe lists them.
fn ffprobe_streams(path: &Path) -> Vec<Stream> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_entries",
        "stream=codec_type,codec_name:stream_tags=language",
        "-of",
        "json",
    ])
    .arg(path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}: {out:?}", path.display());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    json["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| Stream {
            kind: s["codec_type"].as_str().unwrap_or_default().into(),
            codec: s["codec_name"].as_str().unwrap_or_default().into(),
            language: s["tags"]["language"].as_str().map(str::to_string),
        })
        .collect()
}

/// The subtitles of `path` as SRT text, as ffmpeg reads them.
fn subtitle_text(path: &Path) -> String {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:s:0", "-f", "srt", "-"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes a job turning `input_key` into `output_key` and waits for its
/// last event.
async fn run_job(
    farm: &Farm,
    watch: &mut crate::common::farm::ProgressWatch,
    id: &str,
    input_key: &str,
    output_key: &str,
    options: &str,
) -> Progress {
    farm.publish_job(
        json!({"job_id": id, "input_key": input_key, "output_key": output_key,
        "transcode_options": options}),
    )
    .await;
    watch.until_final(id, JOB_TIMEOUT).await
}

const FAST_H264: &str = "videoconvert ! x264enc speed-preset=ultrafast";

/// The input has two audio tracks (English, French) and a text subtitle
/// track (German). Matroska and MP4 outputs both carry all four tracks,
/// each audio track transcoded to AAC by its own audio branch, the
/// subtitles as SRT text (Matroska) and as 3GPP timed text (MP4), every
/// track with its language (Matroska writes ISO 639-2/B codes, MP4 639-2/T).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audio_and_subtitle_track_is_carried_with_its_language_into_mkv_and_mp4() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::two_audio_and_subtitles(3);
    assert_eq!(
        ffprobe_streams(&input),
        [
            stream("video", "mpeg4", None),
            stream("audio", "mp2", Some("eng")),
            stream("audio", "aac", Some("fre")),
            stream("subtitle", "subrip", Some("ger")),
        ],
        "the fixture"
    );
    farm.put_input("tracks.mkv", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);

    let cases = [
        (
            "mkv",
            "o/tracks.mkv",
            [
                stream("video", "h264", None),
                stream("audio", "aac", Some("eng")),
                stream("audio", "aac", Some("fre")),
                stream("subtitle", "subrip", Some("ger")),
            ],
            // Matroska text keeps the SRT tags.
            "Cue 1 & <i>more</i>",
        ),
        (
            "mp4",
            "o/tracks.mp4",
            [
                stream("video", "h264", Some("und")),
                stream("audio", "aac", Some("eng")),
                stream("audio", "aac", Some("fra")),
                stream("subtitle", "mov_text", Some("deu")),
            ],
            // Timed text has no tags: the text alone.
            "Cue 1 & more",
        ),
    ];
    for (id, key, expected, cue) in cases {
        let last = run_job(&farm, &mut watch, id, "tracks.mkv", key, FAST_H264).await;
        assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
        assert!(last.tracks_left_out.is_empty(), "{last:#?}");
        let output = farm.get_output(key).await.expect("output stored");
        assert_eq!(ffprobe_streams(&output), expected, "{key}");
        let text = subtitle_text(&output);
        for n in 0..3 {
            assert!(
                text.contains(&cue.replace('1', &n.to_string())),
                "{key}: cue {n} missing from\n{text}"
            );
        }
        assert!(!text.contains("&amp;"), "{key}: markup left in\n{text}");
    }
    assert!(farm.dead_letters().await.is_empty());
    farm.assert_all_acked(vec![worker]).await;
}

/// A DVB subtitle track (bitmaps) cannot go into MP4: the job completes
/// without it, and the track is named, with the reason, in the `completed`
/// event and in the worker's log; the output has the video alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtitle_track_the_container_cannot_hold_is_named_in_the_completed_event() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("dvb.ts", &fixtures::dvb_subtitles(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let last = run_job(&farm, &mut watch, "dvb", "dvb.ts", "o/dvb.mp4", FAST_H264).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert_eq!(
        last.tracks_left_out,
        ["subtitle track 1 (subpicture/x-dvb) is left out: MP4 cannot hold it"]
    );
    // Only the completed event says so.
    for event in &watch.of("dvb")[..watch.of("dvb").len() - 1] {
        assert!(event.tracks_left_out.is_empty(), "{event:#?}");
    }
    let output = farm.get_output("o/dvb.mp4").await.expect("output stored");
    assert_eq!(
        ffprobe_streams(&output),
        [stream("video", "h264", Some("und"))]
    );
    let logs = worker.logs();
    assert!(
        logs.contains("input track not carried")
            && logs.contains("subtitle track 1 (subpicture/x-dvb) is left out"),
        "{logs}"
    );
    farm.assert_all_acked(vec![worker]).await;
}

/// The video track's own length is checked, not just the file's: `jpegenc
/// snapshot=true` ends the video after its first frame (or a second one a
/// second later) while the audio runs on to 2 s, so the file lasts as long as the input but its video
/// one frame. Each attempt fails with `output_invalid` naming the video
/// track, is retried, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_whose_video_ends_early_fails_verification_though_its_audio_runs_on() {
    let attempts = [("TRANSCODE_WORKER__MAX_ATTEMPTS", "2")];
    let farm = Farm::s3(&attempts).await;
    farm.put_input("clip.wmv", &fixtures::wmv_with_audio(2))
        .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&attempts);
    let last = run_job(
        &farm,
        &mut watch,
        "early",
        "clip.wmv",
        "o/early.mkv",
        "videoconvert ! jpegenc snapshot=true",
    )
    .await;
    let events = watch.of("early");
    assert_eq!(last.state, Phase::Failed, "{events:#?}");
    let failed: Vec<&Progress> = events.iter().filter(|e| e.state == Phase::Failed).collect();
    assert_eq!(failed.len(), 2, "one failure per attempt: {events:#?}");
    for (event, will_retry) in failed.iter().zip([true, false]) {
        assert_eq!(event.will_retry, Some(will_retry), "{events:#?}");
        assert_eq!(
            event.error_kind,
            Some(ErrorKind::OutputInvalid),
            "{event:#?}"
        );
        // One frame, sometimes two (jpegenc may take a second frame after
        // a new segment): either way far short of the input's 2 s.
        let error = event.error.as_deref().unwrap_or_default();
        let video_secs: f64 = error
            .strip_prefix("the output's video lasts ")
            .and_then(|rest| rest.strip_suffix(" s but the input lasts 2.05 s"))
            .and_then(|secs| secs.parse().ok())
            .unwrap_or_else(|| panic!("{error}"));
        assert!(video_secs < 1.2, "{error}");
    }
    assert!(
        events.iter().all(|e| e.state != Phase::Uploading),
        "{events:#?}"
    );
    assert!(!farm.output_exists("o/early.mkv").await);
    let dead = farm.wait_dead_letters(JOB_TIMEOUT).await;
    assert_eq!(dead[0].1["x-error-kind"], "output_invalid", "{dead:#?}");
    farm.assert_all_acked(vec![worker]).await;
}
