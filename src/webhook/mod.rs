//! Webhooks: telling whoever published a job, over HTTP, how it ended.
//!
//! A job may carry `"webhook": {"url", "events", "secret"}`
//! ([`crate::job::Webhook`]). The worker that settles the job calls
//! [`notify`], which writes the notice once, signs it, and queues it on
//! `broker.webhooks_queue` with a broker confirm; it never fails, delays
//! or repeats the job. Every worker's [`Sender`] takes queued notices and
//! POSTs them, retrying through the wait queues, and moves what cannot be
//! delivered to the webhooks' dead-letter queue. So a receiver that is
//! down only delays its own notices.
//!
//! - [`sign`]: the `X-Transcode-Signature` HMAC;
//! - [`guard`]: which hosts a webhook may reach (SSRF);
//! - [`sender`]: the consumer that delivers.
//!
//! A queued notice is an AMQP message whose body is the exact JSON to
//! POST and whose headers say where and how:
//! - `x-webhook-url`, `x-webhook-event`, `x-job-id`;
//! - `x-webhook-delivery`: the delivery id (a UUID), the same on every
//!   retry, sent as `X-Transcode-Delivery`;
//! - `x-webhook-signature`: when the job has a secret, the signature
//!   (the secret itself never leaves the job message);
//! - after a failed attempt: `x-webhook-attempts`,
//!   `x-webhook-first-attempt-at`, `x-webhook-last-attempt-at`,
//!   `x-webhook-last-status` (when the receiver answered) and `x-error`.
//!
//! A dead letter of `<webhooks_queue>.dead` has the same body and headers
//! plus `x-failed-at` and `x-worker`; `x-error` says why it was given up.
//! Moved back into the webhooks queue, it gets one more attempt.

pub mod guard;
mod sender;
pub mod sign;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::Serialize;

pub use sender::Sender;

use crate::broker::{string_headers, until_taken, Broker};
use crate::error::{ErrorKind, JobError};
use crate::job::{Job, WebhookEvent};
use crate::pipeline::{Made, MediaInfo, VariantMade};

/// Header: where the notice goes.
const URL_HEADER: &str = "x-webhook-url";
/// Header: the event word.
const EVENT_HEADER: &str = "x-webhook-event";
/// Header: the job's id.
const JOB_ID_HEADER: &str = "x-job-id";
/// Header: the delivery id, the same on every attempt.
const DELIVERY_HEADER: &str = "x-webhook-delivery";
/// Header: the signature, when the job has a secret.
const SIGNATURE_HEADER: &str = "x-webhook-signature";
/// Header: attempts made so far.
const ATTEMPTS_HEADER: &str = "x-webhook-attempts";
/// Header: when the first attempt was made (RFC 3339).
const FIRST_ATTEMPT_HEADER: &str = "x-webhook-first-attempt-at";
/// Header: when the last attempt was made (RFC 3339).
const LAST_ATTEMPT_HEADER: &str = "x-webhook-last-attempt-at";
/// Header: the HTTP status of the last answer, when there was one.
const LAST_STATUS_HEADER: &str = "x-webhook-last-status";
/// Header: what went wrong last, for people.
const ERROR_HEADER: &str = "x-error";

/// What a completed job made, as its webhook reports it (`result`): the
/// figures of its first (or only) output, and for a job with several
/// outputs (renditions) the figures of each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResult {
    /// The key the output is stored under.
    pub output_key: String,
    /// The stored output's size in bytes.
    pub output_size_bytes: u64,
    /// The output's duration in seconds, from the verified output (`null`
    /// when an earlier attempt had stored it and nothing was encoded).
    pub duration_seconds: Option<f64>,
    /// The output's video frames: its duration times its frame rate, from
    /// the verified output (`null` when either is unknown).
    pub frames_encoded: Option<u64>,
    /// Every output of a job with several, in the job's order (absent for
    /// a job with one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputResult>,
}

