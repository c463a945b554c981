//! The worker end to end: jobs in on RabbitMQ, GStreamer transcodes, outputs
//! in S3 or a directory, progress out, ack only after the upload, failures in
//! the dead-letter queue, and a killed worker's job finished by another.

use std::time::{Duration, Instant};

use serde_json::json;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::{Phase, Progress};

use crate::common::farm::Farm;
use crate::common::{fixtures, wait_for, with_timeout};

/// Long enough for a few small transcodes on a loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The exact bytes of the original service's example job, with keys that
/// exist in the test bucket.
fn seed_job(job_id: &str, input_key: &str, output_key: &str) -> String {
    format!(
        r#"{{"job_id": "{job_id}", "input_key": "{input_key}", "output_key": "{output_key}", "transcode_options": "videoconvert ! x264enc"}}"#
    )
}

/// When the worker made `event` (its `timestamp`, RFC 3339 in UTC).
fn made_at(event: &Progress) -> std::time::SystemTime {
    humantime::parse_rfc3339(&event.timestamp)
        .unwrap_or_else(|e| panic!("bad timestamp in {event:#?}: {e}"))
}

/// Asserts the events of one attempt: monotonic, starting at downloading,
/// 100 only on the final `completed`.
fn assert_attempt_progress(events: &[Progress]) {
    assert!(!events.is_empty(), "no events");
    assert_eq!(events[0].state, Phase::Downloading, "{events:#?}");
    let last = events.last().unwrap();
    assert_eq!(last.state, Phase::Completed, "{events:#?}");
    assert_eq!(last.progress, 100.0);
    for pair in events.windows(2) {
        assert!(
            pair[1].progress >= pair[0].progress,
            "progress went back: {pair:#?}"
        );
    }
    for e in &events[..events.len() - 1] {
        assert!(e.progress < 100.0, "100 before completion: {e:#?}");
        assert_ne!(e.state, Phase::Completed);
        assert!(!e.worker.is_empty() && !e.timestamp.is_empty());
        assert_eq!(e.attempt, last.attempt);
    }
    let order = |s: Phase| match s {
        Phase::Starting | Phase::Waiting | Phase::Cancelled => 0,
        Phase::Downloading => 1,
        Phase::Transcoding => 2,
        Phase::Uploading => 3,
        Phase::Completed => 4,
        Phase::Failed => 5,
    };
    for pair in events.windows(2) {
        assert!(
            order(pair[1].state) >= order(pair[0].state),
            "phases out of order: {pair:#?}"
        );
    }
    assert!(events.iter().any(|e| e.state == Phase::Transcoding));
    assert!(events.iter().any(|e| e.state == Phase::Uploading));
}

