//! The sender: every worker (unless `webhook.senders` is 0) consumes
//! `broker.webhooks_queue` on a channel of its own and POSTs each queued
//! notice to its receiver, `webhook.senders` at a time.
//!
//! - 2xx: delivered; the notice is acked.
//! - No answer in `webhook.timeout`, a connection error, or any other
//!   status (redirects are not followed): the notice is republished, with
//!   its attempts and last error in its headers, to the wait queue of the
//!   next `webhook.retry_delays` entry, whose message TTL sends it back to
//!   the webhooks queue; when the next attempt would come more than
//!   `webhook.retry_for` after the first, it goes to the webhooks'
//!   dead-letter queue instead.
//! - A host the policy does not allow ([`super::guard`]): never sent; to
//!   the dead-letter queue at once, with a warning.
//!
//! Each notice is republished (confirmed) before it is acked, so a crash
//! or a lost connection sends it again rather than never: delivery is at
//! least once, and a receiver tells repeats apart by `X-Transcode-Delivery`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;
use url::Url;

use super::guard::{Policy, Refusal, Target};
use super::{
    origin, Queued, ATTEMPTS_HEADER, ERROR_HEADER, FIRST_ATTEMPT_HEADER, LAST_ATTEMPT_HEADER,
    LAST_STATUS_HEADER,
};
use crate::broker::{string_headers, until_taken, Broker};
use crate::config::Settings;

/// How long the sender waits before opening its channel again after it
/// failed while the connection is still up.
const RETRY_CHANNEL_DELAY: Duration = Duration::from_secs(2);
/// The most of a failed answer's body that is read (the rest is dropped).
const MAX_RESPONSE_BYTES: usize = 4096;
/// The most of it quoted in the error.
const MAX_QUOTED_CHARS: usize = 200;

