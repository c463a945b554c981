//! Renditions: one job, one download, one decode, many outputs. A ladder
//! of files at several heights (none taller than the source), an HLS
//! package that `ffprobe` reads with every segment of every variant
//! starting with a key frame at the same times, the decoders counted, a
//! redelivered job that reuses what was stored, and a failed rendition
//! that fails the whole job. An HLS package played in headless Chromium.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::error::ErrorKind;
use transcode_worker::job::Phase;

use crate::common::browser::{Browser, StaticServer};
use crate::common::farm::{Farm, WorkerProc, WORKER_BIN};
use crate::common::{fixtures, run_with_timeout, wait_for_value, DEFAULT_TIMEOUT};

/// Long enough for a few small encodes at x264's medium preset on a
/// loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

const FAST_240P: &str =
    "videoconvert ! videoscale ! video/x-raw,width=320,height=240 ! x264enc speed-preset=ultrafast";

/// `ffprobe -of json ARGS PATH`.
fn ffprobe(path: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60)).expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// The streams of `path`: (type, codec, width, height), and its duration.
fn streams(path: &Path) -> (Vec<(String, String, u64, u64)>, f64) {
    let v = ffprobe(
        path,
        &[
            "-show_entries",
            "stream=codec_type,codec_name,width,height:format=duration",
        ],
    );
    let list = v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or_default().to_string(),
                s["codec_name"].as_str().unwrap_or_default().to_string(),
                s["width"].as_u64().unwrap_or(0),
                s["height"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (list, duration)
}

/// The video packets of a segment: (pts in seconds, key frame), in file order.
fn video_packets(path: &Path) -> Vec<(f64, bool)> {
    let v = ffprobe(
        path,
        &[
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time,flags",
        ],
    );
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            (
                p["pts_time"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(-1.0),
                p["flags"].as_str().unwrap_or_default().contains('K'),
            )
        })
        .collect()
}

/// The user metadata of the object `key`.
async fn metadata(farm: &Farm, key: &str) -> HashMap<String, String> {
    let bucket = farm.bucket.as_ref().expect("an S3 farm");
    let (head, code) = bucket.head_object(key).await.expect("HEAD");
    assert_eq!(code, 200, "{key}");
    head.metadata.unwrap_or_default()
}

/// Every key under `prefix`, sorted.
async fn keys_under(farm: &Farm, prefix: &str) -> Vec<String> {
    let bucket = farm.bucket.as_ref().expect("an S3 farm");
    let mut keys: Vec<String> = bucket
        .list(prefix.to_string(), None)
        .await
        .expect("list")
        .into_iter()
        .flat_map(|page| page.contents.into_iter().map(|o| o.key))
        .collect();
    keys.sort();
    keys
}

/// Downloads every object under `prefix` into a folder of the farm,
/// keeping the keys' folders; returns the folder standing for `prefix`.
async fn download_package(farm: &Farm, prefix: &str) -> PathBuf {
    let root = farm.dir.path().join(crate::common::random_name("package"));
    for key in keys_under(farm, prefix).await {
        let file = farm.get_output(&key).await.expect("download");
        let dest = root.join(&key);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::rename(file, dest).unwrap();
    }
    root.join(prefix)
}

/// The value of the field `name` of the worker's JSON log line whose
/// message is `message`.
fn log_field(worker: &WorkerProc, message: &str, name: &str) -> Option<String> {
    worker.logs().lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["message"] == message).then(|| match &v[name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    })
}

