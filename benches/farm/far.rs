//! Section 7c: a part reading its input by ranges from storage far away,
//! with and without reading ahead; and the input downloaded in one request
//! and in parts.
//!
//! The S3 test server plays storage across a network: every `GetObject`
//! answers after [`DELAY_MS`] plus its length at one of
//! [`MIB_PER_SECOND`] (a 4 MiB block: 30 + 100 ms, or 30 + 400 ms). One
//! video part of a segmented job, 30 s of the 2-minute 1280x720 MPEG-2
//! input of section 7 (8 Mbit/s, as tape captures are), encoded with
//! section 7's video branch (x264 `medium`, one thread), in this process
//! (`pipeline::run_part`, as the worker's pipeline process runs it):
//!
//! - from a local file (no reads wait: the floor);
//! - by ranges in blocks of 4 MiB (the default `segments.range_block_kib`),
//!   nothing fetched ahead (`segments.range_read_ahead = 0`, the
//!   default);
//! - the same, two blocks fetched ahead (`range_read_ahead = 2`);
//!
//! and all three again with x264 `ultrafast` (one thread), an encoder
//! several times faster, as a proxy's or a hardware encoder is. The
//! pipeline's queues let the demuxer wait for a block while the encoder
//! works on what it has, so reading ahead can only gain where storage
//! delivers a block more slowly than the pipeline uses one.
//!
//! Then the whole input downloaded (as the worker that splits a job, or
//! runs a whole-file job, downloads it) from each of these servers and
//! from one that does not wait: in one request
//! (`storage.download_concurrency = 1`) and in parts of 16 MiB, four at a
//! time (the default).
//!
//! Each reading by ranges starts with an empty block folder, as a
//! worker's first part of a job does. The three take turns going first
//! from run to run. Reported: the part's wall time, how long its reads
//! waited for storage (the range source's own count), and what it
//! fetched.

use super::*;
use transcode_worker::pipeline::{
    run_part, EncodedVideo, PartInput, PartOutcome, PartRequest, Ranged, VideoSpec,
};
use transcode_worker::storage::Storage;

/// What each `GetObject` of the far storage waits before its body.
const DELAY_MS: u64 = 30;
/// The far storage's rates, per request: a fast link, and a slower one.
const MIB_PER_SECOND: [f64; 2] = [40.0, 10.0];
/// A video branch several times faster than section 7's.
const FAST_VIDEO: &str = "videoconvert ! x264enc speed-preset=ultrafast threads=1";
/// Blocks of the range reads: the default `segments.range_block_kib`.
const BLOCK: u64 = 4 << 20;

/// How a run reads the input.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    File,
    Ranges { ahead: u64 },
}

impl Read {
    fn name(self) -> String {
        match self {
            Read::File => "local file".into(),
            Read::Ranges { ahead: 0 } => "by ranges, nothing ahead".into(),
            Read::Ranges { ahead } => format!("by ranges, {ahead} blocks ahead"),
        }
    }
}

/// Encodes `from_s..until_s` of the input, read `how`, with the video
/// branch `video`, into `dir`.
async fn encode(
    how: Read,
    video: &str,
    input: &Path,
    ranged: &Ranged,
    from_s: u64,
    until_s: u64,
    dir: &Path,
) -> (Duration, EncodedVideo) {
    let blocks = dir.join("blocks");
    let _ = std::fs::remove_dir_all(&blocks);
    let input = match how {
        Read::File => PartInput::File(input.to_path_buf()),
        Read::Ranges { ahead } => PartInput::Ranged(Ranged {
            read_ahead: ahead,
            blocks: blocks.clone(),
            ..ranged.clone()
        }),
    };
    let request = PartRequest::Video(VideoSpec {
        input,
        output: dir.join("part.mp4"),
        video: video.into(),
        muxer: "mp4mux".into(),
        from_ns: Some(from_s * 1_000_000_000),
        until_ns: Some(until_s * 1_000_000_000),
        seek_ns: Some(from_s * 1_000_000_000),
    });
    let started = Instant::now();
    let run = tokio::task::spawn_blocking(move || run_part(&request, |_, _| {}));
    let outcome = tokio::time::timeout(JOB_TIMEOUT, run)
        .await
        .expect("the part within the timeout")
        .expect("the part's thread");
    let took = started.elapsed();
    match outcome {
        Ok(PartOutcome::Video(v)) => (took, v),
        other => panic!("{} made {other:?}", how.name()),
    }
}

