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
use crate::job::Job;
use crate::progress::Reporter;
use crate::webhook::{self, Ended, JobResult};

/// What an attempt came to: the key of the stored output and what was
/// stored there, or the error.
pub(super) type Outcome<'a> = Result<(&'a str, Produced), JobError>;

impl Worker {
    /// Settles `delivery` of job `job_id` (`job`, when the message is a
    /// valid job) after its attempt's `outcome`; a job that ends queues
    /// its webhook notice before it is settled.
    pub(super) async fn settle(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        job_id: &str,
        job: Option<&Job>,
        outcome: Outcome<'_>,
    ) {
        let error = match outcome {
            Ok((output_key, produced)) => {
                match until_taken("the completed event", || reporter.completed(output_key)).await {
                    Ok(()) => {
                        tracing::info!("job completed");
                        if let Some(job) = job {
                            let result =
                                JobResult::new(output_key, produced.size, produced.media.as_ref());
                            webhook::notify(broker, job, Ended::Completed(&result)).await;
                        }
                        delivery.ack().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not publish the completed event; giving the job back");
                        delivery.give_back().await;
                    }
                }
                return;
            }
            Err(error) => error,
        };
        let attempt = delivery.attempt();
        let w = &self.settings.worker;
        let disposition = error.disposition(attempt, w.max_attempts);
        let will_retry = disposition != Disposition::DeadLetter;
        tracing::warn!(kind = %error.kind, error = %error.message, ?disposition, "job attempt failed");
        if let Err(e) = reporter.failed(&error, will_retry).await {
            tracing::warn!(error = %e, "could not publish the failed event");
        }
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
                delivery.dead_letter(broker, &why).await;
            }
            Disposition::Retry => {
                let delay = retry_delay(w.retry_delay, w.retry_max_delay, attempt);
                tracing::info!(?delay, "retrying after a delay");
                tokio::time::sleep(delay).await;
                delivery.retry(broker, &self.id, &error).await;
            }
            Disposition::Release => delivery.release(broker).await,
            Disposition::Requeue => delivery.give_back().await,
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
