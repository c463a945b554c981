//! Segmented jobs whose tasks were lost: found by the age of their
//! objects, ended once, and their objects removed.

use super::*;

impl Worker {
    /// Ends the segmented jobs none of whose objects changed for
    /// `segments.abandon_after` (every worker that had one of their part
    /// tasks died and the broker lost the tasks, or the join's worker died
    /// for good): a job that never ended fails (its `failed` event, its
    /// record, its webhook, its message dead-lettered as `stalled`), and
    /// the objects of every such job are removed. A job is ended once
    /// however many workers look at the same time: the end claim decides.
    pub(in crate::worker) async fn clean_abandoned(&self, broker: &Arc<Broker>) {
        let after = self.settings.segments.abandon_after;
        let objects = self.objects();
        let found = match objects.abandoned(after).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for abandoned segmented jobs");
                return;
            }
        };
        for abandoned in found {
            let job_id = abandoned.job_id.as_str();
            let span = tracing::info_span!("job", job_id = %job_id);
            async {
                if let Some(plan) = &abandoned.plan {
                    let error = JobError::new(
                        ErrorKind::Stalled,
                        format!(
                            "no part of the segmented job moved for {}: its part tasks were lost",
                            humantime::format_duration(after)
                        ),
                    );
                    let claim = End {
                        by: "abandoned".into(),
                        token: uuid::Uuid::new_v4().simple().to_string(),
                        ending: Ending::Fail,
                        error: Some(error.clone()),
                        worker: self.id.clone(),
                        at: crate::job::now_rfc3339(),
                    };
                    let claims = self.claims(broker);
                    let mut claimed = claims.claim_end(plan, &claim).await;
                    if let Err(e) = &claimed {
                        // On the broker, the end was won by a worker that
                        // died before it wrote it: nothing else can end
                        // the job, so its cleaners claim that on their own.
                        if plan.claims_on_broker && matches!(claims.end(plan).await, Ok(None)) {
                            tracing::warn!(error = %e, "the end of the abandoned job was won but never written; ending it by a claim of its own");
                            claimed = claims.claim_abandoned_end(plan, &claim).await;
                        }
                    }
                    match claimed {
                        Ok(holds) if holds.token == claim.token => {
                            tracing::warn!("{}", error.message);
                            self.abandon(broker, plan, &error).await;
                        }
                        Ok(holds) => tracing::warn!(
                            by = %holds.by,
                            "the abandoned job was being ended, but its objects were left"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot claim the end of an abandoned job");
                            return;
                        }
                    }
                }
                self.remove_objects(broker, job_id).await;
            }
            .instrument(span)
            .await;
        }
    }

    /// Fails the abandoned job of `plan` for `error`.
    pub(super) async fn abandon(&self, broker: &Arc<Broker>, plan: &SegmentPlan, error: &JobError) {
        let reporter = Reporter::new(
            broker.clone(),
            &plan.job_id,
            plan.attempt,
            &self.id,
            &self.status,
        )
        .in_order();
        if let Err(e) = reporter.failed(error, false).await {
            tracing::warn!(error = %e, "could not publish the failed event");
        }
        self.record(&plan.job_id, |r| {
            r.mark(
                JobState::Dead,
                Some(plan.attempt),
                Some(&self.id),
                format!(
                    "failed for good; in the dead-letter queue: {}",
                    error.message
                ),
            );
        })
        .await;
        if let Ok(job) = plan.job() {
            crate::webhook::notify(broker, &job, crate::webhook::Ended::Failed(error)).await;
        }
        let why = DeadLetter {
            job_id: &plan.job_id,
            error,
            worker: &self.id,
        };
        let headers = dead_letter_headers(&why, plan.attempt, plan.history.clone(), &plan.queue);
        let dead_letter = || broker.dead_letter(plan.message.as_bytes(), headers.clone());
        if let Err(e) = crate::broker::until_taken("the dead letter", dead_letter).await {
            tracing::error!(error = %e, "could not dead-letter the abandoned job");
        }
    }

    /// Removes a job's segment objects (logged when it cannot: the
    /// pruning pass finds them later), its progress mark and claims on
    /// the broker (which expire when they cannot), and the copy of its
    /// input this worker kept.
    pub(super) async fn remove_objects(&self, broker: &Broker, job_id: &str) {
        if let Err(e) = broker.remove_mark(job_id).await {
            tracing::warn!(error = %e, "cannot remove the job's progress mark");
        }
        if let Ok(Some(plan)) = self.objects().plan(job_id).await {
            if let Ok(job) = plan.job() {
                self.inputs.forget(&job.input_key);
            }
            self.claims(broker).remove_claims_on_broker(&plan).await;
        }
        match self.objects().remove(job_id).await {
            Ok(n) => tracing::info!(objects = n, "removed the job's segment objects"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the job's segment objects"),
        }
    }
}
