//! The messages other programs exchange with the worker: the job it takes
//! from `transcoding_jobs` and the progress events it publishes.
//!
//! The job format is the one of the original service: any AMQP client can
//! publish `{"job_id", "input_key", "output_key", "transcode_options"}` as
//! raw JSON bytes. Optional fields extend it; unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, JobError};

/// Longest accepted `job_id`, in bytes.
pub const MAX_JOB_ID_LEN: usize = 128;
/// Longest accepted storage key, in bytes (the S3 limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Most `outputs` one job may list.
pub const MAX_OUTPUTS: usize = 32;

/// A transcoding job as published on the jobs queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Identifies the job in progress events; letters, digits and `._:-`.
    pub job_id: String,
    /// Key of the input object (or path relative to the storage directory).
    /// Also accepted as `input_s3_path`, and as an `s3://BUCKET/key`
    /// location (see [`Job::resolve_locations`]).
    #[serde(alias = "input_s3_path")]
    pub input_key: String,
    /// Key the output is stored under; its extension picks the container.
    /// Also accepted as `output_s3_path`, and as an `s3://BUCKET/key`
    /// location. Empty when the job lists [`Job::outputs`] instead.
    #[serde(
        alias = "output_s3_path",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub output_key: String,
    /// The video branch of a GStreamer pipeline, e.g. `videoconvert ! x264enc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcode_options: Option<String>,
    /// A named preset from the configuration, used instead of `transcode_options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// What the publisher learned about the input (queue-files fills this in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
    /// Where to POST a notice when the job ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// The priority it was submitted with. The queue a job is published to
    /// is what decides its priority (see [`Priority`]); this field records
    /// it for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Labels a worker must have to run it (`worker.labels`), e.g. `gpu`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Several outputs (renditions) of the one input, each with its own key
    /// and preset or fragment, instead of (or besides) `output_key`: the
    /// input is downloaded and decoded once, and every output is encoded
    /// from that one decode (see [`Job::all_outputs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputSpec>>,
    /// Encode the input in segments of about this many seconds (at least
    /// 2), each by any free worker, joined into the one output (see
    /// [`crate::segment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_seconds: Option<f64>,
}

/// How urgent a job is. Each priority has its queue: `<jobs_queue>.high`,
/// `<jobs_queue>` (normal: the original service's queue) and
/// `<jobs_queue>.low`; a free worker takes the oldest high job, else the
/// oldest normal one, else the oldest low one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Before any other job.
    High,
    /// The default.
    #[default]
    Normal,
    /// Only when no other job waits (low jobs may wait for ever on a busy farm).
    Low,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Its word: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Priority, String> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("{other:?} is not a priority (high, normal or low)")),
        }
    }
}

/// Longest accepted webhook URL, in bytes.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Longest accepted webhook secret, in bytes.
pub const MAX_WEBHOOK_SECRET_LEN: usize = 1024;

/// A job's webhook: the URL the worker POSTs a JSON notice to when the job
/// ends, for which endings, and the secret that signs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// An `http://` or `https://` URL, without user name or password.
    pub url: String,
    /// The endings to notify; all three when left out.
    #[serde(default = "WebhookEvent::all")]
    pub events: Vec<WebhookEvent>,
    /// Signs each notice (`X-Transcode-Signature`); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<WebhookSecret>,
}

/// An ending of a job a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The output is stored.
    Completed,
    /// The job failed for good (it went to the dead-letter queue).
    Failed,
    /// The job was cancelled.
    Cancelled,
}

impl WebhookEvent {
    /// Every event: what a webhook without `events` is told about.
    pub fn all() -> Vec<WebhookEvent> {
        vec![
            WebhookEvent::Completed,
            WebhookEvent::Failed,
            WebhookEvent::Cancelled,
        ]
    }

