//! The worker loop: connect, consume, process, settle; reconnect when the
//! broker goes away; drain on shutdown.
//!
//! One attempt of a job: plan the pipeline (nothing is downloaded for a job
//! that cannot run), fetch the input into a per-job scratch folder, run the
//! pipeline process, upload the verified output, publish `completed` with a
//! broker confirm, and only then ack. Any failure is settled by
//! [`JobError::disposition`]: retried after a backoff delay, given back at
//! once, or moved to the dead-letter queue (after a `failed` event, with the
//! reason in its headers). The scratch folder is removed on every path.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::{
    attempt_of, history_of, string_headers, Broker, BrokerError, HISTORY_HEADER,
    SETTLED_ATTEMPTS_HEADER,
};
use crate::config::{Phase, Settings};
use crate::error::{Disposition, ErrorKind, JobError};
use crate::job::{Job, State};
use crate::pipeline::{MediaInfo, TranscodeSpec};
use crate::plan::plan;
use crate::progress::Reporter;
use crate::storage::{Storage, Transferred};
use crate::transcoder::{ChildEvent, Transcoder};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker's topology conflicts with ours; retrying cannot help.
    #[error(transparent)]
    Topology(BrokerError),
    /// The storage backend could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// GStreamer or an element the presets or muxers need is missing.
    #[error("{0}")]
    Plugins(String),
    /// The scratch folder is not usable.
    #[error("scratch folder {path}: {problem}")]
    Scratch {
        /// The folder.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Aborts the running attempts of a session, with the reason they get.
#[derive(Debug, Clone, Default)]
struct Abort {
    token: CancellationToken,
    reason: Arc<std::sync::OnceLock<JobError>>,
}

impl Abort {
    /// Aborts every attempt watching this, with `reason` (the first reason wins).
    fn fire(&self, reason: JobError) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves with the reason once fired.
    async fn fired(&self) -> JobError {
        self.token.cancelled().await;
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| JobError::new(ErrorKind::Shutdown, "the attempt was aborted"))
    }
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

/// How a broker session ended.
enum SessionEnd {
    /// Shutdown was asked for; jobs were drained.
    Shutdown,
    /// Idle for `exit_when_idle`.
    Idle,
    /// The connection or consumer was lost.
    Lost(String),
}

/// A transcoding worker.
#[derive(Debug)]
pub struct Worker {
    settings: Settings,
    storage: Storage,
    transcoder: Transcoder,
    id: String,
    exit_when_idle: Option<Duration>,
    status: crate::status::Status,
}

impl Worker {
    /// Makes a worker that runs pipelines with `transcoder`; `exit_when_idle`
    /// makes [`Worker::run`] return once no job has arrived for that long.
    pub fn new(
        settings: Settings,
        transcoder: Transcoder,
        exit_when_idle: Option<Duration>,
    ) -> Result<Arc<Worker>, WorkerError> {
        let storage = Storage::from_settings(&settings.storage)?;
        let mut needed: Vec<String> = ["filesrc", "decodebin", "filesink", "queue", "fakesink"]
            .iter()
            .chain(crate::plan::MUXERS)
            .map(|s| s.to_string())
            .collect();
        for text in [crate::plan::DEFAULT_AAC, crate::plan::DEFAULT_OPUS] {
            needed.extend(crate::pipeline::factories_in(text));
        }
        for preset in settings.presets.values() {
            needed.extend(crate::pipeline::factories_in(&preset.video));
            needed.extend(
                preset
                    .audio
                    .iter()
                    .flat_map(|a| crate::pipeline::factories_in(a)),
            );
        }
        crate::pipeline::check_installed(needed.iter().map(String::as_str))
            .map_err(WorkerError::Plugins)?;
        let transcoder = if settings.worker.standby_pipeline {
            transcoder.with_standby(needed)
        } else {
            transcoder
        };
        let scratch = settings.scratch_dir();
        std::fs::create_dir_all(&scratch).map_err(|e| WorkerError::Scratch {
            path: scratch.display().to_string(),
            problem: e.to_string(),
        })?;
        clean_stale_scratch(&scratch);
        Ok(Arc::new(Worker {
            id: settings.worker_id(),
            status: crate::status::Status::new(&settings),
            settings,
            storage,
            transcoder,
            exit_when_idle,
        }))
    }

    /// The worker's name in progress events.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's live state (for `inspect`, `/metrics`, `/healthz`).
    pub fn status(&self) -> &crate::status::Status {
        &self.status
    }

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
            let connect = Broker::connect(
                b,
                self.settings.worker.max_attempts,
                self.settings.worker.concurrency,
                &connection_name,
            );
            // Each node gets connect_timeout; declaring the topology gets one more.
            let timeout = b.connect_timeout * (b.urls().len() as u32 + 1);
            let broker = tokio::select! {
                r = tokio::time::timeout(timeout, connect) => r.unwrap_or_else(|_| Err(BrokerError::Timeout(timeout))),
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
            match self.clone().session(broker.clone(), &shutdown).await {
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

    async fn session(
        self: Arc<Self>,
        broker: Arc<Broker>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let tag = format!("{}-{}", self.id, uuid::Uuid::new_v4().simple());
        let mut consumer = match broker.consume_jobs(&tag).await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        let _control = crate::control::Responder::start(broker.clone(), self.status.clone());
        let abort = Abort::default();
        let mut jobs = JoinSet::new();
        let mut last_activity = Instant::now();
        let mut idle_check = tokio::time::interval(Duration::from_millis(250));
        let liveness = self.settings.broker.liveness_interval;
        let mut live_check = tokio::time::interval(liveness);
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = live_check.tick() => {
                    if let Err(why) = broker.ping(liveness * 2).await {
                        // A closing channel's own reason (such as the
                        // broker's consumer timeout) says more than the ping.
                        let reason = match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                            Ok(Some(Err(e))) => e.to_string(),
                            _ => why,
                        };
                        break SessionEnd::Lost(reason);
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        last_activity = Instant::now();
                        jobs.spawn(self.clone().handle(broker.clone(), delivery, abort.clone()));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
                Some(_) = jobs.join_next(), if !jobs.is_empty() => last_activity = Instant::now(),
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
            SessionEnd::Shutdown | SessionEnd::Idle => {
                broker.stop_consuming(&tag).await;
                if !jobs.is_empty() {
                    let drain = self.settings.worker.drain_timeout;
                    tracing::info!(
                        running = jobs.len(),
                        ?drain,
                        "stopping: letting running jobs finish"
                    );
                    let finished = tokio::time::timeout(drain, async {
                        while jobs.join_next().await.is_some() {}
                    })
                    .await;
                    if finished.is_err() {
                        tracing::warn!(
                            "drain time is up: giving the running jobs back to the queue"
                        );
                        abort.fire(JobError::new(
                            ErrorKind::Shutdown,
                            format!(
                                "the worker stopped and the job did not finish within the drain time of {}",
                                humantime::format_duration(drain)
                            ),
                        ));
                    }
                }
            }
        }
        while jobs.join_next().await.is_some() {}
        end
    }

    /// Processes one delivery to the end and settles it.
    async fn handle(self: Arc<Self>, broker: Arc<Broker>, delivery: Delivery, abort: Abort) {
        let attempt = attempt_of(&delivery.properties);
        let job = match Job::parse_limited(&delivery.data, self.settings.worker.max_message_bytes) {
            Ok(job) => job,
            Err(error) => {
                let limit = self.settings.worker.max_message_bytes;
                let job_id = (delivery.data.len() <= limit)
                    .then(|| Job::salvage_id(&delivery.data))
                    .flatten()
                    .unwrap_or_else(|| "unknown".into());
                let span = tracing::info_span!("job", job_id = %job_id, attempt);
                let reporter =
                    Reporter::new(broker.clone(), &job_id, attempt, &self.id, &self.status);
                return self
                    .settle(&broker, &delivery, &reporter, &job_id, Err(error))
                    .instrument(span)
                    .await;
            }
        };
        let span = tracing::info_span!("job", job_id = %job.job_id, attempt);
        async {
            let reporter = Reporter::new(broker.clone(), &job.job_id, attempt, &self.id, &self.status);
            tracing::info!(input = %job.input_key, output = %job.output_key, "job started");
            let limit = self.settings.worker.job_timeout;
            let result = tokio::select! {
                r = tokio::time::timeout(limit, self.attempt(&job, attempt, &reporter)) => r.unwrap_or_else(|_| Err(JobError::new(
                    ErrorKind::Stalled,
                    format!("the job ran longer than the limit of {}", humantime::format_duration(limit)),
                ))),
                reason = abort.fired() => Err(reason),
            };
            let result = result.map(|_| job.output_key.as_str());
            self.settle(&broker, &delivery, &reporter, &job.job_id, result).await
        }
        .instrument(span)
        .await
    }

    /// Settles a delivery: after success (with the stored output's key) ack,
    /// else retry, give back or dead-letter.
    async fn settle(
        &self,
        broker: &Broker,
        delivery: &Delivery,
        reporter: &Reporter,
        job_id: &str,
        result: Result<&str, JobError>,
    ) {
        let attempt = attempt_of(&delivery.properties);
        let max = self.settings.worker.max_attempts;
        let error = match result {
            Ok(output_key) => {
                match until_taken("the completed event", || reporter.completed(output_key)).await {
                    Ok(()) => {
                        tracing::info!("job completed");
                        ack(delivery).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not publish the completed event; giving the job back");
                        nack(delivery, true).await;
                    }
                }
                return;
            }
            Err(error) => error,
        };
        let disposition = error.disposition(attempt, max);
        let will_retry = disposition != Disposition::DeadLetter;
        tracing::warn!(kind = %error.kind, error = %error.message, ?disposition, "job attempt failed");
        if let Err(e) = reporter.failed(&error, will_retry).await {
            tracing::warn!(error = %e, "could not publish the failed event");
        }
        match disposition {
            Disposition::DeadLetter => {
                let mut reason = error.message.clone();
                if !error.kind.is_permanent() {
                    reason = format!("gave up after {attempt} attempts; last error: {reason}");
                }
                let mut history = history_of(&delivery.properties);
                history.push(history_line(attempt, &self.id, &error));
                let headers = string_headers([
                    ("x-error", reason),
                    ("x-error-kind", error.kind.to_string()),
                    ("x-job-id", job_id.to_string()),
                    ("x-attempts", attempt.to_string()),
                    ("x-attempt-history", history.join("\n")),
                    ("x-worker", self.id.clone()),
                    ("x-failed-at", crate::job::now_rfc3339()),
                    ("x-original-queue", self.settings.broker.jobs_queue.clone()),
                ]);
                let dead_letter = || broker.dead_letter(&delivery.data, headers.clone());
                match until_taken("the dead letter", dead_letter).await {
                    Ok(()) => ack(delivery).await,
                    Err(e) => {
                        tracing::error!(error = %e, "could not dead-letter the job; giving it back");
                        nack(delivery, true).await;
                    }
                }
            }
            Disposition::Retry => {
                let w = &self.settings.worker;
                let delay = backoff(w.retry_delay, w.retry_max_delay, attempt);
                tracing::info!(?delay, "retrying after a delay");
                tokio::time::sleep(delay).await;
                // Give the job back as a new copy that carries its history
                // (a nack cannot change a message), then drop this one.
                let mut history = history_of(&delivery.properties);
                history.push(history_line(attempt, &self.id, &error));
                let headers = string_headers([
                    (SETTLED_ATTEMPTS_HEADER, attempt.to_string()),
                    (HISTORY_HEADER, history.join("\n")),
                ]);
                let queue = &self.settings.broker.jobs_queue;
                let copy = || broker.publish_confirmed(queue, &delivery.data, headers.clone());
                match until_taken("the retried copy", copy).await {
                    Ok(()) => ack(delivery).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not requeue a copy with the history; giving the job back as it is");
                        nack(delivery, true).await;
                    }
                }
            }
            Disposition::Requeue => nack(delivery, true).await,
        }
    }

    /// One attempt: plan, fetch, transcode, upload.
    async fn attempt(&self, job: &Job, attempt: u32, reporter: &Reporter) -> Result<(), JobError> {
        let plan = plan(job, &self.settings)?;
        self.storage.check_key(&job.input_key)?;
        self.storage.check_key(&job.output_key)?;
        let w = &self.settings.worker;
        let scratch = tempfile::Builder::new()
            .prefix(&scratch_prefix())
            .tempdir_in(self.settings.scratch_dir())
            .map_err(|e| {
                JobError::new(
                    ErrorKind::Internal,
                    format!("cannot make a scratch folder: {e}"),
                )
            })?;

        reporter.update(State::Downloading, 0.0, None).await;
        let Some(expected) = self
            .storage
            .head(&job.input_key)
            .await
            .map_err(JobError::from)?
        else {
            return Err(JobError::new(
                ErrorKind::InputNotFound,
                format!(
                    "there is no input {:?} in {}",
                    job.input_key,
                    self.storage.describe()
                ),
            ));
        };
        let fingerprint = plan.fingerprint(job, expected.size);
        if self.already_done(job, &fingerprint).await? {
            tracing::info!(key = %job.output_key, "the verified output of this job is already stored; not transcoding again");
            return Ok(());
        }
        // Checked only now: a job whose earlier attempt stored its output but
        // whose ack was lost (a crash, a broker failover) is done, whatever
        // its delivery count says.
        let max = w.max_attempts;
        if attempt > max {
            return Err(JobError::new(
                ErrorKind::AttemptsExhausted,
                format!("all {max} attempts are used up; the last ended without a result (the worker running it crashed, was stopped, or lost the broker)"),
            ));
        }
        let local_copy = matches!(self.storage, Storage::S3(_));
        check_free_space(
            scratch.path(),
            if local_copy { expected.size } else { 0 },
            w.min_free_space_mb,
        )?;
        let counter = Transferred::default();
        let input = watch_transfer(
            self.storage
                .fetch_known(&job.input_key, &expected, scratch.path(), &counter),
            &counter,
            expected.size,
            reporter,
            State::Downloading,
            w.download_stall_timeout,
        )
        .await?;
        self.fault_point(Phase::Download);

        let spec = TranscodeSpec {
            input: input.path.clone(),
            output: scratch.path().join("output"),
            video: plan.video.clone(),
            audio: plan.audio.clone(),
            muxer: plan.muxer.to_string(),
            duration_tolerance_ms: self.settings.pipeline.duration_tolerance.as_millis() as u64,
            max_input: (
                self.settings.pipeline.max_width,
                self.settings.pipeline.max_height,
                self.settings.pipeline.max_duration.as_millis() as u64,
            ),
        };
        tracing::info!(video = %plan.video, muxer = plan.muxer, preset = ?plan.preset, "transcoding");
        reporter.update(State::Transcoding, 0.0, None).await;
        let output = self
            .transcode(&spec, reporter, w.transcode_stall_timeout)
            .await?;
        tracing::info!(duration_ms = ?output.duration_ms, "output verified");
        self.fault_point(Phase::Transcode);

        let size = std::fs::metadata(&spec.output)
            .map(|m| m.len())
            .unwrap_or(0);
        reporter.update(State::Uploading, 0.0, None).await;
        let mut metadata = vec![
            (META_JOB_ID.to_string(), job.job_id.clone()),
            (META_FINGERPRINT.to_string(), fingerprint),
            ("transcode-worker".to_string(), self.id.clone()),
        ];
        if let Some(preset) = &plan.preset {
            metadata.push(("transcode-preset".to_string(), preset.clone()));
        }
        let counter = Transferred::default();
        watch_transfer(
            self.storage
                .store(&spec.output, &job.output_key, &metadata, &counter),
            &counter,
            size,
            reporter,
            State::Uploading,
            w.upload_stall_timeout,
        )
        .await?;
        tracing::info!(bytes = size, key = %job.output_key, "output stored");
        self.fault_point(Phase::Upload);
        drop(scratch);
        Ok(())
    }

    /// Whether an earlier attempt of the same job with the same settings
    /// stored its output (it was verified before it was stored).
    async fn already_done(&self, job: &Job, fingerprint: &str) -> Result<bool, JobError> {
        let Some(info) = self
            .storage
            .head(&job.output_key)
            .await
            .map_err(JobError::from)?
        else {
            return Ok(false);
        };
        let meta = |name: &str| {
            info.metadata
                .iter()
                .find(|(k, _)| k == name || k.ends_with(&format!("-{name}")))
                .map(|(_, v)| v.as_str())
        };
        let done = info.size > 0
            && meta(META_JOB_ID) == Some(job.job_id.as_str())
            && meta(META_FINGERPRINT) == Some(fingerprint);
        Ok(done)
    }

    /// Aborts the process after `phase` when fault injection asks for it.
    fn fault_point(&self, phase: Phase) {
        if self.settings.worker.crash_after == Some(phase) {
            tracing::error!(?phase, "fault injection: aborting the worker");
            std::process::abort();
        }
    }

    /// Runs the pipeline process, turning its positions into progress and
    /// aborting it when its position stops moving for `stall`.
    async fn transcode(
        &self,
        spec: &TranscodeSpec,
        reporter: &Reporter,
        stall: Duration,
    ) -> Result<MediaInfo, JobError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = self.transcoder.run(spec, tx);
        tokio::pin!(run);
        let started = Instant::now();
        let mut moved_at = Instant::now();
        let mut position = 0u64;
        let mut fraction = 0.0;
        let mut eta = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                result = &mut run => return result,
                Some(event) = rx.recv() => {
                    if let ChildEvent::Position { position_ms, duration_ms } = event {
                        if position_ms > position {
                            position = position_ms;
                            moved_at = Instant::now();
                        }
                        reporter.media_position(position, duration_ms);
                        if let Some(total) = duration_ms.filter(|d| *d > 0) {
                            fraction = (position as f64 / total as f64).min(1.0);
                            if fraction > 0.0 {
                                let elapsed = started.elapsed().as_secs_f64();
                                eta = Some(Duration::from_secs_f64(elapsed / fraction * (1.0 - fraction)));
                            }
                        }
                        reporter.update(State::Transcoding, fraction, eta).await;
                    }
                }
                _ = tick.tick() => {
                    if moved_at.elapsed() >= stall {
                        return Err(JobError::new(ErrorKind::Stalled, format!(
                            "the transcode made no progress for {}", humantime::format_duration(stall))));
                    }
                    reporter.update(State::Transcoding, fraction, eta).await;
                }
            }
        }
    }
}

