//! `transcode-worker watch`: live progress of the farm's jobs for people,
//! through a [`Follower`] (so it sees every event from the moment it
//! starts and never takes one from the durable `transcoding_progress`
//! queue).
//!
//! On a terminal it draws one bar per running job (phase, percentage,
//! speed, ETA, worker); with `--json` it prints every event as a JSON
//! line, and otherwise (output not a terminal) one plain line per phase
//! change and per 10 %. A job that ends prints a final line: completed, or
//! failed with the reason (and whether it will be retried).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerSettings;
use crate::follow::{Follower, Seen};
use crate::job::{Ending, Phase, Progress};
use crate::terminal::{job_bar, print_above};

/// What to watch and how to show it.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Print every event as a JSON line.
    pub json: bool,
    /// Only these jobs, and stop once each has ended; all jobs when empty.
    pub jobs: Vec<String>,
    /// Stop after this long.
    pub timeout: Option<Duration>,
}

/// Where lines go: above the bars on a terminal, else plain stdout.
struct Out {
    multi: Option<MultiProgress>,
}

impl Out {
    fn line(&self, text: &str) {
        print_above(self.multi.as_ref(), text);
    }
}

/// One job being shown.
struct View {
    bar: Option<ProgressBar>,
    shown: Option<(Phase, u32, u32)>,
    last_event: Instant,
    worker: String,
}

