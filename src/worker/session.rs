//! The worker's broker sessions: connect (again, with capped backoff,
//! whenever the broker is lost), consume jobs, watch the connection's
//! liveness, and on shutdown stop consuming and let running jobs finish
//! within the drain time (then give them back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempt::Attempt;
use super::placement::Placement;
use super::segments::Split;
use super::{jitter, Abort, Worker, WorkerError};
use crate::broker::{Broker, BrokerError, Delivery};
use crate::config::Backend;
use crate::error::{ErrorKind, JobError};
use crate::job::Job;
use crate::progress::Reporter;

/// The shortest wait before looking at the queues again after they were
/// all empty.
const POLL_MIN: Duration = Duration::from_millis(10);
/// The longest such wait: an idle worker looks for a job at least this
/// often, so a job published to an idle farm waits 100 ms on average.
/// Each look is one `basic.get` per queue the worker serves (three, and
/// the capability queues it can serve): some 15 cheap requests a second
/// per idle worker.
const POLL_MAX: Duration = Duration::from_millis(200);

/// How often a worker removes old job records from the history.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How a broker session ended.
enum SessionEnd {
    /// Shutdown was asked for; jobs were drained.
    Shutdown,
    /// Idle for `exit_when_idle`.
    Idle,
    /// The connection or consumer was lost.
    Lost(String),
}

/// Says why a broker session ended, with the fix when it is the broker's
/// consumer timeout (the delivery can no longer be acked either way, and
/// the broker gives it to a worker again).
fn explain_loss(why: &str) -> String {
    let timed_out = why.contains("acknowledgement") && why.contains("timed out");
    if timed_out {
        format!(
            "the broker took the job back because it stayed unacknowledged longer than the broker's consumer_timeout ({why}); \
             raise consumer_timeout above the longest job (rabbitmq.conf on RabbitMQ 3.10/3.11, or the consumer-timeout \
             queue policy on 3.12 and later)"
        )
    } else if why.contains("cancelled the consumer") {
        format!(
            "{why} (RabbitMQ 4.3 and later do this when a delivery stays unacknowledged longer than the consumer timeout, \
             or when the queue is deleted); the job was given back"
        )
    } else {
        format!("the broker connection was lost during the job: {why}")
    }
}

