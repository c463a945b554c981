//! Segmented jobs: one input encoded in segments by several workers and
//! joined without encoding again. The output is checked frame by frame
//! with ffprobe against the input (count, timestamps, duration, audio
//! length, a key frame where each segment starts); a worker that dies
//! mid-part costs that part only; a part that cannot be decoded fails the
//! job with the reason and its message is dead-lettered; no segment
//! object is left behind; the directory backend too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::broker::Broker;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::{Phase, Progress};
use transcode_worker::segment::objects::Arbiter;
use transcode_worker::segment::{End, Ending, Objects, Part, SegmentPlan};
use transcode_worker::storage::Storage;

use crate::common::farm::{Farm, ProgressWatch, Rabbit, WorkerProc};
use crate::common::services::{shared_rabbit, S3Server};
use crate::common::{
    fixtures, process_name, run_with_timeout, signal, wait_for_value, DEFAULT_TIMEOUT,
};

/// Long enough for a 20 s input in a few parts on a loaded 2-core machine.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the worker keeps the objects of segmented jobs (the default).
const SEGMENTS_PREFIX: &str = "_transcode/segments/";

/// The video branch of the jobs here: quick, and one thread per encoder.
pub(crate) const FAST: &str = "videoconvert ! x264enc speed-preset=veryfast threads=1";

/// One frame of the fixtures, in seconds.
const FRAME: f64 = 1.0 / fixtures::FPS as f64;

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

fn seconds(v: &Value) -> f64 {
    v.as_str().and_then(|t| t.parse().ok()).unwrap_or(f64::NAN)
}

/// The packets of the first stream of `kind` (`v`, `a`) in file order:
/// (pts, duration, key frame), in seconds.
pub(crate) fn packets(path: &Path, kind: &str) -> Vec<(f64, f64, bool)> {
    let v = ffprobe(
        path,
        &[
            "-select_streams",
            &format!("{kind}:0"),
            "-show_entries",
            "packet=pts_time,duration_time,flags",
        ],
    );
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            (
                seconds(&p["pts_time"]),
                seconds(&p["duration_time"]),
                p["flags"].as_str().unwrap_or_default().contains('K'),
            )
        })
        .collect()
}

/// How long the first stream of `kind` lasts, from its packets: from the
/// earliest pts to the end of the latest packet.
fn stream_length(packets: &[(f64, f64, bool)]) -> f64 {
    let first = packets.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let end = packets
        .iter()
        .map(|p| p.0 + p.1)
        .fold(f64::NEG_INFINITY, f64::max);
    end - first
}

/// Frames decoded from the video of `path` (every frame decoded, not
/// counted from the headers).
fn decoded_frames(path: &Path) -> u64 {
    let v = ffprobe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
        ],
    );
    v["streams"][0]["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("a frame count")
}

/// The objects of segmented jobs left in the farm's storage (and, on the
/// directory backend, the folders).
async fn segment_objects(farm: &Farm) -> Vec<String> {
    if let Some(bucket) = &farm.bucket {
        return bucket
            .list(SEGMENTS_PREFIX.to_string(), None)
            .await
            .expect("list")
            .into_iter()
            .flat_map(|page| page.contents.into_iter().map(|o| o.key))
            .collect();
    }
    let root = farm.store_dir.as_ref().expect("a store").path();
    let mut found = Vec::new();
    let mut folders = vec![root.join(SEGMENTS_PREFIX)];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            // A folder left behind counts too: the directory backend
            // removes a job's folders with its last object.
            if entry.path().is_dir() {
                folders.push(entry.path());
            }
            found.push(entry.path().display().to_string());
        }
    }
    found
}

/// Waits until no object of a segmented job is left, and checks that
/// none of `jobs` has a progress mark left on the broker.
pub(crate) async fn assert_nothing_left(farm: &Farm, jobs: &[&str]) {
    wait_for_value(DEFAULT_TIMEOUT, "the segment objects removed", || async {
        segment_objects(farm).await.is_empty().then_some(())
    })
    .await;
    for job in jobs {
        let mark = farm.mark_queue(job);
        assert!(!farm.has_queue(&mark).await, "{mark} is left");
    }
}

