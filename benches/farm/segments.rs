//! Section 7: one long input encoded in segments by two workers, against
//! the same encode by one worker, whole and segmented.
//!
//! Two 2-minute 1280x720 inputs (testsrc2: moving, so the encoder works):
//! H.264 + AAC in MP4 (a common camera or upload file), and MPEG-2 + PCM
//! in MOV (as XDCAM cameras and MPEG-2 captures of tapes are), whose
//! decoder costs a third of H.264's. The video branch is the `h264-mp4`
//! preset's x264 (`medium`, constant quality 23) with one encoder thread
//! (`threads=1`), the audio the default AAC. S3 backend, each job timed
//! from its publish to its `completed` event; the MPEG-2 input again on
//! the directory backend (a shared folder: no worker downloads the input):
//!
//! - whole: one worker, the job without `segment_seconds`;
//! - segmented, one worker: the same job in segments of 10 s;
//! - segmented, two workers: the same, with a second worker started.
//!
//! The first two run in turn first from run to run (the machine's speed
//! drifts over minutes); the two-worker job runs last.
//!
//! Beside the times: the CPU time (user + system) of the worker and its
//! pipeline processes during the whole-file job, from `/proc`, and what
//! two cores allow at best for that work: the whole-file time against
//! half its CPU time. The join's share is its time (`join_ms` of the
//! worker's "joined and verified" line) against the part tasks' encode
//! time (each task's `encode_ms`), from the one-worker run. Two more
//! tables say where each job's time goes, read from the workers' JSON
//! logs ([`Timeline`]).

use super::*;

/// The video branch: the `h264-mp4` preset's encoder, one encoder thread.
pub(crate) const VIDEO: &str =
    "videoconvert ! x264enc pass=qual quantizer=23 speed-preset=medium threads=1";

/// The 1280x720 H.264 + AAC input of `secs` seconds.
pub(crate) fn h264_720p(secs: u32) -> PathBuf {
    ffmpeg_input(
        &format!("h264-{secs}s-1280x720.mp4"),
        &lavfi(
            secs,
            "1280x720",
            "-c:v libx264 -preset fast -crf 20 -pix_fmt yuv420p",
            "-c:a aac -b:a 128k -f mp4",
        ),
    )
}

/// The 1280x720 MPEG-2 + PCM MOV input of `secs` seconds.
pub(crate) fn mpeg2_720p(secs: u32) -> PathBuf {
    ffmpeg_input(
        &format!("mpeg2-{secs}s-1280x720.mov"),
        &lavfi(
            secs,
            "1280x720",
            "-c:v mpeg2video -b:v 8M -g 12 -bf 2",
            "-c:a pcm_s16be -f mov",
        ),
    )
}

/// CPU seconds (user + system) `pid` and its child processes have used,
/// those it has waited for included.
pub(crate) fn tree_cpu_s(pid: i32) -> f64 {
    let ticks: f64 = sh("getconf CLK_TCK").trim().parse().unwrap_or(100.0);
    let used = |pid: i32| -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0.0;
        };
        // Fields after the command (which may hold spaces): state is
        // field 3; utime, stime, cutime, cstime are fields 14 to 17.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|f| f.parse::<f64>().ok())
            .sum()
    };
    let total: f64 = used(pid) + children(pid).into_iter().map(used).sum::<f64>();
    total / ticks
}

/// The job `id` on the input, in segments of `segment_seconds` if given.
pub(crate) fn job(id: &str, key: &str, segment_seconds: Option<u32>) -> serde_json::Value {
    let mut job = json!({"job_id": id, "input_key": key,
        "output_key": format!("out/{id}.mp4"), "transcode_options": VIDEO});
    if let Some(s) = segment_seconds {
        job["segment_seconds"] = json!(s);
    }
    job
}

