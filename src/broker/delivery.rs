//! One job message as the broker delivered it, and the whole header
//! protocol that travels with a job: which attempt this is, the history of
//! earlier failed attempts, and the headers of a dead letter. A job
//! crosses from the broker to the worker once ([`Delivery::new`]) and back
//! once: acked, given back, retried as a copy, or dead-lettered.
//!
//! Headers:
//! - `x-delivery-count`: set by quorum queues, counts the deliveries of
//!   this copy that ended without being settled (a crash, a lost
//!   connection, a give-back);
//! - `x-transcode-attempts`: on a copy the worker republished, the
//!   attempts settled before it;
//! - `x-transcode-history`: one line per earlier failed attempt;
//! - on a dead letter: `x-error`, `x-error-kind`, `x-job-id`,
//!   `x-attempts`, `x-attempt-history`, `x-worker`, `x-failed-at`,
//!   `x-original-queue` (read back by [`super::dead_letters`]).

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use super::{until_taken, Broker};
use crate::error::JobError;

/// Delivery property `x-delivery-count` set by quorum queues on redelivery.
pub(super) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Header of a retried job: how many attempts were settled before this copy.
pub(super) const SETTLED_ATTEMPTS_HEADER: &str = "x-transcode-attempts";
/// Header of a retried job: one line per earlier failed attempt.
pub(super) const HISTORY_HEADER: &str = "x-transcode-history";

/// The headers of a dead letter (see [`Delivery::dead_letter`]).
pub(super) mod dead {
    /// Why it failed, for people.
    pub const ERROR: &str = "x-error";
    /// Why it failed, for programs ([`crate::error::ErrorKind`]).
    pub const ERROR_KIND: &str = "x-error-kind";
    /// The job's id (`unknown` when the message names none).
    pub const JOB_ID: &str = "x-job-id";
    /// How many attempts it had.
    pub const ATTEMPTS: &str = "x-attempts";
    /// One line per failed attempt, the last one included.
    pub const ATTEMPT_HISTORY: &str = "x-attempt-history";
    /// The worker that gave up on it.
    pub const WORKER: &str = "x-worker";
    /// When, RFC 3339.
    pub const FAILED_AT: &str = "x-failed-at";
    /// The queue it came from.
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
}

/// A delivered job message: its body, its attempt number, and the means
/// to settle it.
#[derive(Debug)]
pub struct Delivery {
    inner: lapin::message::Delivery,
    attempt: u32,
    queue: String,
}

/// Why a job ends in the dead-letter queue, for its headers.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The job's id (`unknown` when the message has none).
    pub job_id: &'a str,
    /// The last attempt's error.
    pub error: &'a JobError,
    /// The worker that gives up on it.
    pub worker: &'a str,
}

impl Delivery {
    /// Takes over a message the broker delivered from `queue`.
    pub fn new(inner: lapin::message::Delivery, queue: &str) -> Delivery {
        let attempt = attempt_of(&inner.properties);
        Delivery {
            inner,
            attempt,
            queue: queue.to_string(),
        }
    }

    /// The queue it came from (a retried or released copy goes back there,
    /// so it keeps its priority).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The attempt this delivery is (1 for the first): the attempts
    /// settled before this copy of the job plus the deliveries of this
    /// copy that ended unsettled, plus one.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The failed attempts recorded before this one, oldest first.
    pub fn history(&self) -> Vec<String> {
        history_of(&self.inner.properties)
    }