/// Each join of the workers' (JSON) logs: the parts it fetched, and the
/// most it fetched at once (its `fetched the parts to join` line).
fn joined_parts(workers: &[WorkerProc]) -> Vec<(u64, u64)> {
    workers
        .iter()
        .flat_map(|w| {
            w.logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["message"] == "fetched the parts to join")
                .map(|v| {
                    (
                        v["parts"].as_u64().expect("parts"),
                        v["at_once"].as_u64().expect("at_once"),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The start (in seconds of the input) of each video segment, as the
/// workers logged each one they stored (`part stored`, JSON logs).
pub(crate) fn segment_starts(workers: &[&WorkerProc]) -> BTreeMap<String, f64> {
    let mut starts = BTreeMap::new();
    for worker in workers {
        for line in worker.logs().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] != "part stored" {
                continue;
            }
            let part = v["part"].as_str().unwrap_or_default().to_string();
            if part.starts_with('v') {
                starts.insert(part, v["first_s"].as_f64().expect("first_s"));
            }
        }
    }
    starts
}

/// Who encoded which video segment, from the progress events of `job`
/// (each part's events carry its index and the worker): segment ->
/// (worker, attempt) pairs.
pub(crate) fn encoders(events: &[Progress]) -> BTreeMap<u32, BTreeSet<(String, u32)>> {
    let mut by_segment: BTreeMap<u32, BTreeSet<(String, u32)>> = BTreeMap::new();
    for e in events {
        if let (Some(segment), Phase::Transcoding) = (e.segment, e.state) {
            by_segment
                .entry(segment)
                .or_default()
                .insert((e.worker.clone(), e.attempt));
        }
    }
    by_segment
}

/// The job's `progress` never goes back over its events in the order
/// they arrived, whichever worker and part sent them.
pub(crate) fn assert_progress_never_goes_back(events: &[Progress]) {
    for w in events.windows(2) {
        assert!(
            w[1].progress >= w[0].progress,
            "the job's progress went back from {} % ({} {:?} part {:?}) to {} % ({} {:?} part {:?})",
            w[0].progress,
            w[0].worker,
            w[0].state,
            w[0].part,
            w[1].progress,
            w[1].worker,
            w[1].state,
            w[1].part,
        );
    }
}

/// Checks that the part events of `events` come from two workers at
/// once: the sender changes at least twice among the `transcoding` events.
fn assert_workers_interleave(events: &[Progress]) {
    let senders: Vec<&str> = events
        .iter()
        .filter(|e| e.segment.is_some() && e.state == Phase::Transcoding)
        .map(|e| e.worker.as_str())
        .collect();
    let switches = senders.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 2,
        "the workers' part events interleave: {senders:?}"
    );
}

/// Checks the output of a segmented job against its input: the same
/// number of frames (decoded), video timestamps strictly increasing one
/// frame apart with no gap or repeat, the same video and audio length
/// within one frame, and a key frame at the start of every segment
/// (`starts`, in seconds of the input).
pub(crate) fn assert_joined_like_the_input(input: &Path, output: &Path, starts: &[f64]) {
    let frames_in = decoded_frames(input);
    assert_eq!(decoded_frames(output), frames_in, "frame count");
    let video = packets(output, "v");
    assert_eq!(video.len() as u64, frames_in, "video packets");
    let mut pts: Vec<f64> = video.iter().map(|p| p.0).collect();
    pts.sort_by(|a, b| a.total_cmp(b));
    for (i, w) in pts.windows(2).enumerate() {
        assert!(
            (w[1] - w[0] - FRAME).abs() < 0.002,
            "frames {i} and {} are {:.4} s apart",
            i + 1,
            w[1] - w[0]
        );
    }
    let first = pts[0];
    let length_in = stream_length(&packets(input, "v"));
    let length_out = stream_length(&video);
    assert!(
        (length_out - length_in).abs() <= FRAME + 0.001,
        "video lasts {length_out} s, the input's {length_in} s"
    );
    let (audio_in, audio_out) = (packets(input, "a"), packets(output, "a"));
    if audio_in.is_empty() {
        assert!(audio_out.is_empty(), "the output has audio, the input none");
    } else {
        let (audio_in, audio_out) = (stream_length(&audio_in), stream_length(&audio_out));
        assert!(
            (audio_out - audio_in).abs() <= FRAME + 0.001,
            "audio lasts {audio_out} s, the input's {audio_in} s"
        );
    }
    let keys: Vec<f64> = video.iter().filter(|p| p.2).map(|p| p.0 - first).collect();
    for start in starts {
        assert!(
            keys.iter().any(|k| (k - start).abs() < 0.002),
            "no key frame where the segment at {start} s starts; key frames at {keys:?}"
        );
    }
}

/// Two workers, a 20 s input in segments of 4 s: the job completes with
/// one output; both workers encoded segments (their progress events say
/// which); the output matches the input frame for frame, with a key frame
/// where each segment starts; no segment object is left; every message
/// (the job and its part tasks) is acked.
/// Every part is encoded with the branches the split chose: a worker that
/// lacks the encoder (x264enc hidden) takes part tasks while the worker
/// that split the job is busy with its first part (its pipeline process
/// held), and moves each to the queue of workers that have x264enc, with a
/// `waiting` event naming the segment; the job completes with every
/// segment encoded by the worker that has it, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_task_taken_by_a_worker_lacking_its_encoder_waits_for_one_that_has_it() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/route.mp4", &fixtures::h264_mp4(12))
        .await;
    let mut watch = farm.watch_progress().await;
    let with = farm.spawn_worker(&[]);
    farm.publish_job(json!({"job_id": "seg-route", "input_key": "in/route.mp4",
        "output_key": "out/route.mp4", "transcode_options": FAST, "segment_seconds": 2}))
        .await;
    let first = watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-route" && e.segment.is_some() && e.state == Phase::Transcoding
        })
        .await;
    let segments = first.segments.expect("the number of segments");
    assert!(segments >= 4, "{first:#?}");
    let held = wait_for_value(DEFAULT_TIMEOUT, "the running pipeline process", || async {
        with.pipelines().into_iter().find(|pid| {
            process_name(*pid).as_deref() == Some(transcode_worker::transcoder::RUNNING_NAME)
        })
    })
    .await;
    signal(held, libc::SIGSTOP);
    let without = farm.spawn_worker(&[("TRANSCODE_PIPELINE__HIDDEN_ELEMENTS", "x264enc")]);
    let waiting = watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-route" && e.state == Phase::Waiting && e.worker == without.name
        })
        .await;
    let why = waiting.error.clone().unwrap_or_default();
    assert!(
        why.contains("x264enc") && why.contains("segment"),
        "{waiting:#?}"
    );
    let requires_queue = format!("{}.requires.x264enc", farm.jobs_queue());
    // Every task but the held one moves there (the held worker takes none).
    wait_for_value(DEFAULT_TIMEOUT, "the other part tasks moved", || async {
        (farm.ready_jobs().await == 0 && farm.ready_in(&requires_queue).await == segments - 1)
            .then_some(())
    })
    .await;
    signal(held, libc::SIGCONT);
    let last = watch.until_final("seg-route", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", with.logs());
    let by = encoders(&watch.seen);
    assert_eq!(by.len() as u32, segments, "{by:?}");
    for (segment, encoded_by) in &by {
        assert!(
            encoded_by.iter().all(|(worker, _)| *worker == with.name),
            "segment {segment} encoded by {encoded_by:?}"
        );
    }
    assert!(!without.logs().contains("encoding segment"));
    assert_progress_never_goes_back(&watch.of("seg-route"));
    assert_nothing_left(&farm, &["seg-route"]).await;
    farm.assert_all_acked(vec![with, without]).await;
    assert_eq!(farm.ready_in(&requires_queue).await, 0);
}

