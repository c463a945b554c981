//! The dead-letter queue read back: the dead letters listed without taking
//! them, and one put back into its jobs queue with its history kept.
//!
//! Listing takes up to N messages with `basic.get` on a channel of its own
//! and closes that channel without acking any: the broker puts them back,
//! in their order. Nothing is lost if the lister dies half-way (the channel
//! closes with the connection). Two listers at the same moment may each
//! see only part of the queue; a worker never consumes it.
//!
//! A quorum queue counts each such return as a delivery of the message
//! (`x-delivery-count`), and RabbitMQ 4.0 to 4.2 give quorum queues a
//! default delivery limit of 20, past which a message is dropped. So a
//! listed message that has been returned [`REFRESH_AT`] times or more is
//! renewed: a copy with the same body and headers is published to the
//! dead-letter queue (confirmed), then the message is acked. The copy
//! starts with no deliveries and waits at the back of the queue (its
//! `x-failed-at` still says when it failed); if the copy is not confirmed
//! the message is left as it was.
//!
//! Requeueing looks for the dead letter the same way (at most `scan` of
//! them), publishes a copy to its jobs queue with the broker's confirm, and
//! only then acks the dead letter: a failure at any step leaves it where
//! it was (at worst, a crash between the two leaves both, which the
//! at-least-once farm tolerates). The copy starts a fresh set of attempts
//! (`x-transcode-attempts` 0) and carries the earlier attempts' lines in
//! `x-transcode-history`, so that a second dead letter lists them all.

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sha2::{Digest, Sha256};

use super::delivery::{
    dead, header_string, header_u32, history_of, DELIVERY_COUNT_HEADER, HISTORY_HEADER,
    SETTLED_ATTEMPTS_HEADER,
};
use super::{until_taken, Broker, BrokerError};
use crate::config::BrokerSettings;
use crate::job::{Job, Priority};

/// Returns of a dead letter (looks at it) after which a listing renews it
/// (see the module's documentation): well below the smallest default
/// delivery limit (20), with room for several listers at once.
pub const REFRESH_AT: u32 = 10;

/// The smallest default delivery limit of a quorum queue (RabbitMQ 4.0).
const SMALLEST_DEFAULT_LIMIT: u32 = 20;
const _: () = assert!(REFRESH_AT * 2 <= SMALLEST_DEFAULT_LIMIT);

/// Looks through the queue a requeue makes before it answers "not found".
const REQUEUE_TRIES: u32 = 3;
/// The pause between those looks.
const RETURN_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// One message of the dead-letter queue, as its headers and body tell it.
/// It serializes without its body (the reasons only).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterMessage {
    /// A stable id to requeue it by: its job's id, or `message-` and 16
    /// hex digits of its body's SHA-256 when the body names no valid one.
    pub id: String,
    /// The job's id, when known.
    pub job_id: Option<String>,
    /// Why it failed, for people.
    pub error: Option<String>,
    /// Why it failed, for programs.
    pub error_kind: Option<String>,
    /// How many attempts it had.
    pub attempts: Option<u32>,
    /// One line per failed attempt, oldest first.
    pub attempt_history: Vec<String>,
    /// The worker that gave up on it.
    pub worker: Option<String>,
    /// When it failed, RFC 3339.
    pub failed_at: Option<String>,
    /// The queue it came from.
    pub original_queue: Option<String>,
    /// The job message (it may hold secrets, such as a webhook's: whoever
    /// shows it must leave them out).
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// The first dead letters and how many there are.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetters {
    /// Messages in the dead-letter queue.
    pub total: u32,
    /// The oldest of them, at most the number asked for.
    pub messages: Vec<DeadLetterMessage>,
}

/// A dead letter put back into a jobs queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Requeued {
    /// The dead letter's id.
    pub id: String,
    /// The job's id, when known.
    pub job_id: Option<String>,
    /// The jobs queue it went to.
    pub queue: String,
}

/// Why a dead letter was not requeued (it stays in the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    /// No dead letter with that id among the first `scanned`.
    #[error("no dead letter {id:?} among the first {scanned} of the dead-letter queue")]
    NotFound {
        /// The id asked for.
        id: String,
        /// How many were looked at.
        scanned: usize,
    },
    /// The broker failed; the dead letter is where it was.
    #[error("{0}; the dead letter stays in the dead-letter queue")]
    Broker(#[from] BrokerError),
}

impl DeadLetterMessage {
    fn read(properties: &BasicProperties, body: &[u8]) -> DeadLetterMessage {
        let text = |name| header_string(properties, name).filter(|v| !v.is_empty());
        let salvaged = Job::salvage_id(body);
        let job_id = salvaged
            .clone()
            .or_else(|| text(dead::JOB_ID).filter(|id| id != "unknown"));
        let id = salvaged.unwrap_or_else(|| {
            let digest = Sha256::digest(body);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("message-{hex}")
        });
        let attempt_history = match text(dead::ATTEMPT_HISTORY) {
            Some(lines) => lines.lines().map(str::to_string).collect(),
            None => history_of(properties),
        };
        // Dead-lettered by the broker (a delivery limit) rather than a worker.
        let by_broker = text("x-first-death-reason")
            .map(|reason| format!("dead-lettered by the broker ({reason})"));
        DeadLetterMessage {
            id,
            job_id,
            error: text(dead::ERROR).or(by_broker),
            error_kind: text(dead::ERROR_KIND),
            attempts: text(dead::ATTEMPTS).and_then(|n| n.parse().ok()),
            attempt_history,
            worker: text(dead::WORKER),
            failed_at: text(dead::FAILED_AT),
            original_queue: text(dead::ORIGINAL_QUEUE).or_else(|| text("x-first-death-queue")),
            body: body.to_vec(),
        }
    }

