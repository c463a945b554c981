//! Section 7d: what the segment length costs and gains.
//!
//! Section 7's 2-minute 1280x720 H.264 + AAC input and video branch
//! (x264 `medium`, one encoder thread), S3 backend, each job timed from
//! its publish to its `completed` event:
//!
//! - one worker: the whole-file job, then the same job in segments of
//!   each length of [`LENGTHS`], the order rotated from run to run (the
//!   machine's speed drifts over minutes);
//! - two workers: the same job in segments of each length, rotated too.
//!
//! Per length: how many part tasks the job had (the workers' `encoding`
//! lines), the one-worker overhead against the whole-file job of the same
//! run, split into the farm's own steps (split, between parts, finish)
//! and the part pipelines against the whole job's pipeline (section 7's
//! [`Timeline`]), and the two-worker speed-up. A least-squares line
//! through every run's (tasks, overhead) gives what each part adds and
//! what a segmented job costs whatever its number of parts.

use super::segments::{h264_720p, job, Timeline, VIDEO};
use super::*;

/// Segment lengths compared, s.
const LENGTHS: [u32; 4] = [5, 10, 20, 30];

/// One length's figures from one run.
struct Measured {
    /// Segmented on one worker, publish -> `completed`, s.
    one: f64,
    /// Its timeline.
    one_line: Timeline,
    /// Segmented on two workers, s.
    two: f64,
    /// Part tasks each worker ran on two workers.
    two_tasks: Vec<usize>,
}

/// One run: the whole-file job and each length's figures.
struct Run {
    whole: f64,
    whole_line: Timeline,
    lengths: Vec<Measured>,
}