/// A part task that no live worker can encode ends its job: the worker
/// that split the job (the only one with x264enc) dies while a worker
/// without x264enc moves the part tasks to the queue of workers that have
/// it; once they have waited `no_capable_worker_timeout` there, the worker
/// without asks the live workers, none can, and the job fails as
/// `no_capable_worker` with the job's message dead-lettered, its segment
/// objects removed and its other part tasks dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_task_no_live_worker_can_encode_fails_its_job_as_no_capable_worker() {
    let timeout = ("TRANSCODE_WORKER__NO_CAPABLE_WORKER_TIMEOUT", "4s");
    let farm = Farm::s3(&[timeout]).await;
    farm.put_input("in/nobody.mp4", &fixtures::h264_mp4(12))
        .await;
    let mut watch = farm.watch_progress().await;
    let mut with = farm.spawn_worker(&[timeout]);
    farm.publish_job(json!({"job_id": "seg-nobody", "input_key": "in/nobody.mp4",
        "output_key": "out/nobody.mp4", "transcode_options": FAST, "segment_seconds": 2}))
        .await;
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-nobody" && e.segment.is_some() && e.state == Phase::Transcoding
        })
        .await;
    let held = wait_for_value(DEFAULT_TIMEOUT, "the running pipeline process", || async {
        with.pipelines().into_iter().find(|pid| {
            process_name(*pid).as_deref() == Some(transcode_worker::transcoder::RUNNING_NAME)
        })
    })
    .await;
    signal(held, libc::SIGSTOP);
    let without = farm.spawn_worker(&[("TRANSCODE_PIPELINE__HIDDEN_ELEMENTS", "x264enc"), timeout]);
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-nobody" && e.state == Phase::Waiting && e.worker == without.name
        })
        .await;
    // The only worker with x264enc dies (its pipeline process with it).
    with.signal(libc::SIGKILL);
    with.wait_exit(DEFAULT_TIMEOUT).await;
    let last = watch.until_final("seg-nobody", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}\n{}", without.logs());
    assert_eq!(
        last.error_kind,
        Some(ErrorKind::NoCapableWorker),
        "{last:#?}"
    );
    let error = last.error.clone().unwrap_or_default();
    assert!(
        error.contains("x264enc") && error.contains("no live worker") && error.contains("segment"),
        "{error}"
    );
    let dead = farm.wait_dead_letters(DEFAULT_TIMEOUT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].1.get("x-error-kind").map(String::as_str),
        Some("no_capable_worker")
    );
    let body: Value = serde_json::from_slice(&dead[0].0).expect("the job's message");
    assert_eq!(
        body["job_id"], "seg-nobody",
        "the job's own message: {body}"
    );
    assert!(!farm.output_exists("out/nobody.mp4").await);
    assert_progress_never_goes_back(&watch.of("seg-nobody"));
    assert_nothing_left(&farm, &["seg-nobody"]).await;
    // The other part tasks come out of the waiting and unplaced queues and
    // are dropped (their job has ended), not dead-lettered.
    let requires_queue = format!("{}.requires.x264enc", farm.jobs_queue());
    let unplaced = farm.settings.broker.unplaced_queue();
    wait_for_value(JOB_TIMEOUT, "the part tasks dropped", || async {
        (farm.ready_in(&requires_queue).await == 0 && farm.ready_in(&unplaced).await == 0)
            .then_some(())
    })
    .await;
    let more = farm.dead_letters().await;
    assert!(
        more.is_empty(),
        "only the job's message is dead-lettered: {more:?}"
    );
    farm.assert_all_acked(vec![without]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_encode_the_segments_of_one_job_joined_frame_for_frame() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4(20);
    farm.put_input("in/long.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    // Whole copies (the prefetch is checked here); `segment_ranges`
    // checks reading by ranges, the default.
    let json_log = [
        ("LOG_FORMAT", "json"),
        ("TRANSCODE_SEGMENTS__FETCH_INPUT", "whole"),
    ];
    let workers = vec![farm.spawn_worker(&json_log), farm.spawn_worker(&json_log)];
    // Both hear the control exchange before the job goes out: the worker
    // that splits it announces its input there.
    for worker in &workers {
        wait_for_value(
            DEFAULT_TIMEOUT,
            "the worker on the control exchange",
            || async {
                worker
                    .logs()
                    .contains("answering inspect and ping")
                    .then_some(())
            },
        )
        .await;
    }
    farm.publish_job(json!({"job_id": "seg", "input_key": "in/long.mp4",
        "output_key": "out/long.mp4", "transcode_options": FAST, "segment_seconds": 4}))
        .await;
    let last = watch.until_final("seg", JOB_TIMEOUT).await;
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", logs());
    assert_eq!(last.output_keys, ["out/long.mp4"]);
    assert_eq!(last.ran_whole, None, "it ran in parts");

    let events = watch.of("seg");
    let segments = events.iter().find_map(|e| e.segments).expect("part events");
    assert_eq!(segments, 5, "20 s in segments of 4 s");
    let by_segment = encoders(&events);
    assert_eq!(
        by_segment.keys().copied().collect::<Vec<_>>(),
        (0..segments).collect::<Vec<_>>(),
        "{by_segment:?}"
    );
    let names: BTreeSet<String> = by_segment
        .values()
        .flatten()
        .map(|(w, _)| w.clone())
        .collect();
    let expected: BTreeSet<String> = workers.iter().map(|w| w.name.clone()).collect();
    assert_eq!(
        names, expected,
        "both workers encode segments: {by_segment:?}"
    );
    assert!(
        by_segment.values().all(|w| w.len() == 1),
        "each segment encoded once: {by_segment:?}"
    );

    assert_progress_never_goes_back(&events);

    // The worker that did not split the job was idle when it was split:
    // it fetched the input then, once, and its parts used that copy.
    let (splitter, other) = match workers[0].logs().contains("split the job") {
        true => (&workers[0], &workers[1]),
        false => (&workers[1], &workers[0]),
    };
    assert!(
        other
            .logs()
            .contains("fetched the input of a job being split, for its parts"),
        "{}",
        other.logs()
    );
    for worker in [splitter, other] {
        let fetches = worker.logs().matches("\"fetching the input\"").count();
        assert_eq!(fetches, 1, "{}", worker.logs());
    }

    // The worker that joined fetched the five segments and the audio part
    // four at a time (`storage.download_concurrency`, by default).
    let fetched = joined_parts(&workers);
    assert_eq!(fetched.len(), 1, "one join\n{}", logs());
    assert_eq!((fetched[0].0, fetched[0].1), (6, 4), "{}", logs());

    let starts = segment_starts(&[&workers[0], &workers[1]]);
    assert_eq!(starts.len(), segments as usize, "{starts:?}");
    let output = farm.get_output("out/long.mp4").await.expect("the output");
    let starts: Vec<f64> = starts.values().copied().collect();
    assert_eq!(starts[0], 0.0);
    assert_joined_like_the_input(&input, &output, &starts);
    assert_nothing_left(&farm, &["seg"]).await;
    farm.assert_all_acked(workers).await;
}

/// A worker that dies while it has a video segment (the crash hook aborts
/// it once the segment is encoded, before it is stored): another worker
/// redoes that segment once, as its second attempt, encodes every other
/// segment once, and the job completes with every frame. (The input has
/// no audio, so every part is a video segment.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_segment_costs_that_segment_only() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_video_only(12);
    farm.put_input("in/crash.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    farm.publish_job(json!({"job_id": "seg-crash", "input_key": "in/crash.mp4",
        "output_key": "out/crash.mkv", "transcode_options": FAST, "segment_seconds": 4}))
        .await;
    // Alone, it splits the job, then dies on the first part it encodes.
    let mut first = farm.spawn_worker(&[("TRANSCODE_WORKER__CRASH_AFTER", "transcoding")]);
    let status = first.wait_exit(JOB_TIMEOUT).await;
    assert!(!status.success(), "the worker crashed on purpose");
    let lost = watch
        .until(DEFAULT_TIMEOUT, |e| {
            e.worker == first.name && e.state == Phase::Transcoding && e.segment.is_some()
        })
        .await
        .part
        .expect("a part");
    assert!(lost.starts_with('v'), "a video segment: {lost}");
    let second = farm.spawn_worker(&[]);
    let last = watch.until_final("seg-crash", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", second.logs());

    let events = watch.of("seg-crash");
    let by_part = |part: &str| -> BTreeSet<(String, u32)> {
        events
            .iter()
            .filter(|e| e.part.as_deref() == Some(part) && e.state == Phase::Transcoding)
            .map(|e| (e.worker.clone(), e.attempt))
            .collect()
    };
    assert_eq!(
        by_part(&lost),
        [(first.name.clone(), 1), (second.name.clone(), 2)].into(),
        "the lost part is redone once, by the other worker, as its second attempt"
    );
    let parts: BTreeSet<String> = events.iter().filter_map(|e| e.part.clone()).collect();
    for part in parts.iter().filter(|p| **p != lost) {
        assert_eq!(
            by_part(part),
            [(second.name.clone(), 1)].into(),
            "{part} is encoded once"
        );
    }
    let output = farm.get_output("out/crash.mkv").await.expect("the output");
    assert_eq!(decoded_frames(&output), decoded_frames(&input));
    assert_progress_never_goes_back(&watch.of("seg-crash"));
    assert_nothing_left(&farm, &["seg-crash"]).await;
    farm.assert_all_acked(vec![second]).await;
}

/// An input whose middle (in the third of five segments) is overwritten
/// with zeros: that segment's frames cannot all be decoded, so the job
/// fails for good with the reason (a `failed` event for the job), its own
/// message (not a part task) is dead-lettered with the reason, nothing is
/// stored under its output key and no segment object is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_decoded_fails_the_job_with_the_reason() {
    let farm = Farm::s3(&[]).await;
    let mut bytes = std::fs::read(fixtures::h264_mp4(20)).expect("the fixture");
    let (from, to) = (bytes.len() * 45 / 100, bytes.len() * 55 / 100);
    bytes[from..to].fill(0);
    let corrupt = farm.dir.path().join("corrupt.mp4");
    std::fs::write(&corrupt, &bytes).unwrap();
    farm.put_input("in/bad.mp4", &corrupt).await;
    let mut watch = farm.watch_progress().await;
    let workers = vec![farm.spawn_worker(&[]), farm.spawn_worker(&[])];
    let job = json!({"job_id": "seg-bad", "input_key": "in/bad.mp4",
        "output_key": "out/bad.mp4", "transcode_options": FAST, "segment_seconds": 4});
    farm.publish_job(job.clone()).await;
    let last = watch.until_final("seg-bad", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}");
    assert_eq!(last.will_retry, Some(false));
    let error = last.error.clone().unwrap_or_default();
    assert!(error.contains("could not be decoded"), "{error}");
    assert!(error.contains("segment 2"), "names the segment: {error}");

    let dead = farm.wait_dead_letters(DEFAULT_TIMEOUT).await;
    assert_eq!(dead.len(), 1);
    let (body, headers) = &dead[0];
    let body: Value = serde_json::from_slice(body).expect("a JSON body");
    assert_eq!(body, job, "the job's own message is dead-lettered");
    assert_eq!(headers["x-job-id"], "seg-bad");
    assert!(
        headers["x-error"].contains("could not be decoded"),
        "{headers:?}"
    );
    assert!(!farm.output_exists("out/bad.mp4").await);
    assert_progress_never_goes_back(&watch.of("seg-bad"));
    assert_nothing_left(&farm, &["seg-bad"]).await;
    farm.assert_all_acked(workers).await;
}

