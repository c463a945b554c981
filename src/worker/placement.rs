//! Where a job runs: whether this worker can run it, and what happens to a
//! job it cannot run (see [`crate::capability`]).
//!
//! - A job that needs an element or a label this worker lacks moves, its
//!   attempts untouched, to the queue of workers that have them, which is
//!   recorded in the requirements stream; a `waiting` event says why.
//! - Every worker reads that stream and takes jobs from the queues whose
//!   requirement it meets, before the jobs queue of the same priority.
//! - A job that waited there longer than `worker.no_capable_worker_timeout`
//!   arrives in the unplaced queue: the worker that takes it runs it if it
//!   can, else asks the live workers; if one of them could, the job waits
//!   again, otherwise it is dead-lettered as `no_capable_worker`.
//! - The task of a part of a segmented job is placed the same way, by the
//!   elements of the branches the split chose; a part task that no live
//!   worker can encode ends its job as `no_capable_worker` (the job's
//!   message dead-lettered, its segment objects removed).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;

use super::Worker;
use crate::broker::{string_headers, Broker, Delivery};
use crate::capability::{self, Requirement, WaitingQueue, PRIORITY_QUEUE_HEADER, REQUIRES_HEADER};
use crate::control::{self, Command, Request};
use crate::error::{ErrorKind, JobError};
use crate::job::Job;
use crate::progress::Reporter;
use crate::segment::Part;

/// How long the unplaced queue's worker waits for the live workers'
/// answers before deciding that none can run a job.
const ASK_WAIT: Duration = Duration::from_secs(2);

/// What to do with a delivered job before any attempt.
pub(super) enum Placement {
    /// Run it here.
    Run,
    /// Move it to the queue of workers that have what it needs.
    Wait(WaitingQueue),
    /// Give up on it (it waited too long, and no live worker can run it).
    GiveUp(JobError),
}

impl Worker {
    /// Whether this worker runs `job` (delivered as `delivery`), or where it
    /// goes instead. A job that cannot even be planned runs (its attempt
    /// fails with the reason).
    pub(super) async fn place(&self, job: &Job, delivery: &mut Delivery) -> Placement {
        let Ok(plan) = self.plan_for(job) else {
            return Placement::Run;
        };
        self.placement(&capability::needs(&plan, job), delivery)
            .await
    }

    /// Whether this worker encodes the part of `plan` (of `job`) whose task
    /// is `delivery`, or where the task goes instead: parts are encoded
    /// alike, with the branches the split chose
    /// ([`capability::part_needs`]), so a worker that lacks them moves the
    /// task on, and a task no live worker can encode ends the job.
    pub(super) async fn place_part(
        &self,
        plan: &crate::segment::SegmentPlan,
        job: &Job,
        delivery: &mut Delivery,
    ) -> Placement {
        let needs = capability::part_needs(&plan.video, &plan.audio, &plan.muxer, job);
        self.placement(&needs, delivery).await
    }

    /// Where a delivery that needs `needs` goes: run here, wait for a
    /// capable worker, or give up when it waited too long for one and no
    /// live worker has what it needs.
    async fn placement(&self, needs: &capability::Needs, delivery: &mut Delivery) -> Placement {
        let (waited_for, priority_queue) = waited_for(delivery);
        let missing = self.capabilities.missing(needs);
        let unplaced = delivery.queue() == self.settings.broker.unplaced_queue();
        if missing.is_empty() {
            if unplaced {
                // Retried copies go back to where capable workers look.
                delivery.set_home(&waited_for.queue_of(&priority_queue));
            }
            return Placement::Run;
        }
        let requires = waited_for.union(&missing);
        let waiting = WaitingQueue {
            queue: requires.queue_of(&priority_queue),
            priority_queue,
            requires,
        };
        if !unplaced {
            return Placement::Wait(waiting);
        }
        let reason = delivery
            .header_text("x-first-death-reason")
            .unwrap_or_default();
        if reason != "expired" {
            return Placement::GiveUp(JobError::new(
                ErrorKind::AttemptsExhausted,
                format!(
                    "the job left the queue of workers with {} ({reason}) without a result",
                    waiting.requires
                ),
            ));
        }
        match self.live_worker_can_run(&waiting.requires).await {
            Ok(true) => Placement::Wait(waiting),
            Ok(false) => Placement::GiveUp(JobError::new(
                ErrorKind::NoCapableWorker,
                format!(
                    "no live worker can run this job: it needs {}, and it waited {} for a worker that has it",
                    waiting.requires,
                    humantime::format_duration(self.settings.worker.no_capable_worker_timeout)
                ),
            )),
            Err(why) => {
                // Cannot tell: let it wait again rather than give up.
                tracing::warn!(error = %why, "cannot ask the live workers; the job waits again");
                Placement::Wait(waiting)
            }
        }
    }

    /// The plan of `job` on this worker ([`crate::plan::plan_on`]): each
    /// preset with the preferred video branch whose elements this worker
    /// has (a hardware encoder, say).
    pub(super) fn plan_for(&self, job: &Job) -> Result<crate::plan::Plan, JobError> {
        let allow = self.settings.allowlist();
        crate::plan::plan_on(job, &self.settings, &|preset| {
            capability::preferred_video(preset, &self.capabilities, &allow)
        })
    }

    /// Whether a live worker answers that it could run a job that needs
    /// `requires`.
    async fn live_worker_can_run(&self, requires: &Requirement) -> Result<bool, String> {
        let request = Request {
            command: Command::Inspect,
            requires: Some(requires.clone()),
            job_id: None,
            input: None,
        };
        let answers = control::ask_with(&self.settings.broker, &request, ASK_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answers.iter().any(|a| a.info.capable == Some(true)))
    }

