//! Section 7: one long input encoded in segments by two workers, against
//! the same encode by one worker, whole and segmented.
//!
//! Two 2-minute 1280x720 inputs (testsrc2: moving, so the encoder works):
//! H.264 + AAC in MP4 (a common camera or upload file), and MPEG-2 + PCM
//! in MOV (as XDCAM cameras and MPEG-2 captures of tapes are), whose
//! decoder costs a third of H.264's. The video branch is the `h264-mp4`
//! preset's x264 (`medium`, constant quality 23) with one encoder thread
//! (`threads=1`), the audio the default AAC. S3 backend, each job timed
//! from its publish to its `completed` event:
//!
//! - whole: one worker, the job without `segment_seconds`;
//! - segmented, one worker: the same job in segments of 10 s;
//! - segmented, two workers: the same, with a second worker started.
//!
//! Beside the times: the CPU time (user + system) of the worker and its
//! pipeline processes during the whole-file job, from `/proc`, and what
//! two cores allow at best for that work: the whole-file time against
//! half its CPU time. The join's share is its time (`join_ms` of the
//! worker's "joined and verified" line) against the parts' encode time
//! (the sum of the `encode_ms` of their "part stored" lines), from the
//! one-worker run.

use super::*;

/// The video branch: the `h264-mp4` preset's encoder, one encoder thread.
const VIDEO: &str = "videoconvert ! x264enc pass=qual quantizer=23 speed-preset=medium threads=1";

/// The 1280x720 H.264 + AAC input of `secs` seconds.
fn h264_720p(secs: u32) -> PathBuf {
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
fn mpeg2_720p(secs: u32) -> PathBuf {
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
fn tree_cpu_s(pid: i32) -> f64 {
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
fn job(id: &str, key: &str, segment_seconds: Option<u32>) -> serde_json::Value {
    let mut job = json!({"job_id": id, "input_key": key,
        "output_key": format!("out/{id}.mp4"), "transcode_options": VIDEO});
    if let Some(s) = segment_seconds {
        job["segment_seconds"] = json!(s);
    }
    job
}

/// From the JSON logs of `workers`: the join's ms and the sum of the parts'
/// encode ms of job `id`, and how many parts each worker stored.
fn join_and_encode(workers: &[&WorkerProc], id: &str) -> (f64, f64, Vec<usize>) {
    let (mut join, mut encode, mut parts) = (0.0, 0.0, Vec::new());
    for worker in workers {
        let mut stored = 0;
        for line in worker.logs().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["span"]["job_id"] != id {
                continue;
            }
            if v["message"] == "part stored" {
                encode += v["encode_ms"].as_f64().unwrap_or(0.0);
                stored += 1;
            } else if v["message"] == "joined and verified" {
                join += v["join_ms"].as_f64().unwrap_or(0.0);
            }
        }
        parts.push(stored);
    }
    (join, encode, parts)
}

/// One input's row of the table, and its sentence of per-run figures.
struct Row {
    cells: Vec<String>,
    runs: String,
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
    format!(
        "\n## 7. Segmented jobs: one input, two workers\n\n{t}\n\
         Medians of {runs} run(s). {per_run} Video branch `{VIDEO}` (the `h264-mp4` preset's \
         encoder with one encoder thread per worker), default AAC audio; `transcode-worker run` \
         with default settings, S3 backend on loopback. Each time is from publish to the \
         `completed` event. The two-worker run starts the second worker after the one-worker \
         runs. Speed-up, bound and overhead are the medians of the runs' own ratios (the \
         whole-file job of the same run as denominator or numerator). CPU: user + system time of the worker and its pipeline processes during the \
         whole-file job (`/proc`); no split of that work over two cores can take less than half \
         of it, so whole / (CPU / 2) is the most two workers can gain on this machine. The \
         join's share is its time against the parts' encode time in the one-worker run. Load \
         average (1, 5, 15 min) before / after the section: {load_before} / {load_after}. \
         Targets: speed-up >= 1.8x, overhead <= 5 %, join <= 2 % of the encode.\n",
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
    for run in 0..opts.runs {
        let first = farm.spawn_worker(&env);
        wait_ready(&first).await;
        let id = common::random_name("seg");
        let cpu_before = tree_cpu_s(first.pid());
        let w = run_job(farm, job(&format!("{id}-whole"), key, None))
            .await
            .0
            .as_secs_f64();
        let c = tree_cpu_s(first.pid()) - cpu_before;
        let s1 = run_job(farm, job(&format!("{id}-one"), key, Some(seg)))
            .await
            .0
            .as_secs_f64();
        let (join_ms, encode_ms, _) = join_and_encode(&[&first], &format!("{id}-one"));
        let second = farm.spawn_worker(&env);
        wait_ready(&second).await;
        let s2 = run_job(farm, job(&format!("{id}-two"), key, Some(seg)))
            .await
            .0
            .as_secs_f64();
        let (_, _, parts) = join_and_encode(&[&first, &second], &format!("{id}-two"));
        split = format!("{} and {}", parts[0], parts[1]);
        eprintln!(
            "bench:   {what} run {}: whole {w:.2} s ({c:.1} s CPU), segmented on one worker \
             {s1:.2} s, on two {s2:.2} s (parts {split}), join {join_ms:.0} ms of {encode_ms:.0} \
             ms encoding",
            run + 1
        );
        whole.push(w);
        one.push(s1);
        two.push(s2);
        cpu.push(c);
        shares.push(join_ms / encode_ms.max(1.0));
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
             workers {} (in the last run the workers stored {split} parts).",
            fmt(&whole),
            fmt(&cpu),
            fmt(&one),
            fmt(&two),
        ),
    }
}