/// The directory backend: one worker encodes every segment of a Matroska
/// job, the output matches the input frame for frame, and no segment file
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmented_jobs_run_on_the_directory_backend() {
    let farm = Farm::directory(&[]).await;
    let input = fixtures::h264_mp4(8);
    farm.put_input("in/dir.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[("LOG_FORMAT", "json")]);
    // A second worker (idle while the other splits): on a shared folder
    // nothing is fetched, ahead or at all; every part reads it in place.
    let idle = farm.spawn_worker(&[("LOG_FORMAT", "json")]);
    farm.publish_job(json!({"job_id": "seg-dir", "input_key": "in/dir.mp4",
        "output_key": "out/dir.mkv", "transcode_options": FAST, "segment_seconds": 3}))
        .await;
    let last = watch.until_final("seg-dir", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert_eq!(last.ran_whole, None, "it ran in parts");
    for w in [&worker, &idle] {
        assert!(!w.logs().contains("fetching the input"), "{}", w.logs());
    }
    let events = watch.of("seg-dir");
    assert_eq!(
        events.iter().find_map(|e| e.segments),
        Some(3),
        "8 s in 3 s segments"
    );
    let starts: Vec<f64> = segment_starts(&[&worker, &idle])
        .values()
        .copied()
        .collect();
    let output = farm.get_output("out/dir.mkv").await.expect("the output");
    assert_joined_like_the_input(&input, &output, &starts);
    assert_progress_never_goes_back(&watch.of("seg-dir"));
    assert_nothing_left(&farm, &["seg-dir"]).await;
    farm.assert_all_acked(vec![worker, idle]).await;
}

/// `submit --segment-seconds 4 --wait`: the job goes out with
/// `segment_seconds`, is split (its events name 3 segments) and completes;
/// `--segment-seconds 1` is refused before anything is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_segment_seconds_splits_the_job() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/sub.mp4", &fixtures::h264_mp4(12)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let refused = farm
        .cli(
            &[
                "submit",
                "--input",
                "in/sub.mp4",
                "--output",
                "out/sub.mp4",
                "--transcode-options",
                FAST,
                "--segment-seconds",
                "1",
            ],
            DEFAULT_TIMEOUT,
        )
        .await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("segment_seconds"), "{stderr}");
    let run = farm
        .cli(
            &[
                "submit",
                "--input",
                "in/sub.mp4",
                "--output",
                "out/sub.mp4",
                "--job-id",
                "sub",
                "--transcode-options",
                FAST,
                "--segment-seconds",
                "4",
                "--wait",
            ],
            JOB_TIMEOUT,
        )
        .await;
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        worker.logs()
    );
    let last = watch.until_final("sub", DEFAULT_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed);
    assert_eq!(watch.of("sub").iter().find_map(|e| e.segments), Some(3));
    assert_progress_never_goes_back(&watch.of("sub"));
    assert_nothing_left(&farm, &["sub"]).await;
    farm.assert_all_acked(vec![worker]).await;
}

/// A worker configured to split inputs longer than 10 s
/// (`segments.auto_above`) in segments of 4 s (`segments.seconds`) splits
/// a job whose `source.duration_secs` says 12 s, and runs a 6 s one whole;
/// a job without `source` runs whole too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_splits_long_inputs_above_its_threshold() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/auto.mp4", &fixtures::h264_mp4(12)).await;
    farm.put_input("in/short.mp4", &fixtures::h264_mp4(6)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[
        ("TRANSCODE_SEGMENTS__AUTO_ABOVE", "10s"),
        ("TRANSCODE_SEGMENTS__SECONDS", "4"),
    ]);
    let jobs = [
        ("auto-long", "in/auto.mp4", Some(12.0)),
        ("auto-short", "in/short.mp4", Some(6.0)),
        ("auto-unknown", "in/auto.mp4", None),
    ];
    for (id, input, duration) in jobs {
        let mut job = json!({"job_id": id, "input_key": input,
            "output_key": format!("out/{id}.mp4"), "transcode_options": FAST});
        if let Some(d) = duration {
            job["source"] = json!({"duration_secs": d});
        }
        farm.publish_job(job).await;
    }
    let mut running: BTreeSet<&str> = jobs.iter().map(|j| j.0).collect();
    watch
        .until(JOB_TIMEOUT, |e| {
            if e.ending().is_some() {
                running.remove(e.job_id.as_str());
            }
            running.is_empty()
        })
        .await;
    for (id, _, _) in jobs {
        let last = watch.of(id).pop().expect("events");
        assert_eq!(
            last.state,
            Phase::Completed,
            "{id}: {last:#?}\n{}",
            worker.logs()
        );
    }
    let segments = |id: &str| watch.of(id).iter().find_map(|e| e.segments);
    assert_eq!(segments("auto-long"), Some(3));
    assert_eq!(segments("auto-short"), None);
    assert_eq!(segments("auto-unknown"), None);
    assert_nothing_left(&farm, &["auto-long", "auto-short", "auto-unknown"]).await;
    farm.assert_all_acked(vec![worker]).await;
}