/// Where one job's time went, from the JSON logs of the workers that ran
/// it (the timestamps and the timings of their lines).
#[derive(Debug, Default, Clone)]
pub(crate) struct Timeline {
    /// "job started" -> "job completed", s.
    pub(crate) worker_s: f64,
    /// A whole-file job: its pipeline (probe, stream, encoder flush, muxer
    /// finish, stop: the "outputs verified" line), s.
    pub(crate) pipeline_s: f64,
    /// A segmented job: "job started" -> "split the job" (the input's
    /// fetch, its scan, the plan written), s.
    pub(crate) split_s: f64,
    /// The part tasks' pipelines: each task's encode time (a video
    /// segment, with the audio beside it in one task), summed, s.
    pub(crate) parts_s: f64,
    /// "split the job" -> "the last part is stored" less the parts'
    /// pipelines: each part's upload and record, the next task's delivery,
    /// a second worker's fetch of the input; with two workers, the time
    /// both work at once counts twice in `parts_s`, so this is only
    /// meaningful for one worker, s.
    pub(crate) between_s: f64,
    /// "the last part is stored" -> "job completed" (the join, its
    /// verification, the upload, the record), s.
    pub(crate) finish_s: f64,
    /// The join pipeline's own time, s.
    pub(crate) join_s: f64,
    /// Per worker that encoded parts: how many tasks, its first part's
    /// start after the split, and its last part's end after the split, s.
    pub(crate) workers: Vec<(usize, f64, f64)>,
    /// Bytes of the input the workers read from storage for the job:
    /// whole downloads (`fetching the input`) and range reads (`fetched
    /// part of the input by ranges`).
    pub(crate) read_bytes: f64,
    /// The input's size (from a whole download's line), bytes.
    pub(crate) input_bytes: f64,
}

