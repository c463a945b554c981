//! Untrusted job messages: a catalogue of hostile messages, each refused
//! with a specific reason and nothing written outside the job's scratch
//! folder, and every shipped preset run for real.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use transcode_worker::job::Phase;

use crate::common::farm::Farm;
use crate::common::{fixtures, random_name, wait_for};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A job whose only hostile part is `fragment`.
fn fragment_job(id: &str, fragment: &str) -> Vec<u8> {
    json!({"job_id": id, "input_key": "in/good.mov", "output_key": format!("out/{id}.mp4"),
        "transcode_options": fragment})
    .to_string()
    .into_bytes()
}

fn job_with(id: &str, fields: serde_json::Value) -> Vec<u8> {
    let mut job =
        json!({"job_id": id, "input_key": "in/good.mov", "output_key": format!("out/{id}.mp4")});
    for (k, v) in fields.as_object().unwrap() {
        job[k] = v.clone();
    }
    job.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_with_specific_reasons_and_write_nothing() {
    let farm = Farm::directory(&[]).await;
    let store = farm.store_dir.as_ref().unwrap().path().to_path_buf();
    farm.put_input("in/good.mov", &fixtures::mjpeg_mov(1)).await;
    // A secret outside the storage folder, and a link to it inside.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("credentials"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), store.join("in/link")).unwrap();
    let canary = format!("/tmp/{}", random_name("tw-pwned"));

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(
        r#"{{"job_id":"big","input_key":"{}","output_key":"o.mp4"}}"#,
        "a".repeat(10 << 20)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_job", vec![0xff, 0xfe, 0x00, b'{']),
        ("invalid_job", b"rm -rf /".to_vec()),
        ("invalid_job", b"[1, 2, 3]".to_vec()),
        ("invalid_job", nested.into_bytes()),
        ("invalid_job", huge.into_bytes()),
        (
            "invalid_job",
            br#"{"job_id": 1e400, "input_key": "a", "output_key": "b"}"#.to_vec(),
        ),
        (
            "invalid_job",
            br#"{"job_id": 123456789012345678901234567890, "input_key": "a", "output_key": "b"}"#
                .to_vec(),
        ),
        (
            "invalid_job",
            br#"{"job_id": "a\u0000b", "input_key": "in/good.mov", "output_key": "o.mp4"}"#
                .to_vec(),
        ),
        ("invalid_job", job_with(&"x".repeat(1000), json!({}))),
        (
            "invalid_job",
            job_with("nul-key", json!({"input_key": "in/good.mov\u{0}.txt"})),
        ),
        (
            "invalid_job",
            job_with("newline-key", json!({"output_key": "out/a\nb.mp4"})),
        ),
        (
            "invalid_job",
            job_with("empty-key", json!({"input_key": ""})),
        ),
        (
            "invalid_job",
            br#"{"job_id": "no-output", "input_key": "in/good.mov"}"#.to_vec(),
        ),
        (
            "invalid_job",
            job_with(
                "both",
                json!({"preset": "h264-mp4", "transcode_options": "x264enc"}),
            ),
        ),
        (
            "invalid_job",
            job_with("no-preset", json!({"preset": "../../etc/passwd"})),
        ),
        (
            "invalid_job",
            job_with("bad-ext", json!({"output_key": "out/run.sh"})),
        ),
        (
            "invalid_job",
            job_with("dotdot-in", json!({"input_key": "../../etc/passwd"})),
        ),
        (
            "invalid_job",
            job_with("abs-in", json!({"input_key": "/etc/passwd"})),
        ),
        (
            "invalid_job",
            job_with("abs-out", json!({"output_key": format!("{canary}.mp4")})),
        ),
        (
            "invalid_job",
            job_with("dotdot-out", json!({"output_key": "../../escape.mp4"})),
        ),
        (
            "invalid_job",
            job_with("symlink-in", json!({"input_key": "in/link/credentials"})),
        ),
        (
            "invalid_pipeline",
            fragment_job("filesink", &format!("filesink location={canary}")),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "tail-sink",
                &format!("videoconvert ! x264enc ! filesink location={canary}"),
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "filesrc",
                "videoconvert ! filesrc location=/root/.aws/credentials",
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "stats-file",
                &format!("videoconvert ! x264enc stats-file={canary}"),
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "option-string",
                &format!("videoconvert ! x264enc option-string=dump-yuv={canary}"),
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job("rename", "videoconvert ! x264enc name=tw_mux"),
        ),
        (
            "invalid_pipeline",
            fragment_job("branch", "x264enc mux. videotestsrc ! x264enc"),
        ),
        (
            "invalid_pipeline",
            fragment_job("bin", "( videoconvert ! x264enc )"),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "quote-trick",
                &format!("x264enc bitrate=\"1 ! filesink location={canary}\""),
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job("dangling", "videoconvert !"),
        ),
        (
            "invalid_pipeline",
            fragment_job("shell", &format!("x264enc bitrate=$(touch {canary})")),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "backslash",
                &format!("x264enc bitrate=1\\ ! filesink location={canary}"),
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job(
                "network",
                "videoconvert ! x264enc ! tcpclientsink host=10.0.0.1",
            ),
        ),
        (
            "invalid_pipeline",
            fragment_job("multifile", &format!("multifilesink location={canary}%d")),
        ),
        (
            "invalid_pipeline",
            fragment_job("audio-caps", "audio/x-raw ! x264enc"),
        ),
        (
            "invalid_pipeline",
            fragment_job("upper", &format!("x264enc LOCATION={canary}")),
        ),
        (
            "invalid_pipeline",
            fragment_job("nul", "videoconvert\u{0} ! x264enc"),
        ),
    ];
    assert!(cases.len() >= 30);
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[]);
    for (_, body) in &cases {
        farm.publish_raw(body).await;
    }
    farm.publish_job(
        json!({"job_id": "good", "input_key": "in/good.mov", "output_key": "out/good.mp4"}),
    )
    .await;
    let last = watch.until_final("good", TIMEOUT).await;
    assert_eq!(
        last.state,
        Phase::Completed,
        "the worker still serves good jobs"
    );

    let dead = std::sync::Mutex::new(Vec::new());
    wait_for(TIMEOUT, "every hostile message dead-lettered", || async {
        let got = farm.dead_letters().await;
        let mut dead = dead.lock().unwrap();
        dead.extend(got);
        dead.len() >= cases.len()
    })
    .await;
    let dead = dead.into_inner().unwrap();
    assert_eq!(dead.len(), cases.len());
    // Dead letters keep their order: each has the kind and a specific reason.
    for ((kind, body), (dead_body, headers)) in cases.iter().zip(&dead) {
        assert_eq!(body, dead_body, "dead letters hold the original body");
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
        assert_eq!(&headers["x-error-kind"], kind, "{shown}: {headers:#?}");
        let reason = &headers["x-error"];
        assert!(
            reason.len() > 15 && reason.len() < 2000,
            "{shown}: {reason}"
        );
        assert_eq!(headers["x-attempts"], "1", "{shown}");
    }
    // Each failure was also announced; reasons differ from case to case.
    let failed: Vec<_> = watch
        .seen
        .iter()
        .filter(|e| e.state == Phase::Failed)
        .collect();
    assert!(
        failed.len() >= cases.len(),
        "{} failed events",
        failed.len()
    );
    let reasons: std::collections::BTreeSet<_> =
        dead.iter().map(|(_, h)| h["x-error"].clone()).collect();
    assert!(reasons.len() >= 25, "reasons are specific: {reasons:#?}");

    // Nothing was written anywhere but the outputs folder.
    assert!(!Path::new(&canary).exists());
    assert!(!Path::new(&format!("{canary}.mp4")).exists());
    assert!(!store.parent().unwrap().join("escape.mp4").exists());
    let mut outputs: Vec<_> = std::fs::read_dir(store.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    outputs.sort();
    // The good job's output and its metadata sidecar.
    assert_eq!(outputs, [".good.mp4.meta.json", "good.mp4"]);
    let scratch: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_preset_makes_what_it_promises() {
    let farm = Farm::directory(&[]).await;
    let input = fixtures::mjpeg_mov(1);
    farm.put_input("in/a.mov", &input).await;
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[]);
    // (preset, output key, container, video codec, audio codec, height)
    let cases = [
        (
            "h264-mp4",
            "out/a.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            240,
        ),
        (
            "h264-720p",
            "out/a720.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            720,
        ),
        (
            "h264-1080p",
            "out/a1080.mp4",
            "video/quicktime",
            "video/x-h264",
            "audio/mpeg",
            1080,
        ),
        (
            "hevc-mp4",
            "out/ahevc.mp4",
            "video/quicktime",
            "video/x-h265",
            "audio/mpeg",
            240,
        ),
        (
            "vp9-webm",
            "out/a.webm",
            "video/webm",
            "video/x-vp9",
            "audio/x-opus",
            240,
        ),
    ];
    for (preset, key, ..) in &cases {
        farm.publish_job(
            json!({"job_id": preset, "input_key": "in/a.mov", "output_key": key, "preset": preset}),
        )
        .await;
    }
    let inp = fixtures::probe(&input);
    for (preset, key, container, video, audio, height) in cases {
        let last = watch.until_final(preset, TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{preset}: {last:#?}");
        let out = fixtures::probe(&farm.get_output(key).await.expect(key));
        assert_eq!(
            out.container.as_deref(),
            Some(container),
            "{preset}: {out:#?}"
        );
        assert_eq!(out.video[0].media_type, video, "{preset}: {out:#?}");
        assert_eq!(out.video[0].height, height, "{preset}: {out:#?}");
        if height == 240 {
            assert_eq!(
                out.video[0].width, inp.video[0].width,
                "{preset} keeps the size"
            );
        } else {
            // 4:3 input scaled to the preset's height keeps its shape.
            assert_eq!(out.video[0].width, height * 4 / 3, "{preset}: {out:#?}");
        }
        assert_eq!(out.audio.len(), 1, "{preset}: {out:#?}");
        assert_eq!(out.audio[0].media_type, audio, "{preset}: {out:#?}");
        let diff = out.duration.unwrap().abs_diff(inp.duration.unwrap());
        assert!(diff <= Duration::from_millis(500), "{preset}: {diff:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_https_endpoints_work() {
    use crate::common::farm::Rabbit;
    use crate::common::services::{free_port, shared_s3, RabbitNode, RabbitOptions};
    use crate::common::tls::{tls_relay, TestCa};

    let ca = TestCa::new();
    let tls_port = free_port();
    let node = std::sync::Arc::new(RabbitNode::start(
        RabbitOptions::default()
            .conf(format!("listeners.ssl.default = {tls_port}"))
            .conf(format!(
                "ssl_options.cacertfile = {}",
                ca.ca_file().display()
            ))
            .conf(format!(
                "ssl_options.certfile = {}",
                ca.cert_file().display()
            ))
            .conf(format!("ssl_options.keyfile = {}", ca.key_file().display()))
            .conf("ssl_options.verify = verify_none")
            .conf("ssl_options.fail_if_no_peer_cert = false"),
    ));
    let s3 = shared_s3();
    let s3_port = s3.port();
    let https_port = tls_relay(&ca, s3_port).await;
    let farm = Farm::s3_on(Rabbit::Own(node.clone()), s3, &[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    let mut watch = farm.watch_progress().await;
    let amqps = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let https = format!("https://localhost:{https_port}");
    let ca_file = ca.ca_file().display().to_string();
    let worker = farm.spawn_worker(&[
        ("AMQP_URL", &amqps),
        ("AWS_S3_ENDPOINT_URL", &https),
        ("SSL_CERT_FILE", &ca_file),
    ]);
    farm.publish_job(json!({"job_id": "tls", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let last = watch.until_final("tls", TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    let logs = worker.logs();
    assert!(
        logs.contains(&format!("amqps://guest@localhost:{tls_port}")),
        "{logs}"
    );
    assert!(logs.contains(&https), "{logs}");
    assert!(farm.output_exists("o/a.mp4").await);
}