/// Waits (up to two minutes) until the newest object under the segment
/// prefix of `farm`'s bucket is over a minute old (`abandon_after` in
/// these tests), saying `what` if it never is.
async fn until_segment_objects_are_a_minute_old(farm: &Farm, what: &str) {
    let bucket = farm.bucket.as_ref().expect("an S3 farm");
    wait_for_value(Duration::from_secs(120), what, || async {
        let newest = bucket
            .list(SEGMENTS_PREFIX.to_string(), None)
            .await
            .ok()?
            .into_iter()
            .flat_map(|page| page.contents)
            .filter_map(|o| {
                time::OffsetDateTime::parse(
                    &o.last_modified,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .max()?;
        let age = time::OffsetDateTime::now_utc() - newest;
        (age > time::Duration::seconds(62)).then_some(())
    })
    .await;
}
/// Everything died: the worker that split the job crashed in its first
/// part and the part tasks are gone from the queue. A worker started once
/// the job's objects are older than `segments.abandon_after` (1 minute
/// here) fails the job as `stalled` (a `failed` event, its own message
/// dead-lettered) and removes its objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objects_of_a_job_whose_tasks_were_lost_are_found_and_removed() {
    let abandon = [("TRANSCODE_SEGMENTS__ABANDON_AFTER", "1m")];
    let farm = Farm::s3(&abandon).await;
    farm.put_input("in/lost.mp4", &fixtures::h264_mp4(12)).await;
    let mut watch = farm.watch_progress().await;
    let job = json!({"job_id": "seg-lost", "input_key": "in/lost.mp4",
        "output_key": "out/lost.mp4", "transcode_options": FAST, "segment_seconds": 4});
    farm.publish_job(job.clone()).await;
    let mut first = farm.spawn_worker(&[("TRANSCODE_WORKER__CRASH_AFTER", "transcoding")]);
    assert!(!first.wait_exit(JOB_TIMEOUT).await.success());
    farm.wait_connections_gone(&[format!("transcode-worker {}", first.name)])
        .await;
    let lost = farm.drain_queue(farm.jobs_queue()).await;
    assert_eq!(
        lost.len(),
        3,
        "the part tasks (3 segments, the first queued carrying the audio part)"
    );
    assert!(!segment_objects(&farm).await.is_empty());
    // Until the newest object is older than abandon_after.
    until_segment_objects_are_a_minute_old(&farm, "the objects a minute old").await;
    let second = farm.spawn_worker(&[]);
    let last = watch.until_final("seg-lost", DEFAULT_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}\n{}", second.logs());
    assert_eq!(
        last.error_kind,
        Some(transcode_worker::error::ErrorKind::Stalled)
    );
    let error = last.error.unwrap_or_default();
    assert!(error.contains("part tasks were lost"), "{error}");
    let dead = farm.wait_dead_letters(DEFAULT_TIMEOUT).await;
    let body: Value = serde_json::from_slice(&dead[0].0).expect("a JSON body");
    assert_eq!(body, job);
    assert_eq!(dead[0].1["x-error-kind"], "stalled");
    assert_progress_never_goes_back(&watch.of("seg-lost"));
    assert_nothing_left(&farm, &["seg-lost"]).await;
    farm.assert_all_acked(vec![second]).await;
}

/// `transcode-worker cancel` while two workers encode segments of a job:
/// the job ends `cancelled`, nothing is stored under its output key
/// or dead-lettered, the segment objects are removed, and the part tasks
/// still queued are dropped (every message acked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_segmented_job_stops_and_leaves_nothing_behind() {
    let slow = [("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity")];
    let farm = Farm::s3(&slow).await;
    farm.put_input("in/cancel.mp4", &fixtures::h264_mp4(12))
        .await;
    let mut watch = farm.watch_progress().await;
    let workers = vec![farm.spawn_worker(&slow), farm.spawn_worker(&slow)];
    farm.publish_job(json!({"job_id": "seg-cancel", "input_key": "in/cancel.mp4",
        "output_key": "out/cancel.mp4", "segment_seconds": 4,
        // 100 ms a frame: each segment takes 10 s.
        "transcode_options": "identity sleep-time=100000 ! videoconvert ! x264enc speed-preset=ultrafast threads=1"}))
        .await;
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-cancel" && e.segment.is_some() && e.state == Phase::Transcoding
        })
        .await;
    let out = farm.cli(&["cancel", "seg-cancel"], JOB_TIMEOUT).await;
    assert!(out.status.success(), "{out:?}");
    let last = watch.until_final("seg-cancel", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Cancelled, "{last:#?}");
    assert_progress_never_goes_back(&watch.of("seg-cancel"));
    assert_nothing_left(&farm, &["seg-cancel"]).await;
    assert!(!farm.output_exists("out/cancel.mp4").await);
    farm.assert_all_acked(workers).await;
    assert!(farm.dead_letters().await.is_empty());
}

/// The average PSNR of `output` against `input` (video), in dB.
fn psnr(output: &Path, input: &Path) -> f64 {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "info", "-i"])
        .arg(output)
        .arg("-i")
        .arg(input)
        .args(["-lavfi", "[0:v][1:v]psnr", "-f", "null", "-"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120)).expect("ffmpeg runs");
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|l| l.split("average:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no PSNR in ffmpeg's output:\n{log}"))
}

/// The same moving input (testsrc2, WMV2 + WMA) with the same settings,
/// (the preset `h264-mp4`), once whole and once in segments of 3 s: the
/// segmented output's PSNR against the input is no more than 0.3 dB below
/// the whole-file encode's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_encode_is_as_good_as_a_whole_file_encode() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::wmv_sized_with_audio(12, 320, 240);
    farm.put_input("in/q.wmv", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    for (id, segments) in [("q-whole", None), ("q-seg", Some(3))] {
        let mut job = json!({"job_id": id, "input_key": "in/q.wmv",
            "output_key": format!("out/{id}.mp4"), "preset": "h264-mp4"});
        if let Some(s) = segments {
            job["segment_seconds"] = json!(s);
        }
        farm.publish_job(job).await;
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(
            last.state,
            Phase::Completed,
            "{id}: {last:#?}\n{}",
            worker.logs()
        );
    }
    assert_eq!(watch.of("q-seg").iter().find_map(|e| e.segments), Some(4));
    let whole = psnr(&farm.get_output("out/q-whole.mp4").await.unwrap(), &input);
    let segmented = psnr(&farm.get_output("out/q-seg.mp4").await.unwrap(), &input);
    eprintln!("PSNR against the input: whole {whole:.2} dB, segmented {segmented:.2} dB");
    assert!(
        segmented >= whole - 0.3,
        "segmented {segmented:.2} dB, whole {whole:.2} dB"
    );
    farm.assert_all_acked(vec![worker]).await;
}

/// The other containers the worker writes: QuickTime (H.264 + AAC) and
/// WebM (VP8 + Opus), each in segments of 3 s and checked frame by frame
/// against the input like the MP4 and Matroska outputs above; each join
/// fetches its parts `storage.download_concurrency` (here 2) at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mov_and_webm_outputs_are_joined_frame_for_frame() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4(8);
    farm.put_input("in/c.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[
        ("LOG_FORMAT", "json"),
        ("TRANSCODE_STORAGE__DOWNLOAD_CONCURRENCY", "2"),
    ]);
    let jobs = [
        ("c-mov", "out/c.mov", FAST),
        (
            "c-webm",
            "out/c.webm",
            "videoconvert ! vp8enc deadline=1 cpu-used=8 threads=1",
        ),
    ];
    for (id, key, video) in jobs {
        farm.publish_job(
            json!({"job_id": id, "input_key": "in/c.mp4", "output_key": key,
            "transcode_options": video, "segment_seconds": 3}),
        )
        .await;
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(
            last.state,
            Phase::Completed,
            "{id}: {last:#?}\n{}",
            worker.logs()
        );
        assert_eq!(
            watch.of(id).iter().find_map(|e| e.segments),
            Some(3),
            "{id}"
        );
        let starts: Vec<f64> = segment_starts(&[&worker]).values().copied().collect();
        let output = farm.get_output(key).await.expect("the output");
        assert_joined_like_the_input(&input, &output, &starts[starts.len() - 3..]);
    }
    // Each join fetched its three segments and the audio part two at a
    // time, as the worker's `storage.download_concurrency` says.
    let workers = vec![worker];
    assert_eq!(joined_parts(&workers), [(4, 2), (4, 2)]);
    assert_nothing_left(&farm, &["c-mov", "c-webm"]).await;
    farm.assert_all_acked(workers).await;
}

/// Publishes `job`, waits for it to complete, and checks that no event of
/// it came from a part (it ran whole) and that its `completed` event says
/// why it ran whole; returns that reason.
async fn completes_whole(
    farm: &Farm,
    watch: &mut ProgressWatch,
    worker: &WorkerProc,
    job: Value,
) -> String {
    let id = job["job_id"].as_str().expect("a job id").to_string();
    farm.publish_job(job).await;
    let last = watch.until_final(&id, JOB_TIMEOUT).await;
    assert_eq!(
        last.state,
        Phase::Completed,
        "{id}: {last:#?}\n{}",
        worker.logs()
    );
    assert!(
        watch.of(&id).iter().all(|e| e.part.is_none()),
        "{id} ran in parts"
    );
    let Some(why) = last.ran_whole.clone() else {
        panic!("{id}: no ran_whole in {last:#?}");
    };
    why
}