impl Timeline {
    /// Reads job `id`'s lines from the logs of `workers`.
    pub(crate) fn of(workers: &[&WorkerProc], id: &str) -> Timeline {
        let at = |v: &serde_json::Value| -> f64 {
            v["timestamp"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(f64::NAN, |t| t.unix_timestamp_nanos() as f64 / 1e9)
        };
        let ms = |v: &serde_json::Value, field: &str| v[field].as_f64().unwrap_or(0.0) / 1000.0;
        let mut t = Timeline::default();
        let (mut started, mut split, mut joining, mut completed) =
            (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        let mut spans = Vec::new();
        for worker in workers {
            let (mut tasks, mut first, mut last, mut in_task) = (0, f64::NAN, f64::NAN, false);
            for line in worker.logs().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["span"]["job_id"] != id {
                    continue;
                }
                let message = v["message"].as_str().unwrap_or("");
                match message {
                    "job started" if started.is_nan() => started = at(&v),
                    "job completed" => completed = at(&v),
                    "the last part is stored; joining the job" => joining = at(&v),
                    "joined and verified" => t.join_s += ms(&v, "join_ms"),
                    "outputs verified" => {
                        t.pipeline_s += [
                            "probe_ms",
                            "stream_ms",
                            "encoder_flush_ms",
                            "muxer_finish_ms",
                            "stop_ms",
                        ]
                        .iter()
                        .map(|f| ms(&v, f))
                        .sum::<f64>()
                    }
                    m if m.starts_with("split the job") => split = at(&v),
                    "fetching the input" => {
                        let bytes = v["bytes"].as_f64().unwrap_or(0.0);
                        t.read_bytes += bytes;
                        t.input_bytes = t.input_bytes.max(bytes);
                    }
                    "fetched part of the input by ranges" => {
                        t.read_bytes += v["bytes"].as_f64().unwrap_or(0.0)
                    }
                    m if m.starts_with("encoding ") => {
                        tasks += 1;
                        in_task = true;
                        if first.is_nan() {
                            first = at(&v);
                        }
                    }
                    "part stored" => {
                        // A task's first stored part carries the task's
                        // encode time (the audio beside it, its own).
                        if in_task {
                            t.parts_s += ms(&v, "encode_ms");
                            in_task = false;
                        }
                        last = at(&v);
                    }
                    _ => {}
                }
            }
            if tasks > 0 {
                spans.push((tasks, first, last));
            }
        }
        t.worker_s = completed - started;
        if !split.is_nan() {
            t.split_s = split - started;
            t.between_s = (joining - split) - t.parts_s;
            t.finish_s = completed - joining;
            t.workers = spans
                .into_iter()
                .map(|(n, first, last)| (n, first - split, last - split))
                .collect();
        }
        t
    }
}

/// One input's row of the table, and its sentence of per-run figures.
struct Row {
    cells: Vec<String>,
    runs: String,
    /// Where the time goes: whole against segmented on one worker.
    one: Vec<String>,
    /// Where the time goes: segmented on two workers.
    two: Vec<String>,
}

pub(super) async fn segments(opts: &Opts) -> String {
    eprintln!("bench: segments");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let (secs, seg) = if opts.smoke { (8, 3) } else { (120, 10) };
    let inputs = [
        ("H.264 + AAC MP4", "in/long.mp4", h264_720p(secs)),
        ("MPEG-2 + PCM MOV", "in/long.mov", mpeg2_720p(secs)),
    ];
    let farm = Farm::s3(&[]).await;
    let mut rows = Vec::new();
    for (what, key, input) in &inputs {
        farm.put_input(key, input).await;
        let row = input_row(opts, &farm, what, key, secs, seg).await;
        rows.push(row);
    }
    drop(farm);
    // A shared folder (NFS, SMB) as the storage: the workers read the
    // input where it is, so no worker downloads it.
    let shared = Farm::directory(&[]).await;
    let (what, key, input) = &inputs[1];
    shared.put_input(key, input).await;
    let what = format!("{what}, directory backend");
    rows.push(input_row(opts, &shared, &what, key, secs, seg).await);
    let load_after = sh("cut -d' ' -f1-3 /proc/loadavg");
    let t = table(
        &[
            "input (2 min 1280x720, segments of 10 s)",
            "runs",
            "whole, 1 worker",
            "CPU of the whole job",
            "segmented, 1 worker",
            "segmented, 2 workers",
            "speed-up (whole 1 / segmented 2)",
            "two cores allow at best (whole / (CPU / 2))",
            "segmenting overhead (1 worker)",
            "join / encode",
        ],
        &rows.iter().map(|r| r.cells.clone()).collect::<Vec<_>>(),
    );
    let per_run: Vec<String> = rows.iter().map(|r| r.runs.clone()).collect();
    let one = table(
        &[
            "input",
            "whole: job started -> completed",
            "whole: its pipeline",
            "segmented, 1 worker: job started -> completed",
            "split (fetch, scan, plan)",
            "part tasks' pipelines",
            "between parts (each part's upload and record, the next task)",
            "last part stored -> completed (join, verify, upload)",
            "of which the join",
        ],
        &rows.iter().map(|r| r.one.clone()).collect::<Vec<_>>(),
    );
    let two = table(
        &[
            "input",
            "segmented, 2 workers: job started -> completed",
            "split",
            "first part task starts (after the split)",
            "the other worker's first part task starts",
            "the first worker's last part stored",
            "the other worker's last part stored",
            "workers end apart",
            "last part stored -> completed",
            "input read from storage, both workers (x its size)",
        ],
        &rows.iter().map(|r| r.two.clone()).collect::<Vec<_>>(),
    );
    format!(
        "\n## 7. Segmented jobs: one input, two workers\n\n{t}\n\
         Medians of {runs} run(s). {per_run} Video branch `{VIDEO}` (the `h264-mp4` preset's \
         encoder with one encoder thread per worker), default AAC audio; `transcode-worker run` \
         with default settings (the whole-file job first in odd runs, the one-worker segmented \
         job first in even ones), S3 backend on loopback (s3-test-server), and the MPEG-2 input \
         again on the directory backend (a local folder standing for a shared one: each worker \
         reads the input in place instead of downloading it). Each time is from publish to the \
         `completed` event. The two-worker run starts the second worker after the one-worker \
         runs. Speed-up, bound and overhead are the medians of the runs' own ratios (the \
         whole-file job of the same run as denominator or numerator). CPU: user + system time of the worker and its pipeline processes during the \
         whole-file job (`/proc`); no split of that work over two cores can take less than half \
         of it, so whole / (CPU / 2) is the most two workers can gain on this machine. The \
         join's share is its time against the parts' encode time in the one-worker run. Load \
         average (1, 5, 15 min) before / after the section: {load_before} / {load_after}. \
         Targets: speed-up >= 1.8x, overhead <= 5 %, join <= 2 % of the encode.\n\n\
         Where the time goes (seconds, medians of the runs; from the timestamps and timings of \
         the workers' JSON log lines: `job started`, `split the job`, `encoding ...`, `part \
         stored` with the task's `encode_ms`, `the last part is stored`, `joined and verified` \
         with `join_ms`, `outputs verified` with the whole job's pipeline stages, `job \
         completed`). Whole against segmented on one worker:\n\n{one}\n\
         Segmented on two workers (times after the split; \"the first worker\" is the one \
         whose first part task started first; on S3 the worker that splits the job downloads \
         the input to scan it, and the other reads it by ranges as its parts need it, \
         `segments.fetch_input = \"ranges\"`, the default; the input read is what the \
         workers' `fetching the input` and `fetched part of the input by ranges` lines \
         add up to, against the input's size; on the directory backend nothing is read from \
         storage but the input in place):\n\n{two}",
        runs = opts.runs,
        per_run = per_run.join(" "),
    )
}

/// Runs the three jobs on `key` `opts.runs` times.
async fn input_row(opts: &Opts, farm: &Farm, what: &str, key: &str, secs: u32, seg: u32) -> Row {
    let mut env = opts.worker_env();
    env.push(("LOG_FORMAT", "json"));
    let (mut whole, mut one, mut two, mut shares, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut split = String::new();
    let mut timelines = Vec::new();
    for run in 0..opts.runs {
        let first = farm.spawn_worker(&env);
        wait_ready(&first).await;
        let id = common::random_name("seg");
        // The whole-file job and the one-worker segmented job run in turn
        // first, from run to run: the machine's speed drifts over minutes.
        let whole_first = run % 2 == 0;
        let segmented = || async {
            run_job(farm, job(&format!("{id}-one"), key, Some(seg)))
                .await
                .0
                .as_secs_f64()
        };
        let mut s1 = if whole_first { 0.0 } else { segmented().await };
        let cpu_before = tree_cpu_s(first.pid());
        let w = run_job(farm, job(&format!("{id}-whole"), key, None))
            .await
            .0
            .as_secs_f64();
        let c = tree_cpu_s(first.pid()) - cpu_before;
        if whole_first {
            s1 = segmented().await;
        }
        let second = farm.spawn_worker(&env);
        wait_ready(&second).await;
        let s2 = run_job(farm, job(&format!("{id}-two"), key, Some(seg)))
            .await
            .0
            .as_secs_f64();
        // The lines are read once the last job's last line is written
        // (it follows the `completed` event).
        common::wait_for(JOB_TIMEOUT, "the completed job's log line", || async {
            let completed = format!("{id}-two");
            [&first, &second].iter().any(|w| {
                w.logs()
                    .lines()
                    .any(|l| l.contains(&completed) && l.contains("\"job completed\""))
            })
        })
        .await;
        let lines = (
            Timeline::of(&[&first], &format!("{id}-whole")),
            Timeline::of(&[&first], &format!("{id}-one")),
            Timeline::of(&[&first, &second], &format!("{id}-two")),
        );
        let tasks: Vec<String> = lines.2.workers.iter().map(|w| w.0.to_string()).collect();
        split = tasks.join(" and ");
        eprintln!(
            "bench:   {what} run {}: whole {w:.2} s ({c:.1} s CPU), segmented on one worker \
             {s1:.2} s, on two {s2:.2} s (tasks {split}), join {:.2} s of {:.2} s encoding; \
             timelines {lines:?}",
            run + 1,
            lines.1.join_s,
            lines.1.parts_s,
        );
        whole.push(w);
        one.push(s1);
        two.push(s2);
        cpu.push(c);
        shares.push(lines.1.join_s / lines.1.parts_s.max(0.001));
        timelines.push(lines);
        drop((first, second));
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Each ratio is taken within a run (its jobs ran minutes apart at
    // most), then the median of the runs'.
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let half = |v: &[f64]| -> Vec<f64> { v.iter().map(|c| c / 2.0).collect() };
    let (w, s1, s2, c) = (
        median(whole.clone()),
        median(one.clone()),
        median(two.clone()),
        median(cpu.clone()),
    );
    Row {
        cells: vec![
            format!("{what} ({secs} s, segments of {seg} s)"),
            opts.runs.to_string(),
            format!("{w:.2} s"),
            format!("{c:.1} s"),
            format!("{s1:.2} s"),
            format!("{s2:.2} s"),
            format!("**{:.2}x**", median(ratios(&whole, &two))),
            format!("{:.2}x", median(ratios(&whole, &half(&cpu)))),
            format!("**{:+.1} %**", (median(ratios(&one, &whole)) - 1.0) * 100.0),
            format!("**{:.2} %**", median(shares.clone()) * 100.0),
        ],
        runs: format!(
            "{what}, per run (in order): whole {}; CPU {}; segmented on one worker {}; on two \
             workers {} (in the last run the workers ran {split} part tasks).",
            fmt(&whole),
            fmt(&cpu),
            fmt(&one),
            fmt(&two),
        ),
        one: where_one(what, &timelines),
        two: where_two(what, &timelines),
    }
}

/// The median over the runs of `f` of their timelines, in seconds.
fn med(
    timelines: &[(Timeline, Timeline, Timeline)],
    f: impl Fn(&(Timeline, Timeline, Timeline)) -> f64,
) -> String {
    format!("{:.2}", median(timelines.iter().map(f).collect()))
}

/// The row of the whole-file job against the one-worker segmented job.
fn where_one(what: &str, t: &[(Timeline, Timeline, Timeline)]) -> Vec<String> {
    vec![
        what.to_string(),
        med(t, |r| r.0.worker_s),
        med(t, |r| r.0.pipeline_s),
        med(t, |r| r.1.worker_s),
        med(t, |r| r.1.split_s),
        med(t, |r| r.1.parts_s),
        med(t, |r| r.1.between_s),
        med(t, |r| r.1.finish_s),
        med(t, |r| r.1.join_s),
    ]
}

/// The row of the two-worker segmented job: the split, when each worker
/// starts and ends its parts (in the order they started), the finish.
fn where_two(what: &str, t: &[(Timeline, Timeline, Timeline)]) -> Vec<String> {
    // Workers in the order they started parts.
    let nth = |r: &(Timeline, Timeline, Timeline), i: usize| -> (usize, f64, f64) {
        let mut w = r.2.workers.clone();
        w.sort_by(|a, b| a.1.total_cmp(&b.1));
        w.get(i).copied().unwrap_or((0, f64::NAN, f64::NAN))
    };
    vec![
        what.to_string(),
        med(t, |r| r.2.worker_s),
        med(t, |r| r.2.split_s),
        med(t, |r| nth(r, 0).1),
        med(t, |r| nth(r, 1).1),
        med(t, |r| nth(r, 0).2),
        med(t, |r| nth(r, 1).2),
        med(t, |r| (nth(r, 0).2 - nth(r, 1).2).abs()),
        med(t, |r| r.2.finish_s),
        format!(
            "{:.2}x",
            median(
                t.iter()
                    .map(|r| r.2.read_bytes / r.2.input_bytes.max(1.0))
                    .collect()
            )
        ),
    ]
}
