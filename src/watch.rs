//! `transcode-worker watch`: live progress of the farm's jobs for people.
//!
//! It reads the progress events through its own server-named, exclusive,
//! auto-delete queue bound to the progress exchange, so it sees every event
//! from the moment it starts and never takes one from the durable
//! `transcoding_progress` queue (the broker deletes its queue when it
//! exits). On a terminal it draws one bar per running job (phase,
//! percentage, speed, ETA, worker); with `--json` it prints every event as
//! a JSON line, and otherwise (output not a terminal) one plain line per
//! phase change and per 10 %. A job that ends prints a final line:
//! completed, or failed with the reason (and whether it will be retried).

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::broker::declare_fanout;
use crate::broker::private_queue;
use crate::config::BrokerSettings;
use crate::control::{observer_connection, ObserverError};
use crate::job::{Progress, State};

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

/// How watching ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchEnd {
    /// Jobs seen completing.
    pub completed: usize,
    /// Jobs seen failing for good.
    pub failed: usize,
    /// Jobs asked for with `--job` that had not ended.
    pub unfinished: Vec<String>,
    /// Why it stopped before every job asked for ended, if it did.
    pub stopped: Option<String>,
}

impl WatchEnd {
    /// Whether every job asked for completed (always true without `--job`
    /// unless the connection was lost).
    pub fn success(&self) -> bool {
        self.failed == 0 && self.unfinished.is_empty() && self.stopped.is_none()
    }
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

/// Prints `text` as a line on standard output, above the bars of `multi`
/// when there are bars (they are redrawn below it).
pub fn print_above(multi: Option<&MultiProgress>, text: &str) {
    let print = || {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    };
    match multi {
        Some(multi) => multi.suspend(print),
        None => print(),
    }
}

/// One job being shown.
struct View {
    bar: Option<ProgressBar>,
    shown: Option<(State, u32, u32)>,
    last_event: Instant,
    worker: String,
}

/// Watches progress events until `cancel` fires, `timeout` passes, the
/// connection is lost, or (with `jobs`) every job asked for has ended.
pub async fn watch(
    settings: &BrokerSettings,
    options: &WatchOptions,
    cancel: &CancellationToken,
) -> Result<WatchEnd, ObserverError> {
    let url = crate::config::redact_url(&settings.url);
    let fail = |e: lapin::Error| ObserverError {
        url: url.clone(),
        detail: e.to_string(),
    };
    let connection = observer_connection(settings, "transcode-worker watch").await?;
    let channel = connection.create_channel().await.map_err(fail)?;
    declare_fanout(&channel, &settings.progress_exchange)
        .await
        .map_err(fail)?;
    let tag = format!("watch-{}", std::process::id());
    let (_queue, mut events) = private_queue(&channel, Some(&settings.progress_exchange), &tag)
        .await
        .map_err(fail)?;
    let bars = !options.json && std::io::stdout().is_terminal();
    let out = Out {
        multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
    };
    eprintln!(
        "watching progress events on {} (Ctrl-C to stop)",
        settings.progress_exchange
    );
    let wanted: BTreeSet<String> = options.jobs.iter().cloned().collect();
    let mut open = wanted.clone();
    let mut views: HashMap<String, View> = HashMap::new();
    let mut end = WatchEnd::default();
    let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if !wanted.is_empty() && open.is_empty() {
            break;
        }
        let timed_out = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            delivery = events.next() => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        end.stopped = Some(format!("lost the progress events: {e}"));
                        break;
                    }
                    None => {
                        end.stopped = Some("the broker cancelled the progress consumer".into());
                        break;
                    }
                };
                let Ok(event) = serde_json::from_slice::<Progress>(&delivery.data) else {
                    continue;
                };
                if !wanted.is_empty() && !wanted.contains(&event.job_id) {
                    continue;
                }
                if options.json {
                    out.line(String::from_utf8_lossy(&delivery.data).trim());
                }
                let ended = show(&out, &mut views, &event, options.json);
                match ended {
                    Some(true) => end.completed += 1,
                    Some(false) => end.failed += 1,
                    None => {}
                }
                if ended.is_some() {
                    open.remove(&event.job_id);
                }
            }
            _ = tick.tick() => {
                for view in views.values() {
                    let silent = view.last_event.elapsed();
                    if let Some(bar) = &view.bar {
                        if silent >= Duration::from_secs(10) {
                            bar.set_message(format!("no news for {} s ({})", silent.as_secs(), view.worker));
                        }
                    }
                }
            }
            _ = timed_out => {
                if !wanted.is_empty() {
                    end.stopped = Some(format!(
                        "gave up after {}",
                        humantime::format_duration(options.timeout.unwrap_or_default())
                    ));
                }
                break;
            }
            _ = cancel.cancelled() => {
                if !wanted.is_empty() {
                    end.stopped = Some("interrupted".into());
                }
                break;
            }
        }
    }
    for view in views.values() {
        if let Some(bar) = &view.bar {
            bar.finish_and_clear();
        }
    }
    end.unfinished = open.into_iter().collect();
    let _ = connection.close(200, "done".into()).await;
    Ok(end)
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