    /// The event's word, as in JSON and the `X-Transcode-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "completed",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook's signing secret. Its `Debug` output is redacted; it is
/// serialized as given (it travels inside the job message).
#[derive(Clone)]
pub struct WebhookSecret(secrecy::SecretString);

impl WebhookSecret {
    /// The secret itself, for signing.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl From<String> for WebhookSecret {
    fn from(secret: String) -> Self {
        WebhookSecret(secret.into())
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(WebhookSecret::from)
    }
}

impl Webhook {
    /// Checks the URL (`http` or `https`, a host, no user name or
    /// password, at most [`MAX_WEBHOOK_URL_LEN`] bytes), the events (at
    /// least one) and the secret (1 to [`MAX_WEBHOOK_SECRET_LEN`] bytes).
    /// Which hosts a worker may reach is decided when it delivers.
    fn check(&self) -> Result<(), JobError> {
        if self.url.len() > MAX_WEBHOOK_URL_LEN {
            return Err(invalid(format!(
                "webhook.url is longer than {MAX_WEBHOOK_URL_LEN} bytes"
            )));
        }
        let url = url::Url::parse(&self.url)
            .map_err(|e| invalid(format!("webhook.url is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "webhook.url must be an http:// or https:// URL, not {}://",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(invalid("webhook.url has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "webhook.url must not hold a user name or password (use webhook.secret to sign the notices)".into(),
            ));
        }
        if self.events.is_empty() {
            return Err(invalid(
                "webhook.events is empty; leave it out to be told of every ending".into(),
            ));
        }
        if let Some(secret) = &self.secret {
            let len = secret.expose().len();
            if len == 0 || len > MAX_WEBHOOK_SECRET_LEN {
                return Err(invalid(format!(
                    "webhook.secret must be 1 to {MAX_WEBHOOK_SECRET_LEN} bytes long"
                )));
            }
        }
        Ok(())
    }
}

/// One output of a job that lists [`Job::outputs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Key this output is stored under, checked like a job's `output_key`.
    #[serde(alias = "output_s3_path")]
    pub output_key: String,
    /// The video branch of a GStreamer pipeline for this output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcode_options: Option<String>,
    /// A named preset for this output, used instead of `transcode_options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

/// Probe details of the input, as published by `queue-files`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Container format, e.g. `video/x-ms-asf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Video codec, e.g. `video/x-wmv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_codec: Option<String>,
    /// Audio codec, when the input has audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    /// Overall bitrate in bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
    /// Duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Size of the input in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

impl Job {
    /// Parses and checks a job message body of at most `max_bytes`.
    ///
    /// Errors are [`ErrorKind::InvalidJob`] with a sentence naming the problem.
    pub fn parse_limited(body: &[u8], max_bytes: usize) -> Result<Job, JobError> {
        if body.len() > max_bytes {
            return Err(invalid(format!(
                "the message is {} bytes long; the limit is {max_bytes}",
                body.len()
            )));
        }
        Job::parse(body)
    }