/// A farm on an S3 test server that answers every `GetObject` after
/// `delay_ms` plus its length at `mib_per_second` (0 and 0: at once),
/// with `input` stored under `key`; and the server, which serves it as
/// long as it lives.
pub(crate) async fn far_farm(
    input: &Path,
    key: &str,
    delay_ms: u64,
    mib_per_second: f64,
) -> (S3Server, Farm) {
    let server = S3Server::start_far_away(delay_ms, mib_per_second);
    let farm = Farm::s3_on(
        Rabbit::Shared(common::services::shared_rabbit()),
        &server,
        &[],
    )
    .await;
    farm.put_input(key, input).await;
    (server, farm)
}

/// The input `input` on storage that answers every `GetObject` after
/// [`DELAY_MS`] plus its length at `mib_per_second`, read by ranges in
/// blocks of [`BLOCK`] into `dir` (nothing fetched ahead); and the server,
/// which serves it as long as it lives.
async fn far_away(
    input: &Path,
    delay_ms: u64,
    mib_per_second: f64,
    dir: &Path,
) -> (Ranged, S3Server, transcode_worker::config::Settings) {
    let (server, farm) = far_farm(input, "in/far.mov", delay_ms, mib_per_second).await;
    let storage = Storage::from_settings(&farm.settings.storage).expect("the storage");
    let info = storage
        .head("in/far.mov")
        .await
        .expect("a head")
        .expect("the input");
    let url = storage
        .presign_get("in/far.mov", 3600)
        .await
        .expect("presigned")
        .expect("the farm's credentials presign");
    let ranged = Ranged {
        url,
        size: info.size,
        etag: info.version,
        blocks: dir.join("blocks"),
        block_size: BLOCK,
        read_ahead: 0,
    };
    (ranged, server, farm.settings.clone())
}

/// Downloads of the input (`storage.fetch_known`, as a worker fetches a
/// job's input) from the storage of `settings` into `dir`, in one request
/// and in parts of 16 MiB four at a time, `runs` times each, taking turns
/// going first; the rows of the download table for `storage`, and the
/// runs in words.
async fn downloads(
    settings: &transcode_worker::config::Settings,
    storage: &str,
    runs: usize,
    dir: &Path,
) -> (Vec<Vec<String>>, String) {
    let ways = [1usize, 4];
    let mut took: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut per_run = Vec::new();
    let mut size = 0;
    for run in 0..runs {
        let mut order: Vec<usize> = ways.to_vec();
        order.rotate_left(run % ways.len());
        let mut line = Vec::new();
        for concurrency in order {
            let mut settings = settings.clone();
            settings.storage.download_concurrency = concurrency;
            let store = Storage::from_settings(&settings.storage).expect("the storage");
            let info = store
                .head("in/far.mov")
                .await
                .expect("a head")
                .expect("the input");
            size = info.size;
            eprintln!(
                "bench: download ({storage}), run {}, {concurrency} at a time",
                run + 1
            );
            let counter = transcode_worker::storage::Transferred::default();
            let started = Instant::now();
            let got = tokio::time::timeout(
                JOB_TIMEOUT,
                store.fetch_known("in/far.mov", &info, dir, &counter),
            )
            .await
            .expect("the download within the timeout")
            .expect("the download");
            let t = started.elapsed().as_secs_f64();
            assert_eq!((got.size, counter.get()), (info.size, info.size));
            line.push(format!("{concurrency} at a time {t:.2} s"));
            took.entry(concurrency).or_default().push(t);
        }
        per_run.push(format!("{storage}, run {}: {}", run + 1, line.join(", ")));
    }
    let one = median(took[&1].clone());
    let rows = ways
        .iter()
        .map(|c| {
            let t = median(took[c].clone());
            vec![
                storage.to_string(),
                if *c == 1 {
                    "one request".to_string()
                } else {
                    format!("parts of 16 MiB, {c} at a time")
                },
                format!("{t:.2} s"),
                format!("{:.0} MiB/s", size as f64 / (1 << 20) as f64 / t),
                format!("{:.2}x", one / t),
            ]
        })
        .collect();
    (rows, per_run.join("; "))
}

