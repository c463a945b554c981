//! `transcode-worker status JOB_ID`, `jobs` and `cancel JOB_ID`: what the
//! farm knows of a job (its record in the history, and for a running job
//! the live figures of the worker running it), the most recent jobs, and
//! stopping a job.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::Settings;
use crate::control;
use crate::follow::{Follower, Seen};
use crate::history::{History, JobRecord, JobState};
use crate::job::Ending;
use crate::operations::{self, Cancel};
use crate::status::JobInfo;

/// Exit code of `status` and `cancel` for a job the farm does not know.
pub const UNKNOWN_JOB: u8 = 3;

/// How long `status` waits for the worker running a job to say how far it is.
const LIVE_WAIT: Duration = Duration::from_millis(1500);

/// How long `cancel` waits to see a running job stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What `status --json` prints: the record, what the running attempt's
/// worker says now, and whether a cancel was asked for.
#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(flatten)]
    record: JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<JobInfo>,
    cancel_requested: bool,
}

/// `status JOB_ID`: 0 when the farm knows the job, 3 when it does not, 1
/// when the history cannot be read.
pub async fn status(settings: &Settings, job_id: &str, json: bool) -> ExitCode {
    let history = match History::from_settings(settings) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let record = match history.get(job_id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"job_id": job_id, "state": "unknown"})
                );
            } else {
                println!("{job_id}: unknown (the farm has no record of it)");
            }
            return ExitCode::from(UNKNOWN_JOB);
        }
        Err(e) => {
            tracing::error!("cannot read the record of {job_id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = match (&record.state, &record.worker) {
        (JobState::Running, Some(worker)) => live_attempt(settings, worker, job_id).await,
        _ => None,
    };
    let cancel_requested =
        !record.state.is_final() && history.cancel_requested(job_id).await.unwrap_or(false);
    let view = StatusView {
        record,
        live,
        cancel_requested,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("a status serializes")
        );
    } else {
        print!("{}", status_text(&view));
    }
    ExitCode::SUCCESS
}

/// What `worker` says of its attempt of `job_id` now, if it answers soon.
async fn live_attempt(settings: &Settings, worker: &str, job_id: &str) -> Option<JobInfo> {
    let answer = control::ask_one(&settings.broker, worker, LIVE_WAIT)
        .await
        .ok()??;
    answer.info.jobs.into_iter().find(|j| j.job_id == job_id)
}

fn secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0).round() as u64)).to_string()
}

/// `status` for people.
fn status_text(view: &StatusView) -> String {
    let r = &view.record;
    let mut head = format!("{}: {}", r.job_id, r.state);
    if let Some(live) = &view.live {
        head.push_str(&format!(" ({} {:.1}%", live.phase, live.progress));
        if let Some(eta) = live.eta_secs {
            head.push_str(&format!(", ETA {}", secs(eta)));
        }
        head.push(')');
    } else if let Some(phase) = r.phase.filter(|_| r.state == JobState::Running) {
        head.push_str(&format!(" ({phase})"));
    }
    if let Some(worker) = &r.worker {
        head.push_str(&format!(" on {worker}, attempt {}", r.attempt));
    }
    if view.cancel_requested {
        head.push_str(" [cancel requested]");
    }
    let mut lines = vec![head];
    if r.state == JobState::Running && view.live.is_none() {
        lines.push(format!(
            "  (its worker did not answer within {}: it may have stopped; the broker then gives the job back)",
            humantime::format_duration(LIVE_WAIT)
        ));
    }
    if let Some(waiting) = &r.waiting_for {
        lines.push(format!("  waiting for a worker with {waiting}"));
    }
    lines.push(format!("  input:   {}", r.input_key));
    for key in &r.output_keys {
        lines.push(format!("  output:  {key}"));
    }
    if let Some(size) = r.output_size_bytes {
        lines.push(format!(
            "  stored:  {}{}",
            indicatif::HumanBytes(size),
            r.duration_seconds
                .map(|d| format!(", {d:.2} s of media"))
                .unwrap_or_default()
        ));
    }
    if let (Some(kind), Some(error)) = (r.error_kind, &r.error) {
        lines.push(format!("  error:   {kind}: {error}"));
    }
    if let Some(at) = &r.submitted_at {
        lines.push(format!("  submitted {at}"));
    }
    if let Some(at) = &r.started_at {
        lines.push(format!("  started   {at}"));
    }
    if let Some(at) = &r.ended_at {
        lines.push(format!("  ended     {at}"));
    }
    if !r.attempts.is_empty() {
        lines.push("  attempts:".into());
        for a in &r.attempts {
            let outcome = a.outcome.as_deref().unwrap_or("running");
            let error = match (&a.error_kind, &a.error) {
                (Some(kind), Some(error)) => format!(" ({kind}: {error})"),
                _ => String::new(),
            };
            lines.push(format!(
                "    {} on {} at {}: {outcome}{error}",
                a.attempt, a.worker, a.started_at
            ));
        }
    }
    lines.join("\n") + "\n"
}

