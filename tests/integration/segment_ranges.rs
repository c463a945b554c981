//! Parts of segmented jobs reading their input from S3 by byte ranges
//! (`segments.fetch_input = "ranges"`, the default), against the real S3
//! test server and real GStreamer: a segment read by ranges is the segment
//! read from a file, fetching only the blocks around it and each of them
//! once; a gone, changed or unreachable input fails the part with the
//! reason (and never shows the presigned URL); two workers encode a job,
//! the one that did not split it fetching only part of the input; on
//! storage that ignores ranges, it downloads the input instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use transcode_worker::error::{ErrorKind, JobError};
use transcode_worker::job::Phase;
use transcode_worker::pipeline::{
    run_part, EncodedVideo, PartInput, PartOutcome, PartRequest, Ranged, VideoSpec,
};
use transcode_worker::storage::Storage;

use crate::common::farm::Rabbit;
use crate::common::farm::{Farm, WorkerProc};
use crate::common::services::{free_port, shared_rabbit, S3Server};
use crate::common::{fixtures, wait_for_value, with_timeout, DEFAULT_TIMEOUT};
use crate::segments::{
    assert_joined_like_the_input, assert_nothing_left, assert_progress_never_goes_back, encoders,
    segment_starts, FAST, JOB_TIMEOUT,
};

/// Blocks of the tests' range reads: small, so a 20 s fixture of a few
/// MB is many blocks.
const BLOCK: u64 = 64 << 10;

/// The sizes of the video packets of `path`, in order (`ffprobe`).
fn packet_sizes(path: &Path) -> Vec<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-of", "json"])
        .args(["-show_entries", "packet=size"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe's JSON");
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            p["size"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a size")
        })
        .collect()
}

/// Encodes the video segment of `input` from 10 s to 14 s (10 s is a key
/// frame of the fixture) into `output`, in this process.
async fn encode(input: PartInput, output: PathBuf) -> Result<EncodedVideo, JobError> {
    let request = PartRequest::Video(VideoSpec {
        input,
        output,
        video: FAST.into(),
        muxer: "mp4mux".into(),
        from_ns: Some(10_000_000_000),
        until_ns: Some(14_000_000_000),
        seek_ns: Some(10_000_000_000),
    });
    let run = tokio::task::spawn_blocking(move || run_part(&request, |_, _| {}));
    match with_timeout(Duration::from_secs(120), "a part pipeline", run).await {
        Ok(Ok(PartOutcome::Video(v))) => Ok(v),
        Ok(Ok(other)) => panic!("a video part made {other:?}"),
        Ok(Err(e)) => Err(e),
        Err(e) => panic!("the part pipeline panicked: {e}"),
    }
}

/// The input `key` of `storage`, read by ranges through presigned URLs
/// into the block folder `blocks` (nothing fetched ahead).
async fn ranged(storage: &Storage, key: &str, blocks: &Path) -> Ranged {
    let info = storage.head(key).await.expect("a head").expect("the input");
    Ranged {
        url: url_of(storage, key).await,
        size: info.size,
        etag: info.version,
        blocks: blocks.to_path_buf(),
        block_size: BLOCK,
        read_ahead: 0,
    }
}

/// What a part encoded, without what it fetched and waited for, and
/// without the frames decoded past the segment's end: those the decoder
/// had begun when it was told to stop depend on timing (a comparison with
/// them failed once in a run beside other tests; its values were not
/// kept).
fn frames_of(v: &EncodedVideo) -> EncodedVideo {
    EncodedVideo {
        fetched: 0,
        fetched_ahead: 0,
        read_wait_ms: 0,
        decoded_after: 0,
        ..v.clone()
    }
}

/// How many runs of three or more blocks in a row the block folder
/// `blocks` holds.
fn runs_of_three_or_more(blocks: &Path) -> u64 {
    let mut held: Vec<u64> = std::fs::read_dir(blocks)
        .expect("the block folder")
        .map(|e| {
            let name = e.expect("an entry").file_name();
            name.to_str().and_then(|n| n.parse().ok()).expect("a block")
        })
        .collect();
    held.sort_unstable();
    let mut runs = Vec::new();
    for (i, block) in held.iter().enumerate() {
        match runs.last_mut() {
            Some(len) if i > 0 && held[i - 1] + 1 == *block => *len += 1,
            _ => runs.push(1),
        }
    }
    runs.into_iter().filter(|&len| len >= 3).count() as u64
}

