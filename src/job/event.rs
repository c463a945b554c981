//! The progress events a worker publishes on `transcoding_progress`, and
//! the phases of an attempt they name.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

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
    /// On completion of a job that was to be encoded in segments (its
    /// `segment_seconds`, or the worker's `segments.auto_above`) and ran
    /// whole: why (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_whole: Option<String>,
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
            ran_whole: None,
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
