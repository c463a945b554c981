//! What an operator does to jobs, shared by the commands (`submit`,
//! `cancel`) and the dashboard's actions: making and checking a job,
//! publishing it to the queue of its priority with its record in the
//! history, and asking for a job to be cancelled.

use std::time::Duration;

use crate::broker::{string_headers, Broker, BrokerError};
use crate::config::{BrokerSettings, Settings};
use crate::control::{self, Command, Request};
use crate::error::JobError;
use crate::history::{History, JobRecord, JobState};
use crate::job::{Job, Priority, Webhook};
use crate::storage::StorageError;

/// How long a cancel waits for the workers' acknowledgement of the request
/// on the control exchange (the running worker stops on receipt; the
/// request is also kept in the history).
const CANCEL_BROADCAST_WAIT: Duration = Duration::from_millis(300);

/// A job to submit.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The input key.
    pub input: String,
    /// The output key.
    pub output: String,
    /// A preset name.
    pub preset: Option<String>,
    /// A pipeline fragment instead of a preset.
    pub transcode_options: Option<String>,
    /// The job id (a new one when absent).
    pub job_id: Option<String>,
    /// Its priority.
    pub priority: Priority,
    /// Labels a worker must have.
    pub requires: Vec<String>,
    /// Where to be told when it ends.
    pub webhook: Option<Webhook>,
    /// Encode it in segments of about this many seconds, by any free
    /// workers (see [`crate::segment`]).
    pub segment_seconds: Option<f64>,
}

/// A job made from a [`Submission`], checked as a worker would.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The job.
    pub job: Job,
    /// The message to publish.
    pub body: String,
    /// Its priority.
    pub priority: Priority,
}

impl Submission {
    /// The job message, checked as the workers check it (fields, preset or
    /// fragment, limits): the error says why they would refuse it.
    pub fn check(&self, settings: &Settings) -> Result<Checked, JobError> {
        let job_id = self
            .job_id
            .clone()
            .unwrap_or_else(|| format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]));
        let mut fields = serde_json::json!({
            "job_id": job_id,
            "input_key": self.input,
            "output_key": self.output,
            "priority": self.priority,
        });
        if let Some(preset) = &self.preset {
            fields["preset"] = preset.clone().into();
        }
        if let Some(options) = &self.transcode_options {
            fields["transcode_options"] = options.clone().into();
        }
        if !self.requires.is_empty() {
            fields["requires"] = self.requires.clone().into();
        }
        if let Some(seconds) = self.segment_seconds {
            fields["segment_seconds"] = seconds.into();
        }
        if let Some(webhook) = &self.webhook {
            fields["webhook"] = serde_json::to_value(webhook).expect("a webhook serializes");
        }
        let body = fields.to_string();
        let job = Job::parse(body.as_bytes())?;
        crate::plan::plan(&job, settings)?;
        Ok(Checked {
            job,
            body,
            priority: self.priority,
        })
    }
}

/// Records `checked` as queued in `history` (best effort: a history that
/// cannot be written is logged) and publishes it, persistent and
/// confirmed, to the jobs queue of its priority, with `queued_by` in a
/// header. Returns that queue.
pub async fn publish(
    broker: &Broker,
    history: Option<&History>,
    checked: &Checked,
    queued_by: &str,
) -> Result<String, BrokerError> {
    let job = &checked.job;
    if let Some(history) = history {
        let recorded = history
            .update(&job.job_id, |r| {
                r.input_key = job.input_key.clone();
                r.output_keys = vec![job.output_key.clone()];
                r.priority = Some(checked.priority);
                r.submitted_at = Some(crate::job::now_rfc3339());
                r.mark(
                    JobState::Queued,
                    None,
                    None,
                    format!("submitted by {queued_by}"),
                );
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!("cannot record the job in the history: {e}");
        }
    }
    let queue = broker.settings().jobs_queue_for(checked.priority);
    let headers = string_headers([("queued-by", queued_by.to_string())]);
    broker
        .publish_confirmed(&queue, checked.body.as_bytes(), headers)
        .await?;
    Ok(queue)
}

/// What became of a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// The farm has no record of the job: nothing changed.
    Unknown,
    /// The job has already ended: nothing changed.
    Ended(JobRecord),
    /// The request is kept in the history and was sent to the workers: a
    /// running job stops within seconds, a queued one is settled as
    /// cancelled when a worker reaches it. The record is as it was before.
    Requested(JobRecord),
}

/// Asks for `job_id` to be cancelled, `by` whom: checks its record, keeps
/// the request in `history` (so a worker that reaches the job later sees
/// it) and tells every worker on the control exchange (the one running it
/// stops at once). A failed broadcast is logged: the kept request is
/// enough, a running worker sees it at its next step.
pub async fn cancel(
    broker: &BrokerSettings,
    history: &History,
    job_id: &str,
    by: &str,
) -> Result<Cancel, StorageError> {
    let Some(record) = history.get(job_id).await? else {
        return Ok(Cancel::Unknown);
    };
    if record.state.is_final() {
        return Ok(Cancel::Ended(record));
    }
    history.request_cancel(job_id, by).await?;
    let request = Request {
        command: Command::Cancel,
        requires: None,
        job_id: Some(job_id.to_string()),
        input: None,
    };
    if let Err(e) = control::ask_with(broker, &request, CANCEL_BROADCAST_WAIT).await {
        tracing::warn!(
            "cannot tell the workers at once ({e}); a worker sees the request when it next looks"
        );
    }
    Ok(Cancel::Requested(record))
}