impl Worker {
    /// Runs until `shutdown` is cancelled (then drains) or, with
    /// `exit_when_idle`, until no job has come for that long. Reconnects to
    /// the broker with capped exponential backoff whenever it is lost.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let b = &self.settings.broker;
        let mut delay = b.reconnect_min_delay;
        tracing::info!(worker = %self.id, storage = %self.storage.describe(), broker = %crate::config::redact_url(&b.url), queue = %b.jobs_queue, "worker starting");
        let connection_name = format!("transcode-worker {}", self.id);
        self.transcoder.prepare();
        loop {
            let connect = Broker::connect(&self.settings, &connection_name);
            // Each node gets connect_timeout; declaring the topology gets one more.
            let timeout = b.connect_timeout * (b.urls().len() as u32 + 1);
            let broker = tokio::select! {
                r = tokio::time::timeout(timeout, connect) => r.unwrap_or_else(|_| Err(BrokerError::Timeout {
                    url: crate::config::redact_url(&b.url),
                    after: timeout,
                })),
                _ = shutdown.cancelled() => return Ok(()),
            };
            let broker = match broker {
                Ok(broker) => Arc::new(broker),
                Err(e @ BrokerError::TopologyMismatch { .. }) => {
                    return Err(WorkerError::Topology(e))
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the broker");
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    delay = (delay * 2).min(b.reconnect_max_delay);
                    continue;
                }
            };
            delay = b.reconnect_min_delay;
            tracing::info!(queue = %b.jobs_queue, prefetch = self.settings.worker.concurrency, "connected; waiting for jobs");
            let probe = Arc::downgrade(&broker);
            self.status
                .connected(move || probe.upgrade().is_some_and(|b| b.is_connected()));
            let end = self.clone().session(broker.clone(), &shutdown).await;
            self.status.disconnected();
            match end {
                SessionEnd::Shutdown => {
                    broker.close().await;
                    tracing::info!("stopped");
                    return Ok(());
                }
                SessionEnd::Idle => {
                    broker.close().await;
                    tracing::info!("no job for a while; exiting as asked");
                    return Ok(());
                }
                SessionEnd::Lost(why) => {
                    tracing::warn!(reason = %why, "lost the broker; reconnecting");
                }
            }
        }
    }

    /// One broker session: takes jobs while fewer than `worker.concurrency`
    /// run, until shutdown, idleness or the loss of the broker; then drains
    /// or aborts the running attempts.
    ///
    /// Jobs are taken with `basic.get`, the most urgent queue first, only
    /// when a slot is free (see [`Broker::take_job`]); when every queue is
    /// empty the next look waits a little longer each time, from
    /// [`POLL_MIN`] up to [`POLL_MAX`].
    async fn session(
        self: Arc<Self>,
        broker: Arc<Broker>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let tag = format!("{}-{}", self.id, uuid::Uuid::new_v4().simple());
        let mut channel_watch = match broker.watch_jobs_channel(&tag).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        let (prefetch_tx, mut prefetch_rx) = tokio::sync::mpsc::unbounded_channel();
        let _control =
            crate::control::Responder::start(broker.clone(), self.status.clone(), prefetch_tx);
        let mut prefetches = JoinSet::new();
        let requirements = tokio::spawn(self.clone().read_requirements(broker.clone()));
        let pruning = tokio::spawn(self.clone().prune_history(broker.clone()));
        let _webhooks = crate::webhook::Sender::start(broker.clone(), &self.settings, &self.id);
        let abort = Abort::default();
        let mut jobs = JoinSet::new();
        let mut last_activity = Instant::now();
        let mut idle_check = tokio::time::interval(Duration::from_millis(250));
        let liveness = self.settings.broker.liveness_interval;
        let mut live_check = tokio::time::interval(liveness);
        let slots = usize::from(self.settings.worker.concurrency);
        let mut next_look = tokio::time::Instant::now();
        let mut wait = POLL_MIN;
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = live_check.tick() => match broker.ping(liveness * 2).await {
                    Ok(depths) => self.status.set_queue_depths(&depths),
                    Err(why) => {
                        // A closing channel's own reason (such as the
                        // broker's consumer timeout) says more than the ping.
                        let reason = match tokio::time::timeout(Duration::from_millis(200), channel_watch.next()).await {
                            Ok(Some(Err(e))) => e.to_string(),
                            _ => why,
                        };
                        break SessionEnd::Lost(reason);
                    }
                },
                closed = channel_watch.next() => match closed {
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    _ => break SessionEnd::Lost("the broker cancelled the consumer of the jobs channel".into()),
                },
                _ = tokio::time::sleep_until(next_look), if jobs.len() < slots => {
                    match broker.take_job(&self.queues()).await {
                        Ok(Some(delivery)) => {
                            last_activity = Instant::now();
                            jobs.spawn(self.clone().handle(broker.clone(), delivery, abort.clone()));
                            wait = POLL_MIN;
                            next_look = tokio::time::Instant::now();
                        }
                        Ok(None) => {
                            next_look = tokio::time::Instant::now() + wait;
                            wait = (wait * 2).min(POLL_MAX);
                        }
                        Err(e) => break SessionEnd::Lost(e.to_string()),
                    }
                }
                Some(request) = prefetch_rx.recv() => {
                    // Only a worker with nothing to do fetches ahead (a
                    // busy one would take bandwidth and disk from its
                    // jobs), one input at a time, and only from S3 (a
                    // folder is read in place).
                    let s3 = matches!(self.storage, crate::storage::Storage::S3(_));
                    let wanted = s3 && jobs.is_empty() && prefetches.is_empty();
                    if let (true, Some(job_id), Some(seen)) =
                        (wanted, request.job_id, request.input)
                    {
                        prefetches.spawn(self.clone().prefetch(job_id, seen));
                    }
                }
                Some(_) = prefetches.join_next(), if !prefetches.is_empty() => {}
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {
                    last_activity = Instant::now();
                    // A slot is free: look for the next job at once.
                    wait = POLL_MIN;
                    next_look = tokio::time::Instant::now();
                }
                _ = idle_check.tick(), if self.exit_when_idle.is_some() => {
                    let idle = self.exit_when_idle.unwrap_or_default();
                    if jobs.is_empty() && last_activity.elapsed() >= idle {
                        break SessionEnd::Idle;
                    }
                }
            }
        };
        match &end {
            SessionEnd::Lost(why) => abort.fire(JobError::new(
                ErrorKind::BrokerUnavailable,
                explain_loss(why),
            )),
            SessionEnd::Shutdown | SessionEnd::Idle => self.drain(&mut jobs, &abort).await,
        }
        while jobs.join_next().await.is_some() {}
        prefetches.abort_all();
        requirements.abort();
        pruning.abort();
        end
    }

    /// Removes old job records about once an hour for the whole farm (one
    /// worker does it; see [`crate::history::History::prune_if_due`]), and
    /// ends the segmented jobs whose part tasks were lost (see
    /// [`Worker::clean_abandoned`]) when the session starts and with each
    /// pruning (every pass when the history is off), for as long as the
    /// session lasts.
    async fn prune_history(self: Arc<Self>, broker: Arc<Broker>) {
        self.clean_abandoned(&broker).await;
        let h = &self.settings.history;
        loop {
            // A random few minutes first, so the workers of a farm that
            // start together do not all look at once.
            tokio::time::sleep(jitter(PRUNE_EVERY / 6)).await;
            let Some(history) = self.history.clone() else {
                self.clean_abandoned(&broker).await;
                continue;
            };
            match history
                .prune_if_due(PRUNE_EVERY, h.max_age, h.max_jobs)
                .await
            {
                Ok(None) => continue,
                Ok(Some(0)) => {}
                Ok(Some(n)) => tracing::info!(removed = n, "removed old job records"),
                Err(e) => tracing::warn!(error = %e, "cannot remove old job records"),
            }
            self.clean_abandoned(&broker).await;
        }
    }

    /// Lets the running attempts finish within the drain time, then aborts
    /// the rest (they are given back to the queue).
    async fn drain(&self, jobs: &mut JoinSet<()>, abort: &Abort) {
        if jobs.is_empty() {
            return;
        }
        let drain = self.settings.worker.drain_timeout;
        tracing::info!(
            running = jobs.len(),
            ?drain,
            "stopping: letting running jobs finish"
        );
        let finished =
            tokio::time::timeout(drain, async { while jobs.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!("drain time is up: giving the running jobs back to the queue");
            abort.fire(JobError::new(
                ErrorKind::Shutdown,
                format!(
                    "the worker stopped and the job did not finish within the drain time of {}",
                    humantime::format_duration(drain)
                ),
            ));
        }
    }

    /// Whether a cancel of `job_id` was requested (its request is kept in
    /// the history, so a worker started after the cancel sees it too).
    pub(super) async fn cancel_requested(&self, job_id: &str) -> bool {
        let Some(history) = &self.history else {
            return false;
        };
        match history.cancel_requested(job_id).await {
            Ok(requested) => requested,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for a cancel request");
                false
            }
        }
    }

    /// Processes one delivery to the end and settles it.
    async fn handle(self: Arc<Self>, broker: Arc<Broker>, mut delivery: Delivery, abort: Abort) {
        let small = delivery.body().len() <= self.settings.worker.max_message_bytes;
        let task = small
            .then(|| crate::segment::PartTask::recognise(delivery.body()))
            .flatten();
        if let Some(task) = task {
            return match task {
                Ok((task, part)) => self.handle_part(broker, delivery, abort, task, part).await,
                Err(error) => {
                    let reporter = Reporter::new(
                        broker.clone(),
                        "unknown",
                        delivery.attempt(),
                        &self.id,
                        &self.status,
                    );
                    self.settle(&broker, &delivery, &reporter, "unknown", None, Err(error))
                        .await
                }
            };
        }
        let attempt = delivery.attempt();
        let limit = self.settings.worker.max_message_bytes;
        let storage = &self.settings.storage;
        let bucket = (storage.backend == Backend::S3).then_some(storage.bucket.as_str());
        let parsed = Job::parse_limited(delivery.body(), limit).and_then(|mut job| {
            job.resolve_locations(bucket, &storage.extra_buckets)?;
            Ok(job)
        });
        let job = match parsed {
            Ok(job) => job,
            Err(error) => {
                let job_id = (delivery.body().len() <= limit)
                    .then(|| Job::salvage_id(delivery.body()))
                    .flatten()
                    .unwrap_or_else(|| "unknown".into());
                let span = tracing::info_span!("job", job_id = %job_id, attempt);
                let reporter =
                    Reporter::new(broker.clone(), &job_id, attempt, &self.id, &self.status);
                return self
                    .settle(&broker, &delivery, &reporter, &job_id, None, Err(error))
                    .instrument(span)
                    .await;
            }
        };
        let span = tracing::info_span!("job", job_id = %job.job_id, attempt);
        async {
            let reporter =
                Reporter::new(broker.clone(), &job.job_id, attempt, &self.id, &self.status);
            match self.place(&job, &mut delivery).await {
                Placement::Run => {}
                Placement::Wait(waiting) => {
                    return self
                        .wait_elsewhere(&broker, &delivery, &reporter, &waiting, None)
                        .await
                }
                Placement::GiveUp(error) => {
                    return self
                        .settle(&broker, &delivery, &reporter, &job.job_id, Some(&job), Err(error))
                        .await
                }
            }
            if self.cancel_requested(&job.job_id).await {
                let why = JobError::new(
                    ErrorKind::Cancelled,
                    "cancelled on request before it started",
                );
                return self
                    .settle(&broker, &delivery, &reporter, &job.job_id, Some(&job), Err(why))
                    .await;
            }
            let keys = job.output_keys();
            tracing::info!(input = %job.input_key, outputs = %keys.join(", "), "job started");
            self.record(&job.job_id, |r| {
                if r.input_key.is_empty() {
                    r.input_key = job.input_key.clone();
                    r.output_keys = keys.clone();
                    r.priority = job.priority;
                }
                r.attempt_started(attempt, &self.id);
            })
            .await;
            let limit = self.settings.worker.job_timeout;
            let dropped = self.inputs.drop_idle();
            if dropped > 0 {
                tracing::debug!(inputs = dropped, "removed the inputs kept for segmented jobs");
            }
            let attempt = Attempt::new(&self, &job, attempt, &reporter);
            // A segmented job is split here; its parts are queued and its
            // message acked (`None`); it runs whole when it cannot be.
            let run = async {
                if let Some(seconds) = self.segmenting(&job) {
                    match self.split(&broker, &delivery, &attempt, seconds).await? {
                        Split::Queued => return Ok(None),
                        Split::Whole(why) => {
                            tracing::info!("running the job whole: {why}");
                            reporter.ran_whole(why);
                        }
                    }
                }
                attempt.run().await.map(Some)
            };
            let result = tokio::select! {
                r = tokio::time::timeout(limit, run) => r.unwrap_or_else(|_| Err(JobError::new(
                    ErrorKind::Stalled,
                    format!("the job ran longer than the limit of {}", humantime::format_duration(limit)),
                ))),
                reason = abort.fired() => Err(reason),
                _ = reporter.cancel_requested() => Err(JobError::new(
                    ErrorKind::Cancelled,
                    "cancelled on request while it ran",
                )),
            };
            let result = match result {
                Ok(None) => {
                    self.record(&job.job_id, |r| {
                        r.attempt_ended(delivery.attempt(), "split", None);
                    })
                    .await;
                    return delivery.ack().await;
                }
                Ok(Some(produced)) => Ok(produced),
                Err(e) => Err(e),
            };
            self.settle(&broker, &delivery, &reporter, &job.job_id, Some(&job), result)
                .await
        }
        .instrument(span)
        .await
    }
}