pub(super) async fn lengths(opts: &Opts) -> String {
    eprintln!("bench: lengths");
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let (secs, lengths): (u32, &[u32]) = if opts.smoke {
        (8, &[2, 4])
    } else {
        (120, &LENGTHS)
    };
    let key = "in/lengths.mp4";
    let farm = Farm::s3(&[]).await;
    farm.put_input(key, &h264_720p(secs)).await;
    let mut env = opts.worker_env();
    env.push(("LOG_FORMAT", "json"));
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        let id = common::random_name("len");
        let name = |workers: &str, seg: Option<u32>| match seg {
            None => format!("{id}-whole"),
            Some(s) => format!("{id}-{workers}-{s}"),
        };
        let first = farm.spawn_worker(&env);
        wait_ready(&first).await;
        // One worker: the whole-file job and every length, in turn first.
        let jobs: Vec<Option<u32>> = std::iter::once(None)
            .chain(lengths.iter().copied().map(Some))
            .collect();
        let mut one = BTreeMap::new();
        for i in 0..jobs.len() {
            let seg = jobs[(i + run) % jobs.len()];
            let t = run_job(&farm, job(&name("one", seg), key, seg)).await.0;
            one.insert(seg, t.as_secs_f64());
        }
        let second = farm.spawn_worker(&env);
        wait_ready(&second).await;
        let mut two = BTreeMap::new();
        for i in 0..lengths.len() {
            let seg = lengths[(i + run) % lengths.len()];
            let t = run_job(&farm, job(&name("two", Some(seg)), key, Some(seg)))
                .await
                .0;
            two.insert(seg, t.as_secs_f64());
        }
        // A job's last line follows its `completed` event.
        let ids: Vec<String> = jobs
            .iter()
            .map(|s| name("one", *s))
            .chain(lengths.iter().map(|s| name("two", Some(*s))))
            .collect();
        common::wait_for(JOB_TIMEOUT, "every job's completed log line", || {
            let logs = format!("{}{}", first.logs(), second.logs());
            let done = ids.iter().all(|id| {
                logs.lines()
                    .any(|l| l.contains(id.as_str()) && l.contains("\"job completed\""))
            });
            async move { done }
        })
        .await;
        let measured = lengths
            .iter()
            .map(|s| {
                let two_line = Timeline::of(&[&first, &second], &name("two", Some(*s)));
                Measured {
                    one: one[&Some(*s)],
                    one_line: Timeline::of(&[&first], &name("one", Some(*s))),
                    two: two[s],
                    two_tasks: two_line.workers.iter().map(|w| w.0).collect(),
                }
            })
            .collect::<Vec<_>>();
        let whole_line = Timeline::of(&[&first], &name("one", None));
        eprintln!(
            "bench:   lengths run {}: whole {:.2} s; {}",
            run + 1,
            one[&None],
            lengths
                .iter()
                .zip(&measured)
                .map(|(s, m)| format!(
                    "{s} s: one worker {:.2} s ({} tasks), two {:.2} s ({:?})",
                    m.one,
                    tasks(&m.one_line),
                    m.two,
                    m.two_tasks
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        runs.push(Run {
            whole: one[&None],
            whole_line,
            lengths: measured,
        });
        drop((first, second));
    }
    let load_after = sh("cut -d' ' -f1-3 /proc/loadavg");
    report(opts, secs, lengths, &runs, &load_before, &load_after)
}

/// Run `r`'s figures of the `i`th length.
fn at(r: &Run, i: usize) -> &Measured {
    &r.lengths[i]
}

/// The part tasks of a one-worker job.
fn tasks(t: &Timeline) -> usize {
    t.workers.iter().map(|w| w.0).sum()
}

/// The section's text from the runs' figures.
fn report(
    opts: &Opts,
    secs: u32,
    lengths: &[u32],
    runs: &[Run],
    load_before: &str,
    load_after: &str,
) -> String {
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let whole = med(&|r| r.whole);
    let mut rows = vec![vec![
        "whole file (no segments)".to_string(),
        "1".into(),
        format!("{whole:.2} s"),
        "".into(),
        format!(
            "{:.2} s",
            med(&|r| r.whole_line.worker_s - r.whole_line.pipeline_s)
        ),
        format!("{:.2} s", med(&|r| r.whole_line.pipeline_s)),
        "".into(),
        "".into(),
        "".into(),
    ]];
    for (i, s) in lengths.iter().enumerate() {
        let steps = |t: &Timeline| t.split_s + t.between_s + t.finish_s;
        let last = at(runs.last().expect("a run"), i);
        rows.push(vec![
            format!("{s} s"),
            format!("{:.0}", med(&|r| tasks(&at(r, i).one_line) as f64)),
            format!("{:.2} s", med(&|r| at(r, i).one)),
            format!(
                "**{:+.1} %**",
                (med(&|r| at(r, i).one / r.whole) - 1.0) * 100.0
            ),
            format!("{:.2} s", med(&|r| steps(&at(r, i).one_line))),
            format!("{:.2} s", med(&|r| at(r, i).one_line.parts_s)),
            format!("{:.2} s", med(&|r| at(r, i).two)),
            format!("**{:.2}x**", med(&|r| r.whole / at(r, i).two)),
            last.two_tasks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        ]);
    }
    let t = table(
        &[
            &format!("segments of ({secs} s 1280x720 H.264 + AAC)"),
            "part tasks",
            "1 worker",
            "overhead on 1 worker (against the whole file)",
            "1 worker: the farm's own steps (whole: fetch, verify, upload; segmented: split, between parts, finish)",
            "1 worker: pipelines (whole: its pipeline, the probe included; segmented: the part tasks' pipelines)",
            "2 workers",
            "speed-up (whole on 1 / segmented on 2)",
            "tasks per worker on 2 (last run)",
        ],
        &rows,
    );
    // What each part adds: a least-squares line through every run's
    // (part tasks, one-worker overhead in seconds).
    let points: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|r| {
            r.lengths
                .iter()
                .map(move |m| (tasks(&m.one_line) as f64, m.one - r.whole))
        })
        .collect();
    let line = fit(&points);
    let per_run = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "run {}: whole {:.2}, {}",
                i + 1,
                r.whole,
                lengths
                    .iter()
                    .zip(&r.lengths)
                    .map(|(s, m)| format!("{s} s {:.2} / {:.2}", m.one, m.two))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let fitted = match line {
        Some((fixed, per_part)) => format!(
            "A least-squares line through the {} one-worker runs' overhead (seconds) against \
             their part tasks: {:.3} s a part and {:.2} s a job whatever its number of parts \
             (every cause together, decoding before cuts off key frames and the runs' spread \
             included).",
            points.len(),
            per_part,
            fixed
        ),
        None => "Too few points for a line through the overhead against the part tasks.".into(),
    };
    format!(
        "\n## 7d. Segment length: what each part costs\n\n{t}\n\
         Medians of {runs} run(s); per run (s, one worker / two workers): {per_run}. Section \
         7's input and video branch (`{VIDEO}`), default AAC audio, S3 backend on loopback, \
         `transcode-worker run` with default settings, each job timed from publish to its \
         `completed` event. In each run one worker runs the whole-file job and the job in \
         segments of each length, in an order rotated from run to run; then a second worker \
         starts and both run the job at each length, rotated too. Overhead and speed-up are \
         the medians of each run's own ratios against that run's whole-file job. The farm's \
         own steps and the pipelines are from the worker's JSON log (section 7's \
         timelines): for the whole-file job, its pipeline and the rest of its time; for a \
         segmented job, the part tasks' pipelines summed, and the split, the time between \
         parts and the finish (join, verify, upload). {fitted} Load average (1, 5, 15 min) \
         before / after the section: {load_before} / {load_after}.\n",
        runs = opts.runs,
    )
}

/// The least-squares line `y = a + b x` through `points`: `(a, b)`, or
/// `None` when the x values do not differ.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| {
        let b = sxy / sxx;
        (my - b * mx, b)
    })
}