/// The bytes of the files in the block folder `blocks`.
fn kept_in(blocks: &Path) -> u64 {
    std::fs::read_dir(blocks)
        .expect("the block folder")
        .map(|e| e.expect("an entry").metadata().expect("metadata").len())
        .sum()
}

/// A presigned URL of `key` of `storage`.
async fn url_of(storage: &Storage, key: &str) -> String {
    let url = storage.presign_get(key, 600).await.expect("presigned");
    url.expect("the farm's credentials presign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_read_by_ranges_is_the_segment_read_from_the_file_and_fetches_its_blocks_once() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(20, false);
    farm.put_input("in/ranged.mp4", &input).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let dir = tempfile::tempdir().expect("a folder");
    let blocks = dir.path().join("blocks");
    let source = ranged(&storage, "in/ranged.mp4", &blocks).await;
    let size = source.size;

    let from_file = encode(PartInput::File(input.clone()), dir.path().join("file.mp4"))
        .await
        .expect("the segment from the file");
    let by_ranges = encode(
        PartInput::Ranged(source.clone()),
        dir.path().join("ranged.mp4"),
    )
    .await
    .expect("the segment by ranges");
    assert_eq!(from_file.frames, 100, "4 s at 25 fps: {from_file:?}");
    assert_eq!(from_file.fetched, 0, "a file is not fetched");
    assert_eq!(
        frames_of(&from_file),
        frames_of(&by_ranges),
        "the same frames at the same times"
    );
    // The same encoder (one thread) fed the same frames writes the same
    // packets.
    let sizes = packet_sizes(&dir.path().join("file.mp4"));
    assert_eq!(sizes.len(), 100);
    assert_eq!(sizes, packet_sizes(&dir.path().join("ranged.mp4")));

    // 4 s of a 20 s input, its index and the blocks at its ends: well under
    // half of it; every byte fetched is in the block folder.
    let fetched = by_ranges.fetched;
    assert!(
        fetched > 0 && fetched < size * 2 / 5,
        "fetched {fetched} of {size} bytes"
    );
    let kept = || kept_in(&blocks);
    assert_eq!(kept(), fetched, "each block fetched is kept once");

    // The same segment again (as a worker's next part of the job reads
    // the same index): the kept blocks are read, not fetched. (The
    // demuxer may read a block further than the first time, depending on
    // when the segment's end stops it: only that one is fetched.)
    let again = encode(PartInput::Ranged(source), dir.path().join("again.mp4"))
        .await
        .expect("the segment again");
    assert_eq!(again.frames, 100);
    assert!(again.fetched <= BLOCK, "fetched {} again", again.fetched);
    assert_eq!(
        kept(),
        fetched + again.fetched,
        "only new blocks are fetched"
    );
}

/// The segment of [`encode`] of `in/far.mp4` read by ranges in blocks of
/// 16 KiB, fetching `ahead` blocks ahead, into `dir`/`name`; and the bytes
/// then in its block folder.
async fn read_far(storage: &Storage, dir: &Path, ahead: u64, name: &str) -> (EncodedVideo, u64) {
    let blocks = dir.join(name);
    let source = Ranged {
        block_size: 16 << 10,
        read_ahead: ahead,
        ..ranged(storage, "in/far.mp4", &blocks).await
    };
    let segment_blocks = source.size / source.block_size / 5;
    assert!(
        segment_blocks >= 6,
        "4 s of 20 s is many blocks: {source:?}"
    );
    let encoded = encode(PartInput::Ranged(source), dir.join(format!("{name}.mp4")))
        .await
        .expect("the segment by ranges");
    (encoded, kept_in(&blocks))
}

/// Storage far away (every GET answered after 100 ms), blocks of 16 KiB
/// so that the segment spans many: read with `read_ahead = 2`, the
/// segment is the same frames as read without, blocks after the one being
/// read are fetched ahead (while the pipeline works), a block being
/// fetched ahead when it is read is waited for, not fetched again (every
/// byte fetched is kept once), and at most two blocks past each run of
/// reads are fetched in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_read_by_ranges_from_storage_far_away_fetches_its_next_blocks_ahead() {
    let s3 = S3Server::start_far_away(100, 0.0);
    let farm = Farm::s3_on(Rabbit::Shared(shared_rabbit()), &s3, &[]).await;
    let input = fixtures::h264_mp4_key_every_second(20, false);
    farm.put_input("in/far.mp4", &input).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let dir = tempfile::tempdir().expect("a folder");
    let (without, kept_without) = read_far(&storage, dir.path(), 0, "without").await;
    let (with, kept_with) = read_far(&storage, dir.path(), 2, "with").await;

    assert_eq!(
        without.fetched_ahead, 0,
        "nothing fetched ahead: {without:?}"
    );
    assert!(with.fetched_ahead > 0, "blocks fetched ahead: {with:?}");
    assert_eq!(kept_without, without.fetched, "each block fetched once");
    assert_eq!(
        kept_with, with.fetched,
        "each block fetched once, ahead or not"
    );
    // Fetched in vain: at most the two blocks after each run of three
    // blocks or more that the reads went through (the runs of the blocks
    // read without reading ahead), and one the demuxer may read further in
    // one run than in the other (when the segment's end stops it).
    let runs = runs_of_three_or_more(&dir.path().join("without"));
    assert!(runs >= 1, "the segment is a run of blocks");
    assert!(
        with.fetched <= without.fetched + 3 * runs * (16 << 10),
        "at most three blocks more for each of {runs} runs: {} against {}",
        with.fetched,
        without.fetched
    );
    assert_eq!(
        frames_of(&with),
        frames_of(&without),
        "the same frames at the same times"
    );
    assert_eq!(with.frames, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_by_ranges_fails_with_the_reason_when_the_input_is_gone_changed_or_unreachable() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(20, false);
    farm.put_input("in/ranged.mp4", &input).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let dir = tempfile::tempdir().expect("a folder");
    let out = |name: &str| dir.path().join(name);
    let source = ranged(&storage, "in/ranged.mp4", &dir.path().join("b1")).await;
    let no_secret = |e: &JobError| {
        assert!(
            !e.message.contains("Signature") && !e.message.contains("X-Amz"),
            "the URL is not shown: {e}"
        );
    };

    // Gone: the object was removed after the URL was made.
    storage.delete("in/ranged.mp4").await.expect("removed");
    let e = encode(PartInput::Ranged(source.clone()), out("gone.mp4"))
        .await
        .expect_err("a gone input");
    assert_eq!(e.kind, ErrorKind::InputNotFound, "{e}");
    assert!(e.message.contains("the input is gone (HTTP 404)"), "{e}");
    no_secret(&e);

    // Changed: another, larger object under the key since the job was
    // split (every range of the first is in it).
    let larger = fixtures::h264_mp4(20);
    assert!(std::fs::metadata(&larger).expect("a fixture").len() > source.size);
    farm.put_input("in/ranged.mp4", &larger).await;
    let changed = Ranged {
        url: url_of(&storage, "in/ranged.mp4").await,
        blocks: dir.path().join("b2"),
        ..source.clone()
    };
    let e = encode(PartInput::Ranged(changed), out("changed.mp4"))
        .await
        .expect_err("a changed input");
    assert_eq!(e.kind, ErrorKind::InputNotFound, "{e}");
    assert!(e.message.contains("changed since the job was split"), "{e}");
    no_secret(&e);

    // Unreachable: nothing listens at the address (tried again, then a
    // transient failure: the part is retried).
    let mut settings = farm.settings.clone();
    settings.storage.endpoint = format!("http://127.0.0.1:{}", free_port());
    let nowhere = Storage::from_settings(&settings.storage).expect("a storage");
    let unreachable = Ranged {
        url: url_of(&nowhere, "in/ranged.mp4").await,
        blocks: dir.path().join("b3"),
        ..source
    };
    let e = encode(PartInput::Ranged(unreachable), out("unreachable.mp4"))
        .await
        .expect_err("an unreachable storage");
    assert_eq!(e.kind, ErrorKind::StorageUnavailable, "{e}");
    assert!(e.message.contains("reading the input from storage"), "{e}");
    assert!(!e.kind.is_permanent(), "{e}");
    no_secret(&e);
}

/// Bytes a worker fetched by ranges, from its `fetched part of the input
/// by ranges` log lines (JSON logs).
fn fetched_by_ranges(worker: &WorkerProc) -> u64 {
    json_lines(worker, "fetched part of the input by ranges")
        .iter()
        .map(|v| v["bytes"].as_u64().expect("bytes"))
        .sum()
}

/// The parts of job `job` a worker stored (`part stored` lines).
fn stored_by(worker: &WorkerProc, job: &str) -> Vec<String> {
    json_lines(worker, "part stored")
        .iter()
        .filter(|v| v["span"]["job_id"] == job)
        .map(|v| v["part"].as_str().expect("a part").to_string())
        .collect()
}

/// A worker's JSON log lines with `message`.
fn json_lines(worker: &WorkerProc, message: &str) -> Vec<Value> {
    worker
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Lets jobs use `identity`, to make encodes slow enough to order them.
const SLOW_ALLOWED: (&str, &str) = ("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity");

/// The video branch of `FAST` at `ms` per frame at least.
fn slow(ms: u32) -> String {
    format!("identity sleep-time={} ! {FAST}", ms * 1000)
}

/// Waits until `worker` listens on the control exchange (it has started).
async fn listening(worker: &WorkerProc) {
    wait_for_value(DEFAULT_TIMEOUT, "the worker listening", || async {
        worker
            .logs()
            .contains("answering inspect and ping")
            .then_some(())
    })
    .await;
}

/// A job run by two workers: a 20 s input with audio in segments of 4 s,
/// each part slowed to 2 s, so the worker that split the job starts its
/// first part before the other starts its second.
struct TwoWorkers {
    id: String,
    input: PathBuf,
    workers: Vec<WorkerProc>,
    events: Vec<transcode_worker::job::Progress>,
}

impl TwoWorkers {
    /// Two workers (JSON logs, blocks of 64 KiB, and `extra` settings) run
    /// job `id` on `farm` (made with [`SLOW_ALLOWED`]): it completes, and
    /// both workers encode segments.
    async fn run(farm: &Farm, id: &str, extra: &[(&str, &str)]) -> TwoWorkers {
        let input = fixtures::h264_mp4_key_every_second(20, true);
        farm.put_input("in/long.mp4", &input).await;
        let mut watch = farm.watch_progress().await;
        let mut settings = vec![
            ("LOG_FORMAT", "json"),
            ("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB", "64"),
        ];
        settings.extend_from_slice(extra);
        let workers = vec![farm.spawn_worker(&settings), farm.spawn_worker(&settings)];
        for worker in &workers {
            listening(worker).await;
        }
        farm.publish_job(json!({"job_id": id, "input_key": "in/long.mp4",
            "output_key": "out/long.mp4", "transcode_options": slow(20), "segment_seconds": 4}))
            .await;
        let last = watch.until_final(id, JOB_TIMEOUT).await;
        let logs = format!("{}\n{}", workers[0].logs(), workers[1].logs());
        assert_eq!(last.state, Phase::Completed, "{last:#?}\n{logs}");
        let events = watch.of(id);
        let by_segment = encoders(&events);
        let names: std::collections::BTreeSet<&String> =
            by_segment.values().flatten().map(|(w, _)| w).collect();
        assert_eq!(names.len(), 2, "both workers encode: {by_segment:?}");
        TwoWorkers {
            id: id.to_string(),
            input,
            workers,
            events,
        }
    }

    /// The worker that split the job, and the other.
    fn splitter_and_other(&self) -> (&WorkerProc, &WorkerProc) {
        match self.workers[0].logs().contains("split the job") {
            true => (&self.workers[0], &self.workers[1]),
            false => (&self.workers[1], &self.workers[0]),
        }
    }

    /// The output is joined like the input, nothing of the job is left
    /// and every message was acked.
    async fn assert_joined_and_gone(self, farm: &Farm) {
        let starts: Vec<f64> = segment_starts(&[&self.workers[0], &self.workers[1]])
            .values()
            .copied()
            .collect();
        let output = farm.get_output("out/long.mp4").await.expect("the output");
        assert_joined_like_the_input(&self.input, &output, &starts);
        assert_nothing_left(farm, &[self.id.as_str()]).await;
        farm.assert_all_acked(self.workers).await;
    }
}

/// Two workers reading by ranges, a 20 s input with audio in segments of
/// 4 s (each part slowed to 2 s, so the worker that split the job starts
/// its first part before the other starts its second): both encode
/// segments; the one that split the job, which has the input, encodes
/// the audio part (which reads all of it); the other never downloads the
/// input and fetches less than all of it by ranges, some of it ahead of
/// its reads (`segments.range_read_ahead = 2`); the output is joined like
/// the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_reading_by_ranges_encode_a_job_and_the_other_fetches_part_of_the_input() {
    let farm = Farm::s3(&[SLOW_ALLOWED]).await;
    let run = TwoWorkers::run(
        &farm,
        "ranges",
        &[("TRANSCODE_SEGMENTS__RANGE_READ_AHEAD", "2")],
    )
    .await;
    let (workers, input) = (&run.workers, &run.input);
    let size = std::fs::metadata(input).expect("the fixture").len();
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    assert_progress_never_goes_back(&run.events);
    assert_eq!(encoders(&run.events).len(), 5, "20 s in segments of 4 s");

    // The splitter downloaded the input to scan it, used that copy, and
    // encoded the audio part; the other read only what its segments
    // needed, and never downloaded it.
    let (splitter, other) = run.splitter_and_other();
    assert_eq!(
        splitter.logs().matches("\"fetching the input\"").count(),
        1,
        "{}",
        splitter.logs()
    );
    assert_eq!(fetched_by_ranges(splitter), 0, "{}", splitter.logs());
    assert!(
        stored_by(splitter, "ranges").contains(&"audio".to_string()),
        "the splitter encodes the audio part\n{}",
        logs()
    );
    assert!(
        !other.logs().contains("\"fetching the input\""),
        "{}",
        other.logs()
    );
    let fetched = fetched_by_ranges(other);
    assert!(
        fetched > 0 && fetched < size,
        "the other worker fetched {fetched} of {size} bytes\n{}",
        other.logs()
    );
    let ahead: u64 = json_lines(other, "fetched part of the input by ranges")
        .iter()
        .map(|v| v["ahead"].as_u64().expect("ahead"))
        .sum();
    assert!(
        ahead > 0 && ahead < fetched,
        "the other worker fetched {ahead} of its {fetched} bytes ahead\n{}",
        other.logs()
    );
    run.assert_joined_and_gone(&farm).await;
}

/// On storage that answers range requests with the whole object (a proxy
/// that drops `Range`), the worker that did not split a job finds it out
/// with one request before its first part, says so once, and downloads
/// the input instead of reading it by ranges (the splitter, which holds
/// the input, never asks): both workers encode parts and the job
/// completes, joined like the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_storage_that_ignores_ranges_the_parts_download_the_input_instead() {
    let s3 = S3Server::start_ignoring_ranges();
    let farm = Farm::s3_on(Rabbit::Shared(shared_rabbit()), &s3, &[SLOW_ALLOWED]).await;
    let run = TwoWorkers::run(&farm, "no-ranges", &[]).await;
    let (splitter, other) = run.splitter_and_other();
    let told = |w: &WorkerProc| {
        json_lines(w, "the storage answers range requests with the whole object: parts download their input instead of reading it by ranges").len()
    };
    assert_eq!(told(other), 1, "said once\n{}", other.logs());
    // The splitter holds the input: it never needed to ask.
    assert_eq!(told(splitter), 0, "{}", splitter.logs());
    assert_eq!(fetched_by_ranges(other), 0, "{}", other.logs());
    assert_eq!(
        other.logs().matches("\"fetching the input\"").count(),
        1,
        "downloaded once, for all its parts\n{}",
        other.logs()
    );
    run.assert_joined_and_gone(&farm).await;
}

