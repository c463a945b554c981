//! The control exchange: how `transcode-worker inspect` and `ping` reach
//! every live worker through the broker alone, with no other server.
//!
//! - The exchange is a durable fanout named by `broker.control_exchange`
//!   (by default `<jobs_queue>.control`), declared by both sides.
//! - Each worker, in each broker session, binds its own server-named,
//!   exclusive, auto-delete queue to it on a channel of its own
//!   ([`Responder`]), so answering never waits on a job, and the queue goes
//!   away with the connection (a new one is made after a reconnect).
//! - A caller ([`ask`]) declares its own exclusive reply queue, publishes
//!   one request (`{"command": "inspect"}` or `"ping"`) with `reply_to`
//!   naming that queue and a fresh `correlation_id`, and collects the
//!   answers for a while: each worker replies with its [`WorkerInfo`].
//!
//! The tables and JSON that `inspect` and `ping` print are made here too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use serde::{Deserialize, Serialize};

use crate::broker::{private_queue, Broker};
use crate::config::{redact_url, BrokerSettings};
use crate::status::{Status, WorkerInfo};

/// How long the responder waits before opening its channel again after it
/// failed while the connection is still up.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// A failure of an observer (`inspect`, `ping`, `watch`) talking to the broker.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ at {url}: {detail}")]
pub struct ObserverError {
    /// The redacted URL.
    pub url: String,
    /// What went wrong.
    pub detail: String,
}

/// Opens a connection named `name` for an observer, to the first broker
/// URL that answers (see [`crate::broker::open_connection`]).
pub async fn observer_connection(
    settings: &BrokerSettings,
    name: &str,
) -> Result<Connection, ObserverError> {
    crate::broker::open_connection(settings, name)
        .await
        .map(|(connection, _)| connection)
        .map_err(|e| ObserverError {
            url: redact_url(&settings.url),
            detail: e.to_string(),
        })
}

/// What a caller asks the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Are you there?
    Ping,
    /// What are you doing?
    Inspect,
}

/// A request on the control exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// What is asked.
    pub command: Command,
}

/// Answers requests on the control exchange for one broker session of a
/// worker; while it lives, the worker's [`Status`] counts it as connected
/// through that session's broker. Dropping it stops answering.
#[derive(Debug)]
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
    status: Status,
}

impl Responder {
    /// Starts answering on a channel of its own on `broker`'s connection.
    pub fn start(broker: Arc<Broker>, status: Status) -> Responder {
        status.connected(&broker);
        let task = tokio::spawn(respond_loop(broker, status.clone()));
        Responder { task, status }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
        self.status.disconnected();
    }
}

/// Serves requests until the connection closes; opens a new channel after
/// a channel failure.
async fn respond_loop(broker: Arc<Broker>, status: Status) {
    let exchange = broker.settings().control_exchange();
    loop {
        match respond_on_channel(&broker, &status, &exchange).await {
            Ok(()) => tracing::debug!("the control consumer ended"),
            Err(e) => {
                tracing::warn!(error = %e, exchange = %exchange, "control channel failed; inspect and ping cannot reach this worker until it is back")
            }
        }
        if !broker.is_connected() {
            return;
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn respond_on_channel(
    broker: &Broker,
    status: &Status,
    exchange: &str,
) -> Result<(), String> {
    let channel = broker.open_channel().await.map_err(|e| e.to_string())?;
    crate::broker::declare_fanout(&channel, exchange)
        .await
        .map_err(|e| e.to_string())?;
    let tag = format!("control-{}", status.worker());
    let (_queue, mut consumer) = private_queue(&channel, Some(exchange), &tag)
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(exchange = %exchange, "answering inspect and ping");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            continue;
        };
        let command = serde_json::from_slice::<Request>(&delivery.data)
            .map(|r| r.command)
            .unwrap_or(Command::Inspect);
        let body = serde_json::to_vec(&status.snapshot()).expect("worker info serializes");
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1);
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        tracing::debug!(?command, "answering a control request");
        if let Err(e) = channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
        {
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// One worker's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// What the worker said.
    pub info: WorkerInfo,
    /// Time from sending the request to receiving this answer.
    pub round_trip: Duration,
}

/// Sends `command` to every worker on the control exchange and collects
/// the answers that arrive within `wait`, sorted by worker name.
pub async fn ask(
    settings: &BrokerSettings,
    command: Command,
    wait: Duration,
) -> Result<Vec<Answer>, ObserverError> {
    let url = redact_url(&settings.url);
    let fail = |e: lapin::Error| ObserverError {
        url: url.clone(),
        detail: e.to_string(),
    };
    let connection = observer_connection(settings, "transcode-worker inspect").await?;
    let channel = connection.create_channel().await.map_err(fail)?;
    let exchange = settings.control_exchange();
    crate::broker::declare_fanout(&channel, &exchange)
        .await
        .map_err(fail)?;
    let tag = format!("inspect-{}", std::process::id());
    let (reply_queue, mut replies) = private_queue(&channel, None, &tag).await.map_err(fail)?;
    let correlation = uuid::Uuid::new_v4().simple().to_string();
    let body = serde_json::to_vec(&Request { command }).expect("request serializes");
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(correlation.as_str().into())
        .with_expiration(wait.as_millis().max(1).to_string().as_str().into());
    let sent = Instant::now();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .map_err(fail)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut answers: Vec<Answer> = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, replies.next()).await;
        let delivery = match next {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(fail(e)),
            Ok(Some(Ok(delivery))) => delivery,
        };
        let ours = delivery
            .properties
            .correlation_id()
            .as_ref()
            .is_some_and(|id| id.as_str() == correlation);
        if !ours {
            continue;
        }
        match serde_json::from_slice::<WorkerInfo>(&delivery.data) {
            Ok(info) if !answers.iter().any(|a| a.info.worker == info.worker) => {
                answers.push(Answer {
                    info,
                    round_trip: sent.elapsed(),
                })
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "an answer that is not a worker's"),
        }
    }
    let _ = connection.close(200, "done".into()).await;
    answers.sort_by(|a, b| a.info.worker.cmp(&b.info.worker));
    Ok(answers)
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
                    job.phase.as_str().to_string(),
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
    use crate::status::{AttemptPhase, JobInfo};

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
                phase: AttemptPhase::Transcoding,
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