/// A 4 s 640x480 input (WMV2 + WMA) as three renditions: H.264 by the
/// 720p preset (the source is 480 lines: kept at 480, not upscaled, and
/// said so in the output's metadata), by the 360p preset (scaled down,
/// keeping 4:3), and a 320x240 fragment into Matroska. One job, decoded
/// once (one video and one audio decoder), every output checked with
/// ffprobe, every key in the completed event and the job's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ladder_of_three_renditions_is_made_from_one_decode_without_upscaling() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::wmv_sized_with_audio(4, 640, 480);
    farm.put_input("in/a.wmv", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[("LOG_FORMAT", "json")]);
    let keys = ["r/720p/a.mp4", "r/360p/a.mp4", "r/240p/a.mkv"];
    farm.publish_job(
        json!({"job_id": "ladder", "input_key": "in/a.wmv", "outputs": [
            {"output_key": keys[0], "preset": "h264-720p"},
            {"output_key": keys[1], "preset": "h264-360p"},
            {"output_key": keys[2], "transcode_options": FAST_240P},
        ]}),
    )
    .await;
    let last = watch.until_final("ladder", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert_eq!(last.output_key.as_deref(), Some(keys[0]));
    assert_eq!(last.output_keys, keys);
    // One percentage for the job: it never goes back.
    let events = watch.of("ladder");
    assert!(
        events.windows(2).all(|w| w[1].progress >= w[0].progress),
        "{events:#?}"
    );

    let expected = [
        ("h264", 640, 480, "mp4"),
        ("h264", 480, 360, "mp4"),
        ("h264", 320, 240, "mkv"),
    ];
    for (key, (codec, width, height, _)) in keys.iter().zip(expected) {
        let file = farm.get_output(key).await.expect(key);
        let (list, duration) = streams(&file);
        assert_eq!(
            list,
            [
                ("video".to_string(), codec.to_string(), width, height),
                ("audio".to_string(), "aac".to_string(), 0, 0)
            ],
            "{key}"
        );
        assert!((duration - 4.0).abs() <= 0.5, "{key}: {duration}");
    }
    let meta = metadata(&farm, keys[0]).await;
    assert_eq!(meta["transcode-job-id"], "ladder");
    assert_eq!(
        meta["transcode-scaled"],
        "made at the source's 480 lines: the preset asks for 720, and does not upscale"
    );
    assert!(!metadata(&farm, keys[1])
        .await
        .contains_key("transcode-scaled"));

    // Decoded once: one video and one audio decoder for three outputs.
    let decoders = log_field(&worker, "outputs verified", "decoders").expect("the log line");
    assert_eq!(decoders, r#"["avdec_wmv2", "avdec_wmav2"]"#);
    // The record lists every output.
    let record: Value = wait_for_value(DEFAULT_TIMEOUT, "the completed record", || async {
        let path = farm
            .get_output("_transcode/history/jobs/ladder.json")
            .await?;
        let record: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (record["state"] == "completed").then_some(record)
    })
    .await;
    assert_eq!(record["output_keys"], json!(keys));
    farm.assert_all_acked(vec![worker]).await;
}

/// `{"output_key": "videos/x/master.m3u8", "preset": "hls-ladder"}` on a
/// 640x480 source: the 480p and 360p variants only (1080p and 720p would
/// be taller than the source), stored beside the master playlist; ffprobe
/// reads the master and each variant; every segment of both variants
/// starts with a key frame, at the same times; CODECS names the profile
/// and level ffprobe finds in the stream; every stored file carries the
/// job's id (so `ingest` never takes it for an upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_ladder_packages_the_renditions_the_source_can_fill_with_aligned_key_frames() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/b.wmv", &fixtures::wmv_sized_with_audio(8, 640, 480))
        .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(json!({"job_id": "hls", "input_key": "in/b.wmv",
        "output_key": "videos/x/master.m3u8", "preset": "hls-ladder"}))
        .await;
    let last = watch.until_final("hls", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert_eq!(last.output_keys, ["videos/x/master.m3u8"]);

    let keys = keys_under(&farm, "videos/x/").await;
    let segments = |variant: &str| {
        keys.iter()
            .filter(|k| k.starts_with(&format!("videos/x/{variant}/seg")))
            .count()
    };
    // 8 s in 6 s segments: two per variant.
    assert_eq!((segments("480p"), segments("360p")), (2, 2), "{keys:#?}");
    assert!(keys.contains(&"videos/x/480p/index.m3u8".to_string()));
    assert!(keys.contains(&"videos/x/360p/index.m3u8".to_string()));
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("1080p") || k.contains("720p")),
        "{keys:#?}"
    );
    for key in &keys {
        assert_eq!(
            metadata(&farm, key).await["transcode-job-id"],
            "hls",
            "{key}"
        );
    }

    let root = download_package(&farm, "videos/x/").await;
    let master = std::fs::read_to_string(root.join("master.m3u8")).unwrap();
    let (list, _) = streams(&root.join("master.m3u8"));
    let mut sizes: Vec<(u64, u64)> = list
        .iter()
        .filter(|s| s.0 == "video")
        .map(|s| (s.2, s.3))
        .collect();
    sizes.sort();
    assert_eq!(sizes, [(480, 360), (640, 480)], "{list:?}\n{master}");
    let mut starts: Vec<Vec<f64>> = Vec::new();
    for variant in ["480p", "360p"] {
        let playlist = root.join(variant).join("index.m3u8");
        let (list, duration) = streams(&playlist);
        let kinds: Vec<(&str, &str)> = list.iter().map(|s| (s.0.as_str(), s.1.as_str())).collect();
        assert_eq!(kinds, [("video", "h264"), ("audio", "aac")], "{variant}");
        assert!((duration - 8.0).abs() <= 0.5, "{variant}: {duration}");
        // CODECS comes from the stream: profile and level as ffprobe reads them.
        let v = ffprobe(
            &playlist,
            &[
                "-select_streams",
                "v",
                "-show_entries",
                "stream=profile,level",
            ],
        );
        let profile = v["streams"][0]["profile"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let level = v["streams"][0]["level"].as_u64().unwrap_or(0);
        let idc = match profile.as_str() {
            "High" => "64",
            "Main" => "4d",
            other => panic!("unexpected profile {other}"),
        };
        let line = master
            .lines()
            .zip(master.lines().skip(1))
            .find(|(_, uri)| *uri == format!("{variant}/index.m3u8"))
            .map(|(inf, _)| inf)
            .expect("the variant's line");
        assert!(
            line.contains(&format!("CODECS=\"avc1.{idc}"))
                && line.contains(&format!("{level:02x},mp4a.40.2\"")),
            "{line} ({profile} {level})"
        );
        assert!(line.contains("BANDWIDTH="), "{line}");
        let mut times = Vec::new();
        for n in 0..2 {
            let packets = video_packets(&root.join(variant).join(format!("seg{n:05}.ts")));
            let (pts, key) = packets.first().copied().expect("video packets");
            assert!(
                key,
                "{variant} segment {n} starts with a key frame: {packets:?}"
            );
            times.push(pts);
        }
        starts.push(times);
    }
    for (a, b) in starts[0].iter().zip(&starts[1]) {
        assert!((a - b).abs() < 0.002, "segment starts differ: {starts:?}");
    }
    assert!(
        (starts[0][1] - starts[0][0] - 6.0).abs() < 0.05,
        "{starts:?}"
    );
    farm.assert_all_acked(vec![worker]).await;
}