/// Checks a transcoded output: H.264 in MP4, duration within 0.5 s of the
/// input, audio exactly when the input had audio.
fn assert_h264_mp4(output: &std::path::Path, input: &std::path::Path) {
    let out = fixtures::probe(output);
    let inp = fixtures::probe(input);
    assert_eq!(
        out.container.as_deref(),
        Some("video/quicktime"),
        "{out:#?}"
    );
    assert_eq!(out.video.len(), 1, "{out:#?}");
    assert_eq!(out.video[0].media_type, "video/x-h264", "{out:#?}");
    assert_eq!(
        out.audio.is_empty(),
        inp.audio.is_empty(),
        "audio mismatch: in {inp:#?} out {out:#?}"
    );
    let (din, dout) = (inp.duration.unwrap(), out.duration.unwrap());
    let diff = din.abs_diff(dout);
    // The discoverer under-reports MPEG program stream durations (it
    // estimates them from the first packets), so compare those against the
    // number of seconds the fixture was made with.
    let expected = if inp.container.as_deref() == Some("video/mpeg") {
        Duration::from_secs(2)
    } else {
        din
    };
    assert!(
        expected.abs_diff(dout) <= Duration::from_millis(500),
        "output lasts {dout:?}, input {din:?} (diff {diff:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_job_message_is_transcoded_and_acked_after_the_upload() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::wmv_with_audio(2);
    farm.put_input("drone/clip one.wmv", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_raw(seed_job("job1", "drone/clip one.wmv", "out/clip one.mp4").as_bytes())
        .await;

    let last = watch.until_final("job1", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.output_key.as_deref(), Some("out/clip one.mp4"));
    assert_attempt_progress(&watch.of("job1"));

    let output = farm.get_output("out/clip one.mp4").await.expect("output");
    assert_h264_mp4(&output, &input);

    // The seed's consumer reads job_id and progress from transcoding_progress.
    let progress = farm
        .drain_queue(&farm.settings.broker.progress_queue.clone())
        .await;
    let parsed: Vec<serde_json::Value> = progress
        .iter()
        .map(|(body, _)| serde_json::from_slice(body).unwrap())
        .collect();
    assert!(parsed.len() >= 4, "{parsed:#?}");
    assert!(parsed
        .iter()
        .all(|p| p["job_id"] == "job1" && p["progress"].is_number()));
    assert_eq!(parsed.last().unwrap()["state"], "completed");
    assert!(farm.dead_letters().await.is_empty());
    farm.assert_all_acked(vec![worker]).await;
}

/// The original service's later message names S3 paths instead of keys:
/// `input_s3_path` and `output_s3_path`, as `s3://BUCKET/key`. Paths in
/// the worker's bucket are transcoded; another bucket is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_message_with_s3_paths_is_transcoded_and_other_buckets_are_refused() {
    let farm = Farm::s3(&[]).await;
    let bucket = farm.bucket.as_ref().expect("an S3 farm").name();
    let input = fixtures::wmv_with_audio(2);
    farm.put_input("path/to/input_file.wmv", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let job = format!(
        r#"{{"job_id": "job2", "input_s3_path": "s3://{bucket}/path/to/input_file.wmv", "output_s3_path": "s3://{bucket}/path/to/output_file.mp4", "transcode_options": "videoconvert ! x264enc"}}"#
    );
    farm.publish_raw(job.as_bytes()).await;
    let last = watch.until_final("job2", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.output_key.as_deref(), Some("path/to/output_file.mp4"));
    let output = farm
        .get_output("path/to/output_file.mp4")
        .await
        .expect("output");
    assert_h264_mp4(&output, &input);

    let elsewhere = r#"{"job_id": "job3", "input_s3_path": "s3://someone-elses/path/to/input_file.wmv", "output_s3_path": "s3://someone-elses/out.mp4", "transcode_options": "videoconvert ! x264enc"}"#;
    farm.publish_raw(elsewhere.as_bytes()).await;
    let refused = watch.until_final("job3", JOB_TIMEOUT).await;
    assert_eq!(refused.state, Phase::Failed, "{refused:#?}");
    assert_eq!(refused.error_kind, Some(ErrorKind::InvalidJob));
    let reason = refused.error.clone().unwrap_or_default();
    assert!(
        reason.contains("someone-elses") && reason.contains(&bucket),
        "{reason}"
    );
    let dead = farm.wait_dead_letters(JOB_TIMEOUT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].1.get("x-error-kind").map(String::as_str),
        Some("invalid_job")
    );
    farm.assert_all_acked(vec![worker]).await;
}

#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test turns it on)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_after_the_upload_but_before_the_ack_leaves_the_job_queued() {
    death_between_upload_and_ack(Farm::s3(&[]).await).await;
}

#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test turns it on)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holds_on_the_directory_backend() {
    death_between_upload_and_ack(Farm::directory(&[]).await).await;
}

