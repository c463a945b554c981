//! Settling a delivery: the one place that turns the outcome of an attempt
//! into what happens to its message. Completed: publish `completed` (with a
//! broker confirm), then ack. Failed: publish `failed`, then, as
//! [`JobError::disposition`] decides, give the job back as a copy carrying
//! its history after a backoff delay, release it at once without using up
//! an attempt (the worker is stopping), leave it to the broker (the
//! connection is lost), or move it to the dead-letter queue with the
//! reason.

use std::time::Duration;

use super::attempt::Produced;
use super::{jitter, Worker};
use crate::broker::{until_taken, Broker, DeadLetter, Delivery};
use crate::error::{Disposition, JobError};
use crate::history::{JobRecord, JobState};
use crate::job::Job;
use crate::pipeline::Made;
use crate::progress::Reporter;
use crate::webhook::{self, Ended, JobResult};

/// What an attempt came to: the outputs stored, or the error.
pub(super) type Outcome = Result<Produced, JobError>;

impl Worker {
    /// Settles `delivery` of job `job_id` (`job`, when the message is a
    /// valid job) after its attempt's `outcome`, and records it in the
    /// job's history; a job that ends queues its webhook notice before it
    /// is settled.
    pub(super) async fn settle(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        job_id: &str,
        job: Option<&Job>,
        outcome: Outcome,
    ) {
        self.settle_as(broker, delivery, reporter, job_id, job, outcome, None)
            .await;
    }

