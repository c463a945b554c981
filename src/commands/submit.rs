//! `transcode-worker submit`: publishes one job (confirmed, persistent) to
//! the queue of its priority, records it as queued in the history, prints
//! its id, and with `--wait` follows it to its end.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::broker::{string_headers, Broker};
use crate::config::Settings;
use crate::follow::{Follower, Seen};
use crate::history::{History, JobState};
use crate::job::{Ending, Job, Phase, Priority};
use crate::storage::Storage;
use crate::terminal::job_bar;

/// What to submit.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The input key.
    pub input: String,
    /// The output key.
    pub output: String,
    /// A preset name.
    pub preset: Option<String>,
    /// A pipeline fragment instead of a preset.
    pub transcode_options: Option<String>,
    /// The job id (a new one when absent).
    pub job_id: Option<String>,
    /// Its priority.
    pub priority: Priority,
    /// Labels a worker must have.
    pub requires: Vec<String>,
    /// Follow the job to its end.
    pub wait: bool,
}

/// `submit`: 0 once published (with `--wait`: once completed), 1 when it
/// failed, was cancelled or could not be published, 2 for a job the
/// workers would refuse.
pub async fn submit(settings: &Settings, submission: &Submission) -> ExitCode {
    let job_id = submission
        .job_id
        .clone()
        .unwrap_or_else(|| format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]));
    let mut fields = serde_json::json!({
        "job_id": job_id,
        "input_key": submission.input,
        "output_key": submission.output,
        "priority": submission.priority,
    });
    if let Some(preset) = &submission.preset {
        fields["preset"] = preset.clone().into();
    }
    if let Some(options) = &submission.transcode_options {
        fields["transcode_options"] = options.clone().into();
    }
    if !submission.requires.is_empty() {
        fields["requires"] = submission.requires.clone().into();
    }
    let body = fields.to_string();
    let job = match Job::parse(body.as_bytes()).and_then(|job| {
        crate::plan::plan(&job, settings)?;
        Ok(job)
    }) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("submit: the workers would refuse this job: {}", e.message);
            return ExitCode::from(2);
        }
    };
    let broker = match Broker::connect(settings, "transcode-worker submit").await {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("submit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = settings
        .history
        .enabled
        .then(|| Storage::from_settings(&settings.storage).ok())
        .flatten()
        .map(|storage| History::new(storage, &settings.history));
    if let Some(history) = &history {
        let recorded = history
            .update(&job.job_id, |r| {
                r.input_key = job.input_key.clone();
                r.output_keys = vec![job.output_key.clone()];
                r.priority = Some(submission.priority);
                r.submitted_at = Some(crate::job::now_rfc3339());
                r.mark(JobState::Queued, None, None, "submitted".into());
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!("cannot record the job in the history: {e}");
        }
    }
    let mut follower = None;
    if submission.wait {
        match Follower::start(&broker, &format!("submit-{}", std::process::id())).await {
            Ok(f) => {
                f.expect(&job.job_id);
                follower = Some(f);
            }
            Err(e) => {
                eprintln!("submit: cannot follow the job: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let queue = settings.broker.jobs_queue_for(submission.priority);
    let headers = string_headers([("queued-by", "transcode-worker submit".to_string())]);
    if let Err(e) = broker
        .publish_confirmed(&queue, body.as_bytes(), headers)
        .await
    {
        eprintln!("submit: the broker did not take the job: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", job.job_id);
    let Some(mut follower) = follower else {
        eprintln!("submitted to {queue}");
        return ExitCode::SUCCESS;
    };
    let code = follow(&mut follower, &job.job_id).await;
    follower.close().await;
    broker.close().await;
    code
}

/// Follows `job_id` to its end: a bar on a terminal, else a line per phase.
async fn follow(follower: &mut Follower, job_id: &str) -> ExitCode {
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| job_bar(job_id, 1000));
    let interrupted = crate::signals::interrupt_token();
    let mut last_phase = None;
    let mut ending = None;
    follower
        .follow(None, &interrupted, |seen| {
            let Seen::Event(e, _) = seen else { return };
            match &bar {
                Some(bar) => {
                    bar.set_position((e.progress.clamp(0.0, 100.0) * 10.0) as u64);
                    bar.set_message(format!(
                        "{:>5.1}% {} on {} (attempt {})",
                        e.progress, e.state, e.worker, e.attempt
                    ));
                }
                None if last_phase != Some(e.state) => {
                    eprintln!(
                        "{job_id}: {} {:.0}% on {} (attempt {})",
                        e.state, e.progress, e.worker, e.attempt
                    );
                    last_phase = Some(e.state);
                }
                None => {}
            }
            if e.state == Phase::Failed && e.will_retry == Some(true) {
                eprintln!(
                    "{job_id}: attempt {} failed ({}), will retry: {}",
                    e.attempt,
                    e.error_kind.map(|k| k.to_string()).unwrap_or_default(),
                    e.error.as_deref().unwrap_or("")
                );
            }
            if let Some(end) = e.ending() {
                ending = Some((end, e.clone()));
            }
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match ending {
        Some((Ending::Completed, e)) => {
            eprintln!(
                "{job_id}: completed on {}: {}",
                e.worker,
                e.output_key.unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some((_, e)) => {
            eprintln!(
                "{job_id}: {}: {}: {}",
                e.state,
                e.error_kind.map(|k| k.to_string()).unwrap_or_default(),
                e.error.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        None => {
            eprintln!("{job_id}: stopped following before it ended");
            ExitCode::FAILURE
        }
    }
}
