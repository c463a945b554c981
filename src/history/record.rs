//! A job's record: what the farm knows of one job, as `status` shows it.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::job::{Phase, Priority};

/// Most milestone events a record keeps (the oldest go first).
pub const MAX_EVENTS: usize = 50;
/// Most attempts a record keeps (the oldest go first).
pub const MAX_ATTEMPTS: usize = 20;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Published, waiting in its queue (also after an attempt that failed
    /// and will be tried again, or was given back).
    Queued,
    /// Waiting for a worker that has what it needs.
    Waiting,
    /// An attempt runs.
    Running,
    /// Its output is stored.
    Completed,
    /// Its last attempt failed; it waits to be tried again.
    Failed,
    /// It failed for good: its message is in the dead-letter queue.
    Dead,
    /// Cancelled on request: no output stored.
    Cancelled,
    /// The farm has no record of it.
    Unknown,
}

impl JobState {
    /// Its word, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Unknown => "unknown",
        }
    }

    /// Whether the job has ended (nothing more will happen to it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<JobState, String> {
        [
            JobState::Queued,
            JobState::Waiting,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Dead,
            JobState::Cancelled,
            JobState::Unknown,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a job state (queued, waiting, running, completed, failed, dead, cancelled)"))
    }
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Its number, from 1.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it ended, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// How it ended: `completed`, `failed`, `given back`, `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// Why it failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A milestone in a job's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When, RFC 3339.
    pub at: String,
    /// The job's state then.
    pub state: JobState,
    /// The attempt, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The worker, when one was involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// What happened, for people.
    pub text: String,
}

/// What the farm knows of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub job_id: String,
    /// Where it stands.
    pub state: JobState,
    /// The phase of its running attempt (from the last record written;
    /// `status` asks the worker for the live one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Its input key.
    #[serde(default)]
    pub input_key: String,
    /// Its output key(s).
    #[serde(default)]
    pub output_keys: Vec<String>,
    /// Its priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The worker of its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its last attempt's number (0 before any).
    #[serde(default)]
    pub attempt: u32,
    /// When it was submitted (by `submit`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// When the farm first recorded it, RFC 3339.
    pub created_at: String,
    /// When its first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended (completed, dead or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// When the record last changed.
    pub updated_at: String,
    /// Size of the stored output, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_size_bytes: Option<u64>,
    /// Duration of the output, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Why it failed (last error), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it failed, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// While waiting: what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Its attempts, oldest first (at most [`MAX_ATTEMPTS`]).
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// Its milestones, oldest first (at most [`MAX_EVENTS`]).
    #[serde(default)]
    pub events: Vec<EventRecord>,
}

impl JobRecord {
    /// A new record of `job_id`, made now.
    pub fn new(job_id: &str) -> JobRecord {
        let now = crate::job::now_rfc3339();
        JobRecord {
            job_id: job_id.to_string(),
            state: JobState::Unknown,
            phase: None,
            input_key: String::new(),
            output_keys: Vec::new(),
            priority: None,
            worker: None,
            attempt: 0,
            submitted_at: None,
            created_at: now.clone(),
            started_at: None,
            ended_at: None,
            updated_at: now,
            output_size_bytes: None,
            duration_seconds: None,
            error: None,
            error_kind: None,
            waiting_for: None,
            attempts: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Records a milestone: the job is now `state`, `text` says why.
    pub fn mark(
        &mut self,
        state: JobState,
        attempt: Option<u32>,
        worker: Option<&str>,
        text: String,
    ) {
        let now = crate::job::now_rfc3339();
        self.state = state;
        if state.is_final() {
            self.ended_at = Some(now.clone());
            self.phase = None;
        }
        self.updated_at = now.clone();
        self.events.push(EventRecord {
            at: now,
            state,
            attempt,
            worker: worker.map(str::to_string),
            text,
        });
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    /// Records that attempt `attempt` started on `worker`.
    pub fn attempt_started(&mut self, attempt: u32, worker: &str) {
        let now = crate::job::now_rfc3339();
        self.attempt = attempt;
        self.worker = Some(worker.to_string());
        self.phase = Some(Phase::Starting);
        self.started_at.get_or_insert_with(|| now.clone());
        self.waiting_for = None;
        self.attempts.push(AttemptRecord {
            attempt,
            worker: worker.to_string(),
            started_at: now,
            ended_at: None,
            outcome: None,
            error_kind: None,
            error: None,
        });
        if self.attempts.len() > MAX_ATTEMPTS {
            self.attempts.remove(0);
        }
        self.mark(
            JobState::Running,
            Some(attempt),
            Some(worker),
            format!("attempt {attempt} started on {worker}"),
        );
    }

    /// Records how the running attempt `attempt` ended.
    pub fn attempt_ended(
        &mut self,
        attempt: u32,
        outcome: &str,
        error: Option<(&ErrorKind, &str)>,
    ) {
        let now = crate::job::now_rfc3339();
        if let Some(a) = self
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt && a.ended_at.is_none())
        {
            a.ended_at = Some(now);
            a.outcome = Some(outcome.to_string());
            a.error_kind = error.map(|(k, _)| *k);
            a.error = error.map(|(_, m)| m.to_string());
        }
        if let Some((kind, message)) = error {
            self.error_kind = Some(*kind);
            self.error = Some(message.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_attempts_events_and_the_end() {
        let mut r = JobRecord::new("job-1");
        r.attempt_started(1, "w1");
        assert_eq!(
            (r.state, r.attempt, r.phase),
            (JobState::Running, 1, Some(Phase::Starting))
        );
        r.attempt_ended(
            1,
            "failed",
            Some((&ErrorKind::StorageUnavailable, "refused")),
        );
        r.mark(
            JobState::Failed,
            Some(1),
            Some("w1"),
            "attempt 1 failed".into(),
        );
        r.attempt_started(2, "w2");
        r.attempt_ended(2, "completed", None);
        r.mark(JobState::Completed, Some(2), Some("w2"), "completed".into());
        assert!(r.state.is_final() && r.ended_at.is_some() && r.phase.is_none());
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.attempts[0].outcome.as_deref(), Some("failed"));
        assert_eq!(r.attempts[1].outcome.as_deref(), Some("completed"));
        assert_eq!(r.error_kind, Some(ErrorKind::StorageUnavailable));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"], "completed");
        assert_eq!(json["job_id"], "job-1");
        let back: JobRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        for _ in 0..(MAX_EVENTS + 5) {
            r.mark(JobState::Queued, None, None, "again".into());
        }
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!("dead".parse::<JobState>(), Ok(JobState::Dead));
        assert!("gone".parse::<JobState>().is_err());
    }
}