/// The worker that split a job is busy with another job, and the two
/// workers that take its two segments, one each, read by ranges and
/// have nothing of the input at their first part: neither claims the
/// audio part at its start; the one that stores the last segment finds
/// the audio part all that is missing, claims it and encodes it, and the
/// job completes with its audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_worker_with_the_input_takes_a_part_the_last_segment_s_task_encodes_the_audio() {
    let farm = Farm::s3(&[SLOW_ALLOWED]).await;
    let input = fixtures::h264_mp4_key_every_second(8, true);
    farm.put_input("in/audio.mp4", &input).await;
    farm.put_input("in/busy.mp4", &fixtures::h264_mp4(12)).await;
    let mut watch = farm.watch_progress().await;
    let json_log = [("LOG_FORMAT", "json")];
    let splitter = farm.spawn_worker(&json_log);
    listening(&splitter).await;
    farm.publish_job(json!({"job_id": "last", "input_key": "in/audio.mp4",
        "output_key": "out/audio.mp4", "transcode_options": slow(40), "segment_seconds": 4}))
        .await;
    // Queued before the part tasks: the splitter takes it next (15 s).
    farm.publish_job(json!({"job_id": "busy", "input_key": "in/busy.mp4",
        "output_key": "out/busy.mp4", "transcode_options": slow(50)}))
        .await;
    wait_for_value(JOB_TIMEOUT, "the splitter on the other job", || async {
        json_lines(&splitter, "job started")
            .iter()
            .any(|v| v["span"]["job_id"] == "busy")
            .then_some(())
    })
    .await;
    assert!(splitter.logs().contains("split the job"));
    // Each takes one of the two segments (4 s at 40 ms a frame: both
    // are delivered while both are busy).
    let workers = [farm.spawn_worker(&json_log), farm.spawn_worker(&json_log)];
    let last = watch.until_final("last", JOB_TIMEOUT).await;
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", logs());
    let (a, b) = (
        stored_by(&workers[0], "last"),
        stored_by(&workers[1], "last"),
    );
    let video = |parts: &[String]| parts.iter().filter(|p| p.starts_with('v')).count();
    assert_eq!(
        (video(&a), video(&b)),
        (1, 1),
        "one segment each\n{}",
        logs()
    );
    let audio_by: Vec<&WorkerProc> = workers
        .iter()
        .filter(|w| stored_by(w, "last").contains(&"audio".to_string()))
        .collect();
    assert_eq!(
        audio_by.len(),
        1,
        "one worker encodes the audio\n{}",
        logs()
    );
    assert!(
        audio_by[0].logs().contains(
            "every video segment is stored and no task carries the audio part: encoding it here"
        ),
        "{}",
        audio_by[0].logs()
    );
    assert!(
        stored_by(&splitter, "last").is_empty(),
        "{}",
        splitter.logs()
    );
    let output = farm.get_output("out/audio.mp4").await.expect("the output");
    let starts: Vec<f64> = segment_starts(&[&workers[0], &workers[1]])
        .values()
        .copied()
        .collect();
    assert_joined_like_the_input(&input, &output, &starts);
    assert_progress_never_goes_back(&watch.of("last"));
    assert_nothing_left(&farm, &["last"]).await;
    let busy = watch.until_final("busy", JOB_TIMEOUT).await;
    assert_eq!(busy.state, Phase::Completed);
    let [a, b] = workers;
    farm.assert_all_acked(vec![splitter, a, b]).await;
}

