//! Section 7: one long input encoded in segments by two workers, against
//! the same encode by one worker, whole and segmented.
//!
//! The input is a 2-minute 1280x720 H.264 + AAC file (testsrc2: moving,
//! so the encoder works); the video branch is x264 `veryfast` with one
//! encoder thread (`threads=1`), the audio the default AAC. S3 backend,
//! each job timed from its publish to its `completed` event:
//!
//! - whole: one worker, the job without `segment_seconds`;
//! - segmented, one worker: the same job in segments of 10 s;
//! - segmented, two workers: the same, with a second worker started.
//!
//! The join's share is its time (`join_ms` of the worker's "joined and
//! verified" line) against the parts' encode time (the sum of the
//! `encode_ms` of their "part stored" lines), from the one-worker run.

use super::*;

/// The video branch: one encoder thread.
const VIDEO: &str = "videoconvert ! x264enc speed-preset=veryfast threads=1";

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

/// The job `id` on the input, in segments of `segment_seconds` if given.
fn job(id: &str, segment_seconds: Option<u32>) -> serde_json::Value {
    let mut job = json!({"job_id": id, "input_key": "in/long.mp4",
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

pub(super) async fn segments(opts: &Opts) -> String {
    eprintln!("bench: segments");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let (secs, seg) = if opts.smoke { (8, 3) } else { (120, 10) };
    let input = h264_720p(secs);
    let farm = Farm::s3(&[]).await;
    farm.put_input("in/long.mp4", &input).await;
    let mut env = opts.worker_env();
    env.push(("LOG_FORMAT", "json"));
    let (mut whole, mut one, mut two, mut shares) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut split = String::new();
    for run in 0..opts.runs {
        let first = farm.spawn_worker(&env);
        wait_ready(&first).await;
        let id = common::random_name("seg");
        let w = run_job(&farm, job(&format!("{id}-whole"), None))
            .await
            .0
            .as_secs_f64();
        let s1 = run_job(&farm, job(&format!("{id}-one"), Some(seg)))
            .await
            .0
            .as_secs_f64();
        let (join_ms, encode_ms, _) = join_and_encode(&[&first], &format!("{id}-one"));
        let second = farm.spawn_worker(&env);
        wait_ready(&second).await;
        let s2 = run_job(&farm, job(&format!("{id}-two"), Some(seg)))
            .await
            .0
            .as_secs_f64();
        let (_, _, parts) = join_and_encode(&[&first, &second], &format!("{id}-two"));
        split = format!("{} and {}", parts[0], parts[1]);
        eprintln!(
            "bench:   run {}: whole {w:.2} s, segmented on one worker {s1:.2} s, on two {s2:.2} s \
             (parts {split}), join {join_ms:.0} ms of {encode_ms:.0} ms encoding",
            run + 1
        );
        whole.push(w);
        one.push(s1);
        two.push(s2);
        shares.push(join_ms / encode_ms.max(1.0));
        drop((first, second));
    }
    let load_after = sh("cut -d' ' -f1-3 /proc/loadavg");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (w, s1, s2) = (
        median(whole.clone()),
        median(one.clone()),
        median(two.clone()),
    );
    let t = table(
        &[
            "input",
            "runs",
            "whole, 1 worker",
            "segmented, 1 worker",
            "segmented, 2 workers",
            "speed-up (whole 1 / segmented 2)",
            "segmenting overhead (1 worker)",
            "join / encode",
        ],
        &[vec![
            format!("{secs} s 1280x720 H.264+AAC MP4, segments of {seg} s"),
            opts.runs.to_string(),
            format!("{w:.2} s"),
            format!("{s1:.2} s"),
            format!("{s2:.2} s"),
            format!("**{:.2}x**", w / s2),
            format!("**{:+.1} %**", (s1 / w - 1.0) * 100.0),
            format!("**{:.2} %**", median(shares.clone()) * 100.0),
        ]],
    );
    format!(
        "\n## 7. Segmented jobs: one input, two workers\n\n{t}\n\
         Medians of {runs} run(s); per run (in order): whole {whole}; segmented on one worker {one}; \
         on two workers {two}. Video branch `{VIDEO}` (one encoder thread per worker), default AAC \
         audio; `transcode-worker run` with default settings, S3 backend on loopback. Each time is \
         from publish to the `completed` event. The two-worker run starts the second worker after \
         the one-worker runs; in the last run the workers stored {split} parts. The join's share is \
         its time against the parts' encode time in the one-worker run. Load average (1, 5, 15 min) \
         before / after the section: {load_before} / {load_after}. Targets: speed-up >= 1.8x, \
         overhead <= 5 %, join <= 2 % of the encode.\n",
        runs = opts.runs,
        whole = fmt(&whole),
        one = fmt(&one),
        two = fmt(&two),
    )
}