/// Publishes with `publish` until the broker takes the message. A broker
/// that refuses it (a quorum queue electing a new leader nacks) is asked
/// again with backoff for about half a minute; a lost connection is not
/// retried (the delivery cannot be settled on it anyway).
async fn until_taken<F, Fut>(what: &str, publish: F) -> Result<(), BrokerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(30)))
        .without_max_times();
    publish
        .retry(backoff)
        .when(|e| matches!(e, BrokerError::NotConfirmed { .. }))
        .notify(|e, delay| tracing::warn!(error = %e, ?delay, "the broker refused {what}; asking again"))
        .await
}

/// One line of a job's attempt history.
fn history_line(attempt: u32, worker: &str, error: &JobError) -> String {
    let message: String = error
        .message
        .chars()
        .filter(|c| *c != '\n')
        .take(300)
        .collect();
    format!(
        "attempt {attempt} on {worker} at {}: {}: {message}",
        crate::job::now_rfc3339(),
        error.kind
    )
}

/// Object metadata naming the job that made an output.
const META_JOB_ID: &str = "transcode-job-id";
/// Object metadata identifying the settings an output was made with.
const META_FINGERPRINT: &str = "transcode-fingerprint";

/// Prefix of this process's per-job scratch folders: `job-<pid>-`.
fn scratch_prefix() -> String {
    format!("job-{}-", std::process::id())
}

