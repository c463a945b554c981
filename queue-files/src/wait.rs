//! `--wait`: following the jobs of this run to their end.
//!
//! Before the first job is published, [`Follower::start`] declares a
//! server-named, exclusive, auto-delete queue bound to the progress fanout
//! exchange (through [`Broker::consume_progress_events`]), so no event is
//! missed and `transcoding_progress` is never read from: other consumers
//! of that queue lose nothing. The broker deletes the queue when
//! queue-files exits. Each job gets a bar (or log lines); a job ends with
//! its `completed` event, or with a `failed` event that says it will not
//! be retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use transcode_worker::broker::{Broker, BrokerError};
use transcode_worker::job::{Progress, State};

use crate::ui::Ui;

/// What the progress consumer hands over.
#[derive(Debug)]
enum Event {
    Progress(Box<Progress>),
    Lost(String),
}

/// Collects the progress events of the jobs it is told to expect.
#[derive(Debug)]
pub struct Follower {
    wanted: Arc<Mutex<HashSet<String>>>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

/// How following ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WaitResult {
    /// Jobs that completed.
    pub completed: usize,
    /// Jobs that failed for good.
    pub failed: usize,
    /// Labels of the jobs still running when following stopped.
    pub unfinished: Vec<String>,
    /// Why following stopped early (lost connection, timeout, interrupt).
    pub stopped: Option<String>,
    /// Whether it was interrupted by a signal.
    pub interrupted: bool,
}

/// One job to follow.
#[derive(Debug, Clone)]
pub struct Followed {
    /// Its id.
    pub job_id: String,
    /// How people know it (the file's relative path).
    pub label: String,
}

impl Follower {
    /// Binds the private queue and starts consuming it.
    pub async fn start(broker: &Broker) -> Result<Follower, BrokerError> {
        let (_queue, mut consumer) = broker
            .consume_progress_events(&format!("queue-files-wait-{}", std::process::id()))
            .await?;
        let wanted: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (tx, events) = mpsc::unbounded_channel();
        let filter = wanted.clone();
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        let Ok(progress) = serde_json::from_slice::<Progress>(&delivery.data)
                        else {
                            continue;
                        };
                        let wanted = filter
                            .lock()
                            .map(|w| w.contains(&progress.job_id))
                            .unwrap_or(false);
                        if wanted && tx.send(Event::Progress(Box::new(progress))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Lost(e.to_string()));
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Lost("the progress consumer was cancelled".into()));
        });
        Ok(Follower {
            wanted,
            events,
            task,
        })
    }

    /// Starts collecting events of `job_id` (call before publishing it).
    pub fn expect(&self, job_id: &str) {
        if let Ok(mut wanted) = self.wanted.lock() {
            wanted.insert(job_id.to_string());
        }
    }

    /// Stops collecting events of `job_id` (its publish failed).
    pub fn forget(&self, job_id: &str) {
        if let Ok(mut wanted) = self.wanted.lock() {
            wanted.remove(job_id);
        }
    }

    /// Follows `jobs` until each completed or failed for good, `timeout`
    /// passed, `cancel` fired or the broker connection was lost. Calls
    /// `on_end(job_id, completed)` as each job ends.
    pub async fn follow(
        mut self,
        broker: &Broker,
        jobs: &[Followed],
        ui: &Ui,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        mut on_end: impl FnMut(&str, bool),
    ) -> WaitResult {
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
        let mut result = WaitResult::default();
        let mut open = views.len();
        if open > 0 && !ui.has_bars() {
            ui.info(&format!("waiting for {open} job(s)"));
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while open > 0 {
            let timed_out = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Progress(p)) => {
                        let Some(view) = views.get_mut(&p.job_id) else { continue };
                        if view.done {
                            continue;
                        }
                        if let Some(completed) = view.show(&p, ui) {
                            open -= 1;
                            if completed {
                                result.completed += 1;
                            } else {
                                result.failed += 1;
                            }
                            on_end(&p.job_id, completed);
                        }
                    }
                    Some(Event::Lost(why)) => {
                        result.stopped = Some(format!("lost the progress events from RabbitMQ: {why}"));
                        break;
                    }
                    None => {
                        result.stopped = Some("lost the progress events from RabbitMQ".into());
                        break;
                    }
                },
                _ = tick.tick() => {
                    if !broker.is_connected() {
                        result.stopped = Some("lost the connection to RabbitMQ while waiting".into());
                        break;
                    }
                }
                _ = timed_out => {
                    result.stopped = Some(format!(
                        "gave up waiting after {}",
                        humantime::format_duration(timeout.unwrap_or_default())
                    ));
                    break;
                }
                _ = cancel.cancelled() => {
                    result.stopped = Some("interrupted while waiting".into());
                    result.interrupted = true;
                    break;
                }
            }
        }
        for job in jobs {
            if let Some(view) = views.get_mut(&job.job_id) {
                if !view.done {
                    result.unfinished.push(view.label.clone());
                    if let Some(bar) = &view.bar {
                        bar.finish_and_clear();
                    }
                }
            }
        }
        self.task.abort();
        result
    }
}

/// How one followed job is shown.
#[derive(Debug)]
struct JobView {
    label: String,
    bar: Option<ProgressBar>,
    state: Option<(State, u32)>,
    logged_decile: Option<u32>,
    done: bool,
}

impl JobView {
    /// Shows an event; `Some(completed)` when the job ended with it.
    fn show(&mut self, p: &Progress, ui: &Ui) -> Option<bool> {
        let percent = p.progress.clamp(0.0, 100.0);
        let state = format!("{:?}", p.state).to_lowercase();
        let changed = self.state != Some((p.state, p.attempt));
        self.state = Some((p.state, p.attempt));
        match p.state {
            State::Completed => {
                self.done = true;
                // A finished job leaves its bar for a line above the others,
                // so nothing is redrawn below the closing summary.
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                ui.info(&format!("completed {} ({})", self.label, p.worker));
                Some(true)
            }
            State::Failed => {
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
                        bar.set_message(format!("{state} (attempt {}){eta}", p.attempt));
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
