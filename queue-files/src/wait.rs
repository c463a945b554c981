//! `--wait`: following the jobs of this run to their end with the
//! library's [`Follower`], started before the first job is published so
//! no event is missed. Each job gets a bar (or log lines); a job ends with
//! its `completed` event, or with a `failed` event that says it will not
//! be retried.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;
use transcode_worker::follow::{FollowEnd, Follower, Seen};
use transcode_worker::job::{Ending, Phase, Progress};

use crate::ui::Ui;

/// One job to follow.
#[derive(Debug, Clone)]
pub struct Followed {
    /// Its id.
    pub job_id: String,
    /// How people know it (the file's relative path).
    pub label: String,
}

/// Follows `jobs` (each already [`expect`](Follower::expect)ed) until each
/// completed or failed for good, `timeout` passed, `cancel` fired or the
/// broker connection was lost, showing them through `ui`. Calls
/// `on_end(job_id, completed)` as each job ends. The jobs left unfinished
/// are given by their labels.
pub async fn follow(
    follower: &mut Follower,
    jobs: &[Followed],
    ui: &Ui,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    mut on_end: impl FnMut(&str, bool),
) -> FollowEnd {
    let mut views: HashMap<String, JobView> = jobs
        .iter()
        .map(|job| {
            (
                job.job_id.clone(),
                JobView {
                    label: job.label.clone(),
                    bar: ui.job_bar(&job.label),
                    state: None,
                    logged_decile: None,
                    done: false,
                },
            )
        })
        .collect();
    if !views.is_empty() && !ui.has_bars() {
        ui.info(&format!("waiting for {} job(s)", views.len()));
    }
    let mut end = follower
        .follow(timeout, cancel, |seen| {
            let Seen::Event(p, _) = seen else { return };
            let Some(view) = views.get_mut(&p.job_id) else {
                return;
            };
            view.show(p, ui);
            if let Some(ending) = p.ending() {
                on_end(&p.job_id, ending == Ending::Completed);
            }
        })
        .await;
    let mut unfinished = Vec::new();
    for job in jobs {
        if let Some(view) = views.get(&job.job_id) {
            if !view.done {
                unfinished.push(view.label.clone());
                if let Some(bar) = &view.bar {
                    bar.finish_and_clear();
                }
            }
        }
    }
    end.unfinished = unfinished;
    end
}

/// How one followed job is shown.
#[derive(Debug)]
struct JobView {
    label: String,
    bar: Option<ProgressBar>,
    state: Option<(Phase, u32)>,
    logged_decile: Option<u32>,
    done: bool,
}

impl JobView {
    /// Shows an event; `Some(completed)` when the job ended with it.
    fn show(&mut self, p: &Progress, ui: &Ui) -> Option<bool> {
        let percent = p.progress.clamp(0.0, 100.0);
        let state = p.state.to_string();
        let changed = self.state != Some((p.state, p.attempt));
        self.state = Some((p.state, p.attempt));
        match p.state {
            Phase::Completed => {
                self.done = true;
                // A finished job leaves its bar for a line above the others,
                // so nothing is redrawn below the closing summary.
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                ui.info(&format!("completed {} ({})", self.label, p.worker));
                Some(true)
            }
            Phase::Failed | Phase::Cancelled => {
                let error = p.error.clone().unwrap_or_else(|| "no reason given".into());
                let kind = p
                    .error_kind
                    .map(|k| k.as_str().to_string())
                    .unwrap_or_else(|| "failed".into());
                if p.will_retry == Some(true) {
                    let text =
                        format!("attempt {} failed ({kind}), will retry: {error}", p.attempt);
                    match &self.bar {
                        Some(bar) => bar.set_message(text),
                        None => ui.info(&format!("{}: {text}", self.label)),
                    }
                    None
                } else {
                    self.done = true;
                    if let Some(bar) = &self.bar {
                        bar.finish_and_clear();
                    }
                    ui.line(&format!("job of {} failed ({kind}): {error}", self.label));
                    Some(false)
                }
            }
            _ => {
                let eta = p
                    .eta_secs
                    .map(|s| {
                        format!(
                            ", ETA {}",
                            humantime::format_duration(Duration::from_secs(s.round() as u64))
                        )
                    })
                    .unwrap_or_default();
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(percent as u64);
                        bar.set_message(format!(
                            "{percent:>3.0}% {state} (attempt {}){eta}",
                            p.attempt
                        ));
                    }
                    None => {
                        let decile = (percent / 10.0) as u32;
                        if changed || self.logged_decile != Some(decile) {
                            self.logged_decile = Some(decile);
                            ui.info(&format!(
                                "{}: {state} {percent:.0}% (attempt {}, {}){eta}",
                                self.label, p.attempt, p.worker
                            ));
                        }
                    }
                }
                None
            }
        }
    }
}