/// Delivers queued webhook notices for one broker session; dropping it
/// stops (a notice being sent is then given back by the broker).
#[derive(Debug)]
pub struct Sender {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the sender needs to know.
#[derive(Debug)]
struct Config {
    senders: u16,
    policy: Policy,
    retry_delays: Vec<Duration>,
    retry_for: Duration,
    timeout: Duration,
    worker: String,
}

/// Why an attempt did not deliver.
#[derive(Debug)]
enum Failure {
    /// Not allowed: never to be sent.
    Refused(String),
    /// To be tried again: the receiver's status, if it answered, and what
    /// went wrong.
    Failed { status: Option<u16>, error: String },
}

impl Sender {
    /// Starts delivering on a channel of its own on `broker`'s connection,
    /// as worker `worker`; `None` when `webhook.senders` is 0.
    pub fn start(broker: Arc<Broker>, settings: &Settings, worker: &str) -> Option<Sender> {
        let w = &settings.webhook;
        if w.senders == 0 {
            return None;
        }
        let entries = w.allowed_hosts().unwrap_or_else(|e| {
            // Checked when the settings were loaded.
            tracing::error!(error = %e, "webhook.allowed_hosts is invalid; allowing public addresses only");
            Vec::new()
        });
        let config = Arc::new(Config {
            senders: w.senders,
            policy: Policy::new(entries),
            retry_delays: w.retry_delays.clone(),
            retry_for: w.retry_for,
            timeout: w.timeout,
            worker: worker.to_string(),
        });
        let task = tokio::spawn(send_loop(broker, config));
        Some(Sender { task })
    }
}

/// Delivers until the connection closes; opens a new channel after a
/// channel failure.
async fn send_loop(broker: Arc<Broker>, config: Arc<Config>) {
    loop {
        match consume(&broker, &config).await {
            Ok(()) => tracing::debug!("the webhook consumer ended"),
            Err(e) => {
                tracing::warn!(error = %e, "the webhook channel failed; no webhook is sent from this worker until it is back")
            }
        }
        if !broker.is_connected() {
            return;
        }
        tokio::time::sleep(RETRY_CHANNEL_DELAY).await;
    }
}

async fn consume(broker: &Broker, config: &Config) -> Result<(), String> {
    let queue = broker.settings().webhooks_queue.clone();
    let channel = broker.open_channel().await.map_err(|e| e.to_string())?;
    channel
        .basic_qos(config.senders, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let tag = format!(
        "webhooks-{}-{}",
        config.worker,
        uuid::Uuid::new_v4().simple()
    );
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(queue = %queue, senders = config.senders, "delivering webhooks");
    consumer
        .try_for_each_concurrent(usize::from(config.senders), |delivery| async move {
            deliver(broker, config, delivery).await;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
}

/// Makes one attempt at a queued notice and settles it: acked when
/// delivered; otherwise moved on to a wait queue or the dead-letter queue.
async fn deliver(broker: &Broker, config: &Config, delivery: Delivery) {
    let dead = broker.settings().webhooks_dead_queue();
    let given_up = || {
        [
            ("x-failed-at", crate::job::now_rfc3339()),
            ("x-worker", config.worker.clone()),
        ]
    };
    let queued = match Queued::read(&delivery.properties) {
        Ok(queued) => queued,
        Err(why) => {
            tracing::warn!(error = %why, "a message on the webhooks queue is not a webhook notice; moving it to {dead}");
            let mut headers = vec![(ERROR_HEADER, why)];
            headers.extend(given_up());
            return settle(broker, &delivery, &dead, string_headers(headers)).await;
        }
    };
    let (event, id, to) = (&queued.event, &queued.delivery, origin(&queued.url));
    let now = OffsetDateTime::now_utc();
    let (queue, pairs) = match attempt(config, &queued, &delivery.data).await {
        Ok(status) => {
            let attempts = queued.attempts + 1;
            tracing::info!(%event, delivery = %id, %to, status, attempts, job_id = %queued.job_id, "webhook delivered");
            return ack(&delivery).await;
        }
        Err(Failure::Refused(why)) => {
            tracing::warn!(%event, delivery = %id, %to, error = %why, "webhook refused; moving it to {dead} unsent");
            let mut pairs = vec![
                (ATTEMPTS_HEADER, queued.attempts.to_string()),
                (ERROR_HEADER, why),
            ];
            pairs.extend(given_up());
            (dead, pairs)
        }
        Err(Failure::Failed { status, error }) => {
            let attempts = queued.attempts + 1;
            let first = queued.first_attempt_at.unwrap_or(now);
            let stamp = |t: OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            let mut pairs = vec![
                (ATTEMPTS_HEADER, attempts.to_string()),
                (FIRST_ATTEMPT_HEADER, stamp(first)),
                (LAST_ATTEMPT_HEADER, stamp(now)),
                (
                    LAST_STATUS_HEADER,
                    status.map(|s| s.to_string()).unwrap_or_default(),
                ),
            ];
            let elapsed = Duration::try_from(now - first).unwrap_or_default();
            match next_delay(&config.retry_delays, attempts, elapsed, config.retry_for) {
                Some(delay) => {
                    tracing::warn!(%event, delivery = %id, %to, %error, attempts, retry_in = ?delay, "webhook not delivered; retrying later");
                    pairs.push((ERROR_HEADER, error));
                    (broker.settings().webhooks_wait_queue(delay), pairs)
                }
                None => {
                    tracing::error!(%event, delivery = %id, %to, %error, attempts, "webhook not delivered within webhook.retry_for; moving it to {dead}");
                    let over = humantime::format_duration(Duration::from_secs(elapsed.as_secs()));
                    let why = format!(
                        "gave up after {attempts} attempts over {over}; last error: {error}"
                    );
                    pairs.push((ERROR_HEADER, why));
                    pairs.extend(given_up());
                    (dead, pairs)
                }
            }
        }
    };
    settle(broker, &delivery, &queue, queued.headers_with(pairs)).await;
}

/// The wait before the next attempt after `attempts` failed ones, the
/// first `elapsed` ago; `None` when that attempt would come later than
/// `retry_for` after the first (give up).
fn next_delay(
    delays: &[Duration],
    attempts: u32,
    elapsed: Duration,
    retry_for: Duration,
) -> Option<Duration> {
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let delay = *delays.get(index).or(delays.last())?;
    (elapsed + delay <= retry_for).then_some(delay)
}

/// Republishes the notice's body to `queue` with `headers`, then acks it;
/// gives it back if the broker does not take the copy.
async fn settle(broker: &Broker, delivery: &Delivery, queue: &str, headers: FieldTable) {
    let copy = || broker.publish_confirmed(queue, &delivery.data, headers.clone());
    match until_taken("the webhook notice", copy).await {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not move the webhook notice to {queue}; giving it back");
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = delivery.acker.nack(requeue).await {
                tracing::debug!(error = %e, "the nack failed; the broker will deliver the notice again");
            }
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(error = %e, "the ack failed; the broker will deliver the notice again");
    }
}

/// One POST of `body`: the HTTP status when it was 2xx.
async fn attempt(config: &Config, queued: &Queued, body: &[u8]) -> Result<u16, Failure> {
    let url = Url::parse(&queued.url)
        .map_err(|e| Failure::Refused(format!("the webhook URL is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::Refused(format!(
            "the webhook URL is not http:// or https:// but {}://",
            url.scheme()
        )));
    }
    let target = config.policy.check(&url).await.map_err(|r| match r {
        Refusal::Forbidden(why) => Failure::Refused(why),
        Refusal::Unresolved(why) => Failure::Failed {
            status: None,
            error: why,
        },
    })?;
    post(config, queued, url, &target, body).await
}

/// POSTs `body` to `url`, connecting only to `target`'s addresses.
async fn post(
    config: &Config,
    queued: &Queued,
    url: Url,
    target: &Target,
    body: &[u8],
) -> Result<u16, Failure> {
    let failed = |status: Option<u16>, error: String| Failure::Failed { status, error };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("transcode-worker/", env!("CARGO_PKG_VERSION")));
    if let Some(name) = &target.name {
        builder = builder.resolve_to_addrs(name, &target.addrs);
    }
    let client = builder
        .build()
        .map_err(|e| failed(None, format!("cannot make an HTTP client: {}", describe(e))))?;
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Transcode-Event", &queued.event)
        .header("X-Transcode-Delivery", &queued.delivery)
        .body(body.to_vec());
    if let Some(signature) = &queued.signature {
        request = request.header("X-Transcode-Signature", signature);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| failed(None, describe(e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let mut excerpt = Vec::new();
    while excerpt.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            _ => break,
        }
    }
    excerpt.truncate(MAX_RESPONSE_BYTES);
    let quoted: String = String::from_utf8_lossy(&excerpt)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED_CHARS)
        .collect();
    let mut error = format!("the receiver answered {status}");
    if status.is_redirection() {
        error.push_str(" (redirects are not followed)");
    }
    if !quoted.trim().is_empty() {
        error.push_str(&format!(": {}", quoted.trim()));
    }
    Err(failed(Some(status.as_u16()), error))
}

/// A reqwest error with its causes (`error sending request: ...:
/// Connection refused`), without the URL (its path may hold a token).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() {
        "no answer in time".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn delays_follow_the_list_and_repeat_the_last() {
        let delays = secs(&[10, 60, 300]);
        let day = Duration::from_secs(86400);
        let zero = Duration::ZERO;
        assert_eq!(
            next_delay(&delays, 1, zero, day),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            next_delay(&delays, 2, zero, day),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(&delays, 3, zero, day),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            next_delay(&delays, 9, zero, day),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn gives_up_when_the_next_attempt_would_pass_retry_for() {
        let delays = secs(&[60]);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            next_delay(&delays, 5, Duration::from_secs(3540), hour),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(&delays, 5, Duration::from_secs(3541), hour),
            None
        );
        assert_eq!(next_delay(&[], 1, Duration::ZERO, hour), None);
    }
}
