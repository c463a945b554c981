//! Section 5: a ladder of renditions from one decode against the same
//! renditions made by separate jobs.
//!
//! The input is what a ladder is usually made of, an upload in 1080p
//! H.264 + AAC; the renditions are the presets `h264-720p`, `h264-480p`
//! and `h264-360p`. One worker, S3 backend, each job timed from its
//! publish to its `completed` event; the three separate jobs run one after
//! the other and their times are summed. The two orders alternate from run
//! to run.

use super::*;

/// The presets of the ladder.
const RUNGS: [&str; 3] = ["h264-720p", "h264-480p", "h264-360p"];

/// The 1080p H.264 + AAC input of `secs` seconds.
fn h264_1080p(secs: u32) -> PathBuf {
    ffmpeg_input(
        &format!("h264-{secs}s-1920x1080.mp4"),
        &lavfi(
            secs,
            "1920x1080",
            "-c:v libx264 -preset fast -crf 20 -pix_fmt yuv420p",
            "-c:a aac -b:a 128k -f mp4",
        ),
    )
}

pub(super) async fn renditions(opts: &Opts) -> String {
    eprintln!("bench: renditions");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let secs = if opts.smoke { 2 } else { 20 };
    let input = h264_1080p(secs);
    let farm = Farm::s3(&[]).await;
    let worker = farm.spawn_worker(&[]);
    wait_ready(&worker).await;
    farm.put_input("in/ladder.mp4", &input).await;
    let warm = wmv(1, "64x64");
    farm.put_input("warm.wmv", &warm).await;
    run_job(
        &farm,
        json!({"job_id": "warm-renditions", "input_key": "warm.wmv", "output_key": "out/warm.mp4"}),
    )
    .await;
    let (mut ladder, mut separate, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..opts.runs {
        let mut one = 0.0;
        let mut three = 0.0;
        for which in [run % 2, (run + 1) % 2] {
            let id = common::random_name("rend");
            if which == 0 {
                let outputs: Vec<serde_json::Value> = RUNGS
                    .iter()
                    .map(|p| json!({"output_key": format!("out/{id}/{p}.mp4"), "preset": p}))
                    .collect();
                let job = json!({"job_id": id, "input_key": "in/ladder.mp4", "outputs": outputs});
                one = run_job(&farm, job).await.0.as_secs_f64();
            } else {
                three = 0.0;
                for p in RUNGS {
                    let job = json!({"job_id": format!("{id}-{p}"), "input_key": "in/ladder.mp4",
                        "output_key": format!("out/{id}/{p}.mp4"), "preset": p});
                    three += run_job(&farm, job).await.0.as_secs_f64();
                }
            }
        }
        eprintln!(
            "bench:   run {}: ladder {one:.2} s, three jobs {three:.2} s, ratio {:.3}",
            run + 1,
            one / three
        );
        ladder.push(one);
        separate.push(three);
        ratios.push(one / three);
    }
    drop(worker);
    // For comparison: the decode alone, as the worker's pipeline decodes.
    let decode: Vec<f64> = (0..opts.runs)
        .map(|_| {
            time_cmd(&mut gst_launch_raw(&format!(
                "filesrc location={} ! decodebin name=d d. ! queue ! fakesink d. ! queue ! fakesink",
                input.display()
            )))
            .wall
            .as_secs_f64()
        })
        .collect();
    let load_after = sh("cut -d' ' -f1-3 /proc/loadavg");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (l, s) = (median(ladder.clone()), median(separate.clone()));
    let t = table(
        &[
            "input",
            "runs",
            "ladder job (one decode)",
            "three jobs, summed",
            "ladder / three jobs",
            "decode alone (gst-launch-1.0)",
        ],
        &[vec![
            format!("{secs} s 1920x1080 H.264+AAC MP4"),
            opts.runs.to_string(),
            format!("{l:.2} s"),
            format!("{s:.2} s"),
            format!("**{:.3}**", median(ratios.clone())),
            format!("{:.2} s", median(decode.clone())),
        ]],
    );
    format!(
        "\n## 5. Renditions: a ladder from one decode against separate jobs\n\n{t}\n\
         Medians of {runs} run(s); per run (in order): ladder {ladder}; three jobs {three}; ratio {ratios}. \
         One `transcode-worker run` (default settings), S3 backend on loopback, after a warm-up job. \
         The ladder job lists three `outputs` with the presets {rungs} (720, 480 and 360 lines); the \
         separate jobs are one job per preset, run one after the other; each time is from publish to \
         the `completed` event; the two orders alternate. Load average (1, 5, 15 min) before / after \
         the section: {load_before} / {load_after}. Target: ladder / three jobs <= 0.9.\n",
        runs = opts.runs,
        ladder = fmt(&ladder),
        three = fmt(&separate),
        ratios = fmt(&ratios),
        rungs = RUNGS.map(|r| format!("`{r}`")).join(", "),
    )
}