    /// Parses and checks a job message body.
    ///
    /// Errors are [`ErrorKind::InvalidJob`] with a sentence naming the problem.
    pub fn parse(body: &[u8]) -> Result<Job, JobError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            JobError::new(
                ErrorKind::InvalidJob,
                format!("the message is not UTF-8 text: {e}"),
            )
        })?;
        let job: Job = serde_json::from_str(text).map_err(|e| {
            JobError::new(
                ErrorKind::InvalidJob,
                format!("the message is not a valid job: {e}"),
            )
        })?;
        job.check()?;
        Ok(job)
    }

    /// Every output the job asks for, in order: `output_key` with the
    /// job's own `preset` or `transcode_options` first (when given), then
    /// each of `outputs`.
    pub fn all_outputs(&self) -> Vec<OutputSpec> {
        let own = (!self.output_key.is_empty()).then(|| OutputSpec {
            output_key: self.output_key.clone(),
            transcode_options: self.transcode_options.clone(),
            preset: self.preset.clone(),
        });
        own.into_iter()
            .chain(self.outputs.iter().flatten().cloned())
            .collect()
    }

    /// The keys of [`Job::all_outputs`], in order.
    pub fn output_keys(&self) -> Vec<String> {
        self.all_outputs()
            .into_iter()
            .map(|o| o.output_key)
            .collect()
    }

    /// Best effort to find a `job_id` in a message that is not a valid job,
    /// so that its failure can still be reported under that id.
    pub fn salvage_id(body: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            job_id: String,
        }
        let id = serde_json::from_slice::<IdOnly>(body).ok()?.job_id;
        check_job_id(&id).ok()?;
        Some(id)
    }

    /// Turns `s3://BUCKET/key` locations into storage keys: a key of the
    /// worker's own `bucket`, or (kept as a location) a key of one of
    /// `extra_buckets`. Any other bucket, and any `s3://` location on a
    /// worker without a bucket (the directory backend), is an invalid job.
    pub fn resolve_locations(
        &mut self,
        bucket: Option<&str>,
        extra_buckets: &[String],
    ) -> Result<(), JobError> {
        let mut keys: Vec<(String, &mut String)> = vec![("input_key".into(), &mut self.input_key)];
        if !self.output_key.is_empty() {
            keys.push(("output_key".into(), &mut self.output_key));
        }
        for (i, output) in self.outputs.iter_mut().flatten().enumerate() {
            keys.push((format!("outputs[{i}].output_key"), &mut output.output_key));
        }
        for (field, key) in keys {
            let Some(rest) = key.strip_prefix("s3://") else {
                continue;
            };
            let Some((name, inner)) = rest.split_once('/').filter(|(_, k)| !k.is_empty()) else {
                return Err(invalid(format!(
                    "{field} {key:?} is not an s3://BUCKET/key location"
                )));
            };
            match bucket {
                Some(own) if own == name => *key = inner.to_string(),
                Some(_) if extra_buckets.iter().any(|b| b == name) => {}
                Some(own) => {
                    return Err(invalid(format!(
                        "{field} {key:?} is in bucket {name:?}, but this worker uses bucket {own:?} (other buckets are allowed by storage.extra_buckets)"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "{field} {key:?} is an S3 location, but this worker stores in a directory"
                    )))
                }
            }
        }
        self.check_keys()
    }

    fn check(&self) -> Result<(), JobError> {
        check_job_id(&self.job_id)?;
        self.check_keys()?;
        check_one_way("", &self.transcode_options, &self.preset)?;
        for (i, output) in self.outputs.iter().flatten().enumerate() {
            check_one_way(
                &format!("outputs[{i}]: "),
                &output.transcode_options,
                &output.preset,
            )?;
        }
        for label in &self.requires {
            check_label(label).map_err(|e| invalid(format!("requires: {e}")))?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.check()?;
        }
        if let Some(seconds) = self.segment_seconds {
            check_segment_seconds(seconds)?;
        }
        Ok(())
    }

    /// Checks the input key, and that there is something to make: an
    /// `output_key`, or a non-empty list of `outputs` whose keys are each
    /// checked like `output_key` and differ from each other.
    fn check_keys(&self) -> Result<(), JobError> {
        check_key("input_key", &self.input_key)?;
        match &self.outputs {
            None if self.output_key.is_empty() => {
                return Err(invalid(
                    "missing field `output_key` (a job gives output_key, or a list of outputs)"
                        .into(),
                ))
            }
            None => {}
            Some(outputs) if outputs.is_empty() => {
                return Err(invalid("outputs is an empty list".into()))
            }
            Some(outputs) if outputs.len() > MAX_OUTPUTS => {
                return Err(invalid(format!(
                    "outputs lists {} outputs; the limit is {MAX_OUTPUTS}",
                    outputs.len()
                )))
            }
            Some(outputs) => {
                for (i, output) in outputs.iter().enumerate() {
                    check_key(&format!("outputs[{i}].output_key"), &output.output_key)?;
                    if outputs[..i]
                        .iter()
                        .any(|o| o.output_key == output.output_key)
                    {
                        return Err(invalid(format!(
                            "outputs[{i}].output_key {:?} is listed twice",
                            output.output_key
                        )));
                    }
                }
            }
        }
        if !self.output_key.is_empty() {
            check_key("output_key", &self.output_key)?;
            if let Some(i) = self
                .outputs
                .iter()
                .flatten()
                .position(|o| o.output_key == self.output_key)
            {
                return Err(invalid(format!(
                    "outputs[{i}].output_key {:?} is the job's output_key too",
                    self.output_key
                )));
            }
        }
        Ok(())
    }
}

/// Refuses a job (or one of its outputs, named by `what`) that gives both
/// a fragment and a preset.
fn check_one_way(
    what: &str,
    transcode_options: &Option<String>,
    preset: &Option<String>,
) -> Result<(), JobError> {
    if transcode_options.is_some() && preset.is_some() {
        return Err(invalid(format!(
            "{what}give either transcode_options or preset, not both"
        )));
    }
    Ok(())
}