    /// Moves `delivery` to `waiting`'s queue (declared, and recorded in the
    /// requirements stream), after a `waiting` event. `part` names the
    /// part of a segmented job the delivery is the task of: its job runs
    /// on meanwhile, so the job's record is left as it is.
    pub(super) async fn wait_elsewhere(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        waiting: &WaitingQueue,
        part: Option<Part>,
    ) {
        let max = self.settings.worker.max_attempts;
        if let Err(e) = broker.declare_waiting_queue(&waiting.queue, max).await {
            tracing::error!(error = %e, queue = %waiting.queue, "cannot declare the queue of jobs waiting for capable workers; giving the job back");
            return delivery.give_back().await;
        }
        if !self.knows(waiting) {
            let entry = serde_json::to_vec(waiting).expect("a waiting queue serializes");
            let stream = self.settings.broker.requirements_stream();
            let record = || broker.publish_confirmed(&stream, &entry, string_headers([]));
            if let Err(e) = crate::broker::until_taken("the requirement", record).await {
                tracing::error!(error = %e, "cannot record the requirement; giving the job back");
                return delivery.give_back().await;
            }
        }
        let what = part.map_or("the job".to_string(), |p| p.to_string());
        let why = JobError::new(
            ErrorKind::MissingCapability,
            format!(
                "this worker lacks {}; {what} waits in {} for a worker that has {}",
                self.capabilities.missing_of(&waiting.requires),
                waiting.queue,
                waiting.requires
            ),
        );
        tracing::info!(queue = %waiting.queue, "{}", why.message);
        if let Err(e) = reporter.waiting(&why).await {
            tracing::warn!(error = %e, "could not publish the waiting event");
        }
        let job_id = reporter.job_id().to_string();
        if part.is_some() {
            return self.move_waiting(broker, delivery, waiting).await;
        }
        self.record(&job_id, |r| {
            r.waiting_for = Some(waiting.requires.to_string());
            r.mark(
                crate::history::JobState::Waiting,
                None,
                Some(&self.id),
                why.message.clone(),
            );
        })
        .await;
        self.move_waiting(broker, delivery, waiting).await;
    }

    /// Moves `delivery` to `waiting`'s queue, with the headers that say
    /// what it waits for, to expire into the unplaced queue.
    async fn move_waiting(&self, broker: &Broker, delivery: &Delivery, waiting: &WaitingQueue) {
        let headers = [
            (REQUIRES_HEADER, waiting.requires.header()),
            (PRIORITY_QUEUE_HEADER, waiting.priority_queue.clone()),
        ];
        let expires = Some(self.settings.worker.no_capable_worker_timeout);
        delivery
            .move_to(broker, &waiting.queue, &headers, expires)
            .await;
    }

    /// Whether this worker already knows of `waiting`'s queue.
    fn knows(&self, waiting: &WaitingQueue) -> bool {
        super::lock(&self.waiting)
            .iter()
            .any(|w| w.queue == waiting.queue)
    }

    /// Reads the requirements stream for as long as the broker session
    /// lasts: each queue of waiting jobs whose requirement this worker
    /// meets is declared and added to the queues it takes jobs from.
    pub(super) async fn read_requirements(self: Arc<Self>, broker: Arc<Broker>) {
        let stream = self.settings.broker.requirements_stream();
        let tag = format!("requirements-{}", self.id);
        let mut entries = match broker.read_stream(&stream, &tag).await {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the requirements stream; jobs waiting for capable workers are not taken by this worker");
                return;
            }
        };
        while let Some(Ok(delivery)) = entries.next().await {
            if let Ok(waiting) = serde_json::from_slice::<WaitingQueue>(&delivery.data) {
                let new = !self.knows(&waiting);
                if new && self.capabilities.satisfies(&waiting.requires) {
                    let max = self.settings.worker.max_attempts;
                    match broker.declare_waiting_queue(&waiting.queue, max).await {
                        Ok(()) => {
                            tracing::info!(queue = %waiting.queue, "taking jobs that wait for {}", waiting.requires);
                            super::lock(&self.waiting).insert(waiting);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, queue = %waiting.queue, "cannot declare a queue of waiting jobs")
                        }
                    }
                } else if new {
                    super::lock(&self.waiting).insert(waiting);
                }
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }

    /// The queues this worker takes jobs from, the most urgent first: for
    /// each priority, the queues of jobs waiting for what this worker has,
    /// then the priority's jobs queue; the unplaced queue last.
    pub(super) fn queues(&self) -> Vec<String> {
        let waiting = super::lock(&self.waiting);
        let mut queues = Vec::new();
        for priority_queue in self.settings.broker.jobs_queues() {
            queues.extend(
                waiting
                    .iter()
                    .filter(|w| w.priority_queue == priority_queue)
                    .filter(|w| self.capabilities.satisfies(&w.requires))
                    .map(|w| w.queue.clone()),
            );
            queues.push(priority_queue);
        }
        queues.push(self.settings.broker.unplaced_queue());
        queues
    }
}

/// What `delivery` waited for already (none unless it was moved), and the
/// jobs queue of its priority (where it was moved from, else its queue).
fn waited_for(delivery: &Delivery) -> (Requirement, String) {
    let waited_for = delivery
        .header_text(REQUIRES_HEADER)
        .map(|h| Requirement::from_header(&h))
        .unwrap_or_default();
    let priority_queue = delivery
        .header_text(PRIORITY_QUEUE_HEADER)
        .unwrap_or_else(|| delivery.queue().to_string());
    (waited_for, priority_queue)
}
