//! `transcode-worker inspect` and `ping`: ask every live worker through
//! the control exchange (see [`crate::control`]) and print what they say,
//! as a table or as JSON.

use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::BrokerSettings;
use crate::control::{self, Answer, Command};
use crate::status::WorkerInfo;

/// How the answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// `inspect`: 0 when at least one worker answered within `wait`.
pub async fn inspect(broker: &BrokerSettings, format: Format, wait: Duration) -> ExitCode {
    ask_and_print(broker, Command::Inspect, format, wait).await
}

/// `ping`: 0 when at least one worker answered within `wait`.
pub async fn ping(broker: &BrokerSettings, format: Format, wait: Duration) -> ExitCode {
    ask_and_print(broker, Command::Ping, format, wait).await
}

async fn ask_and_print(
    broker: &BrokerSettings,
    command: Command,
    format: Format,
    wait: Duration,
) -> ExitCode {
    let answers = match control::ask(broker, command, wait).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match (command, format) {
        (Command::Ping, Format::Json) => ping_json(&answers),
        (Command::Ping, Format::Table) => ping_table(&answers),
        (Command::Inspect, Format::Json) => inspect_json(&answers),
        (Command::Inspect, Format::Table) => inspect_table(&answers),
    };
    if format == Format::Json || !answers.is_empty() {
        println!("{text}");
    }
    if answers.is_empty() {
        eprintln!(
            "no worker answered within {} on the control exchange {:?}",
            humantime::format_duration(wait),
            broker.control_exchange()
        );
        return ExitCode::FAILURE;
    }
    eprintln!(
        "{} worker(s) answered within {}",
        answers.len(),
        humantime::format_duration(wait)
    );
    ExitCode::SUCCESS
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header.iter().copied());
    table
}

fn secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0).round() as u64)).to_string()
}

/// The `inspect` table: one row per running job (one per idle worker).
pub fn inspect_table(answers: &[Answer]) -> String {
    let mut t = table(&[
        "WORKER", "HOST", "PID", "VERSION", "UPTIME", "JOB", "ATTEMPT", "PHASE", "PROGRESS", "ETA",
        "DONE", "FAILED",
    ]);
    for a in answers {
        let w = &a.info;
        let head = |t: &mut comfy_table::Table, job: [String; 5]| {
            let [id, attempt, phase, progress, eta] = job;
            t.add_row(vec![
                w.worker.clone(),
                w.host.clone(),
                w.pid.to_string(),
                w.version.clone(),
                secs(w.uptime_secs),
                id,
                attempt,
                phase,
                progress,
                eta,
                w.jobs_completed.to_string(),
                w.jobs_failed.to_string(),
            ]);
        };
        if w.jobs.is_empty() {
            let dash = || "-".to_string();
            head(&mut t, ["(idle)".into(), dash(), dash(), dash(), dash()]);
        }
        for job in &w.jobs {
            let speed = job
                .speed
                .map(|s| format!(" {s:.1}x"))
                .or_else(|| {
                    job.bytes_per_sec
                        .map(|b| format!(" {}/s", indicatif::HumanBytes(b as u64)))
                })
                .unwrap_or_default();
            head(
                &mut t,
                [
                    job.job_id.clone(),
                    job.attempt.to_string(),
                    job.phase.to_string(),
                    format!("{:.1}%{speed}", job.progress),
                    job.eta_secs.map(secs).unwrap_or_else(|| "-".into()),
                ],
            );
        }
    }
    t.to_string()
}

/// The `inspect --json` output: the workers' answers as a JSON array.
pub fn inspect_json(answers: &[Answer]) -> String {
    let infos: Vec<&WorkerInfo> = answers.iter().map(|a| &a.info).collect();
    serde_json::to_string_pretty(&infos).expect("worker info serializes")
}

/// One line of `ping --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    /// The worker's name.
    pub worker: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Milliseconds from the request to its answer.
    pub reply_ms: f64,
}

fn pongs(answers: &[Answer]) -> Vec<Pong> {
    answers
        .iter()
        .map(|a| Pong {
            worker: a.info.worker.clone(),
            host: a.info.host.clone(),
            pid: a.info.pid,
            version: a.info.version.clone(),
            reply_ms: (a.round_trip.as_secs_f64() * 10_000.0).round() / 10.0,
        })
        .collect()
}

/// The `ping` table.
pub fn ping_table(answers: &[Answer]) -> String {
    let mut t = table(&["WORKER", "HOST", "PID", "VERSION", "REPLY"]);
    for p in pongs(answers) {
        t.add_row(vec![
            p.worker,
            p.host,
            p.pid.to_string(),
            p.version,
            format!("{:.1} ms", p.reply_ms),
        ]);
    }
    t.to_string()
}

/// The `ping --json` output: a JSON array of [`Pong`].
pub fn ping_json(answers: &[Answer]) -> String {
    serde_json::to_string_pretty(&pongs(answers)).expect("pongs serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Phase;
    use crate::status::JobInfo;

    fn answer(worker: &str, jobs: Vec<JobInfo>) -> Answer {
        Answer {
            info: WorkerInfo {
                worker: worker.into(),
                host: "host-a".into(),
                pid: 42,
                version: "0.1.0".into(),
                started_at: "2026-11-24T02:20:55Z".into(),
                uptime_secs: 3723.0,
                queue: "transcoding_jobs".into(),
                concurrency: 1,
                connected: true,
                metrics: None,
                jobs,
                jobs_completed: 3,
                jobs_failed: 1,
                attempts_retried: 0,
            },
            round_trip: Duration::from_micros(2500),
        }
    }

    #[test]
    fn tables_show_idle_and_busy_workers() {
        let busy = answer(
            "host-a:2",
            vec![JobInfo {
                job_id: "tape-7".into(),
                attempt: 2,
                phase: Phase::Transcoding,
                progress: 47.5,
                running_secs: 10.0,
                idle_secs: 0.1,
                eta_secs: Some(6.2),
                speed: Some(1.8),
                bytes_per_sec: None,
            }],
        );
        let answers = [answer("host-a:1", vec![]), busy];
        let text = inspect_table(&answers);
        assert!(text.contains("(idle)"), "{text}");
        assert!(text.contains("tape-7"), "{text}");
        assert!(text.contains("transcoding"), "{text}");
        assert!(text.contains("47.5% 1.8x"), "{text}");
        assert!(text.contains("1h 2m 3s"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&inspect_json(&answers)).unwrap();
        assert_eq!(json[1]["jobs"][0]["phase"], "transcoding");
        let ping = ping_table(&answers);
        assert!(ping.contains("2.5 ms"), "{ping}");
        let json: serde_json::Value = serde_json::from_str(&ping_json(&answers)).unwrap();
        assert_eq!(json[0]["reply_ms"], 2.5);
    }
}