/// One output of a job with several, as its webhook reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputResult {
    /// The key it is stored under.
    pub output_key: String,
    /// The bytes stored (every file of an HLS package).
    pub output_size_bytes: u64,
    /// Its duration in seconds, when this attempt made it.
    pub duration_seconds: Option<f64>,
    /// Its frame height in lines, when this attempt made it.
    pub height: Option<u32>,
    /// For an HLS package: its variants.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantMade>,
    /// What was made otherwise than asked (a height kept because the
    /// source is shorter, variants of a ladder left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl OutputResult {
    /// The result of storing `size` bytes under `output_key`, with what
    /// this attempt made there, if it made it.
    pub fn new(output_key: &str, size: u64, made: Option<&Made>) -> OutputResult {
        let media = made.map(|m| &m.media);
        OutputResult {
            output_key: output_key.to_string(),
            output_size_bytes: size,
            duration_seconds: media
                .and_then(|m| m.duration_ms)
                .map(|ms| ms as f64 / 1000.0),
            height: media.and_then(|m| m.video.as_ref()).map(|v| v.height),
            variants: made.map(|m| m.variants.clone()).unwrap_or_default(),
            notes: made.map(|m| m.notes.clone()).unwrap_or_default(),
        }
    }
}

impl JobResult {
    /// The result of a job whose outputs are `outputs` (key, bytes stored,
    /// what this attempt made there): the first one's figures, and every
    /// one when there are several.
    pub fn of_outputs(outputs: &[(&str, u64, Option<&Made>)]) -> JobResult {
        let (key, size, made) = outputs.first().copied().unwrap_or(("", 0, None));
        let mut result = JobResult::new(key, size, made.map(|m| &m.media));
        if outputs.len() > 1 {
            result.outputs = outputs
                .iter()
                .map(|(key, size, made)| OutputResult::new(key, *size, *made))
                .collect();
        }
        result
    }

    /// The result of storing `size` bytes under `output_key`, with the
    /// verified output's `media` when this attempt made it.
    pub fn new(output_key: &str, size: u64, media: Option<&MediaInfo>) -> JobResult {
        let seconds = media
            .and_then(|m| m.duration_ms)
            .map(|ms| ms as f64 / 1000.0);
        let rate = media
            .and_then(|m| m.video.as_ref())
            .map(|v| v.frame_rate)
            .filter(|r| *r > 0.0);
        JobResult {
            output_key: output_key.to_string(),
            output_size_bytes: size,
            duration_seconds: seconds,
            frames_encoded: seconds.zip(rate).map(|(s, r)| (s * r).round() as u64),
            outputs: Vec::new(),
        }
    }
}

/// How a job ended, with what its webhook reports of it.
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    /// Its output is stored.
    Completed(&'a JobResult),
    /// It failed for good: it went to the dead-letter queue.
    Failed(&'a JobError),
    /// It was cancelled.
    Cancelled,
}

impl Ended<'_> {
    /// The event this ending is.
    pub fn event(&self) -> WebhookEvent {
        match self {
            Ended::Completed(_) => WebhookEvent::Completed,
            Ended::Failed(_) => WebhookEvent::Failed,
            Ended::Cancelled => WebhookEvent::Cancelled,
        }
    }
}

/// The JSON body POSTed to the receiver.
#[derive(Debug, Serialize)]
struct Notice<'a> {
    event: WebhookEvent,
    job_id: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_kind: Option<ErrorKind>,
}

/// The body of the notice of `job_id` ending as `ended`, stamped now.
pub fn body(job_id: &str, ended: Ended<'_>) -> Vec<u8> {
    let (result, error) = match ended {
        Ended::Completed(result) => (Some(result), None),
        Ended::Failed(error) => (None, Some(error)),
        Ended::Cancelled => (None, None),
    };
    let notice = Notice {
        event: ended.event(),
        job_id,
        timestamp: crate::job::now_rfc3339(),
        result,
        error: error.map(|e| e.message.as_str()),
        error_kind: error.map(|e| e.kind),
    };
    serde_json::to_vec(&notice).expect("a notice serializes")
}