/// Jobs that cannot be segmented run whole, with `segment_seconds` set:
/// one with two `outputs`, one HLS package, one whose video branch
/// changes the frame rate (`videorate`), one whose AVI input gives its
/// packets no timestamps, and an 8 s input in segments of 6 s. Each completes without a part event; the
/// worker logs why it ran each whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_cannot_be_segmented_run_whole() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/w.mp4", &fixtures::h264_mp4(8)).await;
    farm.put_input("in/w.avi", &fixtures::video_only(8)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&[]);
    let rate =
        "videorate ! video/x-raw,framerate=25/1 ! videoconvert ! x264enc speed-preset=veryfast";
    let jobs = [
        (
            json!({"job_id": "w-outputs", "input_key": "in/w.mp4", "segment_seconds": 3,
                "outputs": [{"output_key": "out/w1.mp4", "transcode_options": FAST},
                            {"output_key": "out/w2.mkv", "transcode_options": FAST}]}),
            "segment_seconds applies to jobs with one output; this one has 2",
        ),
        (
            json!({"job_id": "w-hls", "input_key": "in/w.mp4", "segment_seconds": 3,
                "output_key": "out/hls/master.m3u8", "transcode_options": FAST}),
            "segment_seconds does not apply to HLS packages",
        ),
        (
            json!({"job_id": "w-rate", "input_key": "in/w.mp4", "segment_seconds": 3,
                "output_key": "out/w-rate.mp4", "transcode_options": rate}),
            "uses videorate, which changes the frame rate",
        ),
        (
            json!({"job_id": "w-avi", "input_key": "in/w.avi", "segment_seconds": 3,
                "output_key": "out/w-avi.mp4", "transcode_options": FAST}),
            "the input cannot be cut",
        ),
        (
            json!({"job_id": "w-short", "input_key": "in/w.mp4", "segment_seconds": 6,
                "output_key": "out/w-short.mp4", "transcode_options": FAST}),
            "is too short for two segments of 6 s",
        ),
    ];
    for (job, why) in &jobs {
        let id = &job["job_id"];
        let ran_whole = completes_whole(&farm, &mut watch, &worker, job.clone()).await;
        assert!(
            ran_whole.contains(why),
            "{id}: {ran_whole:?} is not {why:?}"
        );
        let logged = format!("running the job whole: {ran_whole}");
        assert!(
            worker.logs().contains(&logged),
            "{id}: no {logged:?} in the log"
        );
    }
    assert_nothing_left(&farm, &["w-outputs", "w-hls", "w-rate", "w-avi", "w-short"]).await;
    farm.assert_all_acked(vec![worker]).await;
}

/// On S3 storage that ignores create-if-absent (`If-None-Match: *` on a
/// put), as Garage 2.5.0 does, the storage cannot tell a segmented job's
/// workers which of them joins it: the worker that splits the job finds
/// that out (once, by asking) and the job's claims are settled on the
/// broker instead. Two workers encode its parts, one joins it, the output
/// has every frame, and its question to the storage leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_storage_that_ignores_create_if_absent_the_claims_are_settled_on_the_broker() {
    let s3 = S3Server::start_ignoring_conditional_writes();
    let farm = Farm::s3_on(Rabbit::Shared(shared_rabbit()), &s3, &[]).await;
    let input = fixtures::h264_mp4(12);
    farm.put_input("in/g.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    let json_log = [("LOG_FORMAT", "json")];
    let workers = [farm.spawn_worker(&json_log), farm.spawn_worker(&json_log)];
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    for id in ["g-1", "g-2"] {
        farm.publish_job(
            json!({"job_id": id, "input_key": "in/g.mp4", "segment_seconds": 2,
            "output_key": format!("out/{id}.mp4"), "transcode_options": FAST}),
        )
        .await;
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        assert_eq!(last.state, Phase::Completed, "{id}: {last:#?}\n{}", logs());
        assert_eq!(last.ran_whole, None, "{id} ran in parts");
        let events = watch.of(id);
        let segments = events.iter().find_map(|e| e.segments).expect("part events");
        assert!(segments >= 4, "{id}: 12 s in segments of 2 s: {segments}");
        assert_eq!(encoders(&events).len(), segments as usize, "{id}");
        assert_progress_never_goes_back(&events);
        let output = farm
            .get_output(&format!("out/{id}.mp4"))
            .await
            .expect("the output");
        assert_eq!(decoded_frames(&output), decoded_frames(&input), "{id}");
    }
    let logs = logs();
    let why = "the job's claims are settled on the broker: 8 of 8 create-if-absent requests (If-None-Match: *) made at once for one key succeeded, so the storage ignores the condition";
    assert_eq!(logs.matches(why).count(), 2, "{logs}");
    assert_eq!(
        logs.matches("the last part is stored; joining the job")
            .count(),
        2,
        "each job is joined once: {logs}"
    );
    assert_nothing_left(&farm, &["g-1", "g-2"]).await;
    farm.assert_all_acked(workers.into()).await;
}

