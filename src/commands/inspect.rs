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
        (_, Format::Json) => inspect_json(&answers),
        (_, Format::Table) => inspect_table(&answers),
    };
    if format == Format::Json || !answers.is_empty() {
        println!("{text}");
    }
    if command == Command::Inspect && format == Format::Table && !answers.is_empty() {
        println!("\n{}", capabilities_table(&answers));
    }
    if command == Command::Inspect && format == Format::Table {
        match queues_table(broker).await {
            Ok(table) => println!("\n{table}"),
            Err(e) => eprintln!("cannot count the jobs in the queues: {e}"),
        }
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

/// The jobs waiting in each jobs queue (most urgent first), in the queues
/// of jobs waiting for capable workers (with what they wait for), and in
/// the dead-letter queue, as a table.
async fn queues_table(broker: &BrokerSettings) -> Result<String, String> {
    let connection = control::observer_connection(broker, "transcode-worker inspect")
        .await
        .map_err(|e| e.to_string())?;
    let waiting = match connection.create_channel().await {
        Ok(channel) => crate::broker::waiting_queues(channel, &broker.requirements_stream()).await,
        Err(_) => Vec::new(),
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let mut queues = broker.jobs_queues();
    queues.push(broker.dead_letter_queue.clone());
    let depths = crate::broker::queue_depths(&channel, &queues).await;
    let mut rows: Vec<(String, u32, String)> = Vec::new();
    match depths {
        Ok(depths) => rows.extend(depths.0.into_iter().map(|(q, n)| (q, n, String::new()))),
        Err(e) => {
            let _ = connection.close(200, "done".into()).await;
            return Err(format!(
                "{e} (run `transcode-worker setup` to declare the queues)"
            ));
        }
    }
    for w in waiting {
        // A queue that is gone (deleted by hand) is left out.
        let Ok(channel) = connection.create_channel().await else {
            break;
        };
        if let Ok(depths) =
            crate::broker::queue_depths(&channel, std::slice::from_ref(&w.queue)).await
        {
            let n = depths.0.first().map_or(0, |(_, n)| *n);
            rows.push((w.queue.clone(), n, format!("needs {}", w.requires)));
            let _ = channel.close(200, "done".into()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(depths_table(&rows))
}

fn depths_table(rows: &[(String, u32, String)]) -> String {
    let mut t = table(&["QUEUE", "WAITING", "FOR"]);
    for (queue, n, why) in rows {
        t.add_row(vec![queue.clone(), n.to_string(), why.clone()]);
    }
    t.to_string()
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

/// What each worker can run: cores, labels, encoders (hardware ones
/// marked), elements it hides, free scratch space.
pub fn capabilities_table(answers: &[Answer]) -> String {
    let mut t = table(&[
        "WORKER",
        "CORES",
        "LABELS",
        "ENCODERS",
        "HIDDEN",
        "SCRATCH FREE",
    ]);
    for a in answers {
        let Some(c) = &a.info.capabilities else {
            continue;
        };
        // libav's many encoders are counted, not listed.
        let libav = c
            .encoders
            .iter()
            .filter(|e| e.starts_with("avenc_"))
            .count();
        let mut encoders: Vec<String> = c
            .encoders
            .iter()
            .filter(|e| !e.starts_with("avenc_"))
            .map(|e| {
                if c.hardware.contains(e) {
                    format!("{e} (hw)")
                } else {
                    e.clone()
                }
            })
            .collect();
        if libav > 0 {
            encoders.push(format!("+{libav} avenc_*"));
        }
        t.add_row(vec![
            a.info.worker.clone(),
            c.cores.to_string(),
            or_dash(&c.labels),
            encoders.join(" "),
            or_dash(&c.hidden),
            indicatif::HumanBytes(c.scratch_free_bytes).to_string(),
        ]);
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
    /// Its labels.
    pub labels: Vec<String>,
    /// Its hardware elements (encoders and the rest).
    pub hardware: Vec<String>,
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
            labels: a
                .info
                .capabilities
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
            hardware: a
                .info
                .capabilities
                .as_ref()
                .map(|c| c.hardware.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// The `ping` table.
pub fn ping_table(answers: &[Answer]) -> String {
    let mut t = table(&[
        "WORKER", "HOST", "PID", "VERSION", "REPLY", "LABELS", "HARDWARE",
    ]);
    for p in pongs(answers) {
        t.add_row(vec![
            p.worker,
            p.host,
            p.pid.to_string(),
            p.version,
            format!("{:.1} ms", p.reply_ms),
            or_dash(&p.labels),
            or_dash(&p.hardware),
        ]);
    }
    t.to_string()
}

/// The `ping --json` output: a JSON array of [`Pong`].
pub fn ping_json(answers: &[Answer]) -> String {
    serde_json::to_string_pretty(&pongs(answers)).expect("pongs serialize")
}

/// The items of `v` joined by commas, or `-` when there are none.
fn or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(",")
    }
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
                jobs_cancelled: 0,
                capabilities: None,
                capable: None,
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
        let rows = vec![
            ("transcoding_jobs.high".to_string(), 1, String::new()),
            ("transcoding_jobs".to_string(), 20, String::new()),
            (
                "transcoding_jobs.requires.x265enc".to_string(),
                2,
                "needs x265enc".to_string(),
            ),
        ];
        let queues = depths_table(&rows);
        assert!(queues.contains("needs x265enc"), "{queues}");
        assert!(
            queues.contains("transcoding_jobs.high") && queues.contains("20"),
            "{queues}"
        );
        let ping = ping_table(&answers);
        assert!(ping.contains("2.5 ms"), "{ping}");
        let json: serde_json::Value = serde_json::from_str(&ping_json(&answers)).unwrap();
        assert_eq!(json[0]["reply_ms"], 2.5);
    }
}