    /// The jobs queue a requeued copy goes to: the queue it came from when
    /// that is a jobs queue, else the queue of the priority its body names
    /// (normal when none): never a queue of jobs waiting for a capability,
    /// which a worker will choose again.
    pub fn requeue_queue(&self, settings: &BrokerSettings) -> String {
        let jobs_queues = settings.jobs_queues();
        if let Some(queue) = self
            .original_queue
            .as_ref()
            .filter(|q| jobs_queues.contains(q))
        {
            return queue.clone();
        }
        #[derive(serde::Deserialize)]
        struct PriorityOnly {
            priority: Option<Priority>,
        }
        let priority = serde_json::from_slice::<PriorityOnly>(&self.body)
            .ok()
            .and_then(|p| p.priority)
            .unwrap_or(Priority::Normal);
        settings.jobs_queue_for(priority)
    }
}

/// The headers of the requeued copy of a dead letter: its own headers
/// less the dead letter's and the broker's, a fresh count of attempts, and
/// its attempt history with a line saying it was requeued.
fn requeue_headers(properties: &BasicProperties, history: &[String], note: &str) -> FieldTable {
    let dropped = [
        dead::ERROR,
        dead::ERROR_KIND,
        dead::JOB_ID,
        dead::ATTEMPTS,
        dead::ATTEMPT_HISTORY,
        dead::WORKER,
        dead::FAILED_AT,
        dead::ORIGINAL_QUEUE,
        SETTLED_ATTEMPTS_HEADER,
        HISTORY_HEADER,
    ];
    let mut headers = FieldTable::default();
    if let Some(own) = properties.headers() {
        for (key, value) in own.inner() {
            let key = key.as_str();
            let broker_made = key.starts_with("x-death")
                || key.starts_with("x-first-death")
                || key.starts_with("x-last-death")
                || key.starts_with("x-delivery-count");
            if !broker_made && !dropped.contains(&key) {
                headers.insert(key.into(), value.clone());
            }
        }
    }
    let mut lines = history.to_vec();
    lines.push(format!(
        "requeued from the dead-letter queue at {} by {note}",
        crate::job::now_rfc3339()
    ));
    headers.insert(
        SETTLED_ATTEMPTS_HEADER.into(),
        AMQPValue::LongString("0".into()),
    );
    headers.insert(
        HISTORY_HEADER.into(),
        AMQPValue::LongString(lines.join("\n").into()),
    );
    headers
}

impl Broker {
    /// The first `limit` dead letters (oldest first) and how many there
    /// are, left in the queue (see the module's documentation).
    pub async fn peek_dead_letters(&self, limit: usize) -> Result<DeadLetters, BrokerError> {
        let channel = self.open_channel().await?;
        let queue = self.settings.dead_letter_queue.clone();
        let result = self.peek_on(&channel, &queue, limit).await;
        // Closing without acks gives every message back, in order.
        let _ = channel.close(200, "peeked".into()).await;
        result
    }