fn state_word(state: State) -> &'static str {
    match state {
        State::Downloading => "downloading",
        State::Transcoding => "transcoding",
        State::Uploading => "uploading",
        State::Completed => "completed",
        State::Failed => "failed",
    }
}

/// The final line of a job that ended with `event`, or the line of an
/// attempt that failed and will be retried.
pub fn final_line(event: &Progress) -> String {
    match event.state {
        State::Completed => format!(
            "completed {} on {} (attempt {}){}",
            event.job_id,
            event.worker,
            event.attempt,
            event
                .output_key
                .as_deref()
                .map(|k| format!(" -> {k}"))
                .unwrap_or_default()
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

/// A plain progress line, e.g. `job1 transcoding 47% 1.8x ETA 6s on host-a:4242 (attempt 1)`.
pub fn progress_line(event: &Progress) -> String {
    let mut parts = vec![
        event.job_id.clone(),
        state_word(event.state).to_string(),
        format!("{:.0}%", event.progress),
    ];
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
        bar: out.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(1000));
            bar.set_style(
                ProgressStyle::with_template("{prefix:36!} [{bar:30.green/blue}] {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(event.job_id.clone());
            bar
        }),
        shown: None,
        last_event: Instant::now(),
        worker: event.worker.clone(),
    });
    view.last_event = Instant::now();
    view.worker = event.worker.clone();
    let finished = event.state == State::Completed
        || (event.state == State::Failed && event.will_retry != Some(true));
    if finished {
        if let Some(view) = views.remove(&event.job_id) {
            if let Some(bar) = view.bar {
                bar.finish_and_clear();
            }
        }
        if !json {
            out.line(&final_line(event));
        }
        return Some(event.state == State::Completed);
    }
    if event.state == State::Failed {
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
            bar.set_position((event.progress.clamp(0.0, 100.0) * 10.0) as u64);
            let mut parts = vec![
                format!("{:>5.1}%", event.progress),
                state_word(event.state).to_string(),
            ];
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

    fn event(state: State, progress: f64) -> Progress {
        serde_json::from_value(serde_json::json!({
            "job_id": "job1", "progress": progress, "state": state, "worker": "host-a:1",
            "attempt": 1, "timestamp": "2026-11-24T02:20:55Z",
        }))
        .unwrap()
    }

    #[test]
    fn lines_say_phase_speed_eta_and_outcome() {
        let mut e = event(State::Transcoding, 47.5);
        e.speed = Some(1.84);
        e.eta_secs = Some(6.2);
        assert_eq!(
            progress_line(&e),
            "job1 transcoding 48% 1.8x ETA 6s on host-a:1 (attempt 1)"
        );
        let mut done = event(State::Completed, 100.0);
        done.output_key = Some("out/a.mp4".into());
        assert_eq!(
            final_line(&done),
            "completed job1 on host-a:1 (attempt 1) -> out/a.mp4"
        );
        let mut failed = event(State::Failed, 0.0);
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
            show(&out, &mut views, &event(State::Downloading, 1.0), false),
            None
        );
        let mut retry = event(State::Failed, 3.0);
        retry.will_retry = Some(true);
        assert_eq!(show(&out, &mut views, &retry, false), None);
        assert!(views.contains_key("job1"));
        assert_eq!(
            show(&out, &mut views, &event(State::Completed, 100.0), false),
            Some(true)
        );
        assert!(views.is_empty());
    }
}