/// `watch`: follows progress events until `cancel` fires, the timeout
/// passes, the connection is lost, or (with jobs named) every job named
/// has ended. 0 when every job seen (or named) completed, 1 otherwise.
pub async fn watch(
    settings: &BrokerSettings,
    options: &WatchOptions,
    cancel: &CancellationToken,
) -> ExitCode {
    let mut follower = match Follower::open(settings, "transcode-worker watch").await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if options.jobs.is_empty() {
        follower.expect_every_job();
    }
    for job in &options.jobs {
        follower.expect(job);
    }
    let bars = !options.json && std::io::stdout().is_terminal();
    let out = Out {
        multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
    };
    eprintln!(
        "watching progress events on {} (Ctrl-C to stop)",
        settings.progress_exchange
    );
    let mut views: HashMap<String, View> = HashMap::new();
    let end = follower
        .follow(options.timeout, cancel, |seen| match seen {
            Seen::Event(event, raw) => {
                if options.json {
                    out.line(String::from_utf8_lossy(raw).trim());
                }
                show(&out, &mut views, event, options.json);
            }
            Seen::Tick => {
                for view in views.values() {
                    let silent = view.last_event.elapsed();
                    if let Some(bar) = &view.bar {
                        if silent >= Duration::from_secs(10) {
                            bar.set_message(format!(
                                "no news for {} s ({})",
                                silent.as_secs(),
                                view.worker
                            ));
                        }
                    }
                }
            }
        })
        .await;
    for view in views.values() {
        if let Some(bar) = &view.bar {
            bar.finish_and_clear();
        }
    }
    follower.close().await;
    if let Some(why) = &end.stopped {
        eprintln!("watch: {why}");
    }
    if !end.unfinished.is_empty() {
        eprintln!("watch: not finished: {}", end.unfinished.join(", "));
    }
    if end.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A short speed text: `1.8x` while transcoding, `12.5 MiB/s` while moving bytes.
fn speed_text(event: &Progress) -> Option<String> {
    event.speed.map(|s| format!("{s:.1}x")).or_else(|| {
        event
            .bytes_per_sec
            .map(|b| format!("{}/s", indicatif::HumanBytes(b as u64)))
    })
}

fn eta_text(event: &Progress) -> Option<String> {
    event.eta_secs.map(|s| {
        format!(
            "ETA {}",
            humantime::format_duration(Duration::from_secs(s.round() as u64))
        )
    })
}

/// The final line of a job that ended with `event`, or the line of an
/// attempt that failed and will be retried.
pub fn final_line(event: &Progress) -> String {
    match event.state {
        Phase::Completed => format!(
            "completed {} on {} (attempt {}){}{}",
            event.job_id,
            event.worker,
            event.attempt,
            event
                .output_key
                .as_deref()
                .map(|k| format!(" -> {k}"))
                .unwrap_or_default(),
            event
                .ran_whole
                .as_deref()
                .map(|why| format!(" (not in segments: {why})"))
                .unwrap_or_default()
        ),
        Phase::Cancelled => format!(
            "cancelled {} on {} (attempt {}): {}",
            event.job_id,
            event.worker,
            event.attempt,
            event.error.as_deref().unwrap_or("cancelled on request")
        ),
        _ => {
            let kind = event
                .error_kind
                .map(|k| k.as_str().to_string())
                .unwrap_or_else(|| "failed".into());
            let error = event.error.as_deref().unwrap_or("no reason given");
            if event.will_retry == Some(true) {
                format!(
                    "retrying {}: attempt {} on {} failed ({kind}): {error}",
                    event.job_id, event.attempt, event.worker
                )
            } else {
                format!(
                    "failed {} on {} (attempt {}): {kind}: {error}",
                    event.job_id, event.worker, event.attempt
                )
            }
        }
    }
}

/// Which part of a segmented job an event is about: `segment 3 of 12`
/// (counted from 0, as events count them), `audio part`.
fn part_text(event: &Progress) -> Option<String> {
    match (event.segment, event.segments, event.part.as_deref()) {
        (Some(i), Some(n), _) => Some(format!("segment {i} of {n}")),
        (None, _, Some("audio")) => Some("audio part".into()),
        (None, _, Some(part)) => Some(part.to_string()),
        _ => None,
    }
}

/// A plain progress line, e.g. `job1 transcoding 47% 1.8x ETA 6s on host-a:4242 (attempt 1)`,
/// or for a part of a segmented job `job1 transcoding 47% segment 3 of 12 ... on host-a:4242 (attempt 1)`.
pub fn progress_line(event: &Progress) -> String {
    let mut parts = vec![
        event.job_id.clone(),
        event.state.to_string(),
        format!("{:.0}%", event.progress),
    ];
    parts.extend(part_text(event));
    parts.extend(speed_text(event));
    parts.extend(eta_text(event));
    parts.push(format!("on {} (attempt {})", event.worker, event.attempt));
    parts.join(" ")
}

/// Shows `event`; `Some(completed)` when its job ended with it.
fn show(
    out: &Out,
    views: &mut HashMap<String, View>,
    event: &Progress,
    json: bool,
) -> Option<bool> {
    let view = views.entry(event.job_id.clone()).or_insert_with(|| View {
        bar: out
            .multi
            .as_ref()
            .map(|multi| multi.add(job_bar(&event.job_id, 1000))),
        shown: None,
        last_event: Instant::now(),
        worker: event.worker.clone(),
    });
    view.last_event = Instant::now();
    view.worker = event.worker.clone();
    if let Some(ending) = event.ending() {
        if let Some(view) = views.remove(&event.job_id) {
            if let Some(bar) = view.bar {
                bar.finish_and_clear();
            }
        }
        if !json {
            out.line(&final_line(event));
        }
        return Some(ending == Ending::Completed);
    }
    if event.state == Phase::Failed {
        // Failed, will be retried: say so, keep the bar for the next attempt.
        view.shown = None;
        if let Some(bar) = &view.bar {
            bar.set_position(0);
        }
        if !json {
            out.line(&final_line(event));
        }
        return None;
    }
    match &view.bar {
        Some(bar) => {
            // The highest: the parts of a segmented job report from
            // several workers at once.
            let position = (event.progress.clamp(0.0, 100.0) * 10.0) as u64;
            bar.set_position(position.max(bar.position()));
            let mut parts = vec![format!("{:>5.1}%", event.progress), event.state.to_string()];
            parts.extend(part_text(event));
            parts.extend(speed_text(event));
            parts.extend(eta_text(event));
            parts.push(format!("on {}", event.worker));
            if event.attempt > 1 {
                parts.push(format!("(attempt {})", event.attempt));
            }
            bar.set_message(parts.join(" "));
        }
        None if !json => {
            let decile = (event.progress / 10.0) as u32;
            let key = (event.state, event.attempt, decile);
            if view.shown != Some(key) {
                view.shown = Some(key);
                out.line(&progress_line(event));
            }
        }
        None => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn event(state: Phase, progress: f64) -> Progress {
        serde_json::from_value(serde_json::json!({
            "job_id": "job1", "progress": progress, "state": state, "worker": "host-a:1",
            "attempt": 1, "timestamp": "2026-11-24T02:20:55Z",
        }))
        .unwrap()
    }

    #[test]
    fn lines_say_phase_speed_eta_and_outcome() {
        let mut e = event(Phase::Transcoding, 47.5);
        e.speed = Some(1.84);
        e.eta_secs = Some(6.2);
        assert_eq!(
            progress_line(&e),
            "job1 transcoding 48% 1.8x ETA 6s on host-a:1 (attempt 1)"
        );
        e.segment = Some(3);
        e.segments = Some(12);
        e.part = Some("v0003".into());
        assert_eq!(
            progress_line(&e),
            "job1 transcoding 48% segment 3 of 12 1.8x ETA 6s on host-a:1 (attempt 1)"
        );
        e.segment = None;
        e.part = Some("audio".into());
        assert!(
            progress_line(&e).contains(" 48% audio part "),
            "{}",
            progress_line(&e)
        );
        let mut done = event(Phase::Completed, 100.0);
        done.output_key = Some("out/a.mp4".into());
        assert_eq!(
            final_line(&done),
            "completed job1 on host-a:1 (attempt 1) -> out/a.mp4"
        );
        done.ran_whole = Some("the input (3.0 s) is too short for two segments of 2 s".into());
        assert_eq!(
            final_line(&done),
            "completed job1 on host-a:1 (attempt 1) -> out/a.mp4 (not in segments: the input (3.0 s) is too short for two segments of 2 s)"
        );
        let mut failed = event(Phase::Failed, 0.0);
        failed.error = Some("there is no input".into());
        failed.error_kind = Some(ErrorKind::InputNotFound);
        failed.will_retry = Some(false);
        assert_eq!(
            final_line(&failed),
            "failed job1 on host-a:1 (attempt 1): input_not_found: there is no input"
        );
    }

    #[test]
    fn plain_output_ends_a_job_once_and_keeps_retried_ones() {
        let out = Out { multi: None };
        let mut views = HashMap::new();
        assert_eq!(
            show(&out, &mut views, &event(Phase::Downloading, 1.0), false),
            None
        );
        let mut retry = event(Phase::Failed, 3.0);
        retry.will_retry = Some(true);
        assert_eq!(show(&out, &mut views, &retry, false), None);
        assert!(views.contains_key("job1"));
        assert_eq!(
            show(&out, &mut views, &event(Phase::Completed, 100.0), false),
            Some(true)
        );
        assert!(views.is_empty());
    }
}
