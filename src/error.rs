//! The one error type of a job attempt, and the single question the worker
//! loop asks of it: should this delivery be retried or dead-lettered?
//!
//! Every failure a job can meet is classified here by an [`ErrorKind`], a
//! stable word that programs can match on (it is published as `error_kind`),
//! while the message is a sentence for people (published as `error`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong with a job attempt, as a stable word for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message is not a valid job (bad JSON, missing or invalid field).
    InvalidJob,
    /// The pipeline fragment or preset is rejected or cannot be built.
    InvalidPipeline,
    /// The input object does not exist.
    InputNotFound,
    /// The input exists but cannot be decoded (corrupt, not a video).
    UndecodableInput,
    /// GStreamer reported an error while transcoding.
    TranscodeFailed,
    /// The process running the pipeline died (signal, abort, out of memory).
    PipelineCrashed,
    /// No progress for too long, or the job ran past its time limit.
    Stalled,
    /// The output failed verification (missing streams, wrong duration, empty).
    OutputInvalid,
    /// Object storage could not be reached or answered with a server error.
    StorageUnavailable,
    /// The broker connection was lost while the job ran.
    BrokerUnavailable,
    /// The worker is shutting down and gave the job back.
    Shutdown,
    /// Earlier attempts ended without a result (each stopped or crashed the
    /// worker that ran it), as many times as attempts are allowed.
    AttemptsExhausted,
    /// Not enough free space in the scratch folder.
    NoSpace,
    /// This worker lacks an element or label the job needs; the job goes to
    /// a queue of workers that have them (it is not a failed attempt).
    MissingCapability,
    /// No live worker has what the job needs, and it waited for one longer
    /// than `worker.no_capable_worker_timeout`.
    NoCapableWorker,
    /// Someone cancelled the job (`transcode-worker cancel`): it stops, and
    /// is settled without an output, a retry or a dead letter.
    Cancelled,
    /// A local problem of the worker (temp files, missing plugins).
    Internal,
}

impl ErrorKind {
    /// Whether an error of this kind can never succeed on a retry.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidJob
                | ErrorKind::InvalidPipeline
                | ErrorKind::InputNotFound
                | ErrorKind::UndecodableInput
                | ErrorKind::TranscodeFailed
                | ErrorKind::AttemptsExhausted
                | ErrorKind::NoCapableWorker
        )
    }

    /// The stable word published as `error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::InvalidPipeline => "invalid_pipeline",
            ErrorKind::InputNotFound => "input_not_found",
            ErrorKind::UndecodableInput => "undecodable_input",
            ErrorKind::TranscodeFailed => "transcode_failed",
            ErrorKind::PipelineCrashed => "pipeline_crashed",
            ErrorKind::Stalled => "stalled",
            ErrorKind::OutputInvalid => "output_invalid",
            ErrorKind::StorageUnavailable => "storage_unavailable",
            ErrorKind::BrokerUnavailable => "broker_unavailable",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::AttemptsExhausted => "attempts_exhausted",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::MissingCapability => "missing_capability",
            ErrorKind::NoCapableWorker => "no_capable_worker",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed job attempt: a kind for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// The classification that decides retry or dead-letter.
    pub kind: ErrorKind,
    /// A sentence for people; never contains secrets.
    pub message: String,
}

impl JobError {
    /// Makes an error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
        }
    }

    /// What the worker must do with the delivery after this error on
    /// attempt `attempt` (1-based) out of at most `max_attempts`.
    pub fn disposition(&self, attempt: u32, max_attempts: u32) -> Disposition {
        if self.kind == ErrorKind::Cancelled {
            Disposition::Cancel
        } else if self.kind == ErrorKind::Shutdown {
            Disposition::Release
        } else if self.kind == ErrorKind::BrokerUnavailable {
            Disposition::Requeue
        } else if self.kind.is_permanent() || attempt >= max_attempts {
            Disposition::DeadLetter
        } else {
            Disposition::Retry
        }
    }
}

/// The settlement of a delivery that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: give it back to the queue after a backoff delay.
    Retry,
    /// The worker is stopping: give it back at once, as a copy whose
    /// attempt number stays the same (a give-back is no failed attempt).
    Release,
    /// The broker connection was lost: nothing can be settled on it; the
    /// broker gives the job back itself (and counts one more delivery).
    Requeue,
    /// Permanent or out of attempts: move it to the dead-letter queue.
    DeadLetter,
    /// Cancelled on request: ack it, store nothing, no retry.
    Cancel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_dead_lettered_on_the_first_attempt() {
        let e = JobError::new(ErrorKind::InputNotFound, "no such object");
        assert_eq!(e.disposition(1, 5), Disposition::DeadLetter);
    }

    #[test]
    fn transient_errors_are_retried_until_the_last_attempt() {
        let e = JobError::new(ErrorKind::StorageUnavailable, "connection refused");
        assert_eq!(e.disposition(1, 5), Disposition::Retry);
        assert_eq!(e.disposition(4, 5), Disposition::Retry);
        assert_eq!(e.disposition(5, 5), Disposition::DeadLetter);
    }

    #[test]
    fn shutdown_releases_without_giving_up_and_a_lost_broker_requeues() {
        let e = JobError::new(ErrorKind::Shutdown, "stopping");
        assert_eq!(e.disposition(5, 5), Disposition::Release);
        let e = JobError::new(ErrorKind::BrokerUnavailable, "connection reset");
        assert_eq!(e.disposition(5, 5), Disposition::Requeue);
    }

    #[test]
    fn kinds_serialize_as_their_stable_words() {
        let json = serde_json::to_string(&ErrorKind::UndecodableInput).unwrap();
        assert_eq!(json, "\"undecodable_input\"");
        assert_eq!(ErrorKind::UndecodableInput.as_str(), "undecodable_input");
    }
}
