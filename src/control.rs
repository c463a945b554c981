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
//! - A worker splitting a segmented job announces its input
//!   ([`announce_input`], `{"command": "prefetch"}`, no `reply_to`): each
//!   responder hands the announcement to its worker, which fetches the
//!   input when it has nothing else to do, so its parts find it there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::broker::{private_queue, publish_json, Broker};
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
    /// Stop the job `job_id` if you run it (a cancel).
    Cancel,
    /// The input of `job_id`, a segmented job being split, will be wanted
    /// by its parts: an idle worker fetches it now (`input`). No answer.
    Prefetch,
}

/// An input as the worker that announces it saw it (with `prefetch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSeen {
    /// Its storage key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its version (ETag) then.
    pub version: Option<String>,
}

/// A request on the control exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// What is asked.
    pub command: Command,
    /// With `inspect`: whether the worker could run a job that needs this
    /// (its answer's `capable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<crate::capability::Requirement>,
    /// With `cancel`: the job to stop; with `prefetch`: the job being split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// With `prefetch`: the input to fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSeen>,
}

/// Answers requests on the control exchange with a worker's [`Status`]
/// for one broker session. Dropping it stops answering.
#[derive(Debug)]
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    /// Starts answering on a channel of its own on `broker`'s connection;
    /// `prefetch` requests go to `prefetches`.
    pub fn start(
        broker: Arc<Broker>,
        status: Status,
        prefetches: mpsc::UnboundedSender<Request>,
    ) -> Responder {
        let task = tokio::spawn(respond_loop(broker, status, prefetches));
        Responder { task }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests until the connection closes; opens a new channel after
/// a channel failure.
async fn respond_loop(
    broker: Arc<Broker>,
    status: Status,
    prefetches: mpsc::UnboundedSender<Request>,
) {
    let exchange = broker.settings().control_exchange();
    loop {
        match respond_on_channel(&broker, &status, &exchange, &prefetches).await {
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
    prefetches: &mpsc::UnboundedSender<Request>,
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
        let request = serde_json::from_slice::<Request>(&delivery.data).unwrap_or(Request {
            command: Command::Inspect,
            requires: None,
            job_id: None,
            input: None,
        });
        if request.command == Command::Prefetch {
            let _ = prefetches.send(request);
            continue;
        }
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            continue;
        };
        let command = request.command;
        if command == Command::Cancel {
            if let Some(job_id) = &request.job_id {
                let stopped = status.cancel(job_id);
                tracing::info!(job_id = %job_id, running = stopped, "cancel requested");
            }
        }
        let mut info = status.snapshot();
        info.capable = request.requires.map(|r| status.can_run(&r));
        let mut properties = BasicProperties::default().with_delivery_mode(1);
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        tracing::debug!(?command, "answering a control request");
        if let Err(e) = publish_json(&channel, "", reply_to.as_str(), &info, properties).await {
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// Publishes `request` as JSON to the control exchange `exchange` on
/// `channel`, with `properties`.
async fn publish_request(
    channel: &Channel,
    exchange: &str,
    request: &Request,
    properties: BasicProperties,
) -> Result<(), lapin::Error> {
    publish_json(channel, exchange, "", request, properties)
        .await
        .map(|_| ())
}

/// Tells every live worker, without waiting for answers, that the parts
/// of `job_id`, being split now, will want `input` (see
/// [`Command::Prefetch`]).
pub async fn announce_input(broker: &Broker, job_id: &str, input: InputSeen) -> Result<(), String> {
    let channel = broker.open_channel().await.map_err(|e| e.to_string())?;
    let exchange = broker.settings().control_exchange();
    let request = Request {
        command: Command::Prefetch,
        requires: None,
        job_id: Some(job_id.to_string()),
        input: Some(input),
    };
    let sent = async {
        crate::broker::declare_fanout(&channel, &exchange).await?;
        let properties = BasicProperties::default().with_delivery_mode(1);
        publish_request(&channel, &exchange, &request, properties).await
    }
    .await;
    let _ = channel.close(200, "announced".into()).await;
    sent.map_err(|e| e.to_string())
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
    let request = Request {
        command,
        requires: None,
        job_id: None,
        input: None,
    };
    ask_with(settings, &request, wait).await
}

/// Sends `request` to every worker on the control exchange and collects
/// the answers that arrive within `wait`, sorted by worker name.
pub async fn ask_with(
    settings: &BrokerSettings,
    request: &Request,
    wait: Duration,
) -> Result<Vec<Answer>, ObserverError> {
    ask_until(settings, request, wait, |_| false).await
}

/// The answer of the worker named `worker` to `inspect`, if it answers
/// within `wait` (returns as soon as it does).
pub async fn ask_one(
    settings: &BrokerSettings,
    worker: &str,
    wait: Duration,
) -> Result<Option<Answer>, ObserverError> {
    let request = Request {
        command: Command::Inspect,
        requires: None,
        job_id: None,
        input: None,
    };
    let answers = ask_until(settings, &request, wait, |all| {
        all.iter().any(|a| a.info.worker == worker)
    })
    .await?;
    Ok(answers.into_iter().find(|a| a.info.worker == worker))
}

/// Sends `request` to every worker and collects the answers for `wait`,
/// or until `enough` is true of the answers so far.
pub async fn ask_until(
    settings: &BrokerSettings,
    request: &Request,
    wait: Duration,
    enough: impl Fn(&[Answer]) -> bool,
) -> Result<Vec<Answer>, ObserverError> {
    let url = redact_url(&settings.url);
    let fail = |e: lapin::Error| ObserverError {
        url: url.clone(),
        detail: e.to_string(),
    };
    let connection = observer_connection(settings, "transcode-worker inspect").await?;
    let asked = match connection.create_channel().await {
        Ok(channel) => ask_on(&channel, settings, request, wait, enough, Duration::ZERO).await,
        Err(e) => Err(e),
    };
    let _ = connection.close(200, "done".into()).await;
    asked.map_err(fail)
}

/// Sends `request` to every worker on `channel` (a caller that asks often
/// keeps one connection and opens a channel per request, closing it after)
/// and collects the answers for `wait`, or until `enough` is true of the
/// answers so far and `grace` more has passed; sorted by worker name.
pub async fn ask_on(
    channel: &Channel,
    settings: &BrokerSettings,
    request: &Request,
    wait: Duration,
    enough: impl Fn(&[Answer]) -> bool,
    grace: Duration,
) -> Result<Vec<Answer>, lapin::Error> {
    let exchange = settings.control_exchange();
    crate::broker::declare_fanout(channel, &exchange).await?;
    let tag = format!("inspect-{}", std::process::id());
    let (reply_queue, mut replies) = private_queue(channel, None, &tag).await?;
    let correlation = uuid::Uuid::new_v4().simple().to_string();
    let properties = BasicProperties::default()
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(correlation.as_str().into())
        .with_expiration(wait.as_millis().max(1).to_string().as_str().into());
    let sent = Instant::now();
    publish_request(channel, &exchange, request, properties).await?;
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut answers: Vec<Answer> = Vec::new();
    let mut satisfied = false;
    loop {
        let next = tokio::time::timeout_at(deadline, replies.next()).await;
        let delivery = match next {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(e),
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
                });
                if !satisfied && enough(&answers) {
                    satisfied = true;
                    if grace.is_zero() {
                        break;
                    }
                    deadline = deadline.min(tokio::time::Instant::now() + grace);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "an answer that is not a worker's"),
        }
    }
    answers.sort_by(|a, b| a.info.worker.cmp(&b.info.worker));
    Ok(answers)
}