    /// [`Worker::settle`] of a delivery that stands for the job message
    /// `origin` (its body and queue): a part task of a segmented job. A
    /// dead letter is then the job's message, not the task. Returns
    /// whether the job has ended (completed and acked, dead-lettered or
    /// cancelled), not given back or retried.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle_as(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        job_id: &str,
        job: Option<&Job>,
        outcome: Outcome,
        origin: Option<(&[u8], &str)>,
    ) -> bool {
        let attempt = delivery.attempt();
        let error = match outcome {
            Ok(produced) => {
                let keys: Vec<String> = produced.outputs.iter().map(|o| o.key.clone()).collect();
                return match until_taken("the completed event", || reporter.completed(&keys)).await
                {
                    Ok(()) => {
                        tracing::info!(outputs = keys.len(), "job completed");
                        let duration = produced
                            .outputs
                            .first()
                            .and_then(|o| o.made.as_ref())
                            .and_then(|m| m.media.duration_ms)
                            .map(|ms| ms as f64 / 1000.0);
                        let size: u64 = produced.outputs.iter().map(|o| o.size).sum();
                        self.record(job_id, |r| {
                            r.attempt_ended(attempt, "completed", None);
                            r.output_keys = keys.clone();
                            r.output_size_bytes = Some(size);
                            r.duration_seconds = duration;
                            r.mark(
                                JobState::Completed,
                                Some(attempt),
                                Some(&self.id),
                                format!("completed: {} stored", keys.join(", ")),
                            );
                        })
                        .await;
                        if let Some(job) = job {
                            let outputs: Vec<(&str, u64, Option<&Made>)> = produced
                                .outputs
                                .iter()
                                .map(|o| (o.key.as_str(), o.size, o.made.as_ref()))
                                .collect();
                            let result = JobResult::of_outputs(&outputs);
                            webhook::notify(broker, job, Ended::Completed(&result)).await;
                        }
                        delivery.ack().await;
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not publish the completed event; giving the job back");
                        delivery.give_back().await;
                        false
                    }
                };
            }
            Err(error) => error,
        };
        let w = &self.settings.worker;
        let disposition = error.disposition(attempt, w.max_attempts);
        if disposition == Disposition::Cancel {
            self.settle_cancelled(broker, delivery, reporter, job_id, job, &error)
                .await;
            return true;
        }
        let will_retry = disposition != Disposition::DeadLetter;
        tracing::warn!(kind = %error.kind, error = %error.message, ?disposition, "job attempt failed");
        if let Err(e) = reporter.failed(&error, will_retry).await {
            tracing::warn!(error = %e, "could not publish the failed event");
        }
        let (outcome, state, text) = match disposition {
            Disposition::DeadLetter => (
                "failed",
                JobState::Dead,
                "failed for good; in the dead-letter queue",
            ),
            Disposition::Retry => ("failed", JobState::Failed, "failed; it will be tried again"),
            Disposition::Release => (
                "given back",
                JobState::Queued,
                "given back to the queue (the worker stopped)",
            ),
            _ => (
                "broker lost",
                JobState::Queued,
                "the broker connection was lost; the broker gives the job back",
            ),
        };
        self.record(job_id, |r| {
            r.attempt_ended(attempt, outcome, Some((&error.kind, &error.message)));
            r.mark(
                state,
                Some(attempt),
                Some(&self.id),
                format!("attempt {attempt} {text}: {}", error.message),
            );
        })
        .await;
        match disposition {
            Disposition::DeadLetter => {
                if let Some(job) = job {
                    webhook::notify(broker, job, Ended::Failed(&error)).await;
                }
                let why = DeadLetter {
                    job_id,
                    error: &error,
                    worker: &self.id,
                };
                return match origin {
                    Some((body, queue)) => {
                        delivery
                            .dead_letter_instead(broker, &why, body, queue)
                            .await
                    }
                    None => {
                        delivery
                            .dead_letter_instead(broker, &why, delivery.body(), delivery.queue())
                            .await
                    }
                };
            }
            Disposition::Retry => {
                let delay = retry_delay(w.retry_delay, w.retry_max_delay, attempt);
                tracing::info!(?delay, "retrying after a delay");
                tokio::time::sleep(delay).await;
                delivery.retry(broker, &self.id, &error).await;
            }
            Disposition::Release => delivery.release(broker).await,
            Disposition::Requeue | Disposition::Cancel => delivery.give_back().await,
        }
        false
    }

    /// Settles a cancelled job: the `cancelled` event, no output left
    /// behind (an unfinished upload is aborted; the scratch folder went
    /// with the attempt), the record, the webhook, and the ack: no retry,
    /// no dead letter.
    async fn settle_cancelled(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        job_id: &str,
        job: Option<&Job>,
        why: &JobError,
    ) {
        tracing::info!(reason = %why.message, "job cancelled");
        if let Err(e) = until_taken("the cancelled event", || reporter.cancelled(why)).await {
            tracing::warn!(error = %e, "could not publish the cancelled event");
        }
        if let Some(job) = job {
            for key in job.output_keys() {
                self.storage.abort_uploads(&key).await;
            }
        }
        let attempt = delivery.attempt();
        self.record(job_id, |r| {
            r.attempt_ended(attempt, "cancelled", None);
            r.mark(
                JobState::Cancelled,
                Some(attempt),
                Some(&self.id),
                why.message.clone(),
            );
        })
        .await;
        if let Some(job) = job {
            webhook::notify(broker, job, Ended::Cancelled).await;
        }
        delivery.ack().await;
    }

    /// Changes the job's record in the history with `change` (best effort:
    /// a history that cannot be written is logged, never fails the job).
    pub(super) async fn record(&self, job_id: &str, change: impl FnOnce(&mut JobRecord)) {
        if let Some(history) = &self.history {
            if let Err(e) = history.update(job_id, change).await {
                tracing::warn!(error = %e, "could not write the job's record");
            }
        }
    }
}

/// `base * 2^(attempt-1)`, capped at `max`, with up to 50 % random jitter:
/// how long a failed attempt waits before its job is given back.
fn retry_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    jitter(exp.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let d1 = retry_delay(base, max, 1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = retry_delay(base, max, 3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d30 = retry_delay(base, max, 30);
            assert!(d30 <= max && d30 >= max / 2, "{d30:?}");
        }
    }
}
