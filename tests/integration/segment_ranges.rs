//! Parts of segmented jobs reading their input from S3 by byte ranges
//! (`segments.fetch_input = "ranges"`, the default), against the real S3
//! test server and real GStreamer: a segment read by ranges is the segment
//! read from a file, fetching only the blocks around it and each of them
//! once; a gone, changed or unreachable input fails the part with the
//! reason (and never shows the presigned URL); two workers encode a job,
//! the one that did not split it fetching only part of the input.

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

use crate::common::farm::{Farm, WorkerProc};
use crate::common::services::free_port;
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
/// into the block folder `blocks`.
async fn ranged(storage: &Storage, key: &str, blocks: &Path) -> Ranged {
    let info = storage.head(key).await.expect("a head").expect("the input");
    let url = storage.presign_get(key, 600).await.expect("presigned");
    Ranged {
        url: url.expect("the farm's credentials presign"),
        size: info.size,
        etag: info.version,
        blocks: blocks.to_path_buf(),
        block_size: BLOCK,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_read_by_ranges_is_the_segment_read_from_the_file_and_fetches_its_blocks_once() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(20);
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
    let (mut a, mut b) = (from_file.clone(), by_ranges.clone());
    (a.fetched, b.fetched) = (0, 0);
    assert_eq!(a, b, "the same frames at the same times");
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
    let kept = || -> u64 {
        std::fs::read_dir(&blocks)
            .expect("the block folder")
            .map(|e| e.expect("an entry").metadata().expect("metadata").len())
            .sum()
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_by_ranges_fails_with_the_reason_when_the_input_is_gone_changed_or_unreachable() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(20);
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
    let mut changed = source.clone();
    changed.url = storage
        .presign_get("in/ranged.mp4", 600)
        .await
        .expect("presigned")
        .expect("a URL");
    changed.blocks = dir.path().join("b2");
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
    let mut unreachable = source;
    unreachable.url = nowhere
        .presign_get("in/ranged.mp4", 600)
        .await
        .expect("presigned")
        .expect("a URL");
    unreachable.blocks = dir.path().join("b3");
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
    worker
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["message"] == "fetched part of the input by ranges")
        .map(|v| v["bytes"].as_u64().expect("bytes"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_reading_by_ranges_encode_a_job_and_the_other_fetches_part_of_the_input() {
    let farm = Farm::s3(&[]).await;
    let input = fixtures::h264_mp4_key_every_second(20);
    let size = std::fs::metadata(&input).expect("the fixture").len();
    farm.put_input("in/long.mp4", &input).await;
    let mut watch = farm.watch_progress().await;
    let settings = [
        ("LOG_FORMAT", "json"),
        ("TRANSCODE_SEGMENTS__RANGE_BLOCK_KIB", "64"),
    ];
    let workers = vec![farm.spawn_worker(&settings), farm.spawn_worker(&settings)];
    for worker in &workers {
        wait_for_value(DEFAULT_TIMEOUT, "the worker listening", || async {
            worker
                .logs()
                .contains("answering inspect and ping")
                .then_some(())
        })
        .await;
    }
    farm.publish_job(json!({"job_id": "ranges", "input_key": "in/long.mp4",
        "output_key": "out/long.mp4", "transcode_options": FAST, "segment_seconds": 4}))
        .await;
    let last = watch.until_final("ranges", JOB_TIMEOUT).await;
    let logs = || format!("{}\n{}", workers[0].logs(), workers[1].logs());
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", logs());

    let events = watch.of("ranges");
    assert_progress_never_goes_back(&events);
    let by_segment = encoders(&events);
    assert_eq!(by_segment.len(), 5, "20 s in segments of 4 s");
    let names: std::collections::BTreeSet<&String> =
        by_segment.values().flatten().map(|(w, _)| w).collect();
    assert_eq!(names.len(), 2, "both workers encode: {by_segment:?}");

    // The splitter downloaded the input to scan it and used that copy;
    // the other read only what its segments needed, and never downloaded.
    let (splitter, other) = match workers[0].logs().contains("split the job") {
        true => (&workers[0], &workers[1]),
        false => (&workers[1], &workers[0]),
    };
    assert_eq!(
        splitter.logs().matches("\"fetching the input\"").count(),
        1,
        "{}",
        splitter.logs()
    );
    assert_eq!(fetched_by_ranges(splitter), 0, "{}", splitter.logs());
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

    let starts: Vec<f64> = segment_starts(&[&workers[0], &workers[1]])
        .values()
        .copied()
        .collect();
    let output = farm.get_output("out/long.mp4").await.expect("the output");
    assert_joined_like_the_input(&input, &output, &starts);
    assert_nothing_left(&farm, &["ranges"]).await;
    farm.assert_all_acked(workers).await;
}