/// Queues the webhook notice of `job` ending as `ended`, if the job has a
/// webhook that asks for this event, and waits for the broker's confirm
/// (asking again while the broker refuses, like [`until_taken`]). Never
/// fails the job: a notice the broker does not take is logged as an error
/// and lost. Call it before the job's delivery is settled, so that a crash
/// in between sends the notice again rather than never.
pub async fn notify(broker: &Broker, job: &Job, ended: Ended<'_>) {
    let Some(hook) = &job.webhook else {
        return;
    };
    let event = ended.event();
    if !hook.events.contains(&event) {
        return;
    }
    let body = body(&job.job_id, ended);
    let delivery = uuid::Uuid::new_v4().to_string();
    let mut pairs = vec![
        (URL_HEADER, hook.url.clone()),
        (EVENT_HEADER, event.to_string()),
        (JOB_ID_HEADER, job.job_id.clone()),
        (DELIVERY_HEADER, delivery.clone()),
    ];
    if let Some(secret) = &hook.secret {
        pairs.push((SIGNATURE_HEADER, sign::signature(secret.expose(), &body)));
    }
    let headers = string_headers(pairs);
    let queue = &broker.settings().webhooks_queue;
    let queued = until_taken("the webhook notice", || {
        broker.publish_confirmed(queue, &body, headers.clone())
    })
    .await;
    match queued {
        Ok(()) => {
            tracing::info!(%event, %delivery, to = %origin(&hook.url), "webhook notice queued")
        }
        Err(e) => {
            tracing::error!(error = %e, %event, %delivery, "could not queue the webhook notice; it will not be sent")
        }
    }
}

/// `scheme://host:port` of a URL, for logs: the path and query may hold a
/// receiver's token.
fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "<invalid URL>".into(),
    }
}

/// A queued notice as the sender reads it back.
#[derive(Debug, Clone)]
struct Queued {
    url: String,
    event: String,
    job_id: String,
    delivery: String,
    signature: Option<String>,
    attempts: u32,
    first_attempt_at: Option<time::OffsetDateTime>,
    headers: FieldTable,
}