/// The package an HLS ladder makes plays in a real browser: headless
/// Chromium with hls.js (vendored, tests/assets) from a plain web server,
/// each variant from its start to its end, and across a switch from the
/// 480p variant to the 360p one two seconds in, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hls_package_plays_in_chromium_on_every_variant_and_across_a_switch() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/p.wmv", &fixtures::wmv_sized_with_audio(8, 640, 480))
        .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(json!({"job_id": "play", "input_key": "in/p.wmv",
        "output_key": "videos/p/master.m3u8", "preset": "hls-ladder"}))
        .await;
    let last = watch.until_final("play", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());

    // The site: the player page, hls.js, and the package as stored.
    let package = download_package(&farm, "videos/p/").await;
    let site = farm.dir.path().join(crate::common::random_name("site"));
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/assets");
    std::fs::create_dir_all(site.join("hls.js")).unwrap();
    std::fs::create_dir_all(site.join("videos")).unwrap();
    std::fs::copy(assets.join("hls-player.html"), site.join("hls-player.html")).unwrap();
    std::fs::copy(
        assets.join("hls.js/hls.min.js"),
        site.join("hls.js/hls.min.js"),
    )
    .unwrap();
    std::fs::rename(&package, site.join("videos/p")).unwrap();
    let server = StaticServer::serve(&site).await;
    let browser = Browser::open(800, 600).await;
    let page = |level: u32| {
        format!(
            "{}/hls-player.html?src=videos/p/master.m3u8&level={level}",
            server.url
        )
    };
    let ended = "const r = window.hlsReport; \
                 return r && (r.state === 'ended' || r.state === 'error') ? r : null;";
    let play_time = Duration::from_secs(90);

    // hls.js numbers the variants by bandwidth, lowest first.
    for (level, height) in [(0, 360), (1, 480)] {
        browser
            .client
            .goto(&page(level))
            .await
            .expect("open the player");
        let r = browser
            .wait_js(
                play_time,
                &format!("variant {level} to play to its end"),
                ended,
            )
            .await;
        assert_eq!(r["state"], "ended", "variant {level}: {r:#}");
        assert_eq!(r["error"], Value::Null, "variant {level}: {r:#}");
        assert_eq!(r["levels"], 2, "{r:#}");
        assert_eq!(r["heights"], json!([360, 480]), "{r:#}");
        assert_eq!(r["height"], height, "variant {level}: {r:#}");
        assert_eq!(r["switches"], 0, "variant {level}: {r:#}");
        let duration = r["duration"].as_f64().unwrap_or(0.0);
        assert!((duration - 8.0).abs() <= 0.5, "variant {level}: {r:#}");
        let time = r["time"].as_f64().unwrap_or(0.0);
        assert!((time - duration).abs() <= 0.5, "played to the end: {r:#}");
        assert!(r["segments"].as_u64().unwrap_or(0) >= 2, "{r:#}");
    }

    // From 480p to 360p during playback.
    browser
        .client
        .goto(&page(1))
        .await
        .expect("open the player");
    browser
        .wait_js(
            play_time,
            "two seconds of 480p",
            "const r = window.hlsReport; return r && r.height === 480 && r.time >= 2 ? r : null;",
        )
        .await;
    browser
        .js("window.hlsPlayer.nextLevel = 0; return true;")
        .await;
    let r = browser
        .wait_js(play_time, "the switched playback to end", ended)
        .await;
    assert_eq!(r["state"], "ended", "{r:#}");
    assert_eq!(r["error"], Value::Null, "{r:#}");
    assert_eq!(r["switches"], 1, "{r:#}");
    assert_eq!(r["height"], 360, "ends on the 360p variant: {r:#}");
    browser.close().await;
}

