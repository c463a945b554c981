//! Progress reporting for one attempt: turns phase and position updates into
//! [`Progress`] events that are monotonic, rate-limited, and end with one
//! `completed` or `failed` event published with a broker confirm.
//!
//! Overall progress is split by phase ([`Phase::span`]): downloading 0-5 %,
//! transcoding 5-95 %, uploading 95-99 %, and 100 % only once the job is
//! completed. An
//! event goes out on every phase change, on each whole-percent change (at
//! most four a second), and at least every two seconds.
//!
//! The events of a segmented job's part tasks and join go out in order
//! ([`Reporter::in_order`]): their `progress` is raised to the job's
//! high-water mark on the broker, so the job's percentage never goes back
//! although several workers report on it at once.
//!
//! Every update also goes to the attempt's [`AttemptStatus`] (the worker's
//! live state and metrics), before the rate rules, so `inspect`, `/metrics`
//! and `/healthz` see each one; events carry the speed and transfer figures
//! it computes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::{Broker, BrokerError, InOrder};
use crate::error::JobError;
use crate::job::{Phase, Progress};
use crate::status::{AttemptStatus, Status};

/// Shortest gap between two events of the same phase.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Gap after which an event goes out even without change; with the callers'
/// ticks of at most 500 ms every gap is at most 1.5 s, which leaves half a
/// second of the two seconds promised to a busy machine's scheduling.
const MAX_INTERVAL: Duration = Duration::from_millis(1000);

#[derive(Debug)]
struct Last {
    state: Option<Phase>,
    percent: f64,
    sent_at: Option<Instant>,
}

/// Publishes the progress of one attempt of one job.
#[derive(Debug, Clone)]
pub struct Reporter {
    broker: Arc<Broker>,
    job_id: String,
    attempt: u32,
    worker: String,
    last: Arc<Mutex<Last>>,
    status: Arc<AttemptStatus>,
    tracks_left_out: Arc<Mutex<Vec<String>>>,
    ran_whole: Arc<Mutex<Option<String>>>,
    share: Option<Arc<PartShare>>,
    in_order: bool,
}

/// The part of a segmented job a reporter reports on, and its share of
/// the job: its events carry the part (and the segment's index), their
/// `progress` is the job's (the parts stored before it started, plus
/// its own share so far) and `segment_progress` its own.
#[derive(Debug, Clone, PartialEq)]
pub struct PartShare {
    /// The part's name (`v0003`, `audio`).
    pub part: String,
    /// The video segment's index, for a video segment.
    pub segment: Option<u32>,
    /// How many video segments the job has.
    pub segments: u32,
    /// The share of the job (0 to 1) stored before this part started.
    pub base: f64,
    /// This part's share of the job (0 to 1).
    pub weight: f64,
}

impl Reporter {
    /// A reporter for attempt `attempt` of `job_id` run by `worker`; the
    /// attempt shows in `status` until the last clone is dropped.
    pub fn new(
        broker: Arc<Broker>,
        job_id: &str,
        attempt: u32,
        worker: &str,
        status: &Status,
    ) -> Self {
        Reporter {
            status: Arc::new(status.attempt(job_id, attempt)),
            broker,
            job_id: job_id.to_string(),
            attempt,
            worker: worker.to_string(),
            last: Arc::new(Mutex::new(Last {
                state: None,
                percent: 0.0,
                sent_at: None,
            })),
            tracks_left_out: Arc::default(),
            ran_whole: Arc::default(),
            share: None,
            in_order: false,
        }
    }

    /// This reporter, publishing through the job's progress mark on the
    /// broker ([`Broker::publish_in_order`]): for the tasks of a segmented
    /// job, which several workers run at once.
    pub fn in_order(mut self) -> Reporter {
        self.in_order = true;
        self
    }

    /// This reporter, reporting on one part of a segmented job.
    pub fn for_part(mut self, share: PartShare) -> Reporter {
        self.share = Some(Arc::new(share));
        self
    }