/// Shortest segment length a job may ask for, in seconds.
pub const MIN_SEGMENT_SECONDS: f64 = 2.0;

/// Longest segment length a job may ask for, in seconds (a day).
pub const MAX_SEGMENT_SECONDS: f64 = 86_400.0;

/// Refuses a `segment_seconds` that is not a number of seconds from
/// [`MIN_SEGMENT_SECONDS`] to [`MAX_SEGMENT_SECONDS`].
fn check_segment_seconds(seconds: f64) -> Result<(), JobError> {
    if !(MIN_SEGMENT_SECONDS..=MAX_SEGMENT_SECONDS).contains(&seconds) {
        return Err(invalid(format!(
            "segment_seconds must be a number of seconds from {MIN_SEGMENT_SECONDS} to {MAX_SEGMENT_SECONDS}, not {seconds}"
        )));
    }
    Ok(())
}

/// Longest worker label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// Checks a worker label (`worker.labels`, a job's `requires`): 1 to 64
/// lowercase letters, digits, `-` and `_`.
pub fn check_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{label:?} is not a label (1 to {MAX_LABEL_LEN} lowercase letters, digits, - and _)"
        ))
    }
}

fn invalid(message: String) -> JobError {
    JobError::new(ErrorKind::InvalidJob, message)
}

/// Checks a job id: 1 to [`MAX_JOB_ID_LEN`] letters, digits and `._:-`
/// (so it is safe in a storage key, a header and a URL path).
pub fn check_job_id(id: &str) -> Result<(), JobError> {
    if id.is_empty() || id.len() > MAX_JOB_ID_LEN {
        return Err(invalid(format!(
            "job_id must be 1 to {MAX_JOB_ID_LEN} characters long"
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(invalid(format!(
            "job_id may hold only letters, digits and . _ : - (found {c:?})"
        )));
    }
    Ok(())
}

fn check_key(field: &str, key: &str) -> Result<(), JobError> {
    if key.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(format!(
            "{field} is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains a control character")));
    }
    Ok(())
}

/// The phase of one attempt of a job: the one set of words for it, as
/// progress events publish it (`state`), `inspect` shows it, metrics label
/// it and fault injection names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Planning, checking the input and the stored output (shown by
    /// `inspect`; no progress event carries it).
    Starting,
    /// Fetching the input from storage.
    #[serde(alias = "download")]
    Downloading,
    /// Running the GStreamer pipeline.
    #[serde(alias = "transcode")]
    Transcoding,
    /// Storing the output.
    #[serde(alias = "upload")]
    Uploading,
    /// The output is stored and verified; the last event of a successful attempt.
    Completed,
    /// The attempt failed; the last event of a failed attempt.
    Failed,
    /// This worker cannot run the job (it lacks an element or a label the
    /// job needs): the job now waits for a worker that can. Not a failed
    /// attempt.
    Waiting,
    /// The job was cancelled on request; the last event of a cancelled job.
    Cancelled,
}