/// A worker aborts right after storing the output: the job is delivered
/// again, and the next worker recognises the stored output as this job's
/// (by its metadata) and acks without encoding again.
async fn death_between_upload_and_ack(farm: Farm) {
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    // The fault point aborts the worker right after the upload, as a power
    // cut would: no completed event, no ack.
    let mut first = farm.spawn_worker(&[("TRANSCODE_WORKER__CRASH_AFTER", "upload")]);
    farm.publish_job(json!({"job_id": "pc", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let status = first.wait_exit(JOB_TIMEOUT).await;
    assert!(!status.success(), "the fault point aborts the worker");
    assert!(farm.output_exists("o/a.mp4").await, "the upload happened");
    // Not acked: the job is given to the next worker, which completes it.
    let second = farm.spawn_worker(&[]);
    let last = watch.until_final("pc", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, second.name);
    assert_eq!(last.attempt, 2);
    assert!(
        watch
            .of("pc")
            .iter()
            .all(|e| e.worker != first.name || e.state != Phase::Completed),
        "the first worker never reported completion"
    );
    // The stored output was recognised as this job's: no second encode.
    let second_attempt: Vec<Phase> = watch
        .of("pc")
        .iter()
        .filter(|e| e.attempt == 2)
        .map(|e| e.state)
        .collect();
    assert!(
        !second_attempt.contains(&Phase::Transcoding),
        "{second_attempt:?}"
    );
    assert_eq!(second_attempt.last(), Some(&Phase::Completed));
    farm.assert_all_acked(vec![second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_kind_becomes_h264_mp4_with_audio_only_when_the_input_had_it() {
    let farm = Farm::s3(&[]).await;
    let inputs = [
        ("vhs", fixtures::mpeg2_ps_with_mp2(2), "tapes/vhs.mpg"),
        ("mov", fixtures::mjpeg_mov(2), "cam/a.mov"),
        ("silent", fixtures::video_only(2), "cam/silent.avi"),
    ];
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&[]);
    for (id, path, key) in &inputs {
        farm.put_input(key, path).await;
        // No transcode_options and no preset: the default H.264 preset.
        farm.publish_job(
            json!({"job_id": id, "input_key": key, "output_key": format!("out/{id}.mp4")}),
        )
        .await;
    }
    for (id, path, _) in &inputs {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{id}: {last:#?}");
        let output = farm.get_output(&format!("out/{id}.mp4")).await.expect(id);
        assert_h264_mp4(&output, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("broken.avi", &fixtures::corrupt()).await;
    farm.put_input("good.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    farm.publish_raw(b"{ this is not json").await;
    farm.publish_job(
        json!({"job_id": "missing", "input_key": "nope.wmv", "output_key": "o/missing.mp4"}),
    )
    .await;
    farm.publish_job(
        json!({"job_id": "corrupt", "input_key": "broken.avi", "output_key": "o/corrupt.mp4"}),
    )
    .await;
    farm.publish_job(
        json!({"job_id": "hostile", "input_key": "good.mov", "output_key": "o/h.mp4",
        "transcode_options": "videoconvert ! x264enc ! filesink location=/tmp/pwned"}),
    )
    .await;
    farm.publish_job(
        json!({"job_id": "good", "input_key": "good.mov", "output_key": "o/good.mp4"}),
    )
    .await;

    let expected = [
        ("missing", ErrorKind::InputNotFound),
        ("corrupt", ErrorKind::UndecodableInput),
        ("hostile", ErrorKind::InvalidPipeline),
    ];
    for (id, kind) in expected {
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Failed, "{id}: {last:#?}");
        assert_eq!(last.error_kind, Some(kind), "{id}: {last:#?}");
        assert!(
            last.error.as_deref().is_some_and(|e| e.len() > 10),
            "{last:#?}"
        );
        assert_eq!(
            last.attempt, 1,
            "a permanent error is not retried: {last:#?}"
        );
    }
    let last = watch.until_final("good", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    let dead = std::sync::Mutex::new(Vec::new());
    wait_for(JOB_TIMEOUT, "four dead letters", || async {
        let got = farm.dead_letters().await;
        let mut dead = dead.lock().unwrap();
        dead.extend(got);
        dead.len() >= 4
    })
    .await;
    let dead = dead.into_inner().unwrap();
    assert_eq!(dead.len(), 4, "{dead:#?}");
    let kind_of = |needle: &str| {
        dead.iter()
            .find(|(body, _)| String::from_utf8_lossy(body).contains(needle))
            .map(|(_, h)| h["x-error-kind"].clone())
            .unwrap_or_else(|| panic!("no dead letter holding {needle}"))
    };
    assert_eq!(kind_of("this is not json"), "invalid_job");
    assert_eq!(kind_of("nope.wmv"), "input_not_found");
    assert_eq!(kind_of("broken.avi"), "undecodable_input");
    assert_eq!(kind_of("pwned"), "invalid_pipeline");
    for (_, headers) in &dead {
        assert!(headers["x-error"].len() > 10, "{headers:#?}");
        assert_eq!(headers["x-attempts"], "1");
    }
    // Nothing is left in the jobs queue, and the scratch folder is empty.
    farm.assert_all_acked(vec![worker]).await;
    let leftovers: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(leftovers.is_empty(), "scratch not empty: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_encode_leaves_the_job_to_another_worker() {
    // `identity sleep-time` slows each frame down, so the encode reliably
    // lasts several seconds (2 s of 25 fps video at 60 ms a frame = 3 s).
    let slow = [("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity")];
    let farm = Farm::s3(&slow).await;
    farm.put_input("long.wmv", &fixtures::wmv_with_audio(2))
        .await;
    let mut watch = farm.watch_progress().await;
    let first = farm.spawn_worker(&slow);
    farm.publish_job(
        json!({"job_id": "kill-me", "input_key": "long.wmv", "output_key": "o/long.mp4",
        "transcode_options": "identity sleep-time=60000 ! videoconvert ! x264enc"}),
    )
    .await;

    // Wait until the first worker is encoding, then kill it without warning.
    loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.state == Phase::Transcoding && e.progress > 5.0 {
            assert_eq!(e.worker, first.name);
            break;
        }
    }
    let children = first.pipelines();
    assert!(!children.is_empty(), "the pipeline runs in a child process");
    first.signal(libc::SIGKILL);
    drop(first);
    // Its pipeline process dies with it.
    wait_for(Duration::from_secs(10), "pipeline process gone", || {
        let children = children.clone();
        async move {
            children
                .iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        }
    })
    .await;
    assert!(!farm.output_exists("o/long.mp4").await);

    let second = farm.spawn_worker(&slow);
    let last = watch.until_final("kill-me", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, second.name);
    assert_eq!(last.attempt, 2, "the killed attempt counts: {last:#?}");
    let output = farm.get_output("o/long.mp4").await.expect("output");
    assert_h264_mp4(&output, &fixtures::wmv_with_audio(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_published_at_least_every_two_seconds_during_a_transcode() {
    let slow = [("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity")];
    let farm = Farm::directory(&slow).await;
    farm.put_input("in/clip.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let _worker = farm.spawn_worker(&slow);
    // 50 frames at 120 ms each: a 6 s transcode.
    farm.publish_job(
        json!({"job_id": "slow", "input_key": "in/clip.mov", "output_key": "out/clip.mkv",
        "transcode_options": "identity sleep-time=120000 ! videoconvert ! x264enc"}),
    )
    .await;
    let mut events = Vec::new();
    loop {
        let e = with_timeout(JOB_TIMEOUT, "progress", watch.next(JOB_TIMEOUT)).await;
        events.push(e.clone());
        if e.state == Phase::Completed || e.state == Phase::Failed {
            break;
        }
    }
    assert_attempt_progress(&events);
    // The promise is about when the worker makes the events, which each
    // carries: the broker's and this test's delays do not count.
    let transcoding: Vec<_> = events
        .iter()
        .filter(|e| e.state == Phase::Transcoding)
        .map(|e| (made_at(e), e))
        .collect();
    assert!(transcoding.len() >= 4, "{events:#?}");
    for pair in transcoding.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0).unwrap_or_default();
        assert!(
            gap <= Duration::from_secs(2),
            "gap of {gap:?} between {:#?}",
            (pair[0].1, pair[1].1)
        );
    }
    // At most a few a second.
    let span = transcoding
        .last()
        .unwrap()
        .0
        .duration_since(transcoding[0].0)
        .unwrap_or_default();
    assert!(
        (transcoding.len() as f64) <= span.as_secs_f64() * 4.5 + 2.0,
        "{} events in {span:?}",
        transcoding.len()
    );
    assert!(transcoding.iter().any(|(_, e)| e.eta_secs.is_some()));
    // Directory backend, Matroska by extension.
    let out = fixtures::probe(&farm.get_output("out/clip.mkv").await.expect("output"));
    assert_eq!(
        out.container.as_deref(),
        Some("video/x-matroska"),
        "{out:#?}"
    );
    assert_eq!(out.video[0].media_type, "video/x-h264");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_at_start_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("AWS_S3_ENDPOINT_URL", "http://127.0.0.1:9")],
            "S3_BUCKET_NAME",
        ),
        (
            &[
                ("S3_BUCKET_NAME", "b"),
                ("TRANSCODE_WORKER__CONCURRENCY", "zero"),
            ],
            "concurrency",
        ),
        (
            &[("S3_BUCKET_NAME", "b"), ("AMQP_URL", "http://not-amqp")],
            "AMQP_URL",
        ),
        (
            &[
                ("TRANSCODE_STORAGE__BACKEND", "directory"),
                ("TRANSCODE_STORAGE__DIRECTORY", "/no/such/dir"),
            ],
            "storage.directory",
        ),
    ];
    for (env, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(crate::common::farm::WORKER_BIN);
        cmd.arg("run")
            .env_clear()
            .current_dir(dir.path())
            .envs(env.iter().copied());
        let out = crate::common::run_with_timeout(&mut cmd, Duration::from_secs(30)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{env:?} should name {needle}: {stderr}"
        );
    }
    // A preset whose element this machine lacks does not stop the worker
    // (another worker may have it): it starts and says which preset it
    // cannot run, and why.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut cmd = std::process::Command::new(crate::common::farm::WORKER_BIN);
    cmd.arg("run")
        .env_clear()
        .current_dir(dir.path())
        .env("S3_BUCKET_NAME", "b")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f")
        .env("TRANSCODE_PRESETS__BROKEN__VIDEO", "videoconvert ! x264enc")
        .env(
            "TRANSCODE_PRESETS__BROKEN__AUDIO",
            "audioconvert ! nosuchaudioenc",
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let read = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default()
    };
    crate::common::poll_until(
        Duration::from_secs(30),
        "the warning about the preset",
        || read().contains("nosuchaudioenc"),
    );
    let said = read();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("preset broken") && said.contains("nosuchaudioenc"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_or_progress() {
    const SECRET: &str = "Zq8-recognisable-secret-4711";
    // A wrong secret key: S3 refuses every request, so the job fails and the
    // error paths (logs, failed events, dead letter) all run.
    let farm = Farm::s3(&[
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "1"),
        ("TRANSCODE_STORAGE__RETRY_FOR", "1s"),
    ])
    .await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("TRANSCODE_WORKER__MAX_ATTEMPTS", "1"),
        ("TRANSCODE_STORAGE__RETRY_FOR", "1s"),
        ("RUST_LOG", "trace"),
    ]);
    farm.publish_job(json!({"job_id": "s", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let last = watch.until_final("s", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(
        last.error_kind,
        Some(ErrorKind::StorageUnavailable),
        "{last:#?}"
    );
    let events = serde_json::to_string(&watch.seen).unwrap();
    assert!(!events.contains(SECRET));
    let dead = farm.wait_dead_letters(JOB_TIMEOUT).await;
    assert_eq!(dead.len(), 1);
    assert!(!format!("{dead:?}").contains(SECRET));
    let logs = worker.logs();
    assert!(logs.contains("storage"), "{logs}");
    assert!(!logs.contains(SECRET), "the secret leaked into the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_stops_the_worker_once_the_queue_stays_empty() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("a.mov", &fixtures::mjpeg_mov(1)).await;
    farm.publish_job(json!({"job_id": "last", "input_key": "a.mov", "output_key": "o/a.mp4"}))
        .await;
    let mut cmd = std::process::Command::new(crate::common::farm::WORKER_BIN);
    cmd.args(["run", "--exit-when-idle", "2s"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&farm.env)
        .current_dir(farm.dir.path());
    let started = Instant::now();
    let out = crate::common::run_with_timeout(&mut cmd, JOB_TIMEOUT).unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{logs}");
    assert!(
        logs.contains("job completed"),
        "it did the queued job first: {logs}"
    );
    assert!(logs.contains("no job for a while"), "{logs}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(farm.output_exists("o/a.mp4").await);
    assert_eq!(farm.ready_jobs().await, 0);
}

/// An output that fails verification is never stored. `jpegenc
/// snapshot=true`, allowed in any job's fragment, ends the video after its
/// first frame, so the output of a 2 s input without audio lasts one frame
/// (Matroska: MP4 does not carry JPEG). Each attempt fails with
/// `output_invalid` and is retried; after the last one the job is
/// dead-lettered, and nothing ever appears under the output key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_fails_verification_is_retried_and_never_stored() {
    let attempts = [("TRANSCODE_WORKER__MAX_ATTEMPTS", "2")];
    let farm = Farm::s3(&attempts).await;
    farm.put_input("silent.avi", &fixtures::video_only(2)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&attempts);
    farm.publish_job(
        json!({"job_id": "short", "input_key": "silent.avi", "output_key": "o/short.mkv",
        "transcode_options": "videoconvert ! jpegenc snapshot=true"}),
    )
    .await;
    let last = watch.until_final("short", JOB_TIMEOUT).await;
    let events = watch.of("short");
    assert_eq!(last.state, Phase::Failed, "{events:#?}");
    let failed: Vec<&Progress> = events.iter().filter(|e| e.state == Phase::Failed).collect();
    assert_eq!(failed.len(), 2, "one failure per attempt: {events:#?}");
    for (attempt, (event, will_retry)) in failed.iter().zip([true, false]).enumerate() {
        assert_eq!(event.attempt, attempt as u32 + 1, "{events:#?}");
        assert_eq!(event.will_retry, Some(will_retry), "{events:#?}");
        assert_eq!(
            event.error_kind,
            Some(ErrorKind::OutputInvalid),
            "{event:#?}"
        );
        let error = event.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("the output lasts 0.04 s but the input lasts 2.00 s"),
            "{error}"
        );
        // Each attempt really encoded (the retry is a second run, not a
        // replay of the first's result).
        assert!(
            events
                .iter()
                .any(|e| e.attempt == event.attempt && e.state == Phase::Transcoding),
            "{events:#?}"
        );
    }
    // Never uploaded: no attempt reached the upload, and nothing is stored
    // under the output key or beside it.
    assert!(
        events.iter().all(|e| e.state != Phase::Uploading),
        "{events:#?}"
    );
    assert!(!farm.output_exists("o/short.mkv").await);
    let listing = farm
        .bucket
        .as_ref()
        .unwrap()
        .list("o/".to_string(), None)
        .await
        .expect("list the output prefix");
    let stored: Vec<&str> = listing
        .iter()
        .flat_map(|page| page.contents.iter().map(|o| o.key.as_str()))
        .collect();
    assert!(stored.is_empty(), "{stored:?}");

    let dead = farm.wait_dead_letters(JOB_TIMEOUT).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let headers = &dead[0].1;
    assert_eq!(headers["x-error-kind"], "output_invalid", "{headers:#?}");
    assert_eq!(headers["x-attempts"], "2", "{headers:#?}");
    assert!(
        headers["x-error"].starts_with("gave up after 2 attempts; last error: the output lasts"),
        "{headers:#?}"
    );
    farm.assert_all_acked(vec![worker]).await;
    let scratch: Vec<_> = std::fs::read_dir(farm.scratch()).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}