pub(crate) async fn far(opts: &Opts) -> String {
    // 30 s from a key frame (every 12 frames: 24 s is frame 600).
    let (secs, from_s, until_s) = if opts.smoke { (8, 2, 6) } else { (120, 24, 54) };
    let input = segments::mpeg2_720p(secs);
    let size = std::fs::metadata(&input).expect("the input").len();
    let dir = tempfile::tempdir().expect("a folder");
    let ways = [
        Read::File,
        Read::Ranges { ahead: 0 },
        Read::Ranges { ahead: 2 },
    ];
    let mut rows = Vec::new();
    let mut per_run = Vec::new();
    let mut frames = HashSet::new();
    let mut download_rows = Vec::new();
    let mut download_runs = Vec::new();
    {
        let (_, _server, settings) = far_away(&input, 0, 0.0, dir.path()).await;
        let (got, runs) = downloads(&settings, "loopback, no wait", opts.runs, dir.path()).await;
        download_rows.extend(got);
        download_runs.push(runs);
    }
    for mib_per_second in MIB_PER_SECOND {
        let (ranged, _server, settings) =
            far_away(&input, DELAY_MS, mib_per_second, dir.path()).await;
        let storage = format!("{DELAY_MS} ms + {mib_per_second} MiB/s");
        let (got, runs) = downloads(&settings, &storage, opts.runs, dir.path()).await;
        download_rows.extend(got);
        download_runs.push(runs);
        for (encoder, video) in [
            ("x264 `medium`", segments::VIDEO),
            ("x264 `ultrafast`", FAST_VIDEO),
        ] {
            let mut took: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            let mut waited: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            let mut last: BTreeMap<usize, EncodedVideo> = BTreeMap::new();
            for run in 0..opts.runs {
                let mut order: Vec<usize> = (0..ways.len()).collect();
                order.rotate_left(run % ways.len());
                let mut line = Vec::new();
                for i in order {
                    let way = ways[i].name();
                    eprintln!(
                        "bench: far storage ({storage}), {encoder}, run {}, {way}",
                        run + 1
                    );
                    let (t, v) =
                        encode(ways[i], video, &input, &ranged, from_s, until_s, dir.path()).await;
                    let wait = v.read_wait_ms as f64 / 1e3;
                    line.push(format!(
                        "{way} {:.2} s (reads waited {wait:.2} s)",
                        t.as_secs_f64()
                    ));
                    took.entry(i).or_default().push(t.as_secs_f64());
                    waited.entry(i).or_default().push(wait);
                    frames.insert(v.frames);
                    last.insert(i, v);
                }
                per_run.push(format!(
                    "{storage}, {encoder}, run {}: {}",
                    run + 1,
                    line.join(", ")
                ));
            }
            let file = median(took[&0].clone());
            let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
            for (i, way) in ways.iter().enumerate() {
                let t = median(took[&i].clone());
                rows.push(vec![
                    storage.clone(),
                    encoder.to_string(),
                    way.name(),
                    format!("{t:.2} s"),
                    format!("{:+.1} %", (t / file - 1.0) * 100.0),
                    format!("{:.2} s", median(waited[&i].clone())),
                    mib(last[&i].fetched),
                    mib(last[&i].fetched_ahead),
                ]);
            }
        }
    }
    assert_eq!(
        frames.len(),
        1,
        "every way encodes the same frames: {frames:?}"
    );
    format!(
        "\n## 7c. Reading by ranges from storage far away\n\n{}\n\
         Medians of {} run(s); per run, in the order they ran: {}. One video part of \
         {} s ({} s to {} s) of the {}-second 1280x720 MPEG-2 input of section 7 \
         ({} MiB, 8 Mbit/s), encoded with `{}` (section 7's video branch) and with \
         `{FAST_VIDEO}` (an encoder several times faster, as a proxy's or a \
         hardware encoder is) in the benchmark's process (`pipeline::run_part`); \
         the S3 test server answering every `GetObject` after {DELAY_MS} ms plus its \
         length at the rate named (`--get-delay-ms`, `--get-mib-per-second`: a 4 MiB \
         block takes 130 ms at 40 MiB/s, 430 ms at 10 MiB/s); blocks of 4 MiB, an \
         empty block folder for each part; {} frames each. \"Reads waited\": the \
         time the range source's reads waited for a block (fetched by the read itself \
         or still being fetched ahead). Fetched: the bytes the part's reads fetched \
         from storage, of which ahead: those fetched ahead of the reads (last run).\n\n\
         The whole input downloaded, as a worker downloads a job's input (the worker \
         that splits a segmented job, a whole-file job), by the worker's storage code \
         (`Storage::fetch_known`) into a scratch folder on the same disk, from the same \
         servers and from one that does not wait:\n\n{}\n\
         Medians of {} run(s); per run, in the order they ran: {}.\n",
        table(
            &[
                "storage (each request)",
                "encoder (one thread)",
                "the part's input",
                "part, wall time",
                "against the local file",
                "reads waited",
                "fetched",
                "of which ahead",
            ],
            &rows,
        ),
        opts.runs,
        per_run.join("; "),
        until_s - from_s,
        from_s,
        until_s,
        secs,
        size >> 20,
        segments::VIDEO,
        frames.iter().next().copied().unwrap_or(0),
        table(
            &[
                "storage (each request)",
                "download",
                "time",
                "rate",
                "against one request",
            ],
            &download_rows,
        ),
        opts.runs,
        download_runs.join("; "),
    )
}