impl Phase {
    /// The phase's word, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Downloading => "downloading",
            Phase::Transcoding => "transcoding",
            Phase::Uploading => "uploading",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Waiting => "waiting",
            Phase::Cancelled => "cancelled",
        }
    }

    /// The share of an attempt's overall progress this phase covers, as
    /// (start, end) percent: downloading 0-5, transcoding 5-95, uploading
    /// 95-99, and 100 only once completed.
    pub fn span(self) -> (f64, f64) {
        match self {
            Phase::Starting | Phase::Downloading => (0.0, 5.0),
            Phase::Transcoding => (5.0, 95.0),
            Phase::Uploading => (95.0, 99.0),
            Phase::Completed => (100.0, 100.0),
            Phase::Failed | Phase::Waiting | Phase::Cancelled => (0.0, 0.0),
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A progress event, published to the progress exchange.
///
/// `job_id` and `progress` are what the original service's consumers read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The job this event is about.
    pub job_id: String,
    /// Overall progress of the attempt, 0 to 100; 100 only when completed.
    pub progress: f64,
    /// The phase of the attempt.
    pub state: Phase,
    /// The worker running the attempt (`host:pid` by default).
    pub worker: String,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// When the event was made, RFC 3339 in UTC.
    pub timestamp: String,
    /// Estimated seconds left in the transcode, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// On failure: what went wrong, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On failure: what went wrong, as a stable word for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// On failure: whether the job will be attempted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    /// The output key, on completion: the job's first (or only) one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// Every output key of the job, on completion, in the job's order
    /// (`output_key` first): each is stored and verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_keys: Vec<String>,
    /// While transcoding: seconds of media transcoded per second of work
    /// since the phase began (2.0 is twice real time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// While transcoding: the media position reached, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_secs: Option<f64>,
    /// While transcoding: the media's duration in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// While downloading or uploading: bytes moved so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// While downloading or uploading: bytes to move in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// While downloading or uploading: bytes per second since the phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
    /// On completion: the input's tracks the output container cannot hold,
    /// one sentence each naming the track and why (absent when every
    /// track is carried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks_left_out: Vec<String>,
    /// For a segmented job: the part this event is about (`v0003`, video
    /// segment 3, or `audio`); absent on the job's own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// For a segmented job: the video segment this event is about (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
    /// For a segmented job: how many video segments it was cut into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// For a part of a segmented job: how far the part is, 0 to 100
    /// (`progress` is the whole job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_progress: Option<f64>,
}

impl Progress {
    /// An event of `job_id`'s attempt `attempt` on `worker`, stamped now,
    /// with none of the optional fields.
    pub fn new(job_id: &str, worker: &str, attempt: u32, state: Phase, progress: f64) -> Progress {
        Progress {
            job_id: job_id.to_string(),
            progress,
            state,
            worker: worker.to_string(),
            attempt,
            timestamp: now_rfc3339(),
            eta_secs: None,
            error: None,
            error_kind: None,
            will_retry: None,
            output_key: None,
            output_keys: Vec::new(),
            speed: None,
            position_secs: None,
            duration_secs: None,
            bytes: None,
            bytes_total: None,
            bytes_per_sec: None,
            tracks_left_out: Vec::new(),
            part: None,
            segment: None,
            segments: None,
            segment_progress: None,
        }
    }
}

/// How a job ended, as the last event of its last attempt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its output is stored.
    Completed,
    /// It failed for good (it will not be tried again).
    Failed,
    /// It was cancelled on request.
    Cancelled,
}

impl Progress {
    /// How the job ended, when this event is its last: `completed`, or
    /// `failed` without a retry to come.
    pub fn ending(&self) -> Option<Ending> {
        match self.state {
            Phase::Completed => Some(Ending::Completed),
            Phase::Failed if self.will_retry != Some(true) => Some(Ending::Failed),
            Phase::Cancelled => Some(Ending::Cancelled),
            _ => None,
        }
    }
}