/// `jobs`: the most recent jobs, newest first (at most `limit`, only those
/// in `state` when given). 0, or 1 when the history cannot be read.
pub async fn jobs(
    settings: &Settings,
    state: Option<JobState>,
    limit: usize,
    json: bool,
) -> ExitCode {
    let history = match History::from_settings(settings) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let scan = limit.saturating_mul(50).clamp(1000, 20_000);
    let records = match history.recent(limit, state, scan).await {
        Ok(records) => records,
        Err(e) => {
            tracing::error!("cannot read the job history: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).expect("records serialize")
        );
        return ExitCode::SUCCESS;
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["JOB", "STATE", "PROGRESS / OUTCOME", "WORKER", "AGE"]);
    let now = time::OffsetDateTime::now_utc();
    for r in &records {
        t.add_row(vec![
            r.job_id.clone(),
            r.state.to_string(),
            outcome_text(r),
            r.worker.clone().unwrap_or_else(|| "-".into()),
            age(&r.created_at, now),
        ]);
    }
    println!("{t}");
    ExitCode::SUCCESS
}

/// A job's outcome in a few words, for the `jobs` table.
fn outcome_text(r: &JobRecord) -> String {
    match r.state {
        JobState::Completed => r
            .output_size_bytes
            .map(|size| format!("{} stored", indicatif::HumanBytes(size)))
            .unwrap_or_else(|| "stored".into()),
        JobState::Dead | JobState::Failed => r
            .error_kind
            .map(|k| k.to_string())
            .unwrap_or_else(|| "failed".into()),
        JobState::Running => r
            .phase
            .map(|p| p.to_string())
            .unwrap_or_else(|| "running".into()),
        JobState::Waiting => r
            .waiting_for
            .as_deref()
            .map(|w| format!("needs {w}"))
            .unwrap_or_else(|| "waiting".into()),
        other => other.to_string(),
    }
}

/// How long ago the RFC 3339 time `at` was, e.g. `3m 20s`.
fn age(at: &str, now: time::OffsetDateTime) -> String {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map(|t| secs((now - t).as_seconds_f64()))
        .unwrap_or_else(|_| "-".into())
}

/// `cancel JOB_ID`: 0 when the job is (or will be) cancelled, 1 when it
/// has already ended (nothing changes), 3 when the farm does not know it.
pub async fn cancel(settings: &Settings, job_id: &str) -> ExitCode {
    let history = match History::from_settings(settings) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Follow before asking, so the `cancelled` event cannot be missed.
    let mut follower = Follower::open(&settings.broker, "transcode-worker cancel")
        .await
        .ok();
    if let Some(f) = &follower {
        f.expect(job_id);
    }
    let by = format!(
        "transcode-worker cancel on {}",
        gethostname::gethostname().to_string_lossy()
    );
    let record = match operations::cancel(&settings.broker, &history, job_id, &by).await {
        Ok(Cancel::Requested(record)) => record,
        Ok(Cancel::Unknown) => {
            println!("{job_id}: unknown (the farm has no record of it); nothing to cancel");
            return ExitCode::from(UNKNOWN_JOB);
        }
        Ok(Cancel::Ended(record)) => {
            println!(
                "{job_id}: already {} ({}); nothing to cancel",
                record.state,
                record.ended_at.as_deref().unwrap_or("earlier")
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            tracing::error!("cannot cancel {job_id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if record.state != JobState::Running {
        println!("{job_id}: cancel requested; it is {} and will be settled as cancelled when a worker reaches it", record.state);
        return ExitCode::SUCCESS;
    }
    let Some(follower) = follower.as_mut() else {
        println!(
            "{job_id}: cancel requested; it is running on {}",
            record.worker.as_deref().unwrap_or("a worker")
        );
        return ExitCode::SUCCESS;
    };
    let never = tokio_util::sync::CancellationToken::new();
    let mut ended = None;
    follower
        .follow(Some(STOP_WAIT), &never, |seen| {
            if let Seen::Event(e, _) = seen {
                if let Some(ending) = e.ending() {
                    ended = Some((ending, e.worker.clone()));
                }
            }
        })
        .await;
    match ended {
        Some((Ending::Cancelled, worker)) => {
            println!("{job_id}: cancelled (it was running on {worker})")
        }
        Some((ending, worker)) => {
            println!("{job_id}: it ended {ending:?} on {worker} before the cancel reached it");
            return ExitCode::FAILURE;
        }
        None => println!(
            "{job_id}: cancel requested; its worker did not confirm within {} (it stops at its next step at the latest)",
            humantime::format_duration(STOP_WAIT)
        ),
    }
    ExitCode::SUCCESS
}
