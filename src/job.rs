//! The messages other programs exchange with the worker: the job it takes
//! from `transcoding_jobs` (here, with its webhook in `webhook.rs`) and the
//! progress events it publishes (`event.rs`).
//!
//! The job format is the one of the original service: any AMQP client can
//! publish `{"job_id", "input_key", "output_key", "transcode_options"}` as
//! raw JSON bytes. Optional fields extend it; unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, JobError};

mod event;
mod webhook;

pub use event::{now_rfc3339, Ending, Phase, Progress};
pub use webhook::{
    Webhook, WebhookEvent, WebhookSecret, MAX_WEBHOOK_SECRET_LEN, MAX_WEBHOOK_URL_LEN,
};

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

#[cfg(test)]
mod tests;