impl Queued {
    /// Reads the headers of a queued notice; a sentence when they are not
    /// those of one.
    fn read(properties: &BasicProperties) -> Result<Queued, String> {
        let headers = properties.headers().clone().unwrap_or_default();
        let text = |name: &str| -> Option<String> {
            match headers.inner().get(name)? {
                AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
                AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            }
        };
        let need = |name: &str| {
            text(name).ok_or_else(|| {
                format!("the message is not a webhook notice: it has no {name} header")
            })
        };
        let first_attempt_at = match text(FIRST_ATTEMPT_HEADER) {
            Some(t) => Some(
                time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        format!("the {FIRST_ATTEMPT_HEADER} header {t:?} is not a time: {e}")
                    })?,
            ),
            None => None,
        };
        Ok(Queued {
            url: need(URL_HEADER)?,
            event: need(EVENT_HEADER)?,
            job_id: text(JOB_ID_HEADER).unwrap_or_default(),
            delivery: need(DELIVERY_HEADER)?,
            signature: text(SIGNATURE_HEADER),
            attempts: text(ATTEMPTS_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            first_attempt_at,
            headers,
        })
    }

    /// Its headers with `pairs` set (replacing any of the same name), for
    /// a copy: without the queue's own delivery count.
    fn headers_with<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, String)>) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in self.headers.inner() {
            if key.as_str() != "x-delivery-count" {
                table.insert(key.clone(), value.clone());
            }
        }
        for (key, value) in string_headers(pairs).inner() {
            table.insert(key.clone(), value.clone());
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::VideoStream;

    #[test]
    fn a_completed_notice_has_the_seed_shape() {
        let media = MediaInfo {
            container: Some("video/quicktime".into()),
            duration_ms: Some(120_000),
            video: Some(VideoStream {
                codec: "video/x-h264".into(),
                width: 640,
                height: 360,
                frame_rate: 30.0,
                bitrate: 0,
                pixel_aspect_ratio: None,
            }),
            audio: Vec::new(),
            subtitles: Vec::new(),
        };
        let result = JobResult::new("out/a.mp4", 50_000_000, Some(&media));
        let v: serde_json::Value =
            serde_json::from_slice(&body("job-123", Ended::Completed(&result))).unwrap();
        assert_eq!(v["event"], "completed");
        assert_eq!(v["job_id"], "job-123");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["result"]["frames_encoded"], 3600);
        assert_eq!(v["result"]["duration_seconds"], 120.0);
        assert_eq!(v["result"]["output_size_bytes"], 50_000_000);
        assert_eq!(v["result"]["output_key"], "out/a.mp4");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn a_failed_notice_has_the_error_and_no_result() {
        let error = JobError::new(ErrorKind::InputNotFound, "there is no input \"x\"");
        let v: serde_json::Value =
            serde_json::from_slice(&body("j", Ended::Failed(&error))).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["error"], "there is no input \"x\"");
        assert_eq!(v["error_kind"], "input_not_found");
        assert!(v.get("result").is_none());
        let v: serde_json::Value = serde_json::from_slice(&body("j", Ended::Cancelled)).unwrap();
        assert_eq!(v["event"], "cancelled");
        assert!(v.get("result").is_none() && v.get("error").is_none());
    }

    #[test]
    fn a_job_with_several_outputs_lists_each_beside_the_first_ones_figures() {
        let made = Made {
            media: MediaInfo {
                duration_ms: Some(2000),
                video: Some(VideoStream {
                    height: 480,
                    frame_rate: 25.0,
                    ..Default::default()
                }),
                ..Default::default()
            },
            notes: vec!["made at the source's 480 lines".into()],
            ..Default::default()
        };
        let result =
            JobResult::of_outputs(&[("r/720.mp4", 10, Some(&made)), ("r/360.mp4", 5, None)]);
        let v = serde_json::to_value(&result).unwrap();
        assert_eq!(v["output_key"], "r/720.mp4");
        assert_eq!(v["frames_encoded"], 50);
        assert_eq!(v["outputs"][0]["height"], 480);
        assert_eq!(
            v["outputs"][0]["notes"][0],
            "made at the source's 480 lines"
        );
        assert_eq!(v["outputs"][1]["output_key"], "r/360.mp4");
        assert!(v["outputs"][1]["duration_seconds"].is_null());
        // One output: the seed's shape, no list.
        let one = JobResult::of_outputs(&[("o.mp4", 10, Some(&made))]);
        assert!(serde_json::to_value(&one).unwrap().get("outputs").is_none());
    }

    #[test]
    fn without_media_the_figures_are_null() {
        let result = JobResult::new("o.mp4", 10, None);
        let v = serde_json::to_value(&result).unwrap();
        assert!(v["duration_seconds"].is_null());
        assert!(v["frames_encoded"].is_null());
    }

    #[test]
    fn logs_show_only_the_origin_of_a_url() {
        assert_eq!(
            origin("https://hooks.example.com/services/T0/B0/tok3n?k=v"),
            "https://hooks.example.com"
        );
        assert_eq!(origin("http://10.0.0.1:8080/x"), "http://10.0.0.1:8080");
    }

    #[test]
    fn a_queued_notice_reads_back_and_others_are_refused() {
        let mut headers = string_headers([
            (URL_HEADER, "https://e.com/h".to_string()),
            (EVENT_HEADER, "failed".to_string()),
            (JOB_ID_HEADER, "j1".to_string()),
            (DELIVERY_HEADER, "d-1".to_string()),
            (ATTEMPTS_HEADER, "3".to_string()),
            (FIRST_ATTEMPT_HEADER, "2024-01-15T10:30:00Z".to_string()),
        ]);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        let q = Queued::read(&BasicProperties::default().with_headers(headers)).unwrap();
        assert_eq!((q.url.as_str(), q.attempts), ("https://e.com/h", 3));
        assert_eq!(q.first_attempt_at.unwrap().unix_timestamp(), 1_705_314_600);
        assert!(q.signature.is_none());
        let again = q.headers_with([(ATTEMPTS_HEADER, "4".to_string())]);
        assert_eq!(
            again.inner().get(ATTEMPTS_HEADER),
            Some(&AMQPValue::LongString("4".into()))
        );
        assert_eq!(
            again.inner().get(URL_HEADER),
            q.headers.inner().get(URL_HEADER)
        );
        assert!(
            again.inner().get("x-delivery-count").is_none(),
            "a copy starts afresh"
        );
        let err = Queued::read(&BasicProperties::default()).unwrap_err();
        assert!(err.contains("not a webhook notice"), "{err}");
    }
}