    /// The highest percentage it has reported.
    pub fn percent(&self) -> f64 {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).percent
    }

    /// The job it reports on.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Records the input's tracks the output does not carry, for the
    /// `completed` event.
    pub fn tracks_left_out(&self, tracks: Vec<String>) {
        *self
            .tracks_left_out
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = tracks;
    }

    /// Records why a job that was to be encoded in segments runs whole,
    /// for the `completed` event.
    pub fn ran_whole(&self, why: String) {
        *self.ran_whole.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn event(&self, state: Phase, percent: f64) -> Progress {
        let mut event = Progress::new(
            &self.job_id,
            &self.worker,
            self.attempt,
            state,
            (percent * 10.0).round() / 10.0,
        );
        if let Some(share) = &self.share {
            event.part = Some(share.part.clone());
            event.segment = share.segment;
            event.segments = Some(share.segments);
        }
        event
    }

    /// While transcoding: the pipeline reached `position_ms` of
    /// `duration_ms` (for the speed in events and the stall view).
    pub fn media_position(&self, position_ms: u64, duration_ms: Option<u64>) {
        self.status.media_position(position_ms, duration_ms);
    }

    /// While downloading or uploading (`state`): `done` of `total` bytes
    /// moved so far (for the speed in events, and the byte counters).
    pub fn transferred(&self, state: Phase, done: u64, total: u64) {
        self.status.transferred(state, done, total);
    }

    /// Reports that `state` is `fraction` (0 to 1) done, with an optional
    /// ETA; publishes only when the rate rules say so. Never fails: a lost
    /// intermediate event is logged and forgotten.
    pub async fn update(&self, state: Phase, fraction: f64, eta: Option<Duration>) {
        let (start, end) = state.span();
        let mut percent = start + (end - start) * fraction.clamp(0.0, 1.0);
        let own = percent;
        if let Some(share) = &self.share {
            // The parts run between the job's download and upload spans.
            let (first, last) = Phase::Transcoding.span();
            let done = (share.base + share.weight * own / 100.0).clamp(0.0, 1.0);
            percent = first + (last - first) * done;
        }
        self.status.update(state, percent, eta);
        let now = Instant::now();
        let percent = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let percent = percent.max(last.percent);
            let since = last.sent_at.map(|t| now.duration_since(t));
            let due = last.state != Some(state)
                || since.is_none_or(|s| s >= MAX_INTERVAL)
                || (percent.floor() > last.percent.floor()
                    && since.is_none_or(|s| s >= MIN_INTERVAL));
            if !due {
                return;
            }
            last.state = Some(state);
            last.percent = percent;
            last.sent_at = Some(now);
            percent
        };
        let mut event = self.event(state, percent);
        if self.share.is_some() {
            event.segment_progress = Some((own * 10.0).round() / 10.0);
        }
        event.eta_secs = eta.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0);
        let figures = self.status.figures();
        event.speed = figures.speed;
        event.position_secs = figures.position_secs;
        event.duration_secs = figures.duration_secs;
        event.bytes = figures.bytes;
        event.bytes_total = figures.bytes_total;
        event.bytes_per_sec = figures.bytes_per_sec;
        if let Err(e) = self.publish(event, false).await {
            tracing::debug!(error = %e, "progress event not sent");
        }
    }

    /// Publishes `event`; with `confirm`, as a persistent message the
    /// broker confirmed. In order, its `progress` is raised to the job's
    /// mark; an intermediate event is dropped when other workers held the
    /// mark for every try, and an event without a mark to raise it to
    /// goes out as it is.
    async fn publish(&self, mut event: Progress, confirm: bool) -> Result<(), BrokerError> {
        if self.in_order {
            match self.broker.publish_in_order(&mut event, confirm).await? {
                InOrder::Published => return Ok(()),
                InOrder::Busy if !confirm => return Ok(()),
                InOrder::Busy | InOrder::NoMark => {}
            }
        }
        self.broker.publish_progress(&event, confirm).await
    }

    /// Publishes the `completed` event (100 %) of a job that stored
    /// `output_keys` (`output_key`: the first) and waits for the broker's
    /// confirm.
    pub async fn completed(&self, output_keys: &[String]) -> Result<(), BrokerError> {
        let mut event = self.event(Phase::Completed, 100.0);
        event.output_key = output_keys.first().cloned();
        event.output_keys = output_keys.to_vec();
        event.tracks_left_out = self
            .tracks_left_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        event.ran_whole = self
            .ran_whole
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result = self.broker.publish_progress(&event, true).await;
        match &result {
            Ok(()) => self.status.completed(),
            // The job goes back to the queue.
            Err(_) => self
                .status
                .failed(crate::error::ErrorKind::BrokerUnavailable, true),
        }
        result
    }

    /// Publishes the `waiting` event (this worker cannot run the job; it
    /// waits for one that can, `why`) and waits for the broker's confirm.
    pub async fn waiting(&self, why: &JobError) -> Result<(), BrokerError> {
        let mut event = self.event(Phase::Waiting, 0.0);
        event.error = Some(why.message.clone());
        event.error_kind = Some(why.kind);
        event.will_retry = Some(true);
        self.publish(event, true).await
    }

    /// Publishes the `cancelled` event (the job's last) and waits for the
    /// broker's confirm.
    pub async fn cancelled(&self, why: &JobError) -> Result<(), BrokerError> {
        let mut event = self.event(Phase::Cancelled, self.percent());
        event.error = Some(why.message.clone());
        event.error_kind = Some(why.kind);
        event.will_retry = Some(false);
        self.status.failed(why.kind, false);
        self.publish(event, true).await
    }

    /// Resolves when someone asks this attempt's job to be cancelled
    /// (through the control exchange).
    pub async fn cancel_requested(&self) {
        self.status.cancel_requested().await
    }

    /// Publishes the `failed` event for `error` and waits for the broker's confirm.
    pub async fn failed(&self, error: &JobError, will_retry: bool) -> Result<(), BrokerError> {
        let mut event = self.event(Phase::Failed, self.percent());
        event.error = Some(error.message.clone());
        event.error_kind = Some(error.kind);
        event.will_retry = Some(will_retry);
        self.status.failed(error.kind, will_retry);
        self.publish(event, true).await
    }
}