/// On storage that ignores create-if-absent, the end claims of a plan
/// whose claims go to the broker have one winner when 16 tasks claim at
/// once, and every one of them is told the same winner; a winner that
/// died before it wrote its claim to the storage leaves the others an
/// error, never a second winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_claims_settled_on_the_broker_have_one_winner_on_storage_that_ignores_conditions() {
    let s3 = S3Server::start_ignoring_conditional_writes();
    let farm = Farm::s3_on(Rabbit::Shared(shared_rabbit()), &s3, &[]).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let broker = Broker::connect(&farm.settings, "claims test")
        .await
        .expect("a broker connection");
    let arbiter = Arbiter {
        broker: &broker,
        expires: Duration::from_secs(600),
    };
    let objects = Objects::new(&storage, SEGMENTS_PREFIX).with_arbiter(arbiter);
    for round in 0..5 {
        let plan: SegmentPlan = serde_json::from_value(json!({
            "plan_id": format!("p{round}"), "job_id": "claims", "message": "{}", "queue": "q",
            "attempt": 1, "fingerprint": "f", "video": "x264enc", "audio": "a",
            "muxer": "mp4mux", "input_size": 10, "media": {},
            "frames": 100, "first_ns": 0, "end_ns": 4_000_000_000u64, "frame_ns": 40_000_000,
            "cuts": [], "split_by": "w", "created_at": "t", "claims_on_broker": true
        }))
        .expect("a plan");
        objects.write_plan(&plan).await.expect("the plan");
        let claims: Vec<End> = (0..16)
            .map(|i| End::new(Part::Video(i), Ending::Join, None, "w"))
            .collect();
        let asks = claims.iter().map(|c| objects.claim_end(&plan, c));
        let told: Vec<End> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .map(|r| r.expect("a claim"))
            .collect();
        let winners: BTreeSet<&str> = told.iter().map(|e| e.token.as_str()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {told:?}");
        assert!(claims.contains(&told[0]), "round {round}");
        assert_eq!(
            objects.end(&plan).await.expect("a read"),
            Some(told[0].clone())
        );
        objects.remove_claims_on_broker(&plan).await;
    }
    // A winner that died after the broker took its claim and before it
    // wrote it to the storage: the next claimant waits for it, then fails
    // with the reason (retried; the job ends as abandoned if it never
    // comes), and is never told it won.
    let plan: SegmentPlan = serde_json::from_value(json!({
        "plan_id": "dead", "job_id": "claims", "message": "{}", "queue": "q",
        "attempt": 1, "fingerprint": "f", "video": "x264enc", "audio": "a",
        "muxer": "mp4mux", "input_size": 10, "media": {},
        "frames": 100, "first_ns": 0, "end_ns": 4_000_000_000u64, "frame_ns": 40_000_000,
        "cuts": [], "split_by": "w", "created_at": "t", "claims_on_broker": true
    }))
    .expect("a plan");
    let dead = End::new(Part::Video(7), Ending::Join, None, "dead");
    let body = serde_json::to_vec(&dead).expect("a claim");
    assert!(broker
        .claim_first("claims.dead.end", &body, Duration::from_secs(600))
        .await
        .expect("a claim"));
    assert_eq!(objects.end(&plan).await.expect("a read"), None);
    objects.write_plan(&plan).await.expect("the plan");
    let late = End::new(Part::Video(1), Ending::Join, None, "w");
    let e = objects
        .claim_end(&plan, &late)
        .await
        .expect_err("no claim to be told");
    assert!(e.is_transient(), "{e}");
    assert!(
        e.to_string()
            .contains("its winner has not written it within 5s"),
        "{e}"
    );
    assert_eq!(objects.end(&plan).await.expect("a read"), None);
    // Once its job has ended (no plan), it fails at once.
    objects.remove("claims").await.expect("removed");
    let started = std::time::Instant::now();
    let e = objects
        .claim_end(&plan, &late)
        .await
        .expect_err("no claim to be told");
    assert!(e.to_string().contains("its job has ended"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "{e}");
    objects.remove_claims_on_broker(&plan).await;
    objects.remove("claims").await.expect("removed");
    broker.close().await;
}

/// A job whose claims go to the broker (its storage ignores
/// create-if-absent), whose end was won there by a worker that died
/// before it wrote it, and of which nothing moved for
/// `segments.abandon_after`: a worker that starts ends it as abandoned by
/// a claim of its own (a `stalled` failure, its message dead-lettered)
/// and removes its objects and its claims on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_job_whose_end_was_won_on_the_broker_and_never_written_is_ended() {
    let s3 = S3Server::start_ignoring_conditional_writes();
    let abandon = [("TRANSCODE_SEGMENTS__ABANDON_AFTER", "1m")];
    let farm = Farm::s3_on(Rabbit::Shared(shared_rabbit()), &s3, &abandon).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let job = json!({"job_id": "seg-won", "input_key": "in/won.mp4",
        "output_key": "out/won.mp4", "transcode_options": FAST, "segment_seconds": 4});
    let plan: SegmentPlan = serde_json::from_value(json!({
        "plan_id": "p1", "job_id": "seg-won", "message": job.to_string(),
        "queue": farm.jobs_queue(), "attempt": 1, "fingerprint": "f", "video": "x264enc",
        "audio": "a", "muxer": "mp4mux", "input_size": 10, "media": {},
        "frames": 100, "first_ns": 0, "end_ns": 4_000_000_000u64, "frame_ns": 40_000_000,
        "cuts": [], "split_by": "w", "created_at": "t", "claims_on_broker": true
    }))
    .expect("a plan");
    let objects = Objects::new(&storage, SEGMENTS_PREFIX);
    objects.write_plan(&plan).await.expect("the plan");
    let broker = Broker::connect(&farm.settings, "claims test")
        .await
        .expect("a broker connection");
    let dead = End::new(Part::Video(0), Ending::Join, None, "dead");
    let body = serde_json::to_vec(&dead).expect("a claim");
    assert!(broker
        .claim_first("seg-won.p1.end", &body, Duration::from_secs(3600))
        .await
        .expect("a claim"));
    broker.close().await;
    let mut watch = farm.watch_progress().await;
    // Until the plan is older than abandon_after.
    until_segment_objects_are_a_minute_old(&farm, "the plan a minute old").await;
    let worker = farm.spawn_worker(&abandon);
    let last = watch.until_final("seg-won", DEFAULT_TIMEOUT).await;
    assert_eq!(last.state, Phase::Failed, "{last:#?}\n{}", worker.logs());
    assert_eq!(last.error_kind, Some(ErrorKind::Stalled));
    let dead_letters = farm.wait_dead_letters(DEFAULT_TIMEOUT).await;
    let message: Value = serde_json::from_slice(&dead_letters[0].0).expect("a JSON body");
    assert_eq!(message, job);
    assert!(
        worker.logs().contains("ending it by a claim of its own"),
        "{}",
        worker.logs()
    );
    assert_nothing_left(&farm, &["seg-won"]).await;
    for what in ["end", "audio", "abandon"] {
        let queue = format!(
            "{}.claim.seg-won.p1.{what}",
            farm.settings.broker.progress_queue
        );
        assert!(!farm.has_queue(&queue).await, "{queue} is left");
    }
    farm.assert_all_acked(vec![worker]).await;
}

/// A claim settled on the broker has one winner however many ask at once,
/// and once it is removed it can be made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_the_broker_has_one_winner_when_many_ask_at_once() {
    let farm = Farm::s3(&[]).await;
    let broker = Broker::connect(&farm.settings, "claims test")
        .await
        .expect("a broker connection");
    let expires = Duration::from_secs(600);
    let name = "job.plan.end";
    for round in 0..5 {
        let asks = (0..16).map(|i| {
            let body = format!("{{\"by\":{i}}}");
            let broker = &broker;
            async move { broker.claim_first(name, body.as_bytes(), expires).await }
        });
        let won = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().expect("a claim"))
            .count();
        assert_eq!(won, 1, "round {round}");
        assert!(!broker
            .claim_first(name, b"{}", expires)
            .await
            .expect("a claim"));
        broker.remove_claim(name).await.expect("removed");
        let queue = format!("{}.claim.{name}", farm.settings.broker.progress_queue);
        assert!(!farm.has_queue(&queue).await, "{queue} is left");
    }
    broker.close().await;
}

/// A broker whose `consumer_timeout` (5 s) is shorter than the whole job
/// (an 8 s input at 60 ms a frame: 12 s of encoding on one worker) but
/// longer than each part (2 s segments: 3 s each): the segmented job
/// completes with no attempt cut by the broker, where a whole-file job
/// that long is taken back (see
/// `reliability::a_job_longer_than_the_consumer_timeout_is_never_lost_nor_run_twice_at_once`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_job_longer_than_the_consumer_timeout_completes() {
    use std::sync::Arc;

    use crate::common::farm::Rabbit;
    use crate::common::services::{shared_s3, RabbitNode, RabbitOptions};

    let node = Arc::new(RabbitNode::start(
        RabbitOptions::default()
            .conf("consumer_timeout = 5000")
            .advanced_config("[{rabbit, [{channel_tick_interval, 1000}]}]."),
    ));
    let extra = [
        ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity"),
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
    ];
    let farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    farm.put_input("in/t.mp4", &fixtures::h264_mp4(8)).await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&extra);
    let started = std::time::Instant::now();
    farm.publish_job(json!({"job_id": "seg-long", "input_key": "in/t.mp4",
        "output_key": "out/t.mp4", "segment_seconds": 2,
        "transcode_options": "identity sleep-time=60000 ! videoconvert ! x264enc speed-preset=ultrafast threads=1"}))
        .await;
    let last = watch.until_final("seg-long", JOB_TIMEOUT).await;
    let took = started.elapsed();
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
    assert!(took > Duration::from_secs(10), "the job took {took:?}");
    let events = watch.of("seg-long");
    assert!(
        events
            .iter()
            .all(|e| e.state != Phase::Failed && e.attempt == 1),
        "an attempt was cut: {events:#?}"
    );
    assert_eq!(events.iter().find_map(|e| e.segments), Some(4));
    farm.assert_all_acked(vec![worker]).await;
}