    async fn peek_on(
        &self,
        channel: &Channel,
        queue: &str,
        limit: usize,
    ) -> Result<DeadLetters, BrokerError> {
        let mut found = DeadLetters {
            total: 0,
            messages: Vec::new(),
        };
        // Renewed copies go to the back: reading stops before them.
        let mut wanted = limit;
        while found.messages.len() < wanted {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| self.amqp(e))?;
            let Some(message) = got else { break };
            if found.messages.is_empty() {
                found.total = message.message_count + 1;
                wanted = wanted.min(found.total as usize);
            }
            let delivery = &message.delivery;
            found.messages.push(DeadLetterMessage::read(
                &delivery.properties,
                &delivery.data,
            ));
            if header_u32(&delivery.properties, DELIVERY_COUNT_HEADER) >= REFRESH_AT {
                self.renew(queue, delivery).await;
            }
        }
        Ok(found)
    }

    /// Puts a fresh copy of `delivery` (no deliveries counted) into
    /// `queue`, then acks `delivery`; leaves it as it is when the broker
    /// does not confirm the copy.
    async fn renew(&self, queue: &str, delivery: &lapin::message::Delivery) {
        let mut headers = FieldTable::default();
        if let Some(own) = delivery.properties.headers() {
            for (key, value) in own.inner() {
                if key.as_str() != DELIVERY_COUNT_HEADER {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
        match self.publish_confirmed(queue, &delivery.data, headers).await {
            Ok(()) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %e, "a renewed dead letter was not acked: it is in the dead-letter queue twice");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew a dead letter; it stays as it is")
            }
        }
    }

    /// Puts the dead letter `id` (the oldest one with that id among the
    /// first `scan`) back into its jobs queue with its history kept and a
    /// fresh set of attempts, then removes it from the dead-letter queue;
    /// `note` says who asked, in the history line it adds.
    pub async fn requeue_dead_letter(
        &self,
        id: &str,
        scan: usize,
        note: &str,
    ) -> Result<Requeued, RequeueError> {
        let mut tries = 0;
        loop {
            let channel = self.open_channel().await?;
            let result = self.requeue_on(&channel, id, scan, note).await;
            // The messages looked at and not requeued go back, in order.
            let _ = channel.close(200, "requeue done".into()).await;
            tries += 1;
            match result {
                // Messages another channel (a listing) just gave back may
                // take a moment to be ready again: look once more.
                Err(RequeueError::NotFound { .. }) if tries < REQUEUE_TRIES => {
                    tokio::time::sleep(RETURN_WAIT).await;
                }
                result => return result,
            }
        }
    }

    async fn requeue_on(
        &self,
        channel: &Channel,
        id: &str,
        scan: usize,
        note: &str,
    ) -> Result<Requeued, RequeueError> {
        let queue = self.settings.dead_letter_queue.clone();
        let mut scanned = 0;
        while scanned < scan {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| self.amqp(e))?;
            let Some(message) = got else { break };
            scanned += 1;
            let delivery = message.delivery;
            let letter = DeadLetterMessage::read(&delivery.properties, &delivery.data);
            if letter.id != id {
                continue;
            }
            let target = letter.requeue_queue(&self.settings);
            let headers = requeue_headers(&delivery.properties, &letter.attempt_history, note);
            until_taken("the requeued dead letter", || {
                self.publish_confirmed(&target, &delivery.data, headers.clone())
            })
            .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| self.amqp(e))?;
            return Ok(Requeued {
                id: letter.id,
                job_id: letter.job_id,
                queue: target,
            });
        }
        Err(RequeueError::NotFound {
            id: id.to_string(),
            scanned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::string_headers;

    fn settings() -> BrokerSettings {
        let env: std::collections::HashMap<String, String> =
            [("AMQP_URL".to_string(), "amqp://h:5672/%2f".to_string())].into();
        crate::config::Settings::for_broker_from_env(None, &env)
            .unwrap()
            .broker
    }

    #[test]
    fn a_dead_letter_is_read_from_its_headers_and_named_by_its_job() {
        let props = BasicProperties::default().with_headers(string_headers([
            (dead::ERROR, "input in/a.mov does not exist".to_string()),
            (dead::ERROR_KIND, "input_not_found".to_string()),
            (dead::JOB_ID, "job-1".to_string()),
            (dead::ATTEMPTS, "1".to_string()),
            (
                dead::ATTEMPT_HISTORY,
                "attempt 1 on w: a\nattempt 2 on w: b".to_string(),
            ),
            (dead::ORIGINAL_QUEUE, "transcoding_jobs.low".to_string()),
        ]));
        let body = br#"{"job_id":"job-1","input_key":"in/a.mov","output_key":"o.mp4"}"#;
        let letter = DeadLetterMessage::read(&props, body);
        assert_eq!(letter.id, "job-1");
        assert_eq!(letter.job_id.as_deref(), Some("job-1"));
        assert_eq!(letter.error_kind.as_deref(), Some("input_not_found"));
        assert_eq!(letter.attempts, Some(1));
        assert_eq!(letter.attempt_history.len(), 2);
        let s = settings();
        assert_eq!(letter.requeue_queue(&s), "transcoding_jobs.low");

        let headers = requeue_headers(&props, &letter.attempt_history, "test");
        let requeued = BasicProperties::default().with_headers(headers.clone());
        assert_eq!(
            header_string(&requeued, SETTLED_ATTEMPTS_HEADER).as_deref(),
            Some("0")
        );
        let history = history_of(&requeued);
        assert_eq!(history.len(), 3, "{history:?}");
        assert!(history[2].starts_with("requeued from the dead-letter queue"));
        assert!(headers.inner().get(dead::ERROR).is_none());
    }

    #[test]
    fn a_message_without_a_job_id_is_named_by_its_body_and_goes_to_the_normal_queue() {
        let props = BasicProperties::default().with_headers(string_headers([
            (dead::JOB_ID, "unknown".to_string()),
            (
                "x-first-death-queue",
                "elsewhere.requires.x265enc".to_string(),
            ),
        ]));
        let letter = DeadLetterMessage::read(&props, b"not json");
        assert!(
            letter.id.starts_with("message-") && letter.id.len() == 24,
            "{}",
            letter.id
        );
        assert_eq!(letter.job_id, None);
        assert_eq!(letter.requeue_queue(&settings()), "transcoding_jobs");
        assert_eq!(
            DeadLetterMessage::read(&props, b"not json").id,
            letter.id,
            "stable"
        );
        let high = DeadLetterMessage::read(&props, br#"{"job_id":"j","priority":"high"}"#);
        assert_eq!(high.requeue_queue(&settings()), "transcoding_jobs.high");
    }
}