/// Removes scratch folders left by worker processes that no longer run
/// (a killed worker cannot clean up after itself).
pub fn clean_stale_scratch(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("job-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            tracing::info!(folder = %entry.path().display(), "removing the scratch folder of a worker that is gone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Fails as [`ErrorKind::NoSpace`] unless the file system of `dir` has
/// `needed` bytes plus `reserve_mb` MiB free.
fn check_free_space(dir: &std::path::Path, needed: u64, reserve_mb: u64) -> Result<(), JobError> {
    let free = free_space(dir).map_err(|e| {
        JobError::new(
            ErrorKind::Internal,
            format!("cannot read the free space of {}: {e}", dir.display()),
        )
    })?;
    let want = needed.saturating_add(reserve_mb.saturating_mul(1 << 20));
    if free < want {
        return Err(JobError::new(
            ErrorKind::NoSpace,
            format!(
                "not enough free space in {}: {} MiB free, {} MiB needed",
                dir.display(),
                free >> 20,
                want >> 20
            ),
        ));
    }
    Ok(())
}

fn free_space(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Awaits a transfer while reporting its bytes as progress of `state`;
/// fails it as stalled when no byte moves for `stall`.
async fn watch_transfer<T>(
    transfer: impl Future<Output = Result<T, crate::storage::StorageError>>,
    counter: &Transferred,
    total: u64,
    reporter: &Reporter,
    state: State,
    stall: Duration,
) -> Result<T, JobError> {
    tokio::pin!(transfer);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = counter.get();
    let mut moved_at = Instant::now();
    loop {
        tokio::select! {
            result = &mut transfer => {
                reporter.transferred(state, counter.get(), total);
                return result.map_err(JobError::from);
            }
            _ = tick.tick() => {
                let now = counter.get();
                reporter.transferred(state, now, total);
                if now != last {
                    last = now;
                    moved_at = Instant::now();
                } else if moved_at.elapsed() >= stall {
                    return Err(JobError::new(ErrorKind::Stalled, format!(
                        "{} made no progress for {}",
                        if state == State::Uploading { "the upload" } else { "the download" },
                        humantime::format_duration(stall))));
                }
                let fraction = if total > 0 { now as f64 / total as f64 } else { 0.0 };
                reporter.update(state, fraction, None).await;
            }
        }
    }
}

async fn ack(delivery: &Delivery) {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the ack was not sent (the channel is gone); the broker will deliver the job again"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the ack failed; the broker will deliver the job again")
        }
    }
}

async fn nack(delivery: &Delivery, requeue: bool) {
    let options = BasicNackOptions {
        requeue,
        ..Default::default()
    };
    match delivery.acker.nack(options).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the nack was not sent (the channel is gone); the broker will deliver the job again"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the nack failed; the broker will deliver the job again")
        }
    }
}

/// `base * 2^(attempt-1)`, capped at `max`, with up to 50 % random jitter.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    jitter(exp.min(max))
}

fn jitter(delay: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..=1.0);
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let d1 = backoff(base, max, 1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = backoff(base, max, 3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d30 = backoff(base, max, 30);
            assert!(d30 <= max && d30 >= max / 2, "{d30:?}");
        }
    }
}
