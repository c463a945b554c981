//! `transcode-worker submit`: publishes one job (confirmed, persistent) to
//! the queue of its priority, records it as queued in the history, prints
//! its id, and with `--wait` follows it to its end.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::broker::Broker;
use crate::config::Settings;
use crate::follow::{Follower, Seen};
use crate::history::History;
use crate::job::{Ending, Phase};
use crate::operations::{self, Submission};
use crate::terminal::job_bar;

/// `submit`: 0 once published (with `wait`: once completed), 1 when it
/// failed, was cancelled or could not be published, 2 for a job the
/// workers would refuse.
pub async fn submit(settings: &Settings, submission: &Submission, wait: bool) -> ExitCode {
    let checked = match submission.check(settings) {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("submit: the workers would refuse this job: {}", e.message);
            return ExitCode::from(2);
        }
    };
    let job_id = checked.job.job_id.clone();
    let broker = match Broker::connect(settings, "transcode-worker submit").await {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("submit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = History::from_settings(settings).ok();
    let mut follower = None;
    if wait {
        match Follower::start(&broker, &format!("submit-{}", std::process::id())).await {
            Ok(f) => {
                f.expect(&job_id);
                follower = Some(f);
            }
            Err(e) => {
                eprintln!("submit: cannot follow the job: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let queue = match operations::publish(
        &broker,
        history.as_ref(),
        &checked,
        "transcode-worker submit",
    )
    .await
    {
        Ok(queue) => queue,
        Err(e) => {
            eprintln!("submit: the broker did not take the job: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{job_id}");
    let Some(mut follower) = follower else {
        eprintln!("submitted to {queue}");
        return ExitCode::SUCCESS;
    };
    let code = follow(&mut follower, &job_id).await;
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
