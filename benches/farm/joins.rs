//! Section 7e: the join of a segmented job fetching its parts, on
//! loopback and from storage far away, one part at a time against
//! `storage.download_concurrency` (4, the default) at a time.
//!
//! Section 7's 2-minute 1280x720 MPEG-2 input in segments of 10 s, its
//! video encoded with x264 `ultrafast` (one thread; large parts, so the
//! fetch is worth timing, and a short job), by one worker whose storage
//! is the S3 test server answering every `GetObject` at once, or after
//! [`DELAY_MS`] plus its length at [`MIB_PER_SECOND`] (as section 7c's
//! far storage). The worker logs its join's fetch (`fetched the parts to
//! join`: the parts, their bytes, the most at once, the time); the job's
//! finish (its last part stored -> `completed`: the fetch, the join, the
//! output's verification and upload) comes from section 7's timelines.
//! The two settings take turns going first from run to run.

use super::far::far_farm;
use super::segments::{job, mpeg2_720p, Timeline};
use super::*;

/// What each `GetObject` of the far storage waits before its body.
const DELAY_MS: u64 = 30;
/// The far storage's rate per request.
const MIB_PER_SECOND: f64 = 40.0;
/// The video branch: fast, so the job is short and its parts large.
const VIDEO: &str = "videoconvert ! x264enc speed-preset=ultrafast threads=1";
/// Parts fetched at a time: one, and the default.
const WAYS: [usize; 2] = [1, 4];

/// One join's figures from the worker's log.
struct Fetched {
    parts: u64,
    bytes: u64,
    at_once: u64,
    fetch_s: f64,
    finish_s: f64,
}

/// Runs the job once with `concurrency` parts fetched at a time, on
/// `farm`, and reads its join's figures.
async fn join_once(farm: &Farm, opts: &Opts, key: &str, seg: u32, concurrency: usize) -> Fetched {
    let concurrency = concurrency.to_string();
    let mut env = opts.worker_env();
    env.push(("LOG_FORMAT", "json"));
    env.push(("TRANSCODE_STORAGE__DOWNLOAD_CONCURRENCY", &concurrency));
    let worker = farm.spawn_worker(&env);
    wait_ready(&worker).await;
    let id = common::random_name("join");
    let mut spec = job(&id, key, Some(seg));
    spec["transcode_options"] = json!(VIDEO);
    run_job(farm, spec).await;
    // The job's last line follows its `completed` event.
    let line = common::wait_for_value(JOB_TIMEOUT, "the join's log lines", || async {
        let logs = worker.logs();
        let completed = logs
            .lines()
            .any(|l| l.contains(&id) && l.contains("\"job completed\""));
        let fetched = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "fetched the parts to join" && v["span"]["job_id"] == id);
        fetched.filter(|_| completed)
    })
    .await;
    let n = |f: &str| line[f].as_u64().unwrap_or(0);
    Fetched {
        parts: n("parts"),
        bytes: n("bytes"),
        at_once: n("at_once"),
        fetch_s: n("ms") as f64 / 1e3,
        finish_s: Timeline::of(&[&worker], &id).finish_s,
    }
}

pub(crate) async fn joins(opts: &Opts) -> String {
    eprintln!("bench: joins");
    let (secs, seg) = if opts.smoke { (8, 3) } else { (120, 10) };
    let input = mpeg2_720p(secs);
    let mut rows = Vec::new();
    let mut per_run = Vec::new();
    for (delay_ms, mib_per_second) in [(0, 0.0), (DELAY_MS, MIB_PER_SECOND)] {
        let storage = if delay_ms == 0 {
            "loopback, no wait".to_string()
        } else {
            format!("{delay_ms} ms + {mib_per_second} MiB/s")
        };
        let (_server, farm) = far_farm(&input, "in/join.mov", delay_ms, mib_per_second).await;
        let mut got: BTreeMap<usize, Vec<Fetched>> = BTreeMap::new();
        for run in 0..opts.runs {
            let mut order = WAYS.to_vec();
            order.rotate_left(run % WAYS.len());
            let mut line = Vec::new();
            for concurrency in order {
                eprintln!(
                    "bench: join ({storage}), run {}, {concurrency} at a time",
                    run + 1
                );
                let f = join_once(&farm, opts, "in/join.mov", seg, concurrency).await;
                assert_eq!(f.at_once as usize, concurrency.min(f.parts as usize));
                line.push(format!(
                    "{concurrency} at a time: fetch {:.2} s, finish {:.2} s",
                    f.fetch_s, f.finish_s
                ));
                got.entry(concurrency).or_default().push(f);
            }
            per_run.push(format!("{storage}, run {}: {}", run + 1, line.join(", ")));
        }
        let med = |c: usize, f: &dyn Fn(&Fetched) -> f64| median(got[&c].iter().map(f).collect());
        let one = med(1, &|f| f.fetch_s);
        for c in WAYS {
            let last = got[&c].last().expect("a run");
            rows.push(vec![
                storage.clone(),
                if c == 1 {
                    "one at a time".to_string()
                } else {
                    format!("{c} at a time (the default)")
                },
                last.parts.to_string(),
                format!("{:.1} MiB", last.bytes as f64 / (1 << 20) as f64),
                format!("{:.2} s", med(c, &|f| f.fetch_s)),
                format!("{:.2}x", one / med(c, &|f| f.fetch_s)),
                format!("{:.2} s", med(c, &|f| f.finish_s)),
            ]);
        }
    }
    format!(
        "\n## 7e. The join fetching a segmented job's parts, one at a time and several\n\n{}\n\
         Medians of {} run(s); per run, in the order they ran: {}. One worker, section 7's \
         {secs}-second 1280x720 MPEG-2 input in segments of {seg} s, its video encoded with \
         `{VIDEO}` (large parts, a short job), default AAC audio; the S3 test server \
         answering every `GetObject` at once, or after {DELAY_MS} ms plus its length at \
         {MIB_PER_SECOND} MiB/s (`--get-delay-ms`, `--get-mib-per-second`, as in section \
         7c); `storage.download_concurrency` 1 or 4, the two taking turns going first. \
         Fetch: the join's `fetched the parts to join` log line (every part and the audio \
         part, made local files before the join); finish: the job's last part stored -> \
         `completed` (the fetch, the join, the output's verification and upload), from the \
         worker's log as in section 7.\n",
        table(
            &[
                "storage (each request)",
                "parts fetched",
                "parts",
                "their size",
                "fetch",
                "against one at a time",
                "finish (last part stored -> completed)",
            ],
            &rows,
        ),
        opts.runs,
        per_run.join("; "),
    )
}