    /// Acknowledges it: the job is done with (completed, or settled
    /// elsewhere). A failure is logged: the broker will deliver it again.
    pub async fn ack(&self) {
        match self.inner.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the ack was not sent (the channel is gone); the broker will deliver the job again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the ack failed; the broker will deliver the job again")
            }
        }
    }

    /// Gives it back to its queue unchanged (the queue counts one more
    /// delivery of it).
    pub async fn give_back(&self) {
        let options = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        match self.inner.acker.nack(options).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the nack was not sent (the channel is gone); the broker will deliver the job again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "the nack failed; the broker will deliver the job again")
            }
        }
    }

    /// Gives the job back to `queue` as a new copy that carries this
    /// attempt as settled and `error` in its history (a nack cannot change
    /// a message), then acks this one. If the broker does not take the
    /// copy, gives this one back as it is.
    pub async fn retry(&self, broker: &Broker, worker: &str, error: &JobError) {
        let mut history = self.history();
        history.push(history_line(self.attempt, worker, error));
        self.requeue_copy(broker, self.attempt, history, "the retried copy")
            .await;
    }

    /// Gives the job back to `queue` without using up an attempt (the
    /// worker is stopping, the job did not fail): a copy whose attempt
    /// number is this one's again, then acks this one. A nack would not do:
    /// a quorum queue counts every nacked delivery. The copy waits at the
    /// back of the queue. If the broker does not take it, gives this one
    /// back as it is.
    pub async fn release(&self, broker: &Broker) {
        let settled = self.attempt.saturating_sub(1);
        self.requeue_copy(broker, settled, self.history(), "the released copy")
            .await;
    }

    /// Moves the job, unchanged in its attempts and history, to `queue`
    /// (a queue of workers that can run it) with the headers `extra`,
    /// expiring after `expires`, then acks this one. If the broker does not
    /// take it, gives this one back as it is.
    pub async fn move_to(
        &self,
        broker: &Broker,
        queue: &str,
        extra: &[(&str, String)],
        expires: Option<std::time::Duration>,
    ) {
        let settled = self.attempt.saturating_sub(1);
        let mut headers = self.copy_headers(settled, self.history());
        for (name, value) in extra {
            headers.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
        }
        let copy =
            || broker.publish_confirmed_expiring(queue, self.body(), headers.clone(), expires);
        match until_taken("the moved job", copy).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                tracing::warn!(error = %e, "could not move the job to {queue:?}; giving it back as it is");
                self.give_back().await;
            }
        }
    }

    /// The text value of the header `name`, if it has one.
    pub fn header_text(&self, name: &str) -> Option<String> {
        header_string(&self.inner.properties, name)
    }

    /// Sends its retried and released copies to `queue` instead of the
    /// queue it came from.
    pub fn set_home(&mut self, queue: &str) {
        self.queue = queue.to_string();
    }

    /// Publishes a copy to its own queue with `settled` attempts and
    /// `history`, then acks this delivery; gives it back unchanged if that
    /// fails.
    async fn requeue_copy(&self, broker: &Broker, settled: u32, history: Vec<String>, what: &str) {
        let headers = self.copy_headers(settled, history);
        self.publish_copy(broker, &self.queue, headers, what).await;
    }

    /// The headers of a copy: `settled` attempts, `history`, and the
    /// headers of this delivery that are not the broker's or the attempt
    /// protocol's (such as when it waits for a capable worker).
    fn copy_headers(&self, settled: u32, history: Vec<String>) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(own) = self.inner.properties.headers() {
            for (key, value) in own.inner() {
                let key = key.as_str();
                if !key.starts_with("x-delivery-count")
                    && !key.starts_with("x-death")
                    && key != SETTLED_ATTEMPTS_HEADER
                    && key != HISTORY_HEADER
                    && !key.starts_with("x-first-death")
                    && !key.starts_with("x-last-death")
                {
                    headers.insert(key.into(), value.clone());
                }
            }
        }
        headers.insert(
            SETTLED_ATTEMPTS_HEADER.into(),
            AMQPValue::LongString(settled.to_string().into()),
        );
        headers.insert(
            HISTORY_HEADER.into(),
            AMQPValue::LongString(history.join("\n").into()),
        );
        headers
    }

    /// Publishes a copy with `headers` to `queue`, then acks this delivery;
    /// gives it back unchanged if that fails.
    async fn publish_copy(&self, broker: &Broker, queue: &str, headers: FieldTable, what: &str) {
        let copy = || broker.publish_confirmed(queue, self.body(), headers.clone());
        match until_taken(what, copy).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                tracing::warn!(error = %e, "could not requeue {what}; giving the job back as it is");
                self.give_back().await;
            }
        }
    }

    /// Moves the job to the dead-letter queue with headers that say why
    /// and list every attempt, then acks it. If the broker does not take
    /// the dead letter, gives the job back.
    pub async fn dead_letter(&self, broker: &Broker, why: &DeadLetter<'_>) {
        self.dead_letter_instead(broker, why, self.body(), &self.queue)
            .await;
    }

    /// [`Delivery::dead_letter`] with another message in its place: `body`,
    /// which came from `queue` (a segmented job's own message, when one of
    /// its part tasks fails for good); this delivery is acked once the
    /// broker has taken it. Returns whether it was (else this delivery is
    /// given back).
    pub async fn dead_letter_instead(
        &self,
        broker: &Broker,
        why: &DeadLetter<'_>,
        body: &[u8],
        queue: &str,
    ) -> bool {
        let headers = dead_letter_headers(why, self.attempt, self.history(), queue);
        let dead_letter = || broker.dead_letter(body, headers.clone());
        match until_taken("the dead letter", dead_letter).await {
            Ok(()) => {
                self.ack().await;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not dead-letter the job; giving it back");
                self.give_back().await;
                false
            }
        }
    }
}