/// Two workers encode the parts of a job at once (each part takes about
/// 2 s, so their events interleave), and the job's progress never goes
/// back over all its events. Meanwhile its progress mark is held by
/// another client (as a worker holds it while it publishes): neither
/// worker publishes an event of the job (each would otherwise send one at
/// least every second), and when that client's channel closes without
/// acking, as a worker's does when it dies holding the mark, the broker
/// gives the mark back unchanged and the job's events go on to the end;
/// the mark is removed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_never_goes_back_across_two_workers_and_a_mark_held_elsewhere_holds_their_events()
{
    use lapin::options::BasicGetOptions;

    let extra = [("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity")];
    let farm = Farm::s3(&extra).await;
    farm.put_input("in/mark.mp4", &fixtures::h264_mp4(8)).await;
    let mut watch = farm.watch_progress().await;
    let workers = vec![farm.spawn_worker(&extra), farm.spawn_worker(&extra)];
    // 40 ms a frame: each 2 s part encodes for about 2 s.
    farm.publish_job(json!({"job_id": "seg-mark", "input_key": "in/mark.mp4",
        "output_key": "out/mark.mp4", "segment_seconds": 2,
        "transcode_options": "identity sleep-time=40000 ! videoconvert ! x264enc speed-preset=ultrafast threads=1"}))
        .await;
    watch
        .until(JOB_TIMEOUT, |e| {
            e.job_id == "seg-mark"
                && e.state == Phase::Transcoding
                && e.segment_progress.is_some_and(|p| p > 0.0)
        })
        .await;
    let mark = farm.mark_queue("seg-mark");
    let holder = farm.channel().await;
    let held = wait_for_value(DEFAULT_TIMEOUT, "the mark taken", || async {
        holder
            .basic_get(mark.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get on the mark's queue")
    })
    .await;
    let held: Value = serde_json::from_slice(&held.delivery.data).expect("a JSON mark");
    let held = held["percent"].as_f64().expect("the mark's percent");
    // What was published before the mark was taken arrives at once;
    // after it, nothing of the job may come for two seconds.
    while watch
        .next_within(Duration::from_millis(300))
        .await
        .is_some()
    {}
    let before = watch.of("seg-mark").len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || watch.next_within(left).await.is_none() {
            break;
        }
    }
    assert_eq!(
        watch.of("seg-mark").len(),
        before,
        "an event went out while the mark was held elsewhere: {:#?}",
        &watch.of("seg-mark")[before..]
    );
    holder.close(200, "the holder dies".into()).await.ok();
    let next = watch.until(JOB_TIMEOUT, |e| e.job_id == "seg-mark").await;
    assert!(next.progress >= held, "{next:#?} after a mark of {held}");
    let last = watch.until_final("seg-mark", JOB_TIMEOUT).await;
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", logs());
    let events = watch.of("seg-mark");
    assert_workers_interleave(&events);
    assert_progress_never_goes_back(&events);
    assert_nothing_left(&farm, &["seg-mark"]).await;
    farm.assert_all_acked(workers).await;
}

/// The broker restarts while a part of a segmented job is encoding (its
/// pipeline process held, so the restart lands mid-part): the job's
/// progress mark (a durable queue holding a persistent message) survives
/// it, the worker reconnects and redoes the part it held, and the job
/// completes once, with every event of it, before and after the restart,
/// in order as `transcoding_progress` (a quorum queue) kept them; no mark
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_job_keeps_its_progress_in_order_across_a_broker_restart() {
    use std::sync::Arc;

    use crate::common::farm::Rabbit;
    use crate::common::services::{shared_s3, RabbitNode, RabbitOptions};

    let node = Arc::new(RabbitNode::start(RabbitOptions::default()));
    let extra = [
        ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity"),
        ("TRANSCODE_BROKER__LIVENESS_INTERVAL", "1s"),
    ];
    let mut farm = Farm::s3_on(Rabbit::Own(node.clone()), shared_s3(), &extra).await;
    farm.env.insert(
        "AMQP_URL".into(),
        format!("{}?heartbeat=2", node.amqp_url()),
    );
    farm.put_input("in/r.mp4", &fixtures::h264_mp4(8)).await;
    let worker = farm.spawn_worker(&extra);
    farm.publish_job(json!({"job_id": "seg-restart", "input_key": "in/r.mp4",
        "output_key": "out/r.mp4", "segment_seconds": 2,
        "transcode_options": "identity sleep-time=40000 ! videoconvert ! x264enc speed-preset=ultrafast threads=1"}))
        .await;
    let encoding = wait_for_value(JOB_TIMEOUT, "a part encoding", || async {
        if !worker.logs().contains("encoding segment") {
            return None;
        }
        worker.pipelines().into_iter().find(|pid| {
            process_name(*pid).as_deref() == Some(transcode_worker::transcoder::RUNNING_NAME)
        })
    })
    .await;
    let mark = farm.mark_queue("seg-restart");
    assert!(farm.has_queue(&mark).await, "the job has a mark");
    signal(encoding, libc::SIGSTOP);
    let restarted_at = std::time::SystemTime::now();
    node.restart();
    farm.reconnect().await;
    let progress_queue = farm.settings.broker.progress_queue.clone();
    let events = std::sync::Mutex::new(Vec::<Progress>::new());
    wait_for_value(JOB_TIMEOUT, "the completed event", || async {
        let got = farm.drain_queue(&progress_queue).await;
        let mut events = events.lock().unwrap();
        events.extend(
            got.iter()
                .map(|(b, _)| serde_json::from_slice::<Progress>(b).expect("an event"))
                .filter(|e| e.job_id == "seg-restart"),
        );
        events
            .iter()
            .any(|e| e.state == Phase::Completed)
            .then_some(())
    })
    .await;
    let events = events.into_inner().unwrap();
    let completed = events
        .iter()
        .filter(|e| e.state == Phase::Completed)
        .count();
    assert_eq!(completed, 1, "{events:#?}\n{}", worker.logs());
    let after =
        |e: &&Progress| humantime::parse_rfc3339(&e.timestamp).expect("a timestamp") > restarted_at;
    assert!(
        events.iter().filter(after).any(|e| e.part.is_some()),
        "parts reported after the restart: {events:#?}"
    );
    assert!(farm.output_exists("out/r.mp4").await);
    assert_progress_never_goes_back(&events);
    assert_nothing_left(&farm, &["seg-restart"]).await;
    farm.assert_all_acked(vec![worker]).await;
}

/// Two parts asking a worker's input cache for the same input at once
/// (as a part does while the input is fetched ahead of it): the input is
/// fetched once from the S3 server, and both use the one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_asked_for_twice_at_once_is_fetched_once() {
    use transcode_worker::scratch::Scratch;
    use transcode_worker::segment::InputCache;
    use transcode_worker::storage::Storage;

    let farm = Farm::s3(&[]).await;
    farm.put_input("in/once.mp4", &fixtures::h264_mp4(20)).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let scratch = Scratch::open(farm.dir.path().join("scratch-once")).expect("a scratch folder");
    let cache = InputCache::new(2);
    let info = storage
        .head("in/once.mp4")
        .await
        .expect("a head")
        .expect("the input");
    let get = || {
        cache.get(
            &storage,
            &scratch,
            "in/once.mp4",
            &info,
            None,
            Duration::from_secs(60),
            0,
        )
    };
    let (a, b) = tokio::join!(get(), get());
    let (a, b) = (a.expect("the first copy"), b.expect("the second copy"));
    assert_eq!(a.path, b.path, "one copy for both");
    assert_eq!(
        std::fs::metadata(&a.path).expect("the copy").len(),
        info.size
    );
}