/// The pipeline process itself, given four outputs (three files and an
/// HLS package of two variants) of a 640x480 WMV2 + WMA input, creates
/// one decoder per input stream: two, however many outputs. The encoders
/// look ahead by different lengths (x264's medium preset holds 40 frames
/// before its first output, ultrafast none), more than the branch queues
/// hold: a sink that waited for every sink before taking a second buffer
/// would stop them all (the run would not end).
#[test]
fn the_pipeline_process_decodes_each_input_stream_once_for_every_output() {
    let input = fixtures::wmv_sized_with_audio(2, 640, 480);
    let dir = tempfile::tempdir().unwrap();
    let encoding = |speed: &str, height: u32, muxer: &str| {
        json!({"video": format!("videoconvert ! x264enc speed-preset={speed}"),
            "audio": "audioconvert ! audioresample ! avenc_aac",
            "muxer": muxer, "max_height": height})
    };
    let file = |key: &str, speed: &str, height: u32, muxer: &str| {
        json!({"key": key, "path": dir.path().join(key),
            "target": {"file": encoding(speed, height, muxer)}})
    };
    let variant = |name: &str, speed: &str, height: u32| json!({"name": name, "optional": true, "encoding": encoding(speed, height, "hlssink2")});
    let spec = json!({
        "input": input,
        "outputs": [
            file("a.mp4", "medium", 480, "mp4mux"),
            file("b.mp4", "ultrafast", 360, "mp4mux"),
            file("c.mkv", "ultrafast", 240, "matroskamux"),
            {"key": "v/master.m3u8", "path": dir.path().join("hls"), "target": {"hls": {
                "segment_seconds": 1,
                "variants": [variant("360p", "medium", 360), variant("240p", "ultrafast", 240)]}}},
        ],
        "duration_tolerance_ms": 500, "max_input": [7680, 4320, 86_400_000u64],
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, format!("{spec}\n")).unwrap();
    // The spec on its standard input, as the worker gives it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec {WORKER_BIN} pipeline < \"$0\""))
        .arg(&spec_file);
    let out = run_with_timeout(&mut cmd, JOB_TIMEOUT).expect("the pipeline process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let finished: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "finished")
        .unwrap_or_else(|| {
            panic!(
                "no finished event: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(finished["outputs"].as_array().unwrap().len(), 4);
    assert_eq!(finished["decoders"], json!(["avdec_wmv2", "avdec_wmav2"]));
    let variants = &finished["outputs"][3]["variants"];
    assert_eq!(variants.as_array().unwrap().len(), 2, "{finished:#}");
}

/// A worker dies (fault injection) right after storing the first of three
/// renditions; the job's next delivery, on another worker, keeps that
/// output as it was stored (by the first worker) and makes only the two
/// missing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_ladder_job_reuses_the_renditions_already_stored() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/c.wmv", &fixtures::wmv_sized_with_audio(2, 640, 480))
        .await;
    let mut watch = farm.watch_progress().await;
    let keys = ["r/a.mp4", "r/b.mp4", "r/c.mkv"];
    farm.publish_job(
        json!({"job_id": "again", "input_key": "in/c.wmv", "outputs": [
            {"output_key": keys[0], "transcode_options": FAST_240P},
            {"output_key": keys[1], "preset": "h264-360p"},
            {"output_key": keys[2], "transcode_options": FAST_240P},
        ]}),
    )
    .await;
    let mut first = farm.spawn_worker(&[("TRANSCODE_WORKER__CRASH_AFTER", "uploading")]);
    let status = first.wait_exit(JOB_TIMEOUT).await;
    assert!(!status.success(), "the first worker crashed on purpose");
    assert!(farm.output_exists(keys[0]).await);
    assert!(!farm.output_exists(keys[1]).await && !farm.output_exists(keys[2]).await);
    let second = farm.spawn_worker(&[("LOG_FORMAT", "json")]);
    let last = watch.until_final("again", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", second.logs());
    assert_eq!(last.attempt, 2);
    assert_eq!(last.output_keys, keys);
    assert_eq!(
        metadata(&farm, keys[0]).await["transcode-worker"],
        first.name
    );
    for key in &keys[1..] {
        assert_eq!(
            metadata(&farm, key).await["transcode-worker"],
            second.name,
            "{key}"
        );
    }
    assert_eq!(
        log_field(&second, "outputs verified", "outputs").as_deref(),
        Some("2"),
        "only the two missing outputs were made"
    );
    farm.assert_all_acked(vec![second]).await;
}

/// One rendition's fragment cannot run (x264enc takes no GRAY8 frames):
/// the job fails, naming that output, as an invalid pipeline (not
/// retried: it would fail again), and nothing is stored, not even the
/// renditions that could be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rendition_fails_the_job_with_the_reason_and_stores_nothing() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/d.wmv", &fixtures::wmv_sized_with_audio(2, 640, 480))
        .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_job(
        json!({"job_id": "broken", "input_key": "in/d.wmv", "outputs": [
            {"output_key": "r/good.mp4", "transcode_options": FAST_240P},
            {"output_key": "r/bad.mp4",
             "transcode_options": "videoconvert ! video/x-raw,format=GRAY8 ! x264enc"},
        ]}),
    )
    .await;
    let last = watch.until_final("broken", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(
        last.error_kind,
        Some(ErrorKind::InvalidPipeline),
        "{last:#?}"
    );
    let error = last.error.unwrap_or_default();
    assert!(error.starts_with("the output \"r/bad.mp4\": "), "{error}");
    assert!(!farm.output_exists("r/good.mp4").await);
    assert!(!farm.output_exists("r/bad.mp4").await);
    let dead = farm.wait_dead_letters(DEFAULT_TIMEOUT).await;
    assert!(
        dead[0].1["x-error"].contains("r/bad.mp4"),
        "{:?}",
        dead[0].1
    );
    farm.assert_all_acked(vec![worker]).await;
}