/// The worker that split a job claims the audio part with its first
/// segment and dies once both are encoded, before they are stored: the
/// task goes to another worker, reading by ranges, which encodes that
/// segment and the audio part (the claim goes with the task), and the
/// job completes with its audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audio_claimed_by_a_worker_that_dies_goes_with_its_task() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(12, true);
    farm.put_input("in/claim.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    farm.publish_job(json!({"job_id": "claim", "input_key": "in/claim.mp4",
        "output_key": "out/claim.mp4", "transcode_options": FAST, "segment_seconds": 4}))
        .await;
    let crash = [
        ("LOG_FORMAT", "json"),
        ("TRANSCODE_WORKER__CRASH_AFTER", "transcoding"),
    ];
    let mut first = farm.spawn_worker(&crash);
    assert!(
        !first.wait_exit(JOB_TIMEOUT).await.success(),
        "it crashed on purpose"
    );
    let encoding: Vec<String> = (first.logs().lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .filter(|m| m.starts_with("encoding "))
        .collect();
    assert_eq!(encoding.len(), 1, "{}", first.logs());
    assert!(
        encoding[0].ends_with(" and the audio part"),
        "the splitter carries the audio: {encoding:?}"
    );
    let lost = encoding[0]
        .trim_start_matches("encoding ")
        .trim_end_matches(" and the audio part")
        .to_string();
    let second = farm.spawn_worker(&[("LOG_FORMAT", "json")]);
    let last = watch.until_final("claim", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", second.logs());
    assert!(
        second
            .logs()
            .contains(&format!("encoding {lost} and the audio part")),
        "the task that carried the audio carries it again\n{}",
        second.logs()
    );
    assert_eq!(
        stored_by(&second, "claim")
            .iter()
            .filter(|p| *p == "audio")
            .count(),
        1
    );
    let output = farm.get_output("out/claim.mp4").await.expect("the output");
    let starts: Vec<f64> = segment_starts(&[&second]).values().copied().collect();
    assert_joined_like_the_input(&input, &output, &starts);
    assert_progress_never_goes_back(&watch.of("claim"));
    assert_nothing_left(&farm, &["claim"]).await;
    farm.assert_all_acked(vec![second]).await;
}