/// The current time as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes `json.dumps` makes of the original service's example job.
    const SEED_JOB: &[u8] = br#"{"job_id": "job1", "input_key": "path/to/input_file", "output_key": "path/to/output_file", "transcode_options": "videoconvert ! x264enc"}"#;

    #[test]
    fn accepts_the_original_job_message_byte_for_byte() {
        let job = Job::parse(SEED_JOB).unwrap();
        assert_eq!(job.job_id, "job1");
        assert_eq!(job.input_key, "path/to/input_file");
        assert_eq!(job.output_key, "path/to/output_file");
        assert_eq!(
            job.transcode_options.as_deref(),
            Some("videoconvert ! x264enc")
        );
        assert_eq!(job.preset, None);
    }

    #[test]
    fn ignores_unknown_fields_and_takes_optional_ones() {
        let job = Job::parse(
            br#"{"job_id":"a","input_key":"i.wmv","output_key":"o.mp4","preset":"h264-mp4","colour":"blue","source":{"width":640,"future":1}}"#,
        )
        .unwrap();
        assert_eq!(job.preset.as_deref(), Some("h264-mp4"));
        assert_eq!(job.source.unwrap().width, Some(640));
    }

    #[test]
    fn rejects_missing_fields_with_the_field_name() {
        let err = Job::parse(br#"{"job_id":"a","input_key":"i"}"#).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(err.message.contains("output_key"), "{}", err.message);
    }

    #[test]
    fn rejects_non_utf8_and_non_json() {
        assert!(Job::parse(&[0xff, 0xfe, b'{'])
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert!(Job::parse(b"hello")
            .unwrap_err()
            .message
            .contains("not a valid job"));
    }

    #[test]
    fn rejects_bad_ids_and_keys() {
        let cases: &[&[u8]] = &[
            br#"{"job_id":"","input_key":"i","output_key":"o"}"#,
            br#"{"job_id":"a b","input_key":"i","output_key":"o"}"#,
            br#"{"job_id":"a","input_key":"","output_key":"o"}"#,
            br#"{"job_id":"a","input_key":"i\u0000x","output_key":"o"}"#,
            br#"{"job_id":"a","input_key":"i","output_key":"o\nx"}"#,
            br#"{"job_id":"a","input_key":"i","output_key":"o","preset":"p","transcode_options":"x264enc"}"#,
        ];
        for body in cases {
            let err = Job::parse(body).unwrap_err();
            assert_eq!(
                err.kind,
                ErrorKind::InvalidJob,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The later message of the original service: S3 paths instead of keys.
    const SEED_S3_PATH_JOB: &[u8] = br#"{"job_id": "job2", "input_s3_path": "s3://videos/path/to/input_file.mov", "output_s3_path": "s3://videos/path/to/output_file.mp4", "transcode_options": "videoconvert ! x264enc"}"#;

    #[test]
    fn s3_paths_of_the_own_bucket_become_keys_and_others_are_refused() {
        let mut job = Job::parse(SEED_S3_PATH_JOB).unwrap();
        assert_eq!(job.input_key, "s3://videos/path/to/input_file.mov");
        job.resolve_locations(Some("videos"), &[]).unwrap();
        assert_eq!(job.input_key, "path/to/input_file.mov");
        assert_eq!(job.output_key, "path/to/output_file.mp4");

        let mut other = Job::parse(SEED_S3_PATH_JOB).unwrap();
        let err = other.resolve_locations(Some("media"), &[]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidJob);
        assert!(err.message.contains("\"videos\""), "{}", err.message);
        assert!(err.message.contains("extra_buckets"), "{}", err.message);

        let mut allowed = Job::parse(SEED_S3_PATH_JOB).unwrap();
        allowed
            .resolve_locations(Some("media"), &["videos".to_string()])
            .unwrap();
        assert_eq!(allowed.input_key, "s3://videos/path/to/input_file.mov");

        let mut on_disk = Job::parse(SEED_S3_PATH_JOB).unwrap();
        let err = on_disk.resolve_locations(None, &[]).unwrap_err();
        assert!(err.message.contains("directory"), "{}", err.message);

        let mut plain =
            Job::parse(br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4"}"#).unwrap();
        plain.resolve_locations(Some("videos"), &[]).unwrap();
        assert_eq!(plain.input_key, "i.mov");
        let mut bad =
            Job::parse(br#"{"job_id":"a","input_key":"s3://videos","output_key":"o.mp4"}"#)
                .unwrap();
        assert!(bad.resolve_locations(Some("videos"), &[]).is_err());
    }

    #[test]
    fn a_job_may_list_outputs_instead_of_an_output_key() {
        let job = Job::parse(
            br#"{"job_id":"a","input_key":"up/a.mov","outputs":[
                {"output_key":"r/720p/a.mp4","preset":"h264-720p"},
                {"output_key":"r/small/a.mp4","transcode_options":"videoconvert ! x264enc"}]}"#,
        )
        .unwrap();
        assert_eq!(job.output_key, "");
        let outputs = job.outputs.as_deref().unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].preset.as_deref(), Some("h264-720p"));
        assert_eq!(
            outputs[1].transcode_options.as_deref(),
            Some("videoconvert ! x264enc")
        );
        // Written back without an empty output_key.
        let text = serde_json::to_string(&job).unwrap();
        assert!(!text.contains("\"output_key\":\"\""), "{text}");
        assert_eq!(Job::parse(text.as_bytes()).unwrap(), job);
    }

    #[test]
    fn outputs_are_checked_like_output_key() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"job_id":"a","input_key":"i","outputs":[]}"#, "empty list"),
            (br#"{"job_id":"a","input_key":"i"}"#, "missing field `output_key`"),
            (
                br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":""}]}"#,
                "outputs[0].output_key is empty",
            ),
            (
                br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4"},{"output_key":"x\ny"}]}"#,
                "outputs[1].output_key contains a control character",
            ),
            (
                br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4"},{"output_key":"o.mp4"}]}"#,
                "listed twice",
            ),
            (
                br#"{"job_id":"a","input_key":"i","outputs":[{"output_key":"o.mp4","preset":"p","transcode_options":"x264enc"}]}"#,
                "outputs[0]: give either",
            ),
            (br#"{"job_id":"a","input_key":"i","outputs":[{"preset":"p"}]}"#, "output_key"),
        ];
        for (body, expected) in cases {
            let err = Job::parse(body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidJob);
            assert!(
                err.message.contains(expected),
                "{}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
        }
        let many: Vec<serde_json::Value> = (0..=MAX_OUTPUTS)
            .map(|i| serde_json::json!({"output_key": format!("o{i}.mp4")}))
            .collect();
        let body = serde_json::json!({"job_id": "a", "input_key": "i", "outputs": many});
        let err = Job::parse(body.to_string().as_bytes()).unwrap_err();
        assert!(err.message.contains("limit"), "{}", err.message);
    }

    #[test]
    fn output_key_comes_first_with_the_jobs_own_preset_then_the_outputs() {
        let job = Job::parse(
            br#"{"job_id":"a","input_key":"i.mov","output_key":"o/main.mp4","preset":"h264-mp4",
                 "outputs":[{"output_key":"o/720.mp4","preset":"h264-720p"}]}"#,
        )
        .unwrap();
        let all = job.all_outputs();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].output_key, "o/main.mp4");
        assert_eq!(all[0].preset.as_deref(), Some("h264-mp4"));
        assert_eq!(job.output_keys(), ["o/main.mp4", "o/720.mp4"]);
        let err = Job::parse(
            br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","outputs":[{"output_key":"o.mp4"}]}"#,
        )
        .unwrap_err();
        assert!(
            err.message.contains("the job's output_key too"),
            "{}",
            err.message
        );
    }

    #[test]
    fn s3_locations_in_outputs_are_resolved_too() {
        let mut job = Job::parse(
            br#"{"job_id":"a","input_key":"s3://videos/in.mov","outputs":[{"output_key":"s3://videos/r/a.mp4"}]}"#,
        )
        .unwrap();
        job.resolve_locations(Some("videos"), &[]).unwrap();
        assert_eq!(job.input_key, "in.mov");
        assert_eq!(job.outputs.unwrap()[0].output_key, "r/a.mp4");
        let mut other = Job::parse(
            br#"{"job_id":"a","input_key":"in.mov","outputs":[{"output_key":"s3://media/a.mp4"}]}"#,
        )
        .unwrap();
        let err = other.resolve_locations(Some("videos"), &[]).unwrap_err();
        assert!(
            err.message.contains("outputs[0].output_key"),
            "{}",
            err.message
        );
    }

    #[test]
    fn segment_seconds_is_a_number_of_seconds_from_2() {
        let job = Job::parse(
            br#"{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","segment_seconds":30}"#,
        )
        .unwrap();
        assert_eq!(job.segment_seconds, Some(30.0));
        for bad in ["1.5", "0", "-3", "\"30\"", "1e9"] {
            let body = format!(
                r#"{{"job_id":"a","input_key":"i.mov","output_key":"o.mp4","segment_seconds":{bad}}}"#
            );
            let err = Job::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidJob, "{bad}");
            if !bad.starts_with('"') {
                assert!(
                    err.message.contains("segment_seconds"),
                    "{bad}: {}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn salvages_a_valid_id_from_an_invalid_job() {
        assert_eq!(
            Job::salvage_id(br#"{"job_id":"x1","input_key":5}"#).as_deref(),
            Some("x1")
        );
        assert_eq!(Job::salvage_id(b"not json"), None);
    }

    fn with_webhook(webhook: &str) -> Vec<u8> {
        format!(r#"{{"job_id":"a","input_key":"i.wmv","output_key":"o.mp4","webhook":{webhook}}}"#)
            .into_bytes()
    }

    #[test]
    fn takes_the_seed_webhook_and_defaults_its_events() {
        let job = Job::parse(&with_webhook(
            r#"{"url":"https://api.example.com/transcode/callback","events":["completed","failed"],"secret":"webhook_secret"}"#,
        ))
        .unwrap();
        let hook = job.webhook.unwrap();
        assert_eq!(hook.url, "https://api.example.com/transcode/callback");
        assert_eq!(hook.events, [WebhookEvent::Completed, WebhookEvent::Failed]);
        assert_eq!(hook.secret.unwrap().expose(), "webhook_secret");

        let job = Job::parse(&with_webhook(
            r#"{"url":"http://hooks.example.com:8080/x"}"#,
        ))
        .unwrap();
        let hook = job.webhook.unwrap();
        assert_eq!(hook.events, WebhookEvent::all());
        assert!(hook.secret.is_none());
    }

    #[test]
    fn rejects_bad_webhooks_with_a_sentence() {
        let long_url = format!(
            r#"{{"url":"https://e.com/{}"}}"#,
            "a".repeat(MAX_WEBHOOK_URL_LEN)
        );
        let long_secret = format!(
            r#"{{"url":"https://e.com/","secret":"{}"}}"#,
            "s".repeat(MAX_WEBHOOK_SECRET_LEN + 1)
        );
        let cases: &[(&str, &str)] = &[
            (r#"{"url":"ftp://e.com/x"}"#, "http:// or https://"),
            (r#"{"url":"not a url"}"#, "is not a URL"),
            (
                r#"{"url":"https://user:pw@e.com/x"}"#,
                "user name or password",
            ),
            (
                r#"{"url":"https://e.com/","events":[]}"#,
                "webhook.events is empty",
            ),
            (
                r#"{"url":"https://e.com/","events":["finished"]}"#,
                "unknown variant",
            ),
            (r#"{"url":"https://e.com/","secret":""}"#, "webhook.secret"),
            (&long_secret, "webhook.secret"),
            (&long_url, "longer than"),
            (r#"{"events":["failed"]}"#, "url"),
        ];
        for (webhook, says) in cases {
            let err = Job::parse(&with_webhook(webhook)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidJob, "{webhook}");
            assert!(err.message.contains(says), "{webhook}: {}", err.message);
        }
    }

    #[test]
    fn the_webhook_secret_never_shows_in_debug_output() {
        let job = Job::parse(&with_webhook(
            r#"{"url":"https://e.com/","secret":"hunter2-webhook"}"#,
        ))
        .unwrap();
        let debug = format!("{job:?}");
        assert!(!debug.contains("hunter2-webhook"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
        // The job message itself carries it, so a republished job keeps it.
        let again = serde_json::to_string(&job).unwrap();
        assert!(again.contains("hunter2-webhook"));
        assert_eq!(Job::parse(again.as_bytes()).unwrap(), job);
    }

    #[test]
    fn progress_serializes_the_fields_consumers_read() {
        let p = Progress::new("job1", "host:1", 1, Phase::Transcoding, 42.0);
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["job_id"], "job1");
        assert_eq!(v["progress"], 42.0);
        assert_eq!(v["state"], "transcoding");
        assert!(v.get("error").is_none());
    }

    mod fuzz {
        //! Property tests of the message parser (a long run:
        //! `PROPTEST_CASES=1000000 cargo test --lib job::tests::fuzz`).
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = Job::parse(&body);
                let _ = Job::salvage_id(&body);
            }

            #[test]
            fn accepted_jobs_have_checked_fields(
                id in ".{0,40}",
                input in ".{0,40}",
                output in ".{0,40}",
                options in proptest::option::of(".{0,40}"),
            ) {
                let body = serde_json::json!({
                    "job_id": id, "input_key": input, "output_key": output,
                    "transcode_options": options,
                }).to_string();
                if let Ok(job) = Job::parse(body.as_bytes()) {
                    prop_assert!(!job.job_id.is_empty() && job.job_id.len() <= MAX_JOB_ID_LEN);
                    prop_assert!(!job.input_key.chars().any(char::is_control));
                    prop_assert!(!job.output_key.chars().any(char::is_control));
                    prop_assert!(!job.input_key.is_empty() && !job.output_key.is_empty());
                }
            }
        }
    }
}