/// The headers of a dead letter of job `why.job_id` after `attempt`
/// attempts (the earlier ones failed as `history` says), taken from
/// `queue`.
pub fn dead_letter_headers(
    why: &DeadLetter<'_>,
    attempt: u32,
    mut history: Vec<String>,
    queue: &str,
) -> FieldTable {
    let error = why.error;
    let mut reason = error.message.clone();
    if !error.kind.is_permanent() {
        reason = format!("gave up after {attempt} attempts; last error: {reason}");
    }
    history.push(history_line(attempt, why.worker, error));
    string_headers([
        (dead::ERROR, reason),
        (dead::ERROR_KIND, error.kind.to_string()),
        (dead::JOB_ID, why.job_id.to_string()),
        (dead::ATTEMPTS, attempt.to_string()),
        (dead::ATTEMPT_HISTORY, history.join("\n")),
        (dead::WORKER, why.worker.to_string()),
        (dead::FAILED_AT, crate::job::now_rfc3339()),
        (dead::ORIGINAL_QUEUE, queue.to_string()),
    ])
}

/// One line of a job's attempt history.
fn history_line(attempt: u32, worker: &str, error: &JobError) -> String {
    let message: String = error
        .message
        .chars()
        .filter(|c| *c != '\n')
        .take(300)
        .collect();
    format!(
        "attempt {attempt} on {worker} at {}: {}: {message}",
        crate::job::now_rfc3339(),
        error.kind
    )
}

pub(super) fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

pub(super) fn header_u32(properties: &BasicProperties, name: &str) -> u32 {
    match header(properties, name) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).parse().unwrap_or(0)
        }
        _ => 0,
    }
}

/// The attempt number of a delivery (1 for the first): the attempts
/// settled before this copy of the job (its `x-transcode-attempts` header)
/// plus the quorum queue's `x-delivery-count` (deliveries of this copy that
/// ended without being settled, such as a crash), plus one.
fn attempt_of(properties: &BasicProperties) -> u32 {
    header_u32(properties, SETTLED_ATTEMPTS_HEADER)
        .saturating_add(header_u32(properties, DELIVERY_COUNT_HEADER))
        .saturating_add(1)
}

/// The text of the header `name`, if it is a string.
pub(super) fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The failed attempts recorded in a delivery's history header, oldest first.
pub(super) fn history_of(properties: &BasicProperties) -> Vec<String> {
    match header(properties, HISTORY_HEADER) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes())
            .lines()
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Builds a header table of string values.
pub fn string_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_headers(table: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn attempts_count_settled_attempts_and_unsettled_deliveries() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        let mut table = FieldTable::default();
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        assert_eq!(attempt_of(&with_headers(table.clone())), 3);
        table.insert(
            SETTLED_ATTEMPTS_HEADER.into(),
            AMQPValue::LongString("4".into()),
        );
        assert_eq!(attempt_of(&with_headers(table)), 7);
    }

    #[test]
    fn history_is_read_line_by_line() {
        let props = with_headers(string_headers([(HISTORY_HEADER, "a\nb".to_string())]));
        assert_eq!(history_of(&props), ["a", "b"]);
        assert!(history_of(&BasicProperties::default()).is_empty());
    }
}
